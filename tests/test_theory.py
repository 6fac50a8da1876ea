"""The laws of inertia against independent references (scipy) and Monte Carlo (docs/theory.md
§2, and the heavy-ball laws of §4)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm, solve_discrete_lyapunov

from conftest import exact_quadratic_inertia, random_spd
from inertia import Dynamics, simulate, systems, theory

# eigenvalues 0.25 … 4 (M = 1): γ = 1 is exactly critical for the slowest mode
HESSIAN = random_spd(3, seed=5, low=0.25, high=4.0)
Q0 = torch.tensor([1.0, -0.7, 0.4], dtype=torch.float64)
V0 = torch.tensor([0.3, 0.5, -0.2], dtype=torch.float64)
MASS = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
TIMES = np.linspace(0.0, 12.0, 25)
REGIMES = {"under": 0.2, "critical": 1.0, "over": 9.0}


def ode_inertia(a, q0, v0, gamma, times, mass):
    """I(t) by DOP853 on θ'' = −γθ' − M⁻¹Aθ, rtol 1e-12."""
    a, m = np.asarray(a), np.asarray(mass)
    d = len(m)

    def rhs(_, z):
        return np.concatenate([z[d:], -gamma * z[d:] - (a @ z[:d]) / m])

    sol = solve_ivp(
        rhs,
        (0, times[-1]),
        np.concatenate([q0, v0]),
        method="DOP853",
        t_eval=times,
        rtol=1e-12,
        atol=1e-14,
    )
    q, v = sol.y[:d], sol.y[d:]
    return 0.5 * np.einsum("it,ij,jt->t", q, a, q) + 0.5 * (m[:, None] * v * v).sum(0)


def lyapunov_expected_inertia(a, q0, v0, gamma, sigma, times, mass):
    """E[I](t) from the full second moment S = E[zzᵀ]: S' = FS + SFᵀ + GGᵀ, vectorised with
    Kronecker products and solved by scipy's expm (all its eigenvalues have real part ≤ 0, so
    it stays exact where an explicit ODE solver loses digits to stiffness)."""
    a, m, s = np.asarray(a), np.asarray(mass), np.broadcast_to(np.asarray(sigma), (len(mass),))
    d = len(m)
    n = 2 * d
    f = np.block([[np.zeros((d, d)), np.eye(d)], [-a / m[:, None], -gamma * np.eye(d)]])
    gg = np.zeros((n, n))
    gg[d:, d:] = np.diag(s**2)
    qmat = np.block([[a, np.zeros((d, d))], [np.zeros((d, d)), np.diag(m)]])
    b = np.zeros((n * n + 1, n * n + 1))
    b[: n * n, : n * n] = np.kron(np.eye(n), f) + np.kron(f, np.eye(n))
    b[: n * n, -1] = gg.ravel()
    z0 = np.concatenate([q0, v0])
    y0 = np.concatenate([np.outer(z0, z0).ravel(), [1.0]])
    return np.array([0.5 * np.sum(qmat * (expm(b * t) @ y0)[: n * n].reshape(n, n)) for t in times])


@pytest.mark.parametrize("gamma", REGIMES.values(), ids=REGIMES.keys())
def test_quadratic_inertia_is_exact(gamma):
    ours = theory.quadratic_inertia(HESSIAN, Q0, V0, gamma, TIMES, mass=MASS).numpy()
    by_expm = exact_quadratic_inertia(HESSIAN, Q0, V0, gamma, TIMES, mass=MASS.numpy())
    by_ode = ode_inertia(HESSIAN.numpy(), Q0.numpy(), V0.numpy(), gamma, TIMES, MASS.numpy())
    np.testing.assert_allclose(ours, by_expm, rtol=1e-9, atol=0)
    np.testing.assert_allclose(ours, by_ode, rtol=1e-9, atol=0)


def test_quadratic_inertia_at_exact_critical_damping_has_no_singularity():
    lam = torch.tensor([1.0], dtype=torch.float64)
    t = np.linspace(0, 10, 11)
    ours = theory.quadratic_inertia(torch.diag(lam), [1.0], [0.0], 2.0, t).numpy()
    # critical mode x = (1 + t) e^{−t}, v = −t e^{−t}: I = ½((1 + t)² + t²) e^{−2t}
    np.testing.assert_allclose(ours, 0.5 * ((1 + t) ** 2 + t**2) * np.exp(-2 * t), rtol=1e-12)


def test_center_and_minimum_shift_the_quadratic():
    c = torch.tensor([0.5, 0.5, -1.0], dtype=torch.float64)
    shifted = theory.quadratic_inertia(HESSIAN, Q0 + c, V0, 0.3, TIMES, center=c, minimum=2.0)
    plain = theory.quadratic_inertia(HESSIAN, Q0, V0, 0.3, TIMES)
    torch.testing.assert_close(shifted, plain + 2.0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, *REGIMES.values()], ids=["frictionless", *REGIMES.keys()])
def test_expected_inertia_is_exact(gamma):
    sigma = torch.tensor([0.4, 0.1, 0.7], dtype=torch.float64)
    ours = theory.expected_inertia(HESSIAN, Q0, V0, gamma, sigma, TIMES, mass=MASS).numpy()
    ref = lyapunov_expected_inertia(
        HESSIAN.numpy(), Q0.numpy(), V0.numpy(), gamma, sigma.numpy(), TIMES, MASS.numpy()
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=0)


def test_expected_inertia_reduces_to_the_deterministic_law_and_to_heating():
    det = theory.quadratic_inertia(HESSIAN, Q0, V0, 0.5, TIMES)
    torch.testing.assert_close(
        theory.expected_inertia(HESSIAN, Q0, V0, 0.5, 0.0, TIMES), det, rtol=1e-12, atol=1e-14
    )
    i0 = float(theory.quadratic_inertia(HESSIAN, Q0, V0, 0.0, [0.0], mass=MASS)[0])
    torch.testing.assert_close(
        theory.expected_inertia(HESSIAN, Q0, V0, 0.0, 0.3, TIMES, mass=MASS),
        theory.heating(i0, 0.3, TIMES, dim=3, mass=MASS),
        rtol=1e-10,
        atol=0,
    )


def monte_carlo(dynamics, q0, v0, *, dt, steps, paths, seed, record_every):
    tr = simulate(
        dynamics,
        q0,
        v0,
        dt=dt,
        steps=steps,
        method="baoab",
        paths=paths,
        seed=seed,
        record_every=record_every,
    )
    return tr, tr.mean()["inertia"]


def test_monte_carlo_agrees_with_expected_inertia_within_4_standard_errors():
    gamma, sigma = 0.8, 0.6
    dyn = Dynamics(systems.Quadratic(HESSIAN), gamma=gamma, sigma=sigma)
    tr, est = monte_carlo(dyn, Q0, V0, dt=0.01, steps=600, paths=4000, seed=1, record_every=100)
    exact = theory.expected_inertia(HESSIAN, Q0, V0, gamma, sigma, tr.t)
    z = ((est.mean - exact) / est.stderr)[1:]
    assert float(z.abs().max()) < 4, z


def test_heating_at_zero_friction_is_exact_for_a_non_quadratic_loss():
    sigma = 0.5
    dyn = Dynamics(systems.DoubleWell(2, barrier=1.0), sigma=sigma)
    q0 = torch.tensor([0.3, -1.2], dtype=torch.float64)
    tr, est = monte_carlo(dyn, q0, None, dt=0.005, steps=1000, paths=4000, seed=2, record_every=200)
    law = theory.heating(float(tr.inertia[0, 0]), sigma, tr.t, dim=2)
    z = ((est.mean - law) / est.stderr)[1:]
    assert float(z.abs().max()) < 4, z
    assert float(law[-1] - law[0]) == pytest.approx(0.5 * 2 * sigma**2 * 5.0)


def test_stationary_kinetic_energy_is_half_d_t_for_a_non_quadratic_loss():
    gamma, sigma, paths = 1.0, 0.8, 4000
    dyn = Dynamics(systems.DoubleWell(2, barrier=0.5), gamma=gamma, sigma=sigma)
    tr = simulate(
        dyn, torch.tensor([1.0, -1.0]), dt=0.01, steps=3000, paths=paths, seed=3, record_every=3000
    )
    k = tr.kinetic[-1]
    expected = 2 * theory.temperature(gamma, sigma) / 2
    # K ~ (T/2) χ²_d per path: standard error T sqrt(d/2) / sqrt(paths)
    assert abs(float(k.mean()) - expected) < 4 * float(k.std()) / math.sqrt(paths)


def test_stationary_inertia_of_a_quadratic_is_d_t():
    gamma, sigma = 2.0, 0.5
    late = theory.expected_inertia(HESSIAN, Q0, V0, gamma, sigma, [200.0], minimum=1.0)
    assert float(late[0]) == pytest.approx(
        theory.stationary_inertia(3, gamma, sigma, minimum=1.0), rel=1e-12
    )
    assert theory.temperature(gamma, sigma) == pytest.approx(sigma**2 / (2 * gamma))


def test_envelope_is_within_its_stated_bound_for_light_damping():
    lam, gamma = 1.0, 0.05
    t = np.linspace(0, 40, 4001)
    exact = theory.quadratic_inertia([[lam]], [1.0], [0.0], gamma, t)
    rel = (exact / theory.envelope(float(exact[0]), gamma, t) - 1).abs()
    r = (gamma / 2) / math.sqrt(lam - gamma**2 / 4)
    bound = r * math.sqrt(1 + r * r) + r * r
    assert float(rel.max()) == pytest.approx(bound, rel=1e-3)
    assert float(rel.max()) < 0.03  # "a few %"


def test_envelope_is_far_off_for_an_overdamped_mode_where_decay_rate_is_right():
    lam, gamma = 1.0, 10.0
    t = np.array([4.0, 6.0])
    exact = theory.quadratic_inertia([[lam]], [1.0], [0.0], gamma, t)
    naive = theory.envelope(
        float(theory.quadratic_inertia([[lam]], [1.0], [0.0], gamma, [0.0])[0]), gamma, t
    )
    assert float(exact[0] / naive[0]) > 1e15  # the envelope decays e^{−γt}, the mode at 0.2
    slope = math.log(float(exact[1] / exact[0])) / 2.0
    assert -slope == pytest.approx(theory.decay_rate([lam], gamma), rel=1e-3)


@pytest.mark.parametrize("gamma", [0.3, 0.8, 2.0, 6.0])
def test_decay_rate_matches_the_measured_slope(gamma):
    lam = torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64)  # slowest mode critical at γ = 1
    t = np.linspace(30, 60, 301)
    exact = theory.quadratic_inertia(torch.diag(lam), [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], gamma, t)
    slope = -np.polyfit(t, np.log(exact.numpy()), 1)[0]
    # underdamped: the fit averages the staircase over ~10 periods; overdamped: clean exponential
    assert slope == pytest.approx(theory.decay_rate(lam, gamma), rel=0.02)


def test_decay_rate_at_exact_critical_damping_carries_a_t_squared_prefactor():
    """At γ = 2 sqrt(λ) the mode energy is ∝ t² e^{−γt}: the rate is γ once t² is divided out."""
    lam, gamma = torch.tensor([1.0], dtype=torch.float64), 2.0
    t = np.linspace(30, 60, 301)
    exact = theory.quadratic_inertia(torch.diag(lam), [1.0], [0.0], gamma, t).numpy()
    slope = -np.polyfit(t, np.log(exact / t**2), 1)[0]
    assert slope == pytest.approx(theory.decay_rate(lam, gamma), rel=2e-3)


def test_critical_damping_maximises_the_slowest_decay_rate():
    lam = torch.tensor([0.25, 1.0, 4.0])
    best = theory.critical_damping(lam)
    assert best == pytest.approx(1.0)
    grid = np.linspace(0.1, 5, 491)
    rates = [theory.decay_rate(lam, g) for g in grid]
    assert grid[int(np.argmax(rates))] == pytest.approx(best, abs=0.01)
    assert theory.decay_rate(lam, best) == pytest.approx(best)


def test_relaxation_matches_exact_start_and_floor_for_light_damping():
    gamma, sigma = 0.1, 0.3
    lam = torch.tensor([1.0, 1.0])
    i0 = float(theory.quadratic_inertia(torch.diag(lam), [1.0, 0.0], [0.0, 0.0], 0.0, [0.0])[0])
    t = [0.0, 300.0]
    approx = theory.relaxation(i0, gamma, sigma, t, dim=2)
    exact = theory.expected_inertia(torch.diag(lam), [1.0, 0.0], [0.0, 0.0], gamma, sigma, t)
    torch.testing.assert_close(approx, exact, rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    ("gamma", "t0"),
    [(0.0, 0.0), (0.7, 0.0), (lambda t: 3.0 / t, 1.0)],
    ids=["frictionless", "damped", "nesterov"],
)
def test_balance_residual_vanishes_at_second_order_for_any_loss(gamma, t0):
    """Integrator and trapezoid errors are both O(h²): halving dt divides the residual by 4."""
    dyn = Dynamics(systems.Rosenbrock(2), gamma=gamma)
    gaps = []
    for steps in (4000, 8000):
        tr = simulate(
            dyn,
            torch.tensor([-1.0, 1.5]),
            dt=4.0 / steps,
            steps=steps,
            t0=t0,
            method="conformal_verlet",
        )
        gaps.append(float(theory.balance_residual(tr, dyn).abs().max()))
    assert gaps[0] / gaps[1] == pytest.approx(4.0, rel=0.1), gaps


def test_balance_residual_is_zero_in_mean_under_noise():
    dyn = Dynamics(systems.DoubleWell(2), gamma=0.5, sigma=0.4)
    tr = simulate(dyn, torch.tensor([1.2, -0.3]), dt=0.005, steps=1000, paths=2000, seed=4)
    res = theory.balance_residual(tr, dyn)[-1]
    assert abs(float(res.mean())) < 4 * float(res.std()) / math.sqrt(2000)
    assert float(res.std()) > 0.01  # per path it is the martingale ∫vᵀMσ dW, not zero


def test_ensemble_mean_and_confidence_band():
    dyn = Dynamics(systems.DoubleWell(1), gamma=0.5, sigma=0.4)
    tr = simulate(dyn, torch.ones(1), dt=0.01, steps=50, paths=500, seed=0, record_every=10)
    est = tr.mean()["kinetic"]
    torch.testing.assert_close(est.mean, tr.kinetic.mean(1))
    torch.testing.assert_close(est.stderr, tr.kinetic.std(1) / math.sqrt(500))
    low, high = tr.confidence(0.95)["kinetic"]
    torch.testing.assert_close(high - est.mean, 1.959963984540054 * est.stderr)
    torch.testing.assert_close(est.mean - low, 1.959963984540054 * est.stderr)
    with pytest.raises(ValueError, match="^level"):
        tr.confidence(1.5)
    with pytest.raises(ValueError, match="paths ≥ 2"):
        simulate(dyn, torch.ones(1), dt=0.01, steps=5).mean()


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (
            lambda: theory.quadratic_inertia([[1.0, 2.0], [0.0, 1.0]], [1, 0], [0, 0], 0.1, [0.0]),
            "hessian",
        ),
        (lambda: theory.quadratic_inertia([[1.0]], [1.0, 2.0], [0.0], 0.1, [0.0]), "q0"),
        (lambda: theory.quadratic_inertia([[1.0]], [1.0], [0.0], -0.1, [0.0]), "gamma"),
        (lambda: theory.expected_inertia([[1.0]], [1.0], [0.0], 0.1, -1.0, [0.0]), "sigma"),
        (lambda: theory.temperature(0.0, 1.0), "gamma"),
        (lambda: theory.heating(1.0, 0.1, [[0.0, 1.0]], dim=1), "t"),
        (lambda: theory.decay_rate([-1.0], 1.0), "eigenvalues"),
        (lambda: theory.envelope(1.0, 0.1, [float("nan")]), "t"),
    ],
)
def test_bad_arguments_name_themselves(call, name):
    with pytest.raises(ValueError, match=rf"^{name}"):
        call()


def _second_moment_radius(x: float, v: float, mu: float) -> float:
    """Spectral radius of the map (E θ_k², E θ_kθ_{k−1}, E θ_{k−1}²) of the heavy ball with
    iid curvature: a_k = 1 + μ − h²λ_k, mean ā = 1 + μ − x, variance v."""
    a = 1 + mu - x
    m = np.array([[a * a + v, -2 * mu * a, mu * mu], [a, -mu, 0.0], [1.0, 0.0, 0.0]])
    return float(max(abs(np.linalg.eigvals(m))))


@pytest.mark.parametrize("mu", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("variance", [0.0, 0.1, 1.0])
def test_heavy_ball_margin_is_the_mean_square_stability_boundary(mu, variance):
    """At margin 1 the second-moment recursion sits on its stability boundary: a learning
    rate 1% lower is stable, 1% higher is not (independent numerical eigenvalues)."""
    x = 1.7
    c = 1.0 / theory.heavy_ball_margin(x, mu, variance=variance)  # lr factor to margin 1
    assert _second_moment_radius(c * x, c * c * variance, mu) == pytest.approx(1.0, abs=1e-9)
    assert _second_moment_radius(0.99 * c * x, (0.99 * c) ** 2 * variance, mu) < 1
    assert _second_moment_radius(1.01 * c * x, (1.01 * c) ** 2 * variance, mu) > 1
    if variance == 0:  # the deterministic threshold h²λ = 2(1 + μ)
        assert c * x == pytest.approx(2 * (1 + mu), rel=1e-12)


def test_heavy_ball_margin_rejects_bad_input():
    with pytest.raises(ValueError, match="momentum"):
        theory.heavy_ball_margin(1.0, 1.0)
    with pytest.raises(ValueError, match="curvature"):
        theory.heavy_ball_margin(0.0, 0.5)


@pytest.mark.parametrize(("h", "mu"), [(0.1, 0.9), (0.3, 0.0), (0.05, 0.95), (0.6, 0.5)])
def test_heavy_ball_noise_floor_is_the_small_margin_limit_of_the_exact_stationary_moments(h, mu):
    """docs/theory.md (4.11)–(4.12): the heavy ball θ_{k+1} = θ_k + μ(θ_k − θ_{k−1}) − h²g_k,
    g_k = Aθ_k + ξ_k with Cov ξ = C/B, on a non-diagonal quadratic with correlated noise. Its
    exact stationary E[K] (K_k = ½‖θ_k − θ_{k−1}‖²/h²) and E[L − L*], by scipy's discrete
    Lyapunov solver, are the floor of each eigenmode divided by 1 − mᵢ, mᵢ = h²λᵢ/(2(1 + μ))."""
    a = random_spd(3, seed=11, low=0.5, high=3.0).numpy()
    root = np.array([[1.0, 0.0, 0.0], [0.4, 0.8, 0.0], [-0.3, 0.2, 0.5]])
    noise = root @ root.T  # C/B, correlated across coordinates
    d = len(a)
    step = np.block(
        [[(1 + mu) * np.eye(d) - h * h * a, -mu * np.eye(d)], [np.eye(d), np.zeros((d, d))]]
    )
    drive = np.zeros((2 * d, 2 * d))
    drive[:d, :d] = h**4 * noise
    s = solve_discrete_lyapunov(step, drive)  # stationary Cov of (θ_k, θ_{k−1}), θ* = 0
    lag = s[:d, :d] - s[:d, d:]
    kinetic = float(np.trace(lag + lag.T)) / (2 * h * h)
    excess = 0.5 * float(np.sum(a * s[:d, :d]))
    lam, basis = np.linalg.eigh(a)
    per_mode = torch.tensor(np.einsum("ji,jk,ki->i", basis, noise, basis))  # eᵢᵀ(C/B)eᵢ
    margin = torch.tensor(h * h * lam / (2 * (1 + mu)))
    floor_k, floor_l = theory.heavy_ball_noise_floor(h, per_mode, mu)
    assert float((floor_k / (1 - margin)).sum()) == pytest.approx(kinetic, rel=1e-10)
    assert float((floor_l / (1 - margin)).sum()) == pytest.approx(excess, rel=1e-10)
    # (4.11) with tr(C)/B: the small-margin limit, low by at most the largest 1/(1 − mᵢ)
    total_k, total_l = theory.heavy_ball_noise_floor(h, float(np.trace(noise)), mu)
    for exact, floor in [(kinetic, total_k), (excess, total_l)]:
        assert 1.0 < exact / float(floor) <= 1.0 / (1.0 - float(margin.max())) + 1e-12
    assert kinetic / excess == pytest.approx(2 / (1 + mu), rel=1e-10)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (
            lambda: theory.expected_inertia(HESSIAN, Q0, V0, 0.5, 0.1, [1.0], mass=[1.0, 2.0]),
            "mass",
        ),
        (lambda: theory.expected_inertia(HESSIAN, Q0, V0, 0.5, [0.1, 0.2], [1.0]), "sigma"),
        (lambda: theory.quadratic_inertia(HESSIAN, Q0, V0, 0.5, [1.0], mass=[1.0] * 4), "mass"),
        (lambda: theory.heating(1.0, 0.1, [1.0], dim=2, mass=[1.0, 2.0, 3.0]), "mass"),
        (lambda: theory.heating(1.0, [0.1], [1.0], dim=2), "sigma"),
        (lambda: theory.decay_rate([1.0, 2.0], 1.0, mass=[1.0, 2.0, 3.0]), "mass"),
        (lambda: theory.critical_damping([1.0, 2.0], mass=[1.0, 2.0, 3.0]), "mass"),
        (lambda: theory.stationary_inertia(10**400, 1.0, 1.0), "dim"),
        (lambda: theory.heating(1.0, 0.1, [1.0], dim=2**62), "dim"),
        (lambda: theory.temperature(1.0, 10**400), "sigma"),
        (lambda: theory.heavy_ball_noise_floor("x", 1.0, 0.5), "h"),
        (lambda: theory.heavy_ball_noise_floor(0.1, -1.0, 0.5), "noise_trace"),
        (lambda: theory.heavy_ball_noise_floor(0.1, 1.0, 1.0), "momentum"),
        (lambda: theory.heavy_ball_noise_floor(0.1, [1.0, 2.0], [0.1, 0.2, 0.3]), "h, noise_trace"),
        (lambda: theory.balance_residual("ledger", Dynamics(systems.DoubleWell(1))), "trajectory"),
    ],
)
def test_arguments_of_the_wrong_length_or_size_name_themselves(call, name):
    """Issue 18: a mass or sigma of the wrong length raised RuntimeError (expand), a huge
    integer OverflowError; each is now a ValueError naming the argument."""
    with pytest.raises(ValueError, match=rf"^{name}"):
        call()


def test_balance_residual_refuses_dynamics_of_another_dimension():
    well = Dynamics(systems.DoubleWell(2), gamma=0.5)
    tr = simulate(well, torch.ones(2), dt=0.1, steps=4)
    with pytest.raises(ValueError, match="^dynamics"):
        theory.balance_residual(tr, Dynamics(systems.DoubleWell(3), gamma=0.5))


@pytest.mark.parametrize(
    ("call", "law", "shown"),
    [
        (lambda: theory.temperature(1e-320, 1), "temperature", "gamma=1e-320"),
        (lambda: theory.temperature(1.0, 1e200), "temperature", "sigma=1e+200"),
        (lambda: theory.stationary_inertia(2, 1e-320, 1), "stationary_inertia", "gamma=1e-320"),
        (
            lambda: theory.heavy_ball_margin(1e-320, 0.5, variance=1),
            "heavy_ball_margin",
            "curvature=1e-320",
        ),
        (lambda: theory.envelope(1e308, 0.0, [0.0], minimum=-1e308), "envelope", "inertia0"),
        (lambda: theory.relaxation(1.0, 1e-320, 1.0, [1.0], dim=1), "relaxation", "gamma"),
        (lambda: theory.critical_damping([1e308], mass=1e-10), "critical_damping", "mass"),
        (lambda: theory.heating(1.0, 1e200, [1.0], dim=1), "heating", "sigma"),
        (
            lambda: theory.quadratic_inertia([[1.0]], [1e308], [1e308], 0.0, [0.0]),
            "quadratic_inertia",
            "q0",
        ),
        (
            lambda: theory.expected_inertia([[1.0]], [1.0], [0.0], 0.0, 1e200, [1.0]),
            "expected_inertia",
            "sigma",
        ),
        (lambda: theory.heavy_ball_noise_floor(1e200, 1.0, 0.5), "heavy_ball_noise_floor", "h"),
    ],
)
def test_a_result_beyond_float64_raises_floating_point_error_naming_law_and_inputs(
    call, law, shown
):
    """Issue 18: these returned inf or NaN silently (or raised OverflowError)."""
    with pytest.raises(FloatingPointError, match=rf"^{law}\(.*{re.escape(shown)}") as info:
        call()
    assert not isinstance(info.value, OverflowError)


@pytest.mark.parametrize(
    ("lam", "gamma"), [(1.0, 3.0), (0.25, 1.0), (4.0, 1.0), (1e-8, 10.0), (1e300, 1e-300)]
)
def test_decay_rate_is_the_slowest_mode_rate_without_cancellation(lam, gamma):
    """γ − sqrt(γ² − 4λ) formed as 4λ/(γ + sqrt(γ² − 4λ)) when overdamped, γ when not."""
    disc = gamma * gamma - 4 * lam
    expected = gamma if disc <= 0 else 4 * lam / (gamma + math.sqrt(disc))
    assert theory.decay_rate([lam, 1e300], gamma) == pytest.approx(expected, rel=1e-12)


def test_decay_rate_is_right_where_gamma_squared_overflows():
    """Issue 18: decay_rate([1e308], 1e308) was NaN; the slow overdamped rate is 2λ/γ = 2."""
    assert theory.decay_rate([1e308], 1e308) == pytest.approx(2.0, rel=1e-12)
    assert theory.decay_rate([1e308], 1e308, mass=1e-300) == 1e308  # underdamped: γ


def test_decay_rate_of_a_flat_mode_is_zero_at_the_smallest_gamma():
    """A flat mode (λ = 0) does not decay, down to γ = 5e-324, where ½γ underflows to 0 (hypothesis
    found 0/0 there); an underdamped mode still decays at γ."""
    assert theory.decay_rate([0.0], 5e-324) == 0.0
    assert theory.decay_rate([1.0], 5e-324) == 5e-324


def test_relaxation_rises_to_the_minimum_plus_d_t():
    """docs/theory.md (2.11): L* + dT at t → ∞ (the floor was dT, without L*)."""
    gamma, sigma, minimum = 0.5, 0.3, 1.0
    out = theory.relaxation(3.0, gamma, sigma, [0.0, 1e3], dim=2, minimum=minimum)
    assert float(out[0]) == 3.0
    assert float(out[1]) == pytest.approx(minimum + 2 * theory.temperature(gamma, sigma), rel=1e-12)
