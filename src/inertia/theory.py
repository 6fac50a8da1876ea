"""Exact and approximate laws of computational inertia (docs/theory.md §2), as plain functions.

Conventions: L = ½(θ − c)ᵀA(θ − c) + L* for the quadratic laws; diagonal mass M = diag(m);
dθ = v dt, dv = −(γv + M⁻¹∇L) dt + σ dW (Itô). Times `t` are a 1-D tensor or array; every
function returns float64 tensors. docs/theory.md says which test backs each law; the
heavy-ball laws of optimizers (`heavy_ball_margin`, `heavy_ball_noise_floor`) are in its §4.

The quadratic laws work in the normal modes of M^{−½}AM^{−½} = U diag(λ) Uᵀ: with
x = UᵀM^{½}(θ − c) and u = UᵀM^{½}v, I − L* = ½ Σᵢ (uᵢ² + λᵢ xᵢ²) and each mode is a damped
oscillator xᵢ'' + γxᵢ' + λᵢxᵢ = noise. Each mode's 2×2 (or moment 4×4) propagator is a matrix
exponential whose eigenvalues have real part ≤ 0: stable for any t, exact at critical damping.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _checks
from ._checks import ArrayLike
from .dynamics import Dynamics
from .trajectory import Trajectory

__all__ = [
    "balance_residual",
    "critical_damping",
    "decay_rate",
    "envelope",
    "expected_inertia",
    "heating",
    "heavy_ball_margin",
    "heavy_ball_noise_floor",
    "quadratic_inertia",
    "relaxation",
    "stationary_inertia",
    "temperature",
]

F64 = torch.float64


def _times(t: ArrayLike) -> Tensor:
    times = _checks.tensor("t", t, "a 1-D tensor of finite times")
    if times.dim() == 0:
        times = times.reshape(1)
    if times.dim() != 1 or not bool(torch.isfinite(times).all()):
        raise _checks.fail("t", "a 1-D tensor of finite times", times)
    return times


def _vector(name: str, x: ArrayLike, dim: int) -> Tensor:
    allowed = f"a finite tensor of shape ({dim},), as hessian"
    v = _checks.tensor(name, x, allowed)
    if v.shape != (dim,) or not bool(torch.isfinite(v).all()):
        raise _checks.fail(name, allowed, v)
    return v


def _per_coordinate(
    name: str, x: ArrayLike, dim: int, *, low: float, strict: bool, of: str = "hessian"
) -> Tensor:
    """A number or a tensor of shape (dim,) (`dim` set by argument `of`), expanded to (dim,)."""
    value = _checks.scalar_or_vector(name, x, low=low, strict=strict)
    if isinstance(value, Tensor) and value.shape != (dim,):
        raise _checks.fail(name, f"a number or a tensor of shape ({dim},) as {of}", value)
    return torch.as_tensor(value, dtype=F64).expand(dim)


def _modes(
    law: str,
    hessian: ArrayLike,
    q0: ArrayLike,
    v0: ArrayLike,
    mass: ArrayLike,
    center: ArrayLike | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Eigenvalues λ of M^{−½}AM^{−½} and the start (x₀, u₀) in its normal modes;
    FloatingPointError (naming `law`) if they are beyond float64's range."""
    a = _checks.tensor("hessian", hessian, "a square (d, d) matrix")
    if a.dim() != 2 or a.shape[0] != a.shape[1] or a.numel() == 0:
        raise _checks.fail("hessian", "a square (d, d) matrix", a)
    dim = a.shape[0]
    if not bool(torch.isfinite(a).all()) or not torch.allclose(a, a.T, rtol=1e-10, atol=0):
        raise _checks.fail("hessian", "a finite symmetric matrix", a)
    root_m = _per_coordinate("mass", mass, dim, low=0.0, strict=True).sqrt()
    c = torch.zeros(dim, dtype=F64) if center is None else _vector("center", center, dim)
    q, v = _vector("q0", q0, dim), _vector("v0", v0, dim)
    inputs = {"hessian": a, "q0": q, "v0": v, "mass": mass}
    scaled = _checks.finite(law, inputs, (0.5 * a + 0.5 * a.T) / root_m[:, None] / root_m[None, :])
    top = float(scaled.abs().max()) or 1.0  # eigh of the matrix scaled to 1: no overflow inside
    try:
        lam, basis = torch.linalg.eigh(scaled / top)
    except RuntimeError:  # did not converge (an extreme spread of scales)
        raise FloatingPointError(f"{law}: no eigen-decomposition of the scaled hessian") from None
    lam = _checks.finite(law, inputs, lam * top)
    if float(lam.min()) < -1e-12 * max(1.0, float(lam.abs().max())):
        raise ValueError(
            f"hessian must be positive semi-definite; smallest eigenvalue {float(lam.min()):.3g}"
        )
    lam = lam.clamp(min=0.0)
    x0 = _checks.finite(law, inputs, basis.T @ (root_m * (q - c)))
    u0 = _checks.finite(law, inputs, basis.T @ (root_m * v))
    return lam, basis, root_m, x0, u0


def quadratic_inertia(
    hessian: ArrayLike,
    q0: ArrayLike,
    v0: ArrayLike,
    gamma: float,
    t: ArrayLike,
    *,
    mass: ArrayLike = 1.0,
    center: ArrayLike | None = None,
    minimum: float = 0.0,
) -> Tensor:
    """Exact I(t) of the damped quadratic (docs/theory.md §2, law (Q), (2.3)), σ = 0, any SPD A,
    any γ ≥ 0.

    z(t) = e^{Ft} z(0) with F = [[0, Id], [−M⁻¹A, −γ Id]]; I(t) = ½ z(t)ᵀ blockdiag(A, M) z(t) + L*.
    Computed per normal mode; exact in every regime, critical damping included.
    """
    gamma = _checks.real("gamma", gamma, low=0.0)
    minimum = _checks.real("minimum", minimum)
    lam, _, _, x0, u0 = _modes("quadratic_inertia", hessian, q0, v0, mass, center)
    times = _times(t)
    f = torch.zeros(len(lam), 2, 2, dtype=F64)
    f[:, 0, 1], f[:, 1, 0], f[:, 1, 1] = 1.0, -lam, -gamma
    z = (
        torch.linalg.matrix_exp(times[:, None, None, None] * f)
        @ torch.stack([x0, u0], -1)[..., None]
    )
    x, u = z[..., 0, 0], z[..., 1, 0]
    inputs = {"hessian": hessian, "q0": q0, "v0": v0, "gamma": gamma, "t": times}
    out: Tensor = 0.5 * (u * u + lam * x * x).sum(-1) + minimum
    return _checks.finite("quadratic_inertia", inputs, out)


def expected_inertia(
    hessian: ArrayLike,
    q0: ArrayLike,
    v0: ArrayLike,
    gamma: float,
    sigma: ArrayLike,
    t: ArrayLike,
    *,
    mass: ArrayLike = 1.0,
    center: ArrayLike | None = None,
    minimum: float = 0.0,
) -> Tensor:
    """Exact E[I(t)] of the stochastic quadratic from the moment equations (docs/theory.md §2,
    law (S), (2.4)).

    Per normal mode, the second moments s = (⟨x²⟩, ⟨xu⟩, ⟨u²⟩) solve the linear ODE
    ⟨x²⟩' = 2⟨xu⟩, ⟨xu⟩' = ⟨u²⟩ − λ⟨x²⟩ − γ⟨xu⟩, ⟨u²⟩' = −2λ⟨xu⟩ − 2γ⟨u²⟩ + Dᵢ,
    with Dᵢ = (Uᵀ diag(mσ²) U)ᵢᵢ the noise power in mode i, so E[I] = ½ Σᵢ (⟨uᵢ²⟩ + λᵢ⟨xᵢ²⟩) + L*.
    Exact for any γ ≥ 0 (γ = 0: linear heating) and per-coordinate σ and m.
    """
    gamma = _checks.real("gamma", gamma, low=0.0)
    minimum = _checks.real("minimum", minimum)
    law = "expected_inertia"
    lam, basis, root_m, x0, u0 = _modes(law, hessian, q0, v0, mass, center)
    sigma = _per_coordinate("sigma", sigma, len(lam), low=0.0, strict=False)
    inputs = {"hessian": hessian, "q0": q0, "v0": v0, "gamma": gamma, "sigma": sigma}
    power = _checks.finite(law, inputs, (basis * basis).T @ (root_m * sigma) ** 2)
    times = _times(t)
    # [s'; 0] = [[B, (0, 0, 1)], [0, 0]] [s; 1] with a unit forcing; the moments are linear in
    # the noise power D, so the forced part is scaled by D afterwards (no overflow inside exp)
    b = torch.zeros(len(lam), 4, 4, dtype=F64)
    b[:, 0, 1] = 2.0
    b[:, 1, 0], b[:, 1, 1], b[:, 1, 2] = -lam, -gamma, 1.0
    b[:, 2, 1], b[:, 2, 2], b[:, 2, 3] = -2.0 * lam, -2.0 * gamma, 1.0
    e = torch.linalg.matrix_exp(times[:, None, None, None] * b)
    start = torch.stack([x0 * x0, x0 * u0, u0 * u0], -1)[..., None]
    s = e[..., :3, :3] @ start + e[..., :3, 3:] * power[:, None, None]
    inputs["t"] = times
    out: Tensor = 0.5 * (s[..., 2, 0] + lam * s[..., 0, 0]).sum(-1) + minimum
    return _checks.finite(law, inputs, out)


def heating(
    inertia0: float, sigma: ArrayLike, t: ArrayLike, *, dim: int, mass: ArrayLike = 1.0
) -> Tensor:
    """E[I(t)] = I(0) + ½ Σᵢ mᵢσᵢ² t at γ = 0: exact for any loss (Itô; noise heats;
    docs/theory.md (2.5))."""
    inertia0 = _checks.real("inertia0", inertia0)
    dim = _checks.integer("dim", dim, low=1, high=2**62)
    m = _per_coordinate("mass", mass, dim, low=0.0, strict=True, of="dim")
    s = _per_coordinate("sigma", sigma, dim, low=0.0, strict=False, of="dim")
    times = _times(t)
    inputs = {"inertia0": inertia0, "sigma": sigma, "t": times, "dim": dim, "mass": mass}
    shared = m.stride(0) == 0 and s.stride(0) == 0  # both numbers: no (dim,) product formed
    power = float(m[0] * s[0] * s[0]) * dim if shared else float((m * s * s).sum())
    return _checks.finite("heating", inputs, inertia0 + 0.5 * power * times)


def temperature(gamma: float, sigma: float, *, mass: float = 1.0) -> float:
    """T = m σ²/(2γ): the Gibbs temperature of underdamped Langevin dynamics, e^{−I/T}
    (docs/theory.md (1.3))."""
    gamma = _checks.real("gamma", gamma, low=0.0, strict=True)
    sigma = _checks.real("sigma", sigma, low=0.0)
    mass = _checks.real("mass", mass, low=0.0, strict=True)
    inputs = {"gamma": gamma, "sigma": sigma, "mass": mass}
    return _checks.finite("temperature", inputs, mass * sigma * (sigma / (2.0 * gamma)))


def stationary_inertia(
    dim: int, gamma: float, sigma: float, *, mass: float = 1.0, minimum: float = 0.0
) -> float:
    """E[I]∞ = L* + d·T for a quadratic loss (E[K] = E[L − L*] = dT/2, equipartition;
    docs/theory.md (2.6)).

    E[K]∞ = dT/2 holds for any loss with a stationary Gibbs state; E[L − L*] = dT/2 only for
    quadratics, so for other losses this is the small-T limit near a non-degenerate minimum.
    """
    dim = _checks.integer("dim", dim, low=1, high=2**62)
    minimum = _checks.real("minimum", minimum)
    inputs = {"dim": dim, "gamma": gamma, "sigma": sigma, "mass": mass, "minimum": minimum}
    try:
        floor = temperature(gamma, sigma, mass=mass)
    except FloatingPointError:
        floor = math.inf  # named below, as this law's
    return _checks.finite("stationary_inertia", inputs, minimum + dim * floor)


def envelope(inertia0: float, gamma: float, t: ArrayLike, *, minimum: float = 0.0) -> Tensor:
    """(I(0) − L*) e^{−γt} + L*: the popular "decay law", an envelope only (docs/theory.md (2.10)).

    The exact dI/dt = −γ vᵀMv vanishes at every turning point, so I descends in a staircase
    around this curve. For a lightly damped quadratic mode, r = α/ω (α = γ/2, ω² = λ − α²),
    I/envelope − 1 = r sin 2ωt + 2r² sin² ωt exactly: within r·sqrt(1 + r²) + r² (a few %).
    For an overdamped mode (γ > 2 sqrt(λ)) it is wrong: I decays at γ − sqrt(γ² − 4λ) ≪ γ.
    """
    inertia0, minimum = _checks.real("inertia0", inertia0), _checks.real("minimum", minimum)
    gamma = _checks.real("gamma", gamma, low=0.0)
    times = _times(t)
    inputs = {"inertia0": inertia0, "gamma": gamma, "t": times, "minimum": minimum}
    return _checks.finite(
        "envelope", inputs, (inertia0 - minimum) * torch.exp(-gamma * times) + minimum
    )


def relaxation(
    inertia0: float, gamma: float, sigma: float, t: ArrayLike, *, dim: int, minimum: float = 0.0
) -> Tensor:
    """L* + (I(0) − L*) e^{−γt} + dT (1 − e^{−γt}): the closed-form approximation under noise
    (docs/theory.md (2.11)).

    Right at both ends for a lightly damped quadratic (start, and the floor dT of
    `stationary_inertia`); in between it inherits the envelope's staircase error, and for
    overdamped modes it relaxes far too fast (see `envelope`). M = 1.
    """
    inertia0, minimum = _checks.real("inertia0", inertia0), _checks.real("minimum", minimum)
    gamma, times = _checks.real("gamma", gamma, low=0.0, strict=True), _times(t)
    inputs = {"inertia0": inertia0, "gamma": gamma, "sigma": sigma, "t": times, "dim": dim}
    try:
        floor = stationary_inertia(dim, gamma, sigma)  # d·T (L* is added once, below)
    except FloatingPointError:
        floor = math.inf  # named below, as this law's
    decay = torch.exp(-gamma * times)
    out = minimum + (inertia0 - minimum) * decay + floor * (1 - decay)
    return _checks.finite("relaxation", inputs, out)


def decay_rate(eigenvalues: ArrayLike, gamma: float, *, mass: ArrayLike = 1.0) -> float:
    """Slowest asymptotic decay rate of I − L* (σ = 0): minᵢ [γ − sqrt(max(γ² − 4λᵢ/mᵢ, 0))]
    (docs/theory.md (2.7)).

    Underdamped modes (γ < 2 sqrt(λ/m)) decay at γ; overdamped ones at 2|r₊| = γ − sqrt(γ² − 4λ/m),
    which falls like 2λ/(mγ) as γ grows; a flat mode (λ = 0) does not decay.
    """
    gamma = _checks.real("gamma", gamma, low=0.0)
    omega2 = _eigen_over_mass(eigenvalues, mass)
    # r = 2 sqrt(λ/m); overdamped (r < γ): γ − sqrt(γ² − r²) = r²/(γ + sqrt((γ − r)(γ + r))),
    # formed with halves so that nothing overflows for any finite γ and λ/m (λ/m = inf: r ≥ γ)
    r = 2.0 * omega2.sqrt()
    half = 0.5 * gamma
    root = (gamma - r).clamp(min=0.0).sqrt() * (half + 0.5 * r).sqrt() * math.sqrt(2.0)
    slow = r * ((0.5 * r) / (half + 0.5 * root))
    rate = torch.where(r >= gamma, torch.full_like(r, gamma), slow)
    rate = torch.where(r > 0, rate, 0.0)  # a flat mode: 0, also where ½γ underflows (0/0)
    inputs = {"eigenvalues": eigenvalues, "gamma": gamma, "mass": mass}
    return _checks.finite("decay_rate", inputs, float(rate.min()))


def critical_damping(eigenvalues: ArrayLike, *, mass: ArrayLike = 1.0) -> float:
    """γ* = 2 sqrt(minᵢ λᵢ/mᵢ): critical damping of the slowest mode, the γ that maximises
    `decay_rate` (below it every mode decays at γ; above it the slowest mode slows down;
    docs/theory.md (2.8))."""
    slowest = float(_eigen_over_mass(eigenvalues, mass).min())
    inputs = {"eigenvalues": eigenvalues, "mass": mass}
    return _checks.finite("critical_damping", inputs, 2.0 * math.sqrt(slowest))


def heavy_ball_margin(curvature: float, momentum: float, *, variance: float = 0.0) -> float:
    """Mean-square stability margin of the heavy ball θ_{k+1} = θ_k + μ(θ_k − θ_{k−1}) − h²λ_k θ_k
    along one direction whose curvature λ_k is random and independent across steps (minibatch
    Hessians), with mean λ̄ = `curvature`/h² and variance `variance`/h⁴ (both given times h²
    and h⁴, i.e. in step units):

        margin = h²λ̄/(2(1 + μ)) + h⁴Var(λ)/(2(1 − μ)·h²λ̄)

    E[θ_k²] stays bounded iff margin < 1 (docs/theory.md (2.9)). The first term is the
    deterministic threshold h²λ < 2(1 + μ) (docs/theory.md §4, (4.9)); the second is where the
    second-moment recursion (E θ², E θ_kθ_{k−1}) loses stability first when the curvature
    fluctuates: det(I − M) = 0 gives (1 − μ)ā² + (1 + μ)Var(a) = (1 + μ)(1 − μ²) for
    a = 1 + μ − h²λ.
    """
    x = _checks.real("curvature", curvature, low=0.0, strict=True)
    mu = _checks.real("momentum", momentum, low=0.0, high=1.0, strict_high=True)
    v = _checks.real("variance", variance, low=0.0)
    inputs = {"curvature": x, "momentum": mu, "variance": v}
    return _checks.finite(
        "heavy_ball_margin", inputs, x / (2.0 * (1.0 + mu)) + v / (2.0 * (1.0 - mu)) / x
    )


def heavy_ball_noise_floor(
    h: ArrayLike, noise_trace: ArrayLike, momentum: ArrayLike
) -> tuple[Tensor, Tensor]:
    """Stationary (E[K], E[L − L*]) of the heavy ball with step h and momentum μ whose gradient
    carries noise of variance `noise_trace` = tr(C)/B per step (elementwise over tensors):

        E[K] = h²·tr(C)/(2B(1 − μ²)),    E[L − L*] ≈ h²·tr(C)/(4B(1 − μ))

    A step injects ½h²·tr(C)/B of kinetic energy and friction removes (1 − μ²) of K; the excess
    loss is that of a quadratic basin (docs/theory.md §4, (4.10) and (4.11)). Both are the
    limit of small h²λ: on a quadratic, each eigenmode's exact stationary values are these,
    for its own share of tr(C)/B, divided by 1 − h²λᵢ/(2(1 + μ)) (docs/theory.md (4.12)).
    """
    step_h = _bounded("h", h, high=None)
    trace = _bounded("noise_trace", noise_trace, high=None)
    mu = _bounded("momentum", momentum, high=1.0)
    try:  # elementwise, broadcast
        step = step_h * step_h * trace
        kinetic, excess = step / (2.0 * (1.0 - mu * mu)), step / (4.0 * (1.0 - mu))
    except RuntimeError:
        shown = [tuple(x.shape) for x in (step_h, trace, mu)]
        raise ValueError(f"h, noise_trace, momentum: shapes {shown} do not broadcast") from None
    inputs = {"h": h, "noise_trace": noise_trace, "momentum": momentum}
    law = "heavy_ball_noise_floor"
    return _checks.finite(law, inputs, kinetic), _checks.finite(law, inputs, excess)


def _bounded(name: str, x: ArrayLike, high: float | None) -> Tensor:
    """A float64 tensor (any shape) of finite values ≥ 0 (and < high when given)."""
    allowed = "finite values ≥ 0" + ("" if high is None else f" and < {high:g}")
    t = _checks.tensor(name, x, f"a number or a tensor of {allowed}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise _checks.fail(name, f"a number or a tensor of {allowed}", t)
    if high is not None and bool((t >= high).any()):
        raise _checks.fail(name, f"a number or a tensor of {allowed}", t)
    return t


def _eigen_over_mass(eigenvalues: ArrayLike, mass: ArrayLike) -> Tensor:
    lam = torch.as_tensor(
        _checks.scalar_or_vector("eigenvalues", eigenvalues, low=0.0, strict=False), dtype=F64
    )
    lam = lam.reshape(-1)
    return lam / _per_coordinate("mass", mass, len(lam), low=0.0, strict=True, of="eigenvalues")


def balance_residual(trajectory: Trajectory, dynamics: Dynamics) -> Tensor:
    """I(t) − I(0) + ∫γ(s) vᵀMv ds − ½ Σᵢ mᵢσᵢ² (t − t₀), per record and path: (R, paths).

    The energy balance of docs/theory.md §2, laws (D) and (S), (2.2) and (2.4), evaluated from
    the recorded kinetic energy and inertia alone (trapezoid rule over the recorded times,
    error O(Δt²)), never from the ledger's own dissipated column. Zero up to integration error
    for σ = 0, any loss and any γ(t); for σ > 0 each path keeps the martingale ∫vᵀMσ dW, zero
    in mean over paths.
    """
    if not isinstance(trajectory, Trajectory):
        raise _checks.fail("trajectory", "an inertia.Trajectory (from simulate)", trajectory)
    if not isinstance(dynamics, Dynamics):
        raise _checks.fail("dynamics", "an inertia.Dynamics", dynamics)
    dim = trajectory.q.shape[-1]
    if dynamics.dim is not None and dynamics.dim != dim:
        raise _checks.fail("dynamics", f"of the trajectory's dimension {dim}", dynamics)
    t: Tensor = trajectory.t
    kinetic: Tensor = trajectory.kinetic
    rate = torch.tensor([dynamics.damping(float(s)) for s in t], dtype=F64)
    power = 2.0 * rate[:, None] * kinetic  # γ vᵀMv
    dissipated = torch.cat(
        [
            torch.zeros_like(power[:1]),
            (0.5 * (power[1:] + power[:-1]) * torch.diff(t)[:, None]).cumsum(0),
        ]
    )
    heat = dynamics.noise_heat_rate(trajectory.q.shape[1]) * (t - t[0])
    inertia: Tensor = trajectory.inertia
    inputs = {"trajectory": trajectory.inertia, "dynamics": dynamics}
    return _checks.finite(
        "balance_residual", inputs, inertia - inertia[0] + dissipated - heat[:, None]
    )
