"""Every script in examples/ runs in quick mode and gives the result it prints (issue 19).

Each example's `main(argv)` runs in this process (loaded from its file: examples/ is not a
package), except the distributed one, which `torch.distributed.run` launches as two processes
(gloo, on the CPU). Every example must be tested here and linked from the site's examples
page.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(autouse=True)
def _global_random_state():
    """Lightning's and transformers' seeding functions set the global generators: give them
    back to the other tests of this worker."""
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()  # noqa: NPY002
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])  # noqa: NPY002
    torch.set_rng_state(states[2])


def load(name: str) -> ModuleType:
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested_here_and_linked_from_the_site():
    tested = set(re.findall(r'load\("(\w+)"\)', Path(__file__).read_text()))
    tested |= set(re.findall(r'"examples/(\w+)\.py"', Path(__file__).read_text()))
    page = (ROOT / "docs" / "examples.md").read_text()
    for path in sorted(EXAMPLES.glob("*.py")):
        assert path.stem in tested, f"{path.name} has no test in tests/test_examples.py"
        assert f"examples/{path.name}" in page, f"{path.name} is not on docs/examples.md"
        assert "--quick" in path.read_text(), f"{path.name} has no --quick"


def test_simulate_ledger(tmp_path):
    result = load("simulate_ledger").main(["--quick", "--out", str(tmp_path)])
    assert result["closure_error"] < 1e-12  # the ledger closes to round-off
    assert result["frictionless_drift"] < 1e-3  # Verlet's bounded energy error
    excess = abs(result["kinetic"] - result["kinetic_floor"])
    assert excess < 4 * result["kinetic_stderr"] + 0.02 * result["kinetic_floor"]  # E[K] = dT/2
    assert {"ledger.csv", "ledger.png", "summary.json"} <= {p.name for p in tmp_path.iterdir()}


def test_monitor_training_and_its_report(tmp_path):
    result = load("monitor_training").main(["--quick", "--out", str(tmp_path)])
    assert result["rows"] == 3 * 512 // 32
    assert result["last_loss"] < result["first_loss"]
    assert result["report_status"] == 0
    assert (tmp_path / "ledger.csv").is_file() and (tmp_path / "report" / "report.html").is_file()
    books = -result["dissipated"] + result["injected"] + result["residual"]
    assert math.isclose(result["inertia_change"], books, rel_tol=1e-9, abs_tol=1e-12)


def test_lightning(tmp_path):
    pytest.importorskip("lightning")
    result = load("lightning_monitor").main(["--quick", "--out", str(tmp_path)])
    assert result["rows"] == 2 * 256 // (16 * 2)  # epochs × optimizer steps per epoch
    assert result["logged_columns"] >= 10  # inertia/<column> reached the CSVLogger
    assert (tmp_path / "ledger.csv").is_file()


def test_huggingface_trainer(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    result = load("huggingface_trainer").main(["--quick", "--out", str(tmp_path)])
    assert result["rows"] == 2 * 256 // (16 * 2)
    assert result["logged_rows"] >= 1  # inertia/<column> reached the Trainer's logs
    assert result["last_loss"] < result["first_loss"]


def test_noise_floor_is_predicted():
    result = load("noise_floor").main(["--quick"])
    assert result["predicted"] == pytest.approx(result["measured_full_batch"], rel=0.2)
    assert result["predicted_kinetic"] == pytest.approx(result["measured_kinetic"], rel=0.2)


def test_stability_alarm_comes_before_the_blow_up():
    results = load("stability_alarm").main(["--quick"])
    stable, unstable = results["0.8"], results["1.02"]
    assert stable["alarm"] is None and stable["tenfold"] is None
    assert unstable["alarm"] is not None
    assert unstable["tenfold"] is None or unstable["alarm"] < unstable["tenfold"]


@pytest.mark.filterwarnings("ignore:inertia. non-finite loss:RuntimeWarning")  # SGD's blow-up
def test_inertia_sgd_converges_where_sgd_diverges():
    result = load("inertia_sgd").main(["--quick"])
    assert not result["SGD"] < 1.0  # diverged (inf or NaN) at 3× the threshold
    assert result["InertiaSGD"] < 1e-3 and result["InertiaSGD_brakes"] > 0


def test_choose_integrator_orders():
    orders = load("choose_integrator").main(["--quick"])
    for method, order in {"symplectic_euler": 1, "verlet": 2, "forest_ruth": 4}.items():
        assert orders[method] == pytest.approx(order, abs=0.15), method


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_distributed_two_processes(tmp_path, mode):
    """`torchrun --nproc_per_node 2 examples/ddp_monitor.py --quick`, as the docs say."""
    if mode == "fsdp":
        fsdp = pytest.importorskip("torch.distributed.fsdp")
        if not hasattr(fsdp, "fully_shard"):
            pytest.skip("this torch has no FSDP2 fully_shard")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port of its own: tests in parallel do not collide
        "--nproc_per_node",
        "2",
        "examples/ddp_monitor.py",
        "--quick",
        "--out",
        str(tmp_path),
        *(["--fsdp"] if mode == "fsdp" else []),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world"] == 2
    assert summary["rows"] == 2 * 512 // (2 * 16)  # epochs × the global batches of an epoch
    assert summary["last_loss"] < summary["first_loss"]
    assert (tmp_path / "ledger.csv").is_file()
    if mode == "ddp":
        assert math.isfinite(summary["noise_scale"])  # the ranks' two-batch estimate
