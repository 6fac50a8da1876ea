"""simulate's path-sharded ensembles under 2-process gloo: each rank runs its share of the P
paths with its own noise stream; the pooled statistics are those of the P paths, match one
process with P paths within Monte-Carlo error and the exact law (docs/theory.md (2.4)) within
4 standard errors of the pooled mean; a fixed world size and seed reproduce bit for bit."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from inertia import COLUMNS, Dynamics, simulate, systems, theory
from inertia.simulate import SimulationDiverged

WORLD, PATHS = 2, 2001  # an odd P: the shares differ by one (1001 and 1000)
LAMBDA, GAMMA, SIGMA = torch.tensor([1.0, 3.0], dtype=torch.float64), 0.5, 0.7
Q0 = torch.tensor([1.5, -1.0], dtype=torch.float64)
RUN = {"dt": 0.02, "steps": 300, "record_every": 30, "paths": PATHS}


def langevin() -> Dynamics:
    return Dynamics(systems.Quadratic(eigenvalues=LAMBDA), gamma=GAMMA, sigma=SIGMA)


def stiff() -> tuple[Dynamics, torch.Tensor]:
    """Explicit Euler at h = 0.5 on λ = 100 grows I by 26 a step: it overflows near step 218,
    on the paths that start off the stiff axis only (the last one, on rank 1)."""
    q0 = torch.zeros(PATHS, 2, dtype=torch.float64)
    q0[-1] = 1.0
    return Dynamics(systems.Quadratic(eigenvalues=torch.tensor([1.0, 100.0]))), q0


def _worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    first = simulate(langevin(), Q0, seed=7, distributed=True, **RUN)
    again = simulate(langevin(), Q0, seed=7, distributed=True, **RUN)
    result: dict[str, object] = {
        "offset": first.path_offset,
        "local": first.local_paths,
        "columns": {name: first.ledger[name] for name in COLUMNS},
        "q": first.q,
        "repeats": all(torch.equal(first.ledger[n], again.ledger[n]) for n in COLUMNS)
        and torch.equal(first.q, again.q),
        "mean": first.mean(),
        "band": first.confidence(0.9)["inertia"],
        "summary": first.summary(),
        "t": first.t,
    }
    # one step from rest on a flat loss: v is this rank's first noise increments, exactly
    flat = Dynamics(systems.Quadratic(eigenvalues=torch.zeros(2)), gamma=GAMMA, sigma=SIGMA)
    result["increments"] = simulate(
        flat, torch.zeros(2), dt=0.1, steps=1, paths=64, seed=7, distributed=True
    ).v
    gathered = first.gather()
    if gathered is not None:
        result["gathered"] = (gathered.inertia, gathered.q, gathered.paths)
    try:
        simulate(langevin(), Q0, dt=0.1, steps=2, paths=1, distributed=True)
    except ValueError as err:
        result["too_few_paths"] = str(err)
    dynamics, q0 = stiff()
    try:
        simulate(dynamics, q0, dt=0.5, steps=1000, method="euler", distributed=True, paths=PATHS)
    except SimulationDiverged as err:
        kept = err.trajectory
        result["diverged"] = (err.step, err.path, kept.steps, len(kept.t), kept.q, str(err))
    torch.save(result, out.format(rank))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("sharded")
    out = str(tmp / "rank{}.pt")
    mp.spawn(_worker, args=(str(tmp / "init"), out), nprocs=WORLD, join=True)
    return [torch.load(out.format(rank), weights_only=False) for rank in range(WORLD)]


def test_ranks_hold_contiguous_shares_with_independent_streams(ranks):
    assert [(r["offset"], r["local"]) for r in ranks] == [(0, 1001), (1001, 1000)]
    assert all(r["repeats"] for r in ranks)  # a fixed world size and seed: bit for bit
    zero, one = (r["columns"]["inertia"][-1, :1000] for r in ranks)
    assert not bool((zero == one).any())  # same start, different noise on every path
    # no increment of one rank's first step appears among the other's (nor a shifted copy)
    assert not bool(torch.isin(ranks[0]["increments"], ranks[1]["increments"]).any())
    assert "paths must be at least the world size 2" in ranks[0]["too_few_paths"]


def test_pooled_statistics_are_those_of_all_paths_on_every_rank(ranks):
    inertia, q, paths = ranks[0]["gathered"]
    assert paths == PATHS and inertia.shape == (len(ranks[0]["t"]), PATHS)
    assert torch.equal(q[1001:], ranks[1]["q"]) and torch.equal(q[:1001], ranks[0]["q"])
    mean, stderr = ranks[0]["mean"]["inertia"]
    torch.testing.assert_close(mean, inertia.mean(1), rtol=1e-13, atol=0)
    torch.testing.assert_close(stderr, inertia.std(1) / math.sqrt(PATHS), rtol=1e-10, atol=0)
    for name in COLUMNS:  # every rank holds the same pooled values
        assert torch.equal(ranks[0]["mean"][name].mean, ranks[1]["mean"][name].mean)
        assert torch.equal(ranks[0]["mean"][name].stderr, ranks[1]["mean"][name].stderr)
    assert all(torch.equal(a, b) for a, b in zip(*(r["band"] for r in ranks), strict=True))
    summary = ranks[0]["summary"]
    assert summary == ranks[1]["summary"] and summary["paths"] == PATHS
    assert summary["inertia_final"] == pytest.approx(float(inertia[-1].mean()), rel=1e-13)
    assert summary["ledger_closure_error"] < 1e-13


def test_sharded_run_matches_one_process_and_the_exact_law_within_4_standard_errors(ranks):
    mean, stderr = ranks[0]["mean"]["inertia"]
    single = simulate(langevin(), Q0, seed=8, **RUN).mean()["inertia"]
    z = (mean - single.mean) / (stderr.square() + single.stderr.square()).sqrt()
    assert float(z[1:].abs().max()) < 4, z
    # the pooled standard error is that of P paths: the ratio of two independent estimates of
    # a standard deviation has relative SE sqrt(2(κ − 1)/(4P)), κ ≤ 15 (χ²₁) for I here
    ratio = stderr[1:] / single.stderr[1:]
    assert float((ratio - 1).abs().max()) < 4 * math.sqrt(2 * 14 / (4 * PATHS)), ratio
    exact = theory.expected_inertia(torch.diag(LAMBDA), Q0, [0.0, 0.0], GAMMA, SIGMA, ranks[0]["t"])
    z = (mean - exact) / stderr
    assert float(z[1:].abs().max()) < 4, z


def test_a_blow_up_on_one_rank_is_raised_on_every_rank_with_the_global_step_and_path(ranks):
    (step, path, kept, records, q, message), other = (r["diverged"] for r in ranks)
    assert other[:4] == (step, path, kept, records) and other[5] == message
    assert path == PATHS - 1 and f"at step {step} " in message and f"path {path};" in message
    assert abs(step - math.log(1.7e308) / math.log(26)) < 5 and 0 < kept < step
    assert records == kept + 1  # every step recorded up to the last one before the failure
    potential = stiff()[0].potential  # (q, v) are the state at the failure, on every rank
    assert bool(potential.value(q).isfinite().all())  # rank 0: its paths rest at the minimum
    assert float(potential.value(other[4])[-1]) == math.inf


def test_inertia_simulate_under_torchrun(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    args = ["simulate", "--system", "quadratic", "--dim", "2", "--gamma", "1", "--sigma", "0.5"]
    args += ["--paths", "5", "--steps", "40", "--record-every", "10", "--seed", "3", "--json"]
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "inertia.cli"]
    done = subprocess.run(
        [*command, *args, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # printed once, by rank 0
    assert summary["paths"] == 5 and summary["ledger_closure_error"] < 1e-13
    rows = (tmp_path / "run" / "ledger.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 * 5  # header, then 5 records × all 5 paths
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
