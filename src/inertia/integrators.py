"""Integrators and their ledger bookkeeping (docs/theory.md §3).

Splitting schemes are data: a sequence of (sub-step, weight) with the sub-steps

    B(τ): v ← v − τ M⁻¹∇L(θ)                       (kick)
    A(τ): θ ← θ + τ v                              (drift)
    O(τ): v ← c v + s ξ,  c = e^{−γτ},  s = σ sqrt((1 − c²)/(2γ))   (exact Ornstein–Uhlenbeck)

and one engine, `SplittingIntegrator`, runs any sequence. Each sub-step books its own share
of the change of I = K + L as it happens: O books the dissipated energy D = ½(1 − c²) vᵀMv and
the injected N = Σᵢ mᵢ (c sᵢ vᵢ ξᵢ + ½ sᵢ² ξᵢ²), taken as K' − K + D; A and B book what they
change of L and K into the residual R. I_n − I_0 = −D + N + R then checks the accumulation;
the shares are checked by their laws (docs/theory.md §3).

`EulerIntegrator` (explicit Euler / Euler–Maruyama) is the non-splitting baseline.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from . import _checks
from .dynamics import Dynamics
from .energy import BOOKS, Mass

__all__ = [
    "ALIASES",
    "METHODS",
    "NOISE_DTYPES",
    "SCHEMES",
    "EulerIntegrator",
    "Scheme",
    "SplittingIntegrator",
    "make_integrator",
]

Substeps = tuple[tuple[str, float], ...]
_KINDS = ("A", "B", "O")


@dataclass(frozen=True)
class Scheme:
    """A splitting scheme: sub-steps (kind, weight), run left to right, each for weight · h.

    Kinds are "A" (drift), "B" (kick) and "O" (Ornstein–Uhlenbeck); the weights of each kind
    sum to 1, so one step is consistent with the flow for time h. `order` (≥ 1) is the order of
    the energy error for γ = σ = 0. A `hamiltonian` scheme has no O sub-step and integrates only
    the conservative part; with friction or noise it runs as O(h/2) · scheme · O(h/2). Checked at
    construction: a ValueError names the field and what is allowed.
    """

    name: str
    substeps: Substeps
    order: int
    hamiltonian: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise _checks.fail("name", "a non-empty string", self.name)
        allowed = "a tuple of (kind, weight) pairs, kind 'A', 'B' or 'O', weight a finite number"
        pairs = self.substeps if isinstance(self.substeps, tuple) else ()
        if not pairs or not all(
            isinstance(s, tuple)
            and len(s) == 2
            and s[0] in _KINDS
            and isinstance(s[1], int | float)
            and not isinstance(s[1], bool)
            and math.isfinite(s[1])
            for s in pairs
        ):
            raise _checks.fail("substeps", allowed, self.substeps)
        totals = {kind: math.fsum(w for k, w in pairs if k == kind) for kind in _KINDS}
        kinds = {kind for kind, _ in pairs}
        if not {"A", "B"} <= kinds or any(abs(totals[kind] - 1.0) > 1e-12 for kind in kinds):
            raise _checks.fail(
                "substeps",
                "sub-steps with at least one A and one B, the weights of each kind summing to 1 "
                f"(here {', '.join(f'{k}: {totals[k]!r}' for k in sorted(kinds))})",
                self.substeps,
            )
        _checks.integer("order", self.order, low=1)
        if self.hamiltonian is not ("O" not in kinds):
            raise _checks.fail(
                "hamiltonian", "True exactly when the scheme has no O sub-step", self.hamiltonian
            )


def _merge(substeps: Substeps) -> Substeps:
    """Fuse neighbouring sub-steps of the same kind (B(a) B(b) = B(a + b))."""
    merged: list[tuple[str, float]] = []
    for kind, weight in substeps:
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + weight)
        else:
            merged.append((kind, weight))
    return tuple(merged)


def _compose(base: Substeps, weights: tuple[float, ...]) -> Substeps:
    """The composition base(w₁h) ∘ base(w₂h) ∘ …, neighbouring sub-steps fused."""
    return _merge(tuple((kind, w * x) for w in weights for kind, x in base))


_VERLET: Substeps = (("B", 0.5), ("A", 1.0), ("B", 0.5))
_W1 = 1.0 / (2.0 - 2.0 ** (1.0 / 3.0))  # Forest–Ruth / Yoshida-4 weights
_W0 = 1.0 - 2.0 * _W1

SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in [
        Scheme("symplectic_euler", (("B", 1.0), ("A", 1.0)), 1, hamiltonian=True),
        Scheme("verlet", _VERLET, 2, hamiltonian=True),
        Scheme("forest_ruth", _compose(_VERLET, (_W1, _W0, _W1)), 4, hamiltonian=True),
        Scheme("conformal_verlet", (("O", 0.5), *_VERLET, ("O", 0.5)), 2),
        Scheme("baoab", (("B", 0.5), ("A", 0.5), ("O", 1.0), ("A", 0.5), ("B", 0.5)), 2),
    ]
}
#: Other names of schemes: OBABO is conformal Verlet, O(h/2) B(h/2) A(h) B(h/2) O(h/2).
ALIASES = {"obabo": "conformal_verlet"}
#: Every method name `simulate` accepts (besides "auto").
METHODS = (*SCHEMES, *ALIASES, "euler", "euler_maruyama")


def ou_coefficients(
    gamma: float, tau: float, dtype: torch.dtype = torch.float64
) -> tuple[float, float, float]:
    """(c, 1 − c², s/σ) of the exact OU step of length τ: c = e^{−γτ}, s/σ = sqrt((1 − c²)/(2γ)).

    The variance uses expm1, so small γτ loses no digits; s/σ → sqrt(τ) as γ → 0. c is rounded
    to the state's `dtype`, the factor a step in it really applies, and 1 − c² is (1 − c)(1 + c)
    of that c (1 − c is exact): the energy that factor removes, so the booked dissipation has no
    per-step bias (a float32 state's c kept in float64 had booked (c² − c₃₂²)K a step too much).
    """
    c = math.exp(-gamma * tau)
    if dtype == torch.float32:  # on the host: a time-dependent γ computes c every step
        c = array("f", (c,))[0]
    variance = -math.expm1(-2.0 * gamma * tau) / (2.0 * gamma) if gamma > 0 else tau
    return c, (1.0 - c) * (1.0 + c), math.sqrt(variance)


def _sqnorm(mass: Mass, v: Tensor) -> Tensor:
    """vᵀMv over the last axis; for a scalar mass m·‖v‖², one pass over v."""
    if isinstance(mass.value, Tensor):
        return mass.sqnorm(v)
    out: Tensor = torch.linalg.vector_norm(v, dim=-1).square_()
    return out if mass.value == 1.0 else out.mul_(mass.value)


#: The dtypes the Gaussian increments may be drawn in (`simulate`'s `noise_dtype`).
NOISE_DTYPES = (torch.float32, torch.float64)


class Integrator:
    """Advances paths (q, v) in place, one step of size dt at a time.

    Keeps L(q), ∇L(q) and K(v) current (no evaluation is wasted; `Potential.evaluator` may
    reuse their buffers, so copy `potential` and `gradient` to keep them across a step) and,
    per step, the ledger increments `dissipated`, `injected`, `residual` of shape (paths,).
    K is kept as `vmv` = vᵀMv = 2K (the factor ½ is exact in binary, applied where K is read). Every
    buffer lives on q's device and in q's dtype. The increment s ⊙ ξ is drawn in `noise_dtype`
    (default: q's) and widened into q's dtype (exactly, float32 → float64); the ledger books
    the increment that is added to v, so it closes whatever the draw's dtype.
    """

    def __init__(
        self,
        dynamics: Dynamics,
        q: Tensor,
        v: Tensor,
        dt: float,
        generator: torch.Generator,
        noise_dtype: torch.dtype | None = None,
    ):
        self.dynamics = dynamics
        self.q, self.v, self.dt = q, v, dt
        self._has_noise = dynamics.has_noise
        self.generator = generator
        device, dtype = q.device, q.dtype
        mass, sigma = dynamics.mass, dynamics.sigma
        self.mass = Mass(mass.to(device, dtype) if isinstance(mass, Tensor) else mass)
        self.sigma = sigma.to(device, dtype) if isinstance(sigma, Tensor) else sigma
        self.increments = torch.zeros(len(BOOKS), q.shape[0], dtype=dtype, device=device)
        self.dissipated, self.injected, self.residual = self.increments.unbind(0)  # rows as BOOKS
        # the noise's buffers (empty without noise): the increment w, and its draw when that
        # is in another dtype
        shape = q.shape if self._has_noise else (0, q.shape[1])
        draw = dtype if noise_dtype is None else noise_dtype
        self._noise = torch.empty(shape, dtype=dtype, device=device)
        self._draw = None if draw == dtype else torch.empty(shape, dtype=draw, device=device)
        self._scratch = torch.empty_like(q)  # the potential's evaluator's
        self._evaluation = dynamics.potential.evaluator(q, self._scratch)
        self.restart()

    @property
    def kinetic(self) -> Tensor:
        """K = ½ vᵀMv of the current state (paths,)."""
        return 0.5 * self.vmv

    def step(self, t: float, settle: bool = True) -> None:
        """Advance by one step from time t, setting the step's ledger increments.

        settle=False may leave the change of K by the step's last kicks to be booked with the
        next step's (one evaluation of K fewer); `kinetic`, `vmv` and the increments are then
        those of a settled step only after the next settled one. (q, v) are the same either way.
        """
        raise NotImplementedError

    def restart(self) -> None:
        """Evaluate L, ∇L and K at (q, v): at construction, and after q and v were overwritten
        (a restored checkpoint). At the end of every step they are exactly these evaluations,
        so a run restarted from (q, v) and the generator's state repeats itself.
        """
        self.potential, self.gradient = self._evaluation(self.q)
        self.vmv = _sqnorm(self.mass, self.v)
        self._q_moved = self._v_moved = False

    def _evaluate(self) -> None:
        """Refresh L and ∇L after drifts, booking the change of L into the residual."""
        potential, self.gradient = self._evaluation(self.q)
        self.residual.add_(potential - self.potential)
        self.potential = potential
        self._q_moved = False

    def _refresh_kinetic(self) -> None:
        """Refresh K after kicks, booking the change of K into the residual."""
        vmv = _sqnorm(self.mass, self.v)
        self.residual.add_(vmv - self.vmv, alpha=0.5)
        self.vmv = vmv
        self._v_moved = False

    def _draw_noise(self, scale: float | Tensor) -> Tensor:
        """w = scale ⊙ ξ, ξ ~ N(0, Id), drawn in the noise dtype (a scalar scale as the
        standard deviation of the draw) and widened into the state's, in a reused buffer."""
        draw = self._noise if self._draw is None else self._draw
        if isinstance(scale, Tensor):
            draw.normal_(generator=self.generator)
        else:
            draw.normal_(0.0, scale, generator=self.generator)
        if self._draw is not None:
            self._noise.copy_(draw)
        return self._noise.mul_(scale) if isinstance(scale, Tensor) else self._noise


class SplittingIntegrator(Integrator):
    """Runs a `Scheme`'s sub-steps; dispatch is resolved once, at construction."""

    def __init__(
        self,
        dynamics: Dynamics,
        scheme: Scheme,
        q: Tensor,
        v: Tensor,
        dt: float,
        generator: torch.Generator,
        noise_dtype: torch.dtype | None = None,
    ):
        super().__init__(dynamics, q, v, dt, generator, noise_dtype)
        self.scheme = scheme
        substeps = scheme.substeps
        if scheme.hamiltonian and not dynamics.is_hamiltonian:
            substeps = _merge((("O", 0.5), *substeps, ("O", 0.5)))
        if dynamics.is_hamiltonian:
            substeps = tuple(s for s in substeps if s[0] != "O")
        self._ops: list[Callable[[float], None]] = []
        clock = 0.0  # where each O sub-step sits in [t, t + dt], for a time-varying γ(t)
        for kind, weight in substeps:
            tau = weight * dt
            if kind == "B":
                self._ops.append(partial(self._kick, tau))
            elif kind == "A":
                self._ops.append(partial(self._drift, tau))
            elif callable(dynamics.gamma):  # an O sub-step (the only other kind), γ = γ(t)
                self._ops.append(partial(self._ou_at, tau, (clock + 0.5 * weight) * dt))
                clock += weight
            else:
                self._ops.append(partial(self._ou, *self._ou_constants(dynamics.gamma, tau)))

    def step(self, t: float, settle: bool = True) -> None:
        self.increments.zero_()
        for op in self._ops:
            op(t)
        if self._q_moved:
            self._evaluate()
        if settle and self._v_moved:
            self._refresh_kinetic()

    def _kick(self, tau: float, t: float) -> None:
        """B(τ): v ← v − τ M⁻¹∇L(θ), with ∇L current."""
        if self._q_moved:
            self._evaluate()
        inverse = self.mass.inverse
        if isinstance(inverse, Tensor):
            self.v.addcmul_(self.gradient, inverse, value=-tau)
        else:
            self.v.add_(self.gradient, alpha=-tau * inverse)
        self._v_moved = True

    def _drift(self, tau: float, t: float) -> None:
        """A(τ): θ ← θ + τ v (L and ∇L are refreshed before they are next read)."""
        self.q.add_(self.v, alpha=tau)
        self._q_moved = True

    def _ou_constants(self, gamma: float, tau: float) -> tuple[float, float, float | Tensor | None]:
        c, one_minus_c2, unit_scale = ou_coefficients(gamma, tau, self.q.dtype)
        scale = self.sigma * unit_scale if self._has_noise else None
        return c, one_minus_c2, scale

    def _ou_at(self, tau: float, offset: float, t: float) -> None:
        """O(τ) with c from γ at the sub-step's midpoint t + offset (second order in τ)."""
        self._ou(*self._ou_constants(self.dynamics.damping(t + offset), tau), t)

    def _ou(self, c: float, one_minus_c2: float, scale: float | Tensor | None, t: float) -> None:
        """O: v' = c v + w, w = s ⊙ ξ; books D = ½(1 − c²) vᵀMv and N = ½ Σ m w (w + 2c v),
        taken as K' − K + D (equal for the v' kept, and two norms instead of a pass over w)."""
        if self._v_moved:
            self._refresh_kinetic()
        friction = self.vmv * (0.5 * one_minus_c2)  # D, rounded once for both books
        self.dissipated.add_(friction)
        if scale is None:
            self.v.mul_(c)
        else:
            torch.add(self._draw_noise(scale), self.v, alpha=c, out=self.v)
        vmv = _sqnorm(self.mass, self.v)
        if scale is not None:
            self.injected.add_(vmv - self.vmv, alpha=0.5).add_(friction)
        self.vmv = vmv


class EulerIntegrator(Integrator):
    """Explicit Euler (Euler–Maruyama when σ > 0): the non-structure-preserving baseline.

    θ' = θ + h v,  v' = v + δ,  δ = −h γ v − h M⁻¹∇L(θ) + σ sqrt(h) ξ.
    Booked in rate form: D = h γ vᵀMv, N = vᵀMσ sqrt(h) ξ + ½ h Σ mσ² (Itô); the residual
    takes the rest, computed term by term: ΔL − h vᵀ∇L + ½ δᵀMδ − ½ h Σ mσ².
    Per quadratic mode with γ = σ = 0, I grows by exactly (1 + h²λ/m) per step.
    """

    def __init__(
        self,
        dynamics: Dynamics,
        q: Tensor,
        v: Tensor,
        dt: float,
        generator: torch.Generator,
        noise_dtype: torch.dtype | None = None,
    ):
        super().__init__(dynamics, q, v, dt, generator, noise_dtype)
        self._delta = torch.empty_like(q)
        self._heat = dynamics.noise_heat_rate(q.shape[1]) * dt
        self._noise_scale = self.sigma * math.sqrt(dt) if dynamics.has_noise else None

    def step(self, t: float, settle: bool = True) -> None:
        h, v, delta = self.dt, self.v, self._delta
        gamma = self.dynamics.damping(t)
        self.increments.zero_()
        torch.mul(self.gradient, self.mass.inverse, out=delta).mul_(-h).add_(v, alpha=-h * gamma)
        self.dissipated.add_(self.vmv, alpha=h * gamma)
        if self._noise_scale is not None:
            w = self._draw_noise(self._noise_scale)
            self.injected.add_(self.mass.dot(v, w)).add_(self._heat)
            delta.add_(w)
        self.residual.add_(torch.linalg.vecdot(v, self.gradient), alpha=-h)
        self.residual.add_(_sqnorm(self.mass, delta), alpha=0.5).sub_(self._heat)
        self.q.add_(v, alpha=h)
        v.add_(delta)
        self._evaluate()
        self.vmv = _sqnorm(self.mass, v)


def make_integrator(
    method: str,
    dynamics: Dynamics,
    q: Tensor,
    v: Tensor,
    dt: float,
    generator: torch.Generator,
    noise_dtype: torch.dtype | None = None,
) -> Integrator:
    """The integrator for a method name in `METHODS` (already resolved from "auto"); noise is
    drawn in `noise_dtype` (None: q's dtype)."""
    method = ALIASES.get(method, method)
    if method in SCHEMES:
        return SplittingIntegrator(dynamics, SCHEMES[method], q, v, dt, generator, noise_dtype)
    return EulerIntegrator(dynamics, q, v, dt, generator, noise_dtype)
