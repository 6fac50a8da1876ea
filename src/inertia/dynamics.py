"""The dynamics of learning as a mechanical system (docs/theory.md §1, (1.2)):

    dθ = v dt,    dv = −(γ(t) v + M⁻¹∇L(θ)) dt + σ dW    (Itô)

A `Potential` evaluates L and ∇L on a batch of points (one row per path). Any Python callable
θ ↦ L(θ) on a 1-D tensor becomes one, with gradients by `torch.func` (vectorised over paths).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import _checks
from .energy import Mass

__all__ = ["CallablePotential", "Dynamics", "Potential", "as_potential"]


class Potential:
    """A loss L: R^d → R, evaluated row-wise on q of shape (paths, d).

    Subclasses implement `value` and may override `value_and_grad` with an analytic gradient;
    the default differentiates `value` by autograd (rows are independent, so ∇ of the sum of
    the values is the batch of gradients). `minimum` (L*) and `argmin` are None where unknown.
    """

    dim: int | None = None
    minimum: float | None = None
    argmin: Tensor | None = None

    def value(self, q: Tensor) -> Tensor:
        """L(q) for each row of q: shape (paths,)."""
        raise NotImplementedError

    def value_and_grad(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """(L(q), ∇L(q)) for each row of q: shapes (paths,) and (paths, d)."""
        with torch.enable_grad():
            x = q.detach().requires_grad_(True)
            value = self.value(x)
            (grad,) = torch.autograd.grad(value.sum(), x)
        return value.detach(), grad

    def evaluator(self, q: Tensor, scratch: Tensor) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """What the integrators call each step for (L, ∇L) at states shaped and typed like q:
        `value_and_grad` here. A loss may return one that writes into buffers it reuses (and
        into `scratch`, a buffer like q that is free between calls), so a step allocates
        nothing; callers then keep neither result across two calls."""
        return self.value_and_grad

    def __call__(self, theta: Tensor) -> Tensor:
        """L(θ) for a single point θ of shape (d,) or a batch (paths, d)."""
        if not isinstance(theta, Tensor) or theta.dim() not in (1, 2):
            raise _checks.fail("theta", "a tensor of shape (d,) or (paths, d)", theta)
        return self.value(theta.unsqueeze(0))[0] if theta.dim() == 1 else self.value(theta)

    def check(self, q: Tensor) -> None:
        """Raise ValueError unless L and ∇L at the points q (paths, d) are finite, one per row."""
        _points(q)
        if self.dim is not None and q.shape[-1] != self.dim:
            raise _checks.fail("q0", f"of dimension {self.dim} for this loss", q)
        value, grad = self.value_and_grad(q)
        if value.shape != q.shape[:1] or grad.shape != q.shape:
            raise ValueError(
                f"loss must return one scalar per point; got values of shape {tuple(value.shape)} "
                f"and gradients of shape {tuple(grad.shape)} for points of shape {tuple(q.shape)}"
            )
        finite = torch.isfinite(value) & torch.isfinite(grad).all(-1)
        if not bool(finite.all()):
            path = int((~finite).nonzero()[0, 0])
            raise ValueError(f"q0: the loss or its gradient is not finite at path {path}")


class CallablePotential(Potential):
    """A potential from a callable θ ↦ L(θ) on one point θ of shape (d,).

    Values and gradients are vectorised over paths with `torch.func.vmap`; a callable that
    vmap cannot trace (data-dependent Python control flow, `.item()`) is evaluated row by row.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        if not callable(fn):
            raise _checks.fail("loss", "a Potential or a callable θ ↦ scalar tensor", fn)
        self.fn = fn
        self._vectorised = True

    def value(self, q: Tensor) -> Tensor:
        if self._vectorised:
            return torch.func.vmap(self.fn)(q)
        return torch.stack([self.fn(x) for x in q])

    def value_and_grad(self, q: Tensor) -> tuple[Tensor, Tensor]:
        if self._vectorised:
            grad, value = torch.func.vmap(torch.func.grad_and_value(self.fn))(q)
            return value, grad
        return super().value_and_grad(q)

    def check(self, q: Tensor) -> None:
        _points(q)
        out = self.fn(q[0].clone())
        if not isinstance(out, Tensor) or out.dim() != 0 or not out.is_floating_point():
            shown = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"loss must return a scalar float tensor for θ of shape (d,); got {shown}"
            )
        try:
            torch.func.vmap(torch.func.grad_and_value(self.fn))(q[:1])
        except Exception:  # vmap cannot trace it: fall back to row-by-row autograd, once
            self._vectorised = False
        super().check(q)


def _points(q: object) -> None:
    """ValueError naming q unless it is a non-empty floating-point tensor of shape (paths, d)."""
    ok = isinstance(q, Tensor) and q.dim() == 2 and q.numel() > 0 and q.is_floating_point()
    if not ok:
        raise _checks.fail("q", "a floating-point tensor of shape (paths, d)", q)


def as_potential(loss: Potential | Callable[[Tensor], Tensor]) -> Potential:
    """A `Potential` as is; any other callable wrapped in a `CallablePotential`."""
    return loss if isinstance(loss, Potential) else CallablePotential(loss)


class Dynamics:
    """Damped, noisy Hamiltonian dynamics of a loss (docs/theory.md §1, (1.2)).

    dθ = v dt,  dv = −(γ(t) v + M⁻¹∇L(θ)) dt + σ dW.

    Args:
        loss: a `Potential` (see `inertia.systems`) or a callable mapping θ of shape (d,) to a
            scalar tensor.
        gamma: friction γ ≥ 0, a number or a callable t ↦ γ(t) ≥ 0.
        sigma: noise σ ≥ 0, a number or a tensor of shape (d,) (per coordinate).
        mass: diagonal mass m > 0, a number or a tensor of shape (d,).

    Tensors for sigma and mass are copied (detached: the dynamics are never differentiated
    through). Bad arguments raise ValueError naming them.
    """

    def __init__(
        self,
        loss: Potential | Callable[[Tensor], Tensor],
        gamma: float | Callable[[float], float] = 0.0,
        sigma: float | Tensor = 0.0,
        mass: float | Tensor = 1.0,
    ) -> None:
        self.potential = as_potential(loss)
        self.gamma = gamma if callable(gamma) else _checks.real("gamma", gamma, low=0.0)
        self.sigma = _checks.scalar_or_vector("sigma", sigma, low=0.0, strict=False)
        self.mass = _checks.scalar_or_vector("mass", mass, low=0.0, strict=True)
        sizes = {
            name: n
            for name, n in [
                ("loss", self.potential.dim),
                ("sigma", _checks.vector_dim(self.sigma)),
                ("mass", _checks.vector_dim(self.mass)),
            ]
            if n is not None
        }
        if len(set(sizes.values())) > 1:
            raise ValueError(f"dimensions disagree: {sizes}")
        self.dim: int | None = next(iter(sizes.values()), None)

    @property
    def has_friction(self) -> bool:
        return callable(self.gamma) or self.gamma > 0

    @property
    def has_noise(self) -> bool:
        return bool(torch.as_tensor(self.sigma).gt(0).any())

    @property
    def is_hamiltonian(self) -> bool:
        """γ = σ = 0: I is conserved by the flow."""
        return not (self.has_friction or self.has_noise)

    def damping(self, t: float) -> float:
        """γ(t), checked to be a finite number ≥ 0 (t a finite number)."""
        t = _checks.real("t", t)
        if not callable(self.gamma):
            return self.gamma
        return _checks.real(f"gamma(t) at t = {t:g}", self.gamma(t), low=0.0)

    def noise_heat_rate(self, dim: int) -> float:
        """The Itô heating rate ½ Σᵢ mᵢ σᵢ² (energy per unit time injected on average) in
        dimension `dim` (that of the dynamics, where they fix one)."""
        dim = _checks.integer("dim", dim, low=1)
        if self.dim is not None and dim != self.dim:
            raise _checks.fail("dim", f"this dynamics' dimension {self.dim}", dim)
        sigma = torch.as_tensor(self.sigma, dtype=torch.float64)
        return 0.5 * Mass(self.mass).total(sigma**2, dim)

    def check(self, q: Tensor) -> None:
        """Raise ValueError unless the dynamics accept points q of shape (paths, d)."""
        _points(q)
        if self.dim is not None and q.shape[-1] != self.dim:
            raise _checks.fail("q0", f"of dimension d = {self.dim} (from loss, sigma or mass)", q)
        self.potential.check(q)

    def __repr__(self) -> str:
        gamma = getattr(self.gamma, "__name__", "γ(t)") if callable(self.gamma) else self.gamma
        return (
            f"Dynamics({type(self.potential).__name__}, gamma={gamma}, "
            f"sigma={self.sigma}, mass={self.mass})"
        )
