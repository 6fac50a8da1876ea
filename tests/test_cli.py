"""The `inertia` command: exit codes, one-line errors, and `inertia simulate` end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import inertia
from inertia.cli import main

INERTIA = str(Path(sys.executable).parent / "inertia")


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
        (["demo", "--seed", "-3"], "--seed"),
        (["demo", "--out", "/dev/null/x"], "--out"),
        ([], "COMMAND"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    args, fragment, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("inertia: error:") and fragment in err
    assert list(tmp_path.iterdir()) == []


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
