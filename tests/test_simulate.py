"""simulate's contract: arguments checked before any step, records, errors, exports."""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch

import inertia
from inertia import Dynamics, Trajectory, simulate, systems
from inertia.simulate import CHECK_EVERY, SimulationDiverged


@pytest.fixture
def well():
    return Dynamics(systems.DoubleWell(2), gamma=0.2, sigma=0.1)


BAD_CALLS = [
    ({"dt": 0.0}, "dt"),
    ({"dt": -1.0}, "dt"),
    ({"dt": float("nan")}, "dt"),
    ({"steps": 0}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"paths": 0}, "paths"),
    ({"record_every": 0}, "record_every"),
    ({"method": "rk4"}, "method"),
    ({"seed": -1}, "seed"),
    ({"dtype": torch.int64}, "dtype"),
    ({"q0": torch.zeros(3)}, "q0"),
    ({"q0": torch.zeros(5, 2)}, "q0"),
    ({"q0": torch.tensor([float("inf"), 0.0])}, "q0"),
    ({"v0": torch.zeros(3)}, "v0"),
    ({"q0": "origin"}, "q0"),
    ({"seed": 2**64}, "seed"),
    ({"noise_dtype": torch.float16}, "noise_dtype"),
    ({"noise_dtype": "float32"}, "noise_dtype"),
    ({"device": "gpu"}, "device"),
    ({"device": "cuda:99"}, "device"),
    ({"device": "meta"}, "device"),
    ({"distributed": True}, "distributed"),  # no process group is initialised here
    ({"distributed": 1}, "distributed"),
    # issue 18: each of these raised another exception (or failed after work)
    ({"q0": torch.zeros(2, requires_grad=True)}, "q0"),  # RuntimeError at step 1
    ({"v0": torch.zeros(2, requires_grad=True)}, "v0"),
    ({"q0": torch.zeros(2, dtype=torch.complex128)}, "q0"),
    ({"steps": 10**30}, "steps"),  # OverflowError
    ({"record_every": 10**30}, "record_every"),
    ({"paths": 2**63}, "paths"),
    ({"paths": 10**12}, "paths"),  # the allocator's RuntimeError
    ({"seed": 10**30}, "seed"),
    ({"dt": 1e308}, "dt"),  # the times t0 + n·dt overflow
    ({"dt": 1e300, "dtype": torch.float32}, "dt"),  # the kick's τ/m: torch's RuntimeError
    ({"t0": 10**400}, "t0"),
]


@pytest.mark.parametrize(
    ("change", "name"), BAD_CALLS, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_CALLS)]
)
def test_bad_arguments_raise_value_error_naming_them(well, change, name):
    kw = {"q0": torch.zeros(2), "dt": 0.1, "steps": 10, **change}
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        simulate(well, **kw)


def test_not_a_dynamics_is_rejected():
    with pytest.raises(ValueError, match="^dynamics"):
        simulate(systems.DoubleWell(), torch.zeros(1), dt=0.1, steps=1)


def test_arguments_are_checked_before_any_loss_evaluation():
    calls = []

    def loss(theta):
        calls.append(1)
        return (theta**2).sum()

    with pytest.raises(ValueError, match="^steps"):
        simulate(Dynamics(loss), torch.zeros(2), dt=0.1, steps=0)
    assert calls == []


def test_a_start_that_requires_grad_is_refused_before_any_loss_evaluation():
    """Decided in issue 18: refused (ValueError naming q0 and the remedy), not silently
    detached: simulate never differentiates through its steps."""
    calls = []

    def loss(theta):
        calls.append(1)
        return (theta**2).sum()

    q0 = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"^q0 must be a tensor that does not require grad"):
        simulate(Dynamics(loss), q0, dt=0.1, steps=3)
    assert calls == []
    tr = simulate(Dynamics(loss), q0.detach(), dt=0.1, steps=3)
    assert tr.steps == 3


@pytest.mark.parametrize(
    "change", [{"paths": 10**12}, {"steps": 10**15}, {"steps": 10**14, "paths": 1000}]
)
def test_records_and_state_beyond_memory_are_refused_up_front_with_the_bytes_needed(well, change):
    kw = {"q0": torch.zeros(2), "dt": 0.1, "steps": 10, **change}
    with pytest.raises(ValueError, match=r"^paths/steps/record_every: .* needs about [\d,]+ bytes"):
        simulate(well, **kw)


def test_records_step_zero_every_k_and_the_last(well):
    tr = simulate(well, torch.zeros(2), dt=0.1, steps=10, record_every=4, seed=0)
    torch.testing.assert_close(tr.t, torch.tensor([0.0, 0.4, 0.8, 1.0], dtype=torch.float64))
    for name in inertia.COLUMNS:
        assert getattr(tr, name).shape == (4, 1) and getattr(tr, name).dtype == torch.float64
    assert tr.q.shape == tr.v.shape == (1, 2)


def test_per_path_starts_and_auto_method(well):
    q0 = torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.5, 0.5]])
    tr = simulate(well, q0, dt=0.05, steps=20, paths=3, seed=0)
    assert tr.method == "baoab"
    torch.testing.assert_close(tr.potential[0], well.potential.value(q0.double()))
    hamiltonian = Dynamics(systems.DoubleWell(2))
    assert simulate(hamiltonian, q0[0], dt=0.05, steps=2).method == "verlet"
    assert (
        simulate(Dynamics(systems.DoubleWell(2), gamma=1.0), q0[0], dt=0.05, steps=2).method
        == "conformal_verlet"
    )


def test_float32_runs_and_ledger_is_float64(well):
    tr = simulate(well, torch.ones(2), dt=0.01, steps=200, dtype=torch.float32, seed=0)
    assert tr.q.dtype == torch.float32 and tr.inertia.dtype == torch.float64
    assert float(tr.ledger.closure_error().abs().max()) < 1e-5 * float(tr.inertia.abs().max())


def test_float32_books_the_friction_its_own_factor_applies():
    """A float32 state multiplies v by c rounded to float32; D booked with the float64 c is off
    by (c² − c₃₂²)/(1 − c²) = 5.8e-5 of what friction removes (γ = 0.1, conformal Verlet's
    O(h/2) at h = 0.01). Noise-free, that bias is all the closure could hold beyond round-off
    (5.9e-5 of max|I| over 20 000 steps); booked with c₃₂ it closes to 9.4e-7, the float32
    round-off of the ~1/(γh) = 1000 steps that carry the energy (ε₃₂·√1000 = 1.9e-6)."""
    gamma, dt = 0.1, 0.01
    c = math.exp(-gamma * dt / 2)
    c32 = float(torch.tensor(c))
    assert abs(c * c - c32 * c32) / (1 - c * c) > 3e-5  # the bias this test would see
    dyn = Dynamics(systems.DoubleWell(4), gamma=gamma, sigma=0.0)
    kw = {"dt": dt, "steps": 20_000, "dtype": torch.float32, "method": "conformal_verlet"}
    tr = simulate(dyn, torch.ones(4), v0=10 * torch.ones(4), **kw)
    error = float(tr.ledger.closure_error().abs().max()) / float(tr.inertia.abs().max())
    assert error < 3e-6


def test_blow_up_raises_with_step_path_and_the_records_kept():
    dyn = Dynamics(systems.Quadratic(eigenvalues=torch.tensor([1.0, 100.0])))
    q0 = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    with pytest.raises(SimulationDiverged, match=r"step (\d+) .* on path 1") as info:
        simulate(dyn, q0, dt=0.5, steps=10_000, method="euler", paths=2, record_every=7)
    error = info.value
    assert isinstance(error, FloatingPointError)  # what callers caught before
    assert error.path == 1 and f"at step {error.step} " in str(error)
    kept = error.trajectory
    assert isinstance(kept, Trajectory) and kept.paths == 2
    assert 0 < kept.steps < error.step and kept.steps % 7 == 0
    assert f"up to step {kept.steps} " in str(error)
    torch.testing.assert_close(
        kept.t, 0.5 * torch.arange(0, kept.steps + 1, 7.0, dtype=torch.float64)
    )
    assert bool(torch.isfinite(kept.inertia).all())
    assert dyn.potential.value(kept.q)[1] == math.inf  # q, v: the state at the failure
    # explicit Euler grows by (1 + h²λ) = 26 per step on the stiff mode: overflow near step 218
    assert abs(error.step - math.log(1.7e308) / math.log(26)) < 5


def test_records_are_the_integrator_state_column_by_column(well):
    """kinetic and potential at each record are K, L of the recorded state; inertia = K + L."""
    q0 = torch.tensor([[1.0, 0.5], [-0.3, 0.2]])
    for steps in (1, 3):
        tr = simulate(well, q0, dt=0.01, steps=steps, paths=2, record_every=steps, seed=0)
        last = {name: getattr(tr, name)[-1] for name in inertia.COLUMNS}
        torch.testing.assert_close(last["kinetic"], 0.5 * (tr.v**2).sum(1), rtol=1e-15, atol=0)
        torch.testing.assert_close(
            last["potential"], well.potential.value(tr.q), rtol=1e-15, atol=0
        )
        assert torch.equal(last["inertia"], last["kinetic"] + last["potential"])
    assert bool((tr.dissipated[-1] > 0).all()) and not bool((tr.injected[-1] == 0).any())
    # On a flat loss with friction only the O sub-step changes I: all of it is dissipated.
    flat = Dynamics(systems.Quadratic(eigenvalues=torch.zeros(2)), gamma=0.5)
    tr = simulate(flat, torch.zeros(2), torch.tensor([1.0, 2.0]), dt=0.1, steps=3)
    assert float(tr.dissipated[-1, 0]) == pytest.approx(2.5 * (1 - math.exp(-0.3)), rel=1e-14)
    assert float(tr.injected[-1, 0]) == 0.0 and float(tr.residual[-1, 0]) == 0.0


def test_summary_is_plain_numbers(well):
    summary = simulate(well, torch.ones(2), dt=0.01, steps=100, paths=2, seed=0).summary()
    assert summary["method"] == "baoab" and summary["steps"] == 100 and summary["paths"] == 2
    numbers = {k: v for k, v in summary.items() if k != "method"}
    assert all(type(v) in (int, float) and math.isfinite(v) for v in numbers.values())
    assert summary["ledger_closure_error"] < 1e-13


def test_to_csv_round_trips(well, tmp_path):
    tr = simulate(well, torch.ones(2), dt=0.01, steps=30, paths=2, record_every=10, seed=0)
    with tr.to_csv(tmp_path / "ledger.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 2 and list(rows[0]) == ["t", "path", *inertia.COLUMNS]
    last = rows[-1]
    assert float(last["t"]) == pytest.approx(0.3) and last["path"] == "1"
    assert float(last["inertia"]) == float(tr.inertia[-1, 1])


def test_to_dataframe(well):
    pd = pytest.importorskip("pandas")
    frame = simulate(well, torch.ones(2), dt=0.01, steps=10, paths=3, seed=0).ledger.to_dataframe()
    assert isinstance(frame, pd.DataFrame) and frame.shape == (11 * 3, 2 + len(inertia.COLUMNS))


def test_progress_bar_goes_to_stderr(well, capsys):
    simulate(well, torch.ones(2), dt=0.01, steps=50, progress=True, seed=0)
    out = capsys.readouterr()
    assert out.out == "" and "step 50/50" in out.err


def test_time_varying_gamma_is_checked_when_used():
    dyn = Dynamics(systems.DoubleWell(), gamma=lambda t: 1.0 - t)
    with pytest.raises(ValueError, match=r"^gamma\(t\) at t = 2"):
        simulate(dyn, torch.ones(1), dt=0.1, steps=10, t0=2.0)
    with pytest.raises(ValueError, match=r"^gamma\(t\)"):
        simulate(dyn, torch.ones(1), dt=0.1, steps=30)


def test_start_where_the_loss_is_not_finite_fails_before_any_step():
    dyn = Dynamics(lambda th: torch.log(th).sum())
    with pytest.raises(ValueError, match="^q0: .* not finite at path 1"):
        simulate(dyn, torch.tensor([[1.0, 2.0], [-1.0, 1.0]]), dt=0.1, steps=3, paths=2)


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_state_buffers_and_records_live_on_the_device(device, dtype):
    dyn = Dynamics(
        systems.DoubleWell(3),
        gamma=0.5,
        sigma=torch.tensor([0.2, 0.0, 0.4]),
        mass=torch.tensor([1.0, 2.0, 0.5]),
    )
    q0 = torch.tensor([1.2, -0.8, 0.3], device=device)
    tr = simulate(dyn, q0, dt=0.01, steps=300, paths=4, seed=0, dtype=dtype, record_every=7)
    assert (tr.q.device.type, tr.q.dtype) == (tr.v.device.type, tr.v.dtype) == (device, dtype)
    assert tr.t.device.type == device
    for name in inertia.COLUMNS:  # the ledger is float64 on the device, whatever the state
        assert (tr.ledger[name].device.type, tr.ledger[name].dtype) == (device, torch.float64)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    assert float(tr.ledger.closure_error().abs().max()) <= tolerance * float(tr.inertia.abs().max())
    assert tr.mean()["inertia"].stderr.device.type == device
    moved = simulate(
        dyn,
        q0.cpu(),
        dt=0.01,
        steps=300,
        paths=4,
        seed=0,
        dtype=dtype,
        record_every=7,
        device=device,
    )  # an explicit device: the same run as from a start already there
    assert torch.equal(moved.q, tr.q) and torch.equal(moved.inertia, tr.inertia)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_and_cpu_agree_to_round_off_without_noise():
    dyn = Dynamics(systems.DoubleWell(3), gamma=0.3)
    q0 = torch.tensor([[1.4, -0.2, 0.7], [0.1, 1.9, -1.3]], dtype=torch.float64)
    runs = [simulate(dyn, q0, dt=0.01, steps=2000, paths=2, device=d) for d in ("cpu", "cuda")]
    for name in inertia.COLUMNS:
        torch.testing.assert_close(
            runs[1].ledger[name].cpu(), runs[0].ledger[name], rtol=1e-9, atol=1e-12
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_loss_that_cannot_run_on_the_device_is_named_as_the_device_fault():
    weights = torch.ones(2, dtype=torch.float64)  # stays on the CPU
    dyn = Dynamics(lambda theta: (weights * theta**2).sum())
    with pytest.raises(ValueError, match="^device: the loss cannot be evaluated on cuda"):
        simulate(dyn, torch.ones(2), dt=0.1, steps=1, device="cuda")


class _Wall(inertia.Potential):
    """Free flight (L = 0, ∇L = 0) for q₀ ≤ k; beyond, L = +inf (`wall="loss"`), or L = 0 and
    ∇L = +inf (`wall="gradient"`, a kick then sends K to +inf)."""

    def __init__(self, k: float, wall: str) -> None:
        self.k, self.wall = k, wall

    def value_and_grad(self, q):
        beyond = torch.where(q > self.k, math.inf, 0.0).to(q.dtype)
        if self.wall == "loss":
            return beyond[:, 0], torch.zeros_like(q)
        return torch.zeros_like(q[:, 0]), beyond

    def value(self, q):
        return self.value_and_grad(q)[0]


@pytest.mark.parametrize("dim", [1, 16])
@pytest.mark.parametrize("wall", ["loss", "gradient"])
@pytest.mark.parametrize(
    "k", [1, 2, 23, CHECK_EVERY - 1, CHECK_EVERY, CHECK_EVERY + 1, 3 * CHECK_EVERY]
)
def test_blow_up_is_located_at_its_exact_step_and_path_with_the_state_there(k, wall, dim):
    """Verlet at h = 1 from q = 0.5 at speed 1 (path 1) and ½ (path 2): path 1 is past q = k
    first, at step k exactly; checks come every CHECK_EVERY steps, wherever k falls, and
    records every 5 steps (a blow-up of K by the last kick of an unrecorded step included).
    In 16 dimensions the books are kept in blocks of 16 steps: k falls inside one."""
    q0 = torch.full((3, dim), 0.5)
    v0 = torch.zeros(3, dim)
    v0[:, 0] = torch.tensor([0.0, 1.0, 0.5])
    with pytest.raises(SimulationDiverged) as info:
        simulate(
            Dynamics(_Wall(k, wall)), q0, v0, dt=1.0, steps=4 * CHECK_EVERY, paths=3, record_every=5
        )
    error = info.value
    assert (error.step, error.path) == (k, 1)
    kept = error.trajectory  # the records before step k
    assert kept.steps == 5 * ((k - 1) // 5) and len(kept.t) == (k - 1) // 5 + 1
    assert bool(kept.inertia.isfinite().all())
    torch.testing.assert_close(kept.q[:, 0], torch.tensor([0.5, 0.5 + k, 0.5 + k / 2]).double())


def test_the_step_loop_does_not_wait_for_the_device(monkeypatch):
    """Host synchronisations (bool, item, float, int, tolist of a tensor) come once per
    CHECK_EVERY steps, not once per step."""
    calls = []
    for name in ("__bool__", "item", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            calls.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    dyn = Dynamics(systems.Quadratic(eigenvalues=torch.tensor([1.0, 2.0])), gamma=1.0, sigma=0.5)
    simulate(dyn, torch.ones(2), dt=0.01, steps=10, paths=8, seed=0)
    setup = len(calls)
    calls.clear()
    simulate(dyn, torch.ones(2), dt=0.01, steps=10 + 20 * CHECK_EVERY, paths=8, seed=0)
    assert len(calls) - setup <= 20 + 2, len(calls) - setup


def test_mean_and_standard_error_over_paths():
    tr = simulate(
        Dynamics(systems.DoubleWell(2), sigma=0.3),
        torch.ones(2),
        dt=0.01,
        steps=50,
        paths=64,
        seed=1,
        record_every=10,
    )
    for name, (mean, stderr) in tr.mean().items():
        column = tr.ledger[name]
        torch.testing.assert_close(mean, column.mean(1), rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(stderr, column.std(1) / 8.0, rtol=1e-10, atol=1e-15)


def test_the_command_line_names_a_device_that_does_not_exist(capsys, tmp_path):
    from inertia.cli import main

    args = ["simulate", "--system", "quadratic", "--device", "gpu", "--out", str(tmp_path / "x")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.match(r"inertia: error: (--)?device must be", err) and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
