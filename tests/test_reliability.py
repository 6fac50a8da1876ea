"""Crash safety and precision (docs/reliability.md)."""

from __future__ import annotations

import copy
import csv
import json
import math
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from conftest import train_quadratic
from inertia import COLUMNS, InertiaMonitor
from inertia.monitor import MONITOR_COLUMNS, CSVSink, JSONLSink, Sink

SCRIPT = Path(__file__).with_name("crash_training.py")


def run_training(log_dir: Path, steps: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(log_dir), str(steps), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def complete_lines(path: Path) -> list[str]:
    text = path.read_text()
    return [line for line in text.splitlines(keepends=True) if line.endswith("\n")]


def test_sigkill_keeps_every_written_row_and_resume_continues_the_same_ledger(tmp_path):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    killed.mkdir()
    reference.mkdir()
    proc = run_training(killed, 400, "--delay", "0.01")
    deadline = time.monotonic() + 60
    csv_path = killed / "ledger.csv"
    while time.monotonic() < deadline:  # wait for a checkpoint and some rows past it
        if (
            (killed / "checkpoint.pt").exists()
            and csv_path.exists()
            and len(complete_lines(csv_path)) > 45
        ):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    lines = complete_lines(csv_path)
    rows = list(csv.DictReader(lines))
    assert len(rows) > 40 and list(rows[0]) == list(MONITOR_COLUMNS)
    for row in rows:  # every complete row on disk parses, and its energies are finite
        values = {name: float(value) for name, value in row.items()}
        assert all(math.isfinite(values[name]) for name in COLUMNS)
    for line in complete_lines(killed / "ledger.jsonl"):
        assert set(json.loads(line)) == set(MONITOR_COLUMNS)
    saved_step = torch.load(killed / "checkpoint.pt")["step"]
    assert saved_step < len(rows)  # rows past the checkpoint exist and must not be duplicated

    resumed = run_training(killed, 120, "--resume")
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    whole = run_training(reference, 120)
    assert whole.wait(timeout=120) == 0, whole.stderr.read()
    for name in ("ledger.csv", "ledger.jsonl"):
        assert (killed / name).read_text() == (reference / name).read_text(), name
    steps = [int(float(r["step"])) for r in csv.DictReader((killed / "ledger.csv").open())]
    assert steps == list(range(120))


def test_float32_and_bf16_autocast_ledgers_against_float64(capsys):
    """Relative error of the ledger of a float32 model, and of bf16 autocast, vs float64 (the
    shadow energy's ⟨−Δθ, ∇L⟩ included: float32 groups take their own path to float64)."""

    def ledger(dtype, autocast):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
        ).to(dtype)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        monitor = InertiaMonitor(opt)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(64, 8, generator=gen).to(dtype)
        y = torch.sin(x.sum(1, keepdim=True))
        for _ in range(50):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = model(x)
            loss = ((out.to(dtype) - y) ** 2).mean()
            loss.backward()
            monitor.observe(loss)
            opt.step()
        return monitor.ledger

    reference = ledger(torch.float64, False)
    errors = {}
    for label, dtype, autocast in (
        ("float32", torch.float32, False),
        ("bf16 autocast", torch.float32, True),
    ):
        led = ledger(dtype, autocast)
        errors[label] = {
            name: float(((led[name] - reference[name]).abs().max()) / reference[name].abs().max())
            for name in ("kinetic", "potential", "inertia", "dissipated", "shadow")
        }
    with capsys.disabled():
        print(f"\nledger relative error vs float64: {json.dumps(errors)}")
    assert max(errors["float32"].values()) < 1e-5
    assert max(errors["bf16 autocast"].values()) < 0.1
    assert all(e == e for e in errors["bf16 autocast"].values())


def test_truncate_drops_a_half_written_row(tmp_path):
    sink = CSVSink(tmp_path / "l.csv")
    for step in range(5):
        sink.write({"step": step, "inertia": 1.0})
    sink.close()
    with (tmp_path / "l.csv").open("a") as f:
        f.write("5,0.9")  # the crash came mid-row
    sink = CSVSink(tmp_path / "l.csv")
    sink.truncate(3)
    sink.write({"step": 3, "inertia": 2.0})
    sink.close()
    rows = list(csv.DictReader((tmp_path / "l.csv").open()))
    assert [r["step"] for r in rows] == ["0", "1", "2", "3"] and rows[-1]["inertia"] == "2.0"


@pytest.mark.parametrize("sink", [CSVSink, JSONLSink])
def test_a_truncated_and_resumed_file_is_byte_for_byte_an_uninterrupted_one(tmp_path, sink):
    rows = [{"step": s, "inertia": 1.0 / (s + 1), "flag": s % 3} for s in range(8)]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    out = sink(whole)
    for row in rows:
        out.write(row)
    out.close()
    out = sink(resumed)
    for row in rows[:6]:
        out.write(row)
    out.close()
    out = sink(resumed)  # the restart: rows 4, 5 are booked again from the checkpoint
    out.truncate(4)
    for row in rows[4:]:
        out.write(row)
    out.close()
    assert resumed.read_bytes() == whole.read_bytes()


def test_monitor_state_loads_with_weights_only(tmp_path):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
    monitor = InertiaMonitor(opt)
    for _ in range(3):
        opt.zero_grad()
        loss = (opt.param_groups[0]["params"][0] ** 2).sum()
        loss.backward()
        monitor.observe(loss)
        opt.step()
    torch.save(monitor.state_dict(), tmp_path / "m.pt")
    InertiaMonitor(opt).load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))


# ---------------------------------------------------------------- the monitor never stops training


class FullDisk(Sink):
    """A sink whose writes fail from the third row on, as a full disk does."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def write(self, row: dict) -> None:
        if len(self.rows) >= 2:
            raise OSError(28, "No space left on device")
        self.rows.append(row)


def test_a_failing_sink_is_dropped_with_one_warning_and_training_goes_on():
    theta = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = torch.optim.SGD([theta], lr=0.1, momentum=0.9)
    sink = FullDisk()
    monitor = InertiaMonitor(opt, sinks=[sink])
    with pytest.warns(RuntimeWarning, match="FullDisk could not write step 2") as caught:
        train_quadratic(monitor, 6)
    assert len([w for w in caught if "could not write" in str(w.message)]) == 1
    assert len(sink.rows) == 2 and sink not in monitor.sinks
    assert len(monitor.ledger["step"]) == 6 and float(theta.detach().abs().max()) < 1
    monitor.detach()
    strict = InertiaMonitor(opt, sinks=[FullDisk()], on_error="raise")
    with pytest.raises(OSError, match="No space"):
        train_quadratic(strict, 4)


def test_failures_inside_the_step_warn_once_and_leave_training_alone():
    """A parameter group added after attaching, and SGD with dampening 2 (torch accepts it;
    the map's h² = η(1 − τ) is negative): one warning each, the optimizer steps as without the
    monitor; on_error="raise" raises at the step."""
    a = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = torch.optim.SGD([a], lr=0.1)
    monitor = InertiaMonitor(opt)
    train_quadratic(monitor, 2)
    opt.add_param_group({"params": [b]})
    with pytest.warns(RuntimeWarning, match="parameter groups") as caught:
        train_quadratic(monitor, 3)
    assert len([w for w in caught if "parameter groups" in str(w.message)]) == 1
    assert float(b.detach().max()) == pytest.approx(0.8**3)  # b trained: 3 steps of lr 0.1 on b²
    damped = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.5, dampening=2)
    with pytest.warns(RuntimeWarning, match="the monitor failed"):
        train_quadratic(InertiaMonitor(damped), 3)
    monitor.detach()
    strict = InertiaMonitor(opt, on_error="raise")
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1, dtype=torch.float64))]})
    with pytest.raises(RuntimeError, match="parameter groups"):
        train_quadratic(strict, 1)


def run_with_failed_observe(fail_at: int | None, steps: int = 6, micro: int = 1, failing: int = -1):
    """A linear model trained on fixed data with per-sample noise over `micro` micro-batches;
    at step `fail_at` micro-batch `failing` (default the last) gets losses without a graph in
    observe, so the monitor's noise estimate fails inside observe, between others."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = InertiaMonitor(opt, noise="per_sample")
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    for step in range(steps):
        opt.zero_grad()
        for j, (xj, yj) in enumerate(zip(x.chunk(micro), y.chunk(micro), strict=True)):
            losses = ((model(xj) - yj) ** 2).squeeze(1)
            fails = step == fail_at and j == failing % micro
            per_sample = losses.detach() if fails else losses
            monitor.observe(losses.mean(), accumulate=micro > 1, per_sample=per_sample)
            (losses.mean() / micro).backward()
        opt.step()
    return monitor.ledger


@pytest.mark.parametrize(("micro", "failing"), [(1, 0), (3, 0), (3, 1), (3, 2)])
def test_a_failure_inside_observe_leaves_that_step_unbooked_as_its_warning_says(micro, failing):
    """One warning, naming the step; that step has no row (not a NaN loss with a second,
    "non-finite loss" warning); the other rows' loss, kinetic energy and noise are those of
    the run without the failure (the books bridge the gap as between rows two steps apart):
    what the failed step's other micro-batches estimate, before the failure or after it, does
    not reach the next row."""
    clean = run_with_failed_observe(None, micro=micro)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        failed = run_with_failed_observe(3, micro=micro, failing=failing)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "the monitor failed at step 3" in messages[0], messages
    assert failed["step"].tolist() == [0, 1, 2, 4, 5]
    rows = [0, 1, 2, 4, 5]
    for column in ("loss", "kinetic", "noise_trace"):
        torch.testing.assert_close(failed[column], clean[column][rows], rtol=1e-12, atol=0.0)


def test_a_step_retried_after_a_failed_observe_is_booked():
    """The failure unbooks only the iteration it happened in: an iteration retried at the
    same step (one with no optimizer step, as GradScaler skips on overflow; or one rerun
    after restoring a checkpoint, here over accumulated micro-batches) is booked."""
    theta = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = torch.optim.SGD([theta], lr=0.1, momentum=0.9)
    monitor = InertiaMonitor(opt, noise="per_sample")
    x = torch.linspace(1.0, 2.0, 8, dtype=torch.float64)[:, None]

    def iteration(fail: bool = False, step: bool = True, micro: int = 1):
        opt.zero_grad()
        for part in x.chunk(micro):
            losses = 0.5 * ((part * theta) ** 2).sum(1)
            per_sample = losses.detach() if fail else losses  # without a graph: it fails
            monitor.observe(losses.mean(), accumulate=micro > 1, per_sample=per_sample)
            losses.mean().backward()
        if step:
            opt.step()

    iteration()
    iteration()
    saved = [copy.deepcopy(s.state_dict()) for s in (opt, monitor)]
    saved_theta = theta.detach().clone()
    with pytest.warns(RuntimeWarning, match="the monitor failed at step 2"):
        iteration(fail=True, step=False)  # an iteration whose step was skipped
    iteration()  # the same step again
    assert monitor.ledger["step"].tolist() == [0, 1, 2]
    iteration(fail=True, micro=2)  # the same kind of failure: warned once, already
    assert monitor.ledger["step"].tolist() == [0, 1, 2]
    with torch.no_grad():  # back to the checkpoint of step 2, and on
        theta.copy_(saved_theta)
    opt.load_state_dict(saved[0])
    monitor.load_state_dict(saved[1])
    iteration(micro=2)
    iteration(micro=2)
    assert monitor.ledger["step"].tolist() == [2, 3]


def test_bad_observe_calls_raise_at_the_call_and_change_nothing():
    theta = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = torch.optim.SGD([theta], lr=0.1)
    monitor = InertiaMonitor(opt)
    with pytest.raises(ValueError, match="^loss must be a scalar"):
        monitor.observe(torch.ones(4))
    for batch_size in (0, -8, 2.5):  # a negative one had given a negative noise scale
        with pytest.raises(ValueError, match="^batch_size must be"):
            monitor.observe(torch.tensor(1.0), batch_size=batch_size)
    train_quadratic(monitor, 2)
    assert monitor.ledger["loss"].tolist() == pytest.approx([3.0, 3.0 * 0.8**2])
    with pytest.raises(ValueError, match="^on_error must be 'warn' or 'raise'"):
        InertiaMonitor(opt, on_error="ignore")
    monitor.detach()
    with pytest.raises(ValueError, match="observe: the monitor is detached"):
        monitor.observe(torch.tensor(1.0))


@pytest.mark.parametrize("optimizer", ["SparseAdam", "SGD", "SGD-momentum"])
@pytest.mark.parametrize("config", [{}, {"alarm": True}, {"noise": "microbatch"}])
def test_sparse_embedding_gradients_are_booked_and_never_stop_training(optimizer, config):
    """nn.Embedding(sparse=True) gives sparse gradients: the monitor reads them as dense ones,
    books every row without a warning (but SparseAdam's one at attach: it has no map of its
    own), and the optimizer steps as it does unmonitored."""
    import warnings
    from contextlib import nullcontext

    def run(monitored: bool):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(10, 3, sparse=True)
        params = list(emb.parameters())
        if optimizer == "SparseAdam":
            opt: torch.optim.Optimizer = torch.optim.SparseAdam(params, lr=0.01)
        else:
            opt = torch.optim.SGD(params, lr=0.1, momentum=0.9 if "momentum" in optimizer else 0)
        unmapped = monitored and optimizer == "SparseAdam"  # the generic map, said once
        with pytest.warns(UserWarning, match="no energy map") if unmapped else nullcontext():
            monitor = InertiaMonitor(opt, **config) if monitored else None
        for _ in range(4):
            opt.zero_grad()
            loss = emb(torch.tensor([1, 2, 3])).pow(2).sum()
            loss.backward()
            if monitor is not None:
                monitor.observe(loss, accumulate="noise" in config)
            opt.step()
        return emb.weight.detach(), monitor

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weight, monitor = run(monitored=True)
    assert torch.equal(weight, run(monitored=False)[0])
    ledger = monitor.ledger
    assert ledger["step"].tolist() == [0, 1, 2, 3] and ledger["flag"].eq(0).all()
    assert ledger["kinetic"][1:].gt(0).all() and ledger["residual"].isfinite().all()
    monitor.detach()


def test_observe_after_detach_raises_every_time_and_changes_nothing():
    theta = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = torch.optim.SGD([theta], lr=0.1)
    monitor = InertiaMonitor(opt)
    train_quadratic(monitor, 2)
    monitor.detach()
    for loss in (torch.tensor(1.0), 2.0):
        with pytest.raises(ValueError, match="observe: the monitor is detached"):
            monitor.observe(loss)
    other = InertiaMonitor(opt)
    with pytest.raises(ValueError, match="^loss must be a scalar"):
        other.observe(torch.ones(2, 2))
    other.detach()
    opt.zero_grad()
    (theta**2).sum().backward()
    opt.step()  # the detached monitor's hooks are gone: the step goes on unbooked
    assert len(monitor.ledger["step"]) == 2


def test_a_tensorboard_folder_deleted_mid_run_warns_and_training_goes_on(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    import shutil

    from inertia.monitor import TensorBoardSink

    folder = tmp_path / "tb"
    theta = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = torch.optim.SGD([theta], lr=0.1, momentum=0.9)
    sink = TensorBoardSink(log_dir=folder)
    monitor = InertiaMonitor(opt, sinks=[sink])
    train_quadratic(monitor, 2)
    sink.writer.flush()
    shutil.rmtree(folder)
    with pytest.warns(RuntimeWarning):
        train_quadratic(monitor, 3)
        monitor.detach()
    assert monitor.ledger["step"].tolist() == [0, 1, 2, 3, 4]
    reference = torch.ones(3, dtype=torch.float64)
    velocity = torch.zeros(3, dtype=torch.float64)
    for _ in range(5):  # the optimizer's steps, as unmonitored
        velocity = 0.9 * velocity + 2 * reference
        reference = reference - 0.1 * velocity
    assert torch.allclose(theta.detach(), reference, rtol=0, atol=1e-15)
