"""The `inertia` command: exit codes, one-line errors, and `inertia simulate` end to end."""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import inertia
import inertia.cli
import inertia.demo
from inertia.cli import main

INERTIA = str(Path(sys.executable).parent / "inertia")
SIMULATE = importlib.import_module(
    "inertia.simulate"
)  # the module: inertia.simulate is the function


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([INERTIA, *args], capture_output=True, text=True, timeout=120)


def test_version_and_help_from_the_installed_command():
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"inertia {inertia.__version__}"
    helped = run("--help")
    assert helped.returncode == 0 and "demo" in helped.stdout and "simulate" in helped.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["simulate", "--system", "pendulum"], "--system"),
        (["simulate", "--system", "quadratic", "--dt", "-0.1"], "dt must be"),
        (["simulate", "--system", "quadratic", "--steps", "0"], "steps must be"),
        (["simulate", "--system", "quadratic", "--gamma", "-1"], "gamma must be"),
        (["simulate", "--system", "quadratic", "--mass", "0"], "mass must be"),
        (["simulate", "--system", "quadratic", "--paths", "0"], "paths must be"),
        (["simulate", "--system", "quadratic", "--method", "rk4"], "--method"),
        (["simulate", "--system", "rosenbrock", "--dim", "1"], "dim must be"),
        (["simulate", "--system", "quadratic", "--dt", "fast"], "--dt"),
        (["simulate", "--system", "quadratic", "--out", "/dev/null/x"], "--out"),
        (["simulate", "--system", "quadratic", "--record-every", "0"], "--record-every must"),
        (["simulate", "--system", "quadratic", "--seed", str(2**64)], "--seed must be"),
        (["simulate", "--system", "quadratic", "--seed", "9" * 500], "(500 digits)"),
        (["simulate", "--system", "quadratic", "--steps", str(10**13)], "GiB available"),
        (["simulate", "--system", "quadratic", "--paths", str(10**13)], "--paths"),
        (["simulate", "--system", "double-well", "--dim", str(10**13)], "--dim"),
        (["simulate", "--system", "logistic", "--dim", str(10**7)], "memory"),
        (["simulate", "--system", "quadratic", "--out", "a" * 256], "longer than 255 bytes"),
        (["simulate", "--system", "quadratic", "--out", "/proc/inertia"], "--out: cannot create"),
        (["simulate", "--system", "quadratic", "--out", "/sys/kernel/inertia"], "--out"),
        (["simulate", "--system", "quadratic", "--out", "/proc/self"], "--out: cannot"),
        (["demo", "--seed", "-3"], "--seed"),
        (["demo", "--seed", str(2**64)], "--seed must be an integer in [0, 2**64)"),
        (["demo", "--out", "/dev/null/x"], "--out"),
        (["report", "nowhere.csv"], "LEDGER: no file"),
        (["report", "."], "LEDGER: a folder, not a ledger file"),
        (["report", "b" * 300 + ".csv"], "LEDGER: cannot read"),
        ([], "COMMAND"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    args, fragment, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    if any(a.startswith(("/proc", "/sys")) for a in args) and not Path("/proc/self").is_dir():
        pytest.skip("no /proc or /sys")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("inertia: error:") and fragment in err
    assert len(err) < 400
    assert list(tmp_path.iterdir()) == []
    assert not Path("/proc/inertia").exists() and not Path("/sys/kernel/inertia").exists()


def test_bad_input_from_the_installed_command_has_no_traceback():
    result = run("simulate", "--system", "quadratic", "--dt", "-1")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_simulate_writes_ledger_summary_and_figure(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "simulate",
            "--system",
            "double-well",
            "--dim",
            "2",
            "--gamma",
            "0.5",
            "--sigma",
            "0.2",
            "--steps",
            "300",
            "--paths",
            "3",
            "--seed",
            "1",
            "--record-every",
            "10",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["method"] == "baoab" and summary["paths"] == 3 and summary["steps"] == 300
    assert summary["ledger_closure_error"] < 1e-12
    with (out / "ledger.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 31 * 3 and set(inertia.COLUMNS) <= set(rows[0])
    with Image.open(out / "ledger.png") as image:
        image.verify()
        assert image.size[0] > 300


@pytest.mark.parametrize(
    "system", ["quadratic", "rosenbrock", "double-well", "anharmonic-chain", "logistic"]
)
def test_every_named_system_runs_from_its_standard_start(system, tmp_path, capsys):
    assert (
        main(
            [
                "simulate",
                "--system",
                system,
                "--dim",
                "3",
                "--gamma",
                "0.3",
                "--steps",
                "50",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "ledger closes" in capsys.readouterr().out


def test_blow_up_exits_1_and_keeps_the_ledger_recorded_so_far(tmp_path, capsys):
    code = main(
        [
            "simulate",
            "--system",
            "quadratic",
            "--method",
            "euler",
            "--dt",
            "1.5",
            "--steps",
            "100000",
            "--record-every",
            "50",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "non-finite at step" in err and err.count("\n") == 1
    with (tmp_path / "ledger.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 1 and all(float(r["inertia"]) < float("inf") for r in rows)


@pytest.fixture
def forbidden(monkeypatch):
    """Make any start of work fail the test: the simulation, the demo."""

    def boom(*args, **kwargs):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(SIMULATE, "simulate", boom)
    monkeypatch.setattr(inertia.demo, "run_demo", boom)
    return boom


def test_demo_refuses_a_bad_seed_before_writing_anything(tmp_path, capsys, forbidden):
    assert main(["demo", "--seed", str(2**64), "--out", str(tmp_path / "demo")]) == 2
    assert "--seed" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_sizes_are_checked_against_available_memory_before_any_work(
    tmp_path, capsys, monkeypatch, forbidden
):
    monkeypatch.setattr(inertia.cli, "available_memory", lambda: 2**20)  # 1 MiB left
    monkeypatch.setattr(inertia.systems, "named", forbidden)  # not even the system is built
    args = ["simulate", "--system", "quadratic", "--steps", "9999", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--steps/--record-every/--paths/--dim" in err and "0.000977 GiB available" in err
    assert not (tmp_path / "o").exists()
    need = inertia.cli.simulation_bytes("quadratic", 2, 1000, 1, 1)
    assert 1001 * 400 < need < 2**20 < inertia.cli.simulation_bytes("quadratic", 2, 9999, 1, 1)
    monkeypatch.setattr(inertia.cli, "available_memory", lambda: None)  # unknown: no check
    assert inertia.cli.available_memory() is None


def test_available_memory_is_read_from_the_system():
    free = inertia.cli.available_memory()
    assert free is None or 0 < free < 2**50


def test_the_output_folder_is_created_and_probed_before_the_simulation(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "deep" / "er"
    seen = []
    real = SIMULATE.simulate

    def spy(*args, **kwargs):
        seen.append(out.is_dir() and list(out.iterdir()) == [])  # created, probe removed
        return real(*args, **kwargs)

    monkeypatch.setattr(SIMULATE, "simulate", spy)
    args = ["simulate", "--system", "quadratic", "--steps", "20", "--out", str(out)]
    assert main(args) == 0 and seen == [True]
    assert {p.name for p in out.iterdir()} == {"ledger.csv", "summary.json", "ledger.png"}


def test_bad_input_after_the_folder_was_made_removes_it_again(tmp_path, capsys):
    out = tmp_path / "a" / "b"
    args = ["simulate", "--system", "quadratic", "--dt", "0", "--out", str(out)]
    assert main(args) == 2 and "--dt must be" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_output_file_name_taken_by_a_folder_is_refused_before_work(tmp_path, capsys, forbidden):
    (tmp_path / "ledger.csv").mkdir()
    assert main(["simulate", "--system", "quadratic", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ledger.csv" in err and "is a folder" in err


def test_results_that_cannot_be_written_exit_1_with_one_line(tmp_path, capsys, monkeypatch):
    def full(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(inertia.Trajectory, "to_csv", full)
    args = ["simulate", "--system", "quadratic", "--steps", "20", "--out", str(tmp_path)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write the results" in err and "No space" in err


def test_an_unforeseen_failure_exits_1_with_one_line(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory\nsecond line")

    monkeypatch.setattr(SIMULATE, "simulate", broken)
    args = ["simulate", "--system", "quadratic", "--out", str(tmp_path)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: DefaultCPUAllocator" in err
    monkeypatch.setenv("INERTIA_DEBUG", "1")  # the traceback, for a developer who asks
    with pytest.raises(RuntimeError):
        main(args)


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "--system", "quadratic", "--out", "/proc/inertia"],
        ["simulate", "--system", "quadratic", "--steps", str(10**12)],
        ["simulate", "--system", "quadratic", "--out", "c" * 300],
        ["demo", "--seed", str(2**64)],
        ["report", "d" * 300],
    ],
)
def test_hostile_input_to_the_installed_command_is_one_line(args, tmp_path):
    result = subprocess.run(
        [INERTIA, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


INTS = st.one_of(
    st.integers(-2, 40),
    st.integers(10**13, 10**30),
    st.sampled_from([2**63, 2**64, -(2**64), 10**400]),
).map(str)
VALUES = st.one_of(
    INTS,
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=8),
    st.sampled_from(["quadratic", "logistic", "anharmonic-chain", "verlet", "baoab", "cuda"]),
)
SIZES = {"--dim", "--steps", "--paths", "--record-every", "--seed"}
OUTS = st.sampled_from(["/proc/inertia", "/sys/inertia", "e" * 256, "/dev/null/x", "ok", "x/y"])
SIM_OPTIONS = ["--system", "--gamma", "--sigma", "--mass", "--dt", "--method", "--device", *SIZES]


def cli(argv: list[str]) -> tuple[int, str]:
    with (
        contextlib.redirect_stderr(io.StringIO()) as stderr,
        contextlib.redirect_stdout(io.StringIO()),
    ):
        code = main(argv)
    return code, stderr.getvalue()


def one_line_exit(code: int, err: str) -> None:
    assert code in (0, 1, 2), err
    assert "Traceback" not in err
    if code:
        assert err.startswith("inertia: ") and err.count("\n") == 1, err


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)
@given(
    options=st.lists(st.tuples(st.sampled_from(SIM_OPTIONS), VALUES | INTS), max_size=6),
    out=OUTS,
)
def test_fuzzed_simulate_arguments_exit_0_1_or_2_in_one_line(options, out, tmp_path):
    argv = ["simulate", "--system", "quadratic", "--steps", "20"]
    for name, value in options:
        size = int(value) if name in SIZES and value.lstrip("-").isdigit() else 0
        if 40 < size < 10**13 or (name == "--record-every" and size > 40):
            continue  # valid sizes that would only be slow: huge ones are refused up front
        argv += [name, value]
    argv += ["--out", out if out.startswith("/") else str(tmp_path / out)]
    one_line_exit(*cli(argv))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)
@given(seed=INTS | VALUES, out=OUTS, quick=st.booleans())
def test_fuzzed_demo_arguments_refuse_before_any_work(seed, out, quick, tmp_path):
    ran = []

    def fake(folder, **kwargs):
        ran.append(folder.is_dir())
        return []

    folder = out if out.startswith("/") else str(tmp_path / out)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inertia.demo, "run_demo", fake)
        code, err = cli(["demo", "--seed", seed, "--out", folder, *(["--quick"] * quick)])
    one_line_exit(code, err)
    assert ran == ([True] if code == 0 else [])
