"""Energies, compensated accumulation, and the ledger on disk."""

from __future__ import annotations

import math

import pytest
import torch

from inertia import COLUMNS, CompensatedSum, Ledger, kinetic
from inertia.monitor import CSVSink, JSONLSink


def test_kinetic_with_scalar_and_diagonal_mass():
    v = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(kinetic(v), torch.tensor([2.5, 5.0], dtype=torch.float64))
    torch.testing.assert_close(kinetic(v, 2.0), torch.tensor([5.0, 10.0], dtype=torch.float64))
    m = torch.tensor([1.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(
        kinetic(v, m), torch.tensor([0.5 + 8.0, 4.5 + 2.0], dtype=torch.float64)
    )


def test_compensated_sum_is_exact_where_naive_summation_drifts():
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(100_000, 2, generator=gen, dtype=torch.float64) * 1e-3 + 1.0
    acc = CompensatedSum((2,))
    naive = torch.zeros(2, dtype=torch.float64)
    for row in values:
        acc.add_(row)
        naive += row
    exact = torch.tensor([math.fsum(values[:, j].tolist()) for j in range(2)], dtype=torch.float64)
    kahan_error = float((acc.total - exact).abs().max() / exact.abs().max())
    naive_error = float((naive - exact).abs().max() / exact.abs().max())
    assert kahan_error <= 2.3e-16
    assert naive_error > 10 * kahan_error


def plain_kahan(values: list[list[float]]) -> tuple[list[float], list[float]]:
    """The Kahan recurrence in Python floats: y = x − c; t = s + y; c = (t − s) − y; s = t."""
    total, carry = [0.0] * len(values[0]), [0.0] * len(values[0])
    for row in values:
        for i, x in enumerate(row):
            y = x - carry[i]
            t = total[i] + y
            carry[i] = (t - total[i]) - y
            total[i] = t
    return total, carry


def test_compensated_sum_is_bit_identical_to_the_plain_kahan_recurrence():
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(5_000, 3, generator=gen, dtype=torch.float64)
    values *= torch.logspace(-12, 12, 5_000, dtype=torch.float64)[:, None]
    acc = CompensatedSum((3,))
    for row in values:
        acc.add_(row)
    total, carry = plain_kahan(values.tolist())
    assert acc.total.tolist() == total and acc.carry.tolist() == carry


def test_compensated_sum_state_dict_continues_the_same_sum():
    gen = torch.Generator().manual_seed(2)
    values = torch.rand(400, 2, generator=gen, dtype=torch.float64) * 1e-3 + 1.0
    whole, first = CompensatedSum((2,)), CompensatedSum((2,), device="cpu")
    for row in values:
        whole.add_(row)
    for row in values[:150]:
        first.add_(row)
    saved = first.state_dict()
    assert set(saved) == {"total", "carry"}
    first.add_(values[0])  # the saved state is a copy, not a view of the running sums
    resumed = CompensatedSum((2,))
    resumed.load_state_dict(saved)
    for row in values[150:]:
        resumed.add_(row)
    assert torch.equal(resumed.total, whole.total) and torch.equal(resumed.carry, whole.carry)


@pytest.mark.parametrize(
    ("state", "field"),
    [
        ({"total": torch.zeros(2, dtype=torch.float64)}, "carry"),
        ({"total": torch.zeros(3), "carry": torch.zeros(2, dtype=torch.float64)}, "total"),
        ({"total": torch.zeros(2, dtype=torch.float64), "carry": torch.zeros(2)}, "carry"),
        ({"total": [0.0, 0.0], "carry": torch.zeros(2, dtype=torch.float64)}, "total"),
    ],
)
def test_compensated_sum_refuses_a_state_of_another_shape_or_dtype(state, field):
    acc = CompensatedSum((2,))
    acc.add_(torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=rf"^state\['{field}'\]"):
        acc.load_state_dict(state)
    assert acc.total.tolist() == [1.0, 1.0]  # nothing loaded


def simulation_ledger(paths: int = 3) -> Ledger:
    gen = torch.Generator().manual_seed(3)
    columns = {n: torch.randn(5, paths, generator=gen, dtype=torch.float64) for n in COLUMNS}
    columns["kinetic"][2, -1] = float("nan")
    columns["potential"][4, :] = torch.tensor([float("inf"), -float("inf"), 1e-310])[:paths]
    return Ledger(torch.arange(5, dtype=torch.float64) / 3, columns)


def one_path_ledger() -> Ledger:
    return simulation_ledger(paths=1)


def training_ledger() -> Ledger:
    gen = torch.Generator().manual_seed(4)
    names = ("lr", *COLUMNS, "noise_trace", "flag")
    columns = {n: torch.randn(6, generator=gen, dtype=torch.float64) for n in names}
    columns["noise_trace"][:3] = float("nan")
    columns["flag"] = torch.tensor([0.0, 0.0, 1.0, 0.0, 2.0, 0.0], dtype=torch.float64)
    return Ledger(torch.arange(6, dtype=torch.float64), columns, time_name="step")


def assert_same_ledger(read: Ledger, ledger: Ledger) -> None:
    assert read.time_name == ledger.time_name and list(read) == list(ledger)
    for name in [ledger.time_name, *ledger]:
        assert read[name].dtype == torch.float64
        torch.testing.assert_close(read[name], ledger[name], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("make", [simulation_ledger, one_path_ledger, training_ledger])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_ledger_round_trips_bit_for_bit(tmp_path, make, fmt):
    ledger = make()
    written = getattr(ledger, f"to_{fmt}")(tmp_path / f"ledger.{fmt}")
    read = getattr(Ledger, f"read_{fmt}")(written)
    assert_same_ledger(read, ledger)
    assert read.paths == ledger.paths


def test_a_sink_file_reads_as_the_ledger_of_its_rows(tmp_path):
    ledger = training_ledger()
    csv_sink, jsonl_sink = CSVSink(tmp_path / "l.csv"), JSONLSink(tmp_path / "l.jsonl")
    for row in ledger.rows():
        row = {**row, "step": int(row["step"])}  # the monitor books the step as an integer
        csv_sink.write(row)
        jsonl_sink.write(row)
    csv_sink.close()
    jsonl_sink.close()
    assert_same_ledger(Ledger.read_csv(tmp_path / "l.csv"), ledger)
    assert_same_ledger(Ledger.read_jsonl(tmp_path / "l.jsonl"), ledger)


ENERGY_HEADER = ",".join(COLUMNS)
BAD_FILES = [
    ("", "no rows"),
    (f"step,{ENERGY_HEADER}\n", "no rows"),
    ("a,b\n1,2\n", "not an inertia ledger"),
    (f"step,{ENERGY_HEADER.replace('residual', 'other')}\n0,1,2,3,4,5,6\n", "residual"),
    (f"step,{ENERGY_HEADER}\n0,1,2,3,4,5,x\n", "line 2: a value that is not a number"),
    (f"step,{ENERGY_HEADER}\n0,1,2,3,4,5,6\n1,1,2\n", "line 3: 3 values for 7 columns"),
    (f"step,kinetic,{ENERGY_HEADER}\n0,1,1,2,3,4,5,6\n", "repeated column"),
    (f"t,path,{ENERGY_HEADER}\n0,0,1,2,3,4,5,6\n0,2,1,2,3,4,5,6\n", "not a simulation ledger"),
    (f"t,path,{ENERGY_HEADER}\n0,0,1,2,3,4,5,6\n1,1,1,2,3,4,5,6\n", "not a simulation ledger"),
]


@pytest.mark.parametrize(("content", "fragment"), BAD_FILES)
def test_read_csv_refuses_what_is_not_a_ledger_naming_the_file(tmp_path, content, fragment):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match="bad.csv") as info:
        Ledger.read_csv(path)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "no rows"),
        ('{"step": 0, "kinetic": 1.0}\n', "not an inertia ledger"),
        ("[1, 2]\n", "line 1: not a JSON object"),
        ('{"step": 0}\n{"step": 1, "x": 2}\n', "line 2: columns"),
        ('{"step": 0, "x": "1.0"}\n', "line 1: a value that is not a number"),
        ('{"step": 0, "x": true}\n', "line 1: a value that is not a number"),
        ('{"step": 0, "x": 1.0}\n{"step": 1, "x"', "line 2: not a JSON object"),
    ],
)
def test_read_jsonl_refuses_what_is_not_a_ledger_naming_the_file(tmp_path, content, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match="bad.jsonl") as info:
        Ledger.read_jsonl(path)
    assert fragment in str(info.value)
