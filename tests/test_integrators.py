"""The integrators against known answers: conservation, exact growth, orders, exact damping,
the ledger identity (docs/theory.md §3), and schemes checked at construction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import inertia
from conftest import exact_quadratic_inertia, fitted_order, random_spd
from inertia import METHODS, SCHEMES, Dynamics, Scheme, simulate, systems
from inertia.integrators import ALIASES

DISTINCT_METHODS = [m for m in METHODS if m not in ALIASES]

CHAIN_Q0 = torch.tensor([0.8, -0.3, 0.5, 0.1], dtype=torch.float64)
CHAIN_V0 = torch.tensor([0.2, 0.4, -0.1, 0.3], dtype=torch.float64)


def chain_dynamics(**kw) -> Dynamics:
    return Dynamics(systems.AnharmonicChain(4, beta=1.0), **kw)


def test_verlet_keeps_energy_bounded_without_secular_drift():
    tr = simulate(
        chain_dynamics(),
        CHAIN_Q0,
        CHAIN_V0,
        dt=0.05,
        steps=100_000,
        method="verlet",
        record_every=10,
    )
    error = ((tr.inertia[:, 0] - tr.inertia[0, 0]) / tr.inertia[0, 0]).abs()
    tenth = len(error) // 10
    first, last = float(error[:tenth].max()), float(error[-tenth:].max())
    assert last <= 1.5 * first, (first, last)
    # backward error analysis: bounded at O(h²) = O(2.5e-3) relative
    assert float(error.max()) < 5e-3


@pytest.mark.parametrize("mass", [1.0, 2.5])
def test_explicit_euler_grows_by_exactly_one_plus_h2_lambda_over_m(mass):
    lam, h = 3.0, 0.1
    dyn = Dynamics(systems.Quadratic(eigenvalues=torch.tensor([lam])), mass=mass)
    tr = simulate(dyn, torch.tensor([1.0]), torch.tensor([0.5]), dt=h, steps=200, method="euler")
    ratios = tr.inertia[1:, 0] / tr.inertia[:-1, 0]
    torch.testing.assert_close(
        ratios, torch.full_like(ratios, 1 + h * h * lam / mass), rtol=1e-13, atol=0
    )


@pytest.mark.parametrize(
    ("method", "order"), [("symplectic_euler", 1), ("verlet", 2), ("forest_ruth", 4)]
)
def test_energy_error_order_by_step_halving(method, order):
    errors = []
    for dt in (0.04, 0.02, 0.01):
        tr = simulate(
            chain_dynamics(), CHAIN_Q0, CHAIN_V0, dt=dt, steps=round(20 / dt), method=method
        )
        errors.append(float((tr.inertia - tr.inertia[0]).abs().max()))
    assert fitted_order(errors) == pytest.approx(order, abs=0.2), errors


@pytest.mark.parametrize(
    ("method", "order"), [("symplectic_euler", 1), ("verlet", 2), ("forest_ruth", 4)]
)
def test_state_error_order_by_step_halving(method, order):
    t_end = 5.0
    reference = simulate(
        chain_dynamics(), CHAIN_Q0, CHAIN_V0, dt=t_end / 8000, steps=8000, method="forest_ruth"
    )
    errors = []
    for steps in (250, 500, 1000):
        tr = simulate(
            chain_dynamics(), CHAIN_Q0, CHAIN_V0, dt=t_end / steps, steps=steps, method=method
        )
        errors.append(float((tr.q - reference.q).abs().max()))
    assert fitted_order(errors) == pytest.approx(order, abs=0.2), errors


@pytest.mark.parametrize("gamma", [0.3, 2 * math.sqrt(0.5), 6.0], ids=["under", "critical", "over"])
def test_conformal_verlet_matches_exact_damped_quadratic_at_second_order(gamma):
    a = random_spd(
        4, seed=1
    )  # eigenvalues 0.5 … 4: γ = 2·sqrt(0.5) is critical for the slowest mode
    mass = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    q0 = torch.tensor([1.0, -0.5, 0.3, 0.8], dtype=torch.float64)
    v0 = torch.tensor([0.1, 0.2, -0.4, 0.0], dtype=torch.float64)
    dyn = Dynamics(systems.Quadratic(a), gamma=gamma, mass=mass)
    errors = []
    for steps in (200, 400, 800):
        tr = simulate(
            dyn,
            q0,
            v0,
            dt=4.0 / steps,
            steps=steps,
            method="conformal_verlet",
            record_every=steps // 8,
        )
        exact = exact_quadratic_inertia(a, q0, v0, gamma, tr.t.numpy(), mass=mass.numpy())
        errors.append(float(np.abs(tr.inertia[:, 0].numpy() - exact).max()))
    assert fitted_order(errors) == pytest.approx(2, abs=0.2), errors
    assert errors[-1] < 1e-3 * float(tr.inertia[0, 0])


def trapezoid(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Cumulative trapezoid rule along axis 0."""
    steps = 0.5 * (y[1:] + y[:-1]) * (t[1:] - t[:-1])[:, None]
    return torch.cat([torch.zeros_like(y[:1]), steps.cumsum(0)])


@pytest.mark.parametrize("gamma", [0.4, lambda t: 3.0 / t], ids=["constant", "nesterov-3/t"])
def test_dissipated_matches_integral_of_friction_power(gamma):
    dyn = chain_dynamics(gamma=gamma)
    gaps = []
    for steps in (500, 1000, 2000):
        tr = simulate(dyn, CHAIN_Q0, CHAIN_V0, dt=5.0 / steps, steps=steps, t0=1.0)
        rate = torch.tensor([dyn.damping(float(t)) for t in tr.t], dtype=torch.float64)
        power = 2.0 * rate[:, None] * tr.kinetic  # γ vᵀMv
        gaps.append(float((tr.dissipated - trapezoid(power, tr.t)).abs().max()))
    assert fitted_order(gaps) == pytest.approx(2, abs=0.2), gaps
    assert gaps[-1] < 1e-4 * float(tr.dissipated[-1, 0])


@pytest.mark.parametrize(
    ("method", "order"),
    [("symplectic_euler", 1), ("conformal_verlet", 2), ("baoab", 2)],
)
def test_residual_shrinks_at_method_order_under_damping(method, order):
    dyn = chain_dynamics(gamma=0.3)
    residuals = []
    for steps in (400, 800, 1600):
        tr = simulate(dyn, CHAIN_Q0, CHAIN_V0, dt=8.0 / steps, steps=steps, method=method)
        residuals.append(float(tr.residual.abs().max()))
    assert fitted_order(residuals) == pytest.approx(order, abs=0.2), residuals


@pytest.mark.parametrize("method", DISTINCT_METHODS)
def test_ledger_identity_closes_to_round_off_over_1e5_steps(method):
    dyn = Dynamics(systems.AnharmonicChain(3, beta=1.0), gamma=0.1, sigma=0.1)
    tr = simulate(
        dyn,
        CHAIN_Q0[:3],
        CHAIN_V0[:3],
        dt=0.01,
        steps=100_000,
        method=method,
        paths=2,
        seed=3,
        record_every=1000,
    )
    scale = float(tr.inertia.abs().max())
    assert float(tr.ledger.closure_error().abs().max()) <= 1e-12 * scale
    assert float(tr.dissipated[-1].min()) > 0 and float(tr.injected[-1].abs().min()) > 0


def test_ledger_identity_with_per_coordinate_mass_and_noise():
    dyn = Dynamics(
        systems.Rosenbrock(3),
        gamma=0.5,
        sigma=torch.tensor([0.1, 0.0, 0.3]),
        mass=torch.tensor([1.0, 2.0, 0.5]),
    )
    for method in DISTINCT_METHODS:
        tr = simulate(dyn, torch.zeros(3), dt=1e-3, steps=2000, method=method, paths=3, seed=0)
        assert float(tr.ledger.closure_error().abs().max()) <= 1e-12 * float(tr.inertia.abs().max())


@pytest.mark.parametrize("noise_dtype", [torch.float32, torch.float64])
def test_ou_substep_is_exact_for_any_step_size(noise_dtype):
    """On a flat loss, one O step of any length gives v ~ N(c v₀, σ²(1 − c²)/(2γ)) exactly,
    with increments drawn in float32 (the default) or float64."""
    gamma, sigma, dt, paths = 0.7, 0.9, 3.0, 40_000
    dyn = Dynamics(systems.Quadratic(eigenvalues=torch.zeros(1)), gamma=gamma, sigma=sigma)
    tr = simulate(
        dyn,
        torch.zeros(1),
        torch.ones(1),
        dt=dt,
        steps=1,
        method="baoab",
        paths=paths,
        seed=11,
        noise_dtype=noise_dtype,
    )
    c = math.exp(-gamma * dt)
    mean, var = c, sigma**2 * (1 - c * c) / (2 * gamma)
    v = tr.v[:, 0]
    assert abs(float(v.mean()) - mean) < 4 * math.sqrt(var / paths)
    assert abs(float(v.var()) - var) < 4 * var * math.sqrt(2 / (paths - 1))


def test_increments_are_drawn_in_the_noise_dtype_and_booked_as_used():
    """From rest on a flat loss one O step sets v = w, the increment: a float32 draw widened
    into the float64 state is a float32 number, a float64 draw is not; either way N = ½ wᵀMw
    to round-off and the ledger closes."""
    mass = torch.tensor([1.0, 2.0, 0.5])
    dyn = Dynamics(systems.Quadratic(eigenvalues=torch.zeros(3)), gamma=0.4, sigma=0.8, mass=mass)
    for noise_dtype, representable in ((torch.float32, True), (torch.float64, False)):
        tr = simulate(
            dyn, torch.zeros(3), dt=0.5, steps=1, paths=500, seed=0, noise_dtype=noise_dtype
        )
        w = tr.v
        assert w.dtype == torch.float64
        assert torch.equal(w.float().double(), w) is representable
        injected = 0.5 * (mass.double() * w * w).sum(1)
        torch.testing.assert_close(tr.injected[-1], injected, rtol=1e-14, atol=0)
        assert float(tr.ledger.closure_error().abs().max()) < 1e-15


def test_injected_energy_is_the_work_of_the_increment_the_step_added():
    """On a flat loss a BAOAB step is one O step, v' = c v + w: the increment is w = v' − c v,
    and the heat it brings is N = ½ Σ m w (w + 2c v) (cross term included), computed here from
    the w recovered; friction D = ½(1 − c²) vᵀMv."""
    mass = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    dyn = Dynamics(systems.Quadratic(eigenvalues=torch.zeros(3)), gamma=0.4, sigma=0.8, mass=mass)
    v0 = torch.tensor([1.5, -0.7, 2.0], dtype=torch.float64)
    tr = simulate(dyn, torch.zeros(3), v0=v0, dt=0.5, steps=1, paths=500, seed=0)
    c = math.exp(-0.4 * 0.5)
    w = tr.v - c * v0
    injected = 0.5 * (mass * w * (w + 2 * c * v0)).sum(1)
    torch.testing.assert_close(tr.injected[-1], injected, rtol=1e-12, atol=1e-14)
    friction = 0.5 * (1 - c * c) * float((mass * v0 * v0).sum())
    torch.testing.assert_close(tr.dissipated[-1], torch.full((500,), friction, dtype=torch.float64))
    assert float(tr.injected[-1].std()) > 0.1  # the draws differ from path to path


@pytest.mark.parametrize("method", ["baoab", "obabo"])
def test_injected_energy_has_the_mean_of_the_noise_heat(method):
    """E[N] = ½ Σᵢ mᵢ sᵢ² an O step of size τ, sᵢ² = σᵢ²(1 − c²)/(2γ), whatever v is (the cross
    term c vᵀMw has mean 0): over 40 steps of 4000 paths on a quadratic, within 4 standard
    errors of the per-path totals (OBABO's two half steps carry τ = h/2 each)."""
    mass, sigma = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.8, 0.3, 1.1])
    gamma, dt, steps, paths = 0.4, 0.1, 40, 4000
    dyn = Dynamics(
        systems.Quadratic(eigenvalues=torch.tensor([0.5, 1.0, 3.0])),
        gamma=gamma,
        sigma=sigma,
        mass=mass,
    )
    tr = simulate(dyn, torch.ones(3), dt=dt, steps=steps, paths=paths, seed=3, method=method)
    per_step = 0.0
    for tau in (dt,) if method == "baoab" else (dt / 2, dt / 2):
        c = math.exp(-gamma * tau)
        per_step += 0.5 * float((mass * sigma**2).sum()) * (1 - c * c) / (2 * gamma)
    injected = tr.injected[-1]
    stderr = float(injected.std()) / math.sqrt(paths)
    assert abs(float(injected.mean()) - steps * per_step) < 4 * stderr


def test_settling_only_at_records_changes_the_books_by_round_off_and_the_state_not_at_all():
    """Between records the change of K by the last kicks is booked with the next step's."""
    dyn = chain_dynamics(gamma=0.3, sigma=0.2)
    kw = {"dt": 0.01, "steps": 1000, "paths": 3, "seed": 4}
    every, sparse = (simulate(dyn, CHAIN_Q0, record_every=k, **kw) for k in (1, 100))
    assert torch.equal(every.q, sparse.q) and torch.equal(every.v, sparse.v)
    for name in inertia.COLUMNS:
        torch.testing.assert_close(
            sparse.ledger[name], every.ledger[name][::100], rtol=1e-12, atol=1e-14
        )


def test_same_seed_gives_identical_trajectories_and_different_seeds_do_not():
    dyn = chain_dynamics(gamma=0.2, sigma=0.3)
    run = lambda seed: simulate(dyn, CHAIN_Q0, dt=0.01, steps=300, paths=3, seed=seed)  # noqa: E731
    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a.q, b.q) and torch.equal(a.inertia, b.inertia)
    assert not torch.equal(a.q, c.q)


def test_paths_get_independent_noise():
    """On a flat loss with γ = 0, v(T) = σW(T): variance σ²T across paths, uncorrelated pairs."""
    paths, sigma, t_end = 4000, 1.3, 2.0
    dyn = Dynamics(systems.Quadratic(eigenvalues=torch.zeros(1)), sigma=sigma)
    tr = simulate(dyn, torch.zeros(1), dt=0.05, steps=40, method="obabo", paths=paths, seed=2)
    v = tr.v[:, 0]
    var = sigma**2 * t_end
    assert abs(float(v.var()) - var) < 4 * var * math.sqrt(2 / (paths - 1))
    corr = float(torch.corrcoef(torch.stack([v[0::2], v[1::2]]))[0, 1])
    assert abs(corr) < 4 / math.sqrt(paths / 2)


def test_obabo_is_conformal_verlet_under_another_name():
    assert ALIASES == {"obabo": "conformal_verlet"} and "obabo" in METHODS
    assert "obabo" not in SCHEMES  # one scheme, one entry
    dyn = chain_dynamics(gamma=0.3, sigma=0.2)
    runs = [
        simulate(dyn, CHAIN_Q0, dt=0.05, steps=50, method=m, paths=2, seed=1)
        for m in ("obabo", "conformal_verlet")
    ]
    assert runs[0].method == "obabo"
    assert torch.equal(runs[0].q, runs[1].q)
    for name in inertia.COLUMNS:
        assert torch.equal(runs[0].ledger[name], runs[1].ledger[name])


def test_every_scheme_is_consistent():
    for scheme in SCHEMES.values():
        for kind in {k for k, _ in scheme.substeps}:
            total = math.fsum(w for k, w in scheme.substeps if k == kind)
            assert total == pytest.approx(1.0, abs=1e-15), (scheme.name, kind)


VERLET = (("B", 0.5), ("A", 1.0), ("B", 0.5))
BAD_SCHEMES = [
    ({"substeps": (("B", 0.5), ("C", 1.0), ("B", 0.5))}, "substeps"),
    ({"substeps": (("B", 0.5), ("a", 1.0), ("B", 0.5))}, "substeps"),
    ({"substeps": (("B", 0.5), ("A", float("nan")), ("B", 0.5))}, "substeps"),
    ({"substeps": (("B", 0.5), ("A", math.inf), ("B", 0.5))}, "substeps"),
    ({"substeps": (("B", 0.5), ("A", "1"), ("B", 0.5))}, "substeps"),
    ({"substeps": (("B", 0.5), ("A", 1.0, 2.0), ("B", 0.5))}, "substeps"),
    ({"substeps": [("B", 0.5), ("A", 1.0), ("B", 0.5)]}, "substeps"),
    ({"substeps": ()}, "substeps"),
    ({"substeps": (("B", 0.5), ("A", 1.0), ("B", 0.4))}, "substeps"),  # B sums to 0.9
    ({"substeps": (("B", 1.0), ("A", 0.5))}, "substeps"),  # A sums to 0.5
    ({"substeps": (("O", 0.5), *VERLET, ("O", 0.6))}, "substeps"),  # O sums to 1.1
    ({"substeps": (("A", 1.0),)}, "substeps"),  # no kick
    ({"substeps": (("B", 1.0), ("O", 1.0))}, "substeps"),  # no drift
    ({"order": 0}, "order"),
    ({"order": 2.0}, "order"),
    ({"hamiltonian": False}, "hamiltonian"),  # no O step: friction would be dropped
    ({"substeps": (("O", 0.5), *VERLET, ("O", 0.5))}, "hamiltonian"),
    ({"name": ""}, "name"),
]


@pytest.mark.parametrize(
    ("change", "name"), BAD_SCHEMES, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_SCHEMES)]
)
def test_bad_schemes_are_refused_naming_the_field(change, name):
    kw = {"name": "mine", "substeps": VERLET, "order": 2, "hamiltonian": True, **change}
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        Scheme(**kw)


def test_a_scheme_whose_weights_do_not_sum_to_one_says_which_kind():
    with pytest.raises(ValueError, match=r"summing to 1 \(here A: 1\.0, B: 0\.9"):
        Scheme("short_kick", (("B", 0.5), ("A", 1.0), ("B", 0.4)), 2, hamiltonian=True)


def test_weights_summing_to_one_up_to_round_off_are_accepted_and_no_more():
    third = 1.0 / 3.0
    kicks = (("B", third), ("A", 0.5), ("B", third), ("A", 0.5), ("B", third))
    assert Scheme("thirds", kicks, 1, hamiltonian=True).substeps == kicks
    with pytest.raises(ValueError, match="^substeps"):
        Scheme("almost", (("B", 1.0 + 1e-9), ("A", 1.0)), 1, hamiltonian=True)
