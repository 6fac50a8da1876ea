"""Synthetic losses with known structure, each a batched `Potential` (rows are paths).

Each knows its minimum value L* (`minimum`) and a minimiser (`argmin`) where they are known.
Analytic gradients where they are short; autograd (through `torch.nn`) for the MLP.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import _checks
from ._checks import ArrayLike
from .dynamics import Potential

__all__ = [
    "NAMES",
    "AnharmonicChain",
    "DoubleWell",
    "LogisticRegression",
    "Quadratic",
    "Rosenbrock",
    "TeacherStudentMLP",
    "named",
]


#: Sizes (dimensions, samples) are below this; seeds below _SEEDS.
_MAX_DIM, _SEEDS = 2**62, 2**64


def _like(x: Tensor, q: Tensor) -> Tensor:
    """x in q's dtype (no copy when it already is)."""
    return x if x.dtype == q.dtype else x.to(q.dtype)


class Quadratic(Potential):
    """L(θ) = ½ (θ − c)ᵀ A (θ − c) + L*, A symmetric positive semi-definite.

    Give either the Hessian A (d, d) or its eigenvalues (d,) for a diagonal A.
    """

    dim: int
    minimum: float
    argmin: Tensor

    def __init__(
        self,
        hessian: ArrayLike | None = None,
        *,
        eigenvalues: ArrayLike | None = None,
        center: ArrayLike | None = None,
        minimum: float = 0.0,
    ) -> None:
        if (hessian is None) == (eigenvalues is None):
            raise ValueError("Quadratic needs exactly one of hessian or eigenvalues")
        if eigenvalues is not None:
            lam = _checks.scalar_or_vector("eigenvalues", eigenvalues, low=0.0, strict=False)
            lam = torch.as_tensor(lam, dtype=torch.float64).reshape(-1)
            _checks.memory("eigenvalues", 8 * len(lam) ** 2, f"a ({len(lam)}, {len(lam)}) hessian")
            self._diagonal: Tensor | None = lam
            self.hessian = torch.diag(lam)
            self.eigenvalues = lam
        else:
            a = _checks.tensor("hessian", hessian, "a square (d, d) matrix")
            if a.dim() != 2 or a.shape[0] != a.shape[1] or a.numel() == 0:
                raise _checks.fail("hessian", "a square (d, d) matrix", a)
            if not bool(torch.isfinite(a).all()):
                raise _checks.fail("hessian", "a finite symmetric matrix", a)
            scale = float(a.abs().max()) or 1.0
            unit = a / scale  # checked and decomposed at scale 1: nothing overflows
            if float((unit - unit.T).abs().max()) > 1e-10:
                raise _checks.fail("hessian", "a finite symmetric matrix", a)
            a = (0.5 * (unit + unit.T)) * scale
            try:
                self.eigenvalues = torch.linalg.eigvalsh(0.5 * (unit + unit.T)) * scale
            except RuntimeError:  # no convergence: an extreme spread of scales
                raise _checks.fail("hessian", "a matrix with an eigen-decomposition", a) from None
            if not bool(torch.isfinite(a).all() and torch.isfinite(self.eigenvalues).all()):
                raise _checks.fail("hessian", "a matrix with eigenvalues within float64", a)
            if float(self.eigenvalues.min()) < -1e-12 * scale:
                raise ValueError(
                    "hessian must be positive semi-definite; smallest eigenvalue "
                    f"{float(self.eigenvalues.min()):.3g}"
                )
            self._diagonal = None
            self.hessian = a
        self.dim = self.hessian.shape[0]
        source = "hessian" if eigenvalues is None else "eigenvalues"
        allowed = f"a finite tensor of shape ({self.dim},), as {source}"
        self.center = (
            torch.zeros(self.dim, dtype=torch.float64)
            if center is None
            else _checks.tensor("center", center, allowed).detach().clone()
        )
        if self.center.shape != (self.dim,) or not bool(torch.isfinite(self.center).all()):
            raise _checks.fail("center", allowed, self.center)
        self.minimum = _checks.real("minimum", minimum)
        self.argmin = self.center

    def _grad_at(self, x: Tensor) -> Tensor:
        if self._diagonal is not None:
            return x * _like(self._diagonal, x)
        return x @ _like(self.hessian, x)

    def value(self, q: Tensor) -> Tensor:
        return self.value_and_grad(q)[0]

    def value_and_grad(self, q: Tensor) -> tuple[Tensor, Tensor]:
        x = q - _like(self.center, q)
        g = self._grad_at(x)
        return torch.linalg.vecdot(x, g).mul_(0.5).add_(self.minimum), g

    def evaluator(self, q: Tensor, scratch: Tensor) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """`value_and_grad` into reused buffers (`Potential.evaluator`), unless a subclass
        changed the loss."""
        if type(self).value_and_grad is not Quadratic.value_and_grad:
            return super().evaluator(q, scratch)
        return _QuadraticEvaluator(self, q, scratch)


class _QuadraticEvaluator:
    """L = ½ xᵀg + L*, g = A x, x = q − c, as `Quadratic.value_and_grad` computes them, with
    no temporary: the product into one gradient buffer, its dot with x through `scratch`, the
    value alternately into two buffers (the previous one survives one call)."""

    def __init__(self, loss: Quadratic, q: Tensor, scratch: Tensor) -> None:
        dtype, device = q.dtype, q.device
        diagonal = loss._diagonal
        self._diagonal = None if diagonal is None else diagonal.to(device, dtype)
        # A is exactly symmetric (symmetrised at construction), so A.T is A; as a transposed
        # view BLAS multiplies by it about 15% faster than by the contiguous A
        self._matrix = loss.hessian.to(device, dtype).T
        center = loss.center.to(device, dtype)
        self._x = torch.empty_like(q) if bool(center.ne(0).any()) else None  # q − 0 = q
        self._center, self._minimum = center, loss.minimum
        self._gradient, self._scratch = torch.empty_like(q), scratch
        self._values = (q.new_empty(q.shape[0]), q.new_empty(q.shape[0]))
        self._turn = 0

    def __call__(self, q: Tensor) -> tuple[Tensor, Tensor]:
        x = q if self._x is None else torch.sub(q, self._center, out=self._x)
        g = self._gradient
        if self._diagonal is not None:
            torch.mul(x, self._diagonal, out=g)
        else:
            torch.mm(x, self._matrix, out=g)
        self._turn ^= 1
        value = torch.sum(torch.mul(x, g, out=self._scratch), -1, out=self._values[self._turn])
        value.mul_(0.5)
        if self._minimum != 0.0:
            value.add_(self._minimum)
        return value, g


class Rosenbrock(Potential):
    """L(θ) = Σᵢ b (θᵢ₊₁ − θᵢ²)² + (1 − θᵢ)², i < d − 1; minimum 0 at θ = (1, …, 1)."""

    dim: int
    minimum: float
    argmin: Tensor

    def __init__(self, dim: int = 2, b: float = 100.0) -> None:
        self.dim = _checks.integer("dim", dim, low=2, high=_MAX_DIM)
        self.b = _checks.real("b", b, low=0.0, strict=True)
        _checks.memory("dim", 8 * self.dim, f"a point of dimension {self.dim}")
        self.minimum = 0.0
        self.argmin = torch.ones(self.dim, dtype=torch.float64)

    def value(self, q: Tensor) -> Tensor:
        x, y = q[:, :-1], q[:, 1:]
        return (self.b * (y - x * x) ** 2 + (1 - x) ** 2).sum(-1)

    def value_and_grad(self, q: Tensor) -> tuple[Tensor, Tensor]:
        x, y = q[:, :-1], q[:, 1:]
        bend = y - x * x
        value = (self.b * bend**2 + (1 - x) ** 2).sum(-1)
        grad = torch.zeros_like(q)
        grad[:, :-1] = -4 * self.b * x * bend - 2 * (1 - x)
        grad[:, 1:] += 2 * self.b * bend
        return value, grad


class DoubleWell(Potential):
    """L(θ) = h Σᵢ ((θᵢ/w)² − 1)²: minima 0 at θᵢ = ±w, barrier h at θᵢ = 0.

    The curvature at a minimum is 8h/w² per coordinate.
    """

    dim: int
    minimum: float
    argmin: Tensor

    def __init__(self, dim: int = 1, barrier: float = 1.0, width: float = 1.0) -> None:
        self.dim = _checks.integer("dim", dim, low=1, high=_MAX_DIM)
        self.barrier = _checks.real("barrier", barrier, low=0.0, strict=True)
        self.width = _checks.real("width", width, low=0.0, strict=True)
        _checks.memory("dim", 8 * self.dim, f"a point of dimension {self.dim}")
        self.minimum = 0.0
        self.argmin = torch.full((self.dim,), self.width, dtype=torch.float64)

    def value(self, q: Tensor) -> Tensor:
        u = q / self.width
        return self.barrier * ((u * u - 1) ** 2).sum(-1)

    def value_and_grad(self, q: Tensor) -> tuple[Tensor, Tensor]:
        u = q / self.width
        well = u * u - 1
        return self.barrier * (well * well).sum(-1), (4 * self.barrier / self.width) * well * u


class AnharmonicChain(Potential):
    """FPU-β chain with fixed ends: L(θ) = Σᵢ₌₀ⁿ ½ rᵢ² + ¼ β rᵢ⁴, rᵢ = θᵢ₊₁ − θᵢ, θ₀ = θₙ₊₁ = 0.

    Minimum 0 at θ = 0, where the Hessian is the chain Laplacian (2 on, −1 off the diagonal).
    """

    dim: int
    minimum: float
    argmin: Tensor

    def __init__(self, n: int = 8, beta: float = 1.0) -> None:
        self.dim = _checks.integer("n", n, low=1, high=_MAX_DIM)
        self.beta = _checks.real("beta", beta, low=0.0)
        _checks.memory("n", 8 * (self.dim + 1) * self.dim, f"a chain of n = {self.dim}")
        self.minimum = 0.0
        self.argmin = torch.zeros(self.dim, dtype=torch.float64)
        # r = θ @ Dᵀ with D (n + 1, n) the bond-difference matrix; ∇L = V'(r) @ D
        i = torch.arange(self.dim)
        self._bonds = torch.zeros(self.dim + 1, self.dim, dtype=torch.float64)
        self._bonds[i, i], self._bonds[i + 1, i] = 1.0, -1.0

    def value(self, q: Tensor) -> Tensor:
        r2 = (q @ _like(self._bonds, q).T) ** 2
        return (r2 * (0.5 + 0.25 * self.beta * r2)).sum(-1)

    def value_and_grad(self, q: Tensor) -> tuple[Tensor, Tensor]:
        bonds = _like(self._bonds, q)
        r = q @ bonds.T
        r2 = r * r
        value = (r2 * (0.5 + 0.25 * self.beta * r2)).sum(-1)
        return value, (r * (1 + self.beta * r2)) @ bonds


class LogisticRegression(Potential):
    """L(θ) = (1/n) Σⱼ log(1 + exp(−yⱼ xⱼᵀθ)) + ½ λ ‖θ‖² on generated, seeded data.

    Features xⱼ ~ N(0, I); labels yⱼ ∈ {−1, +1} with P(yⱼ = 1) = sigmoid(xⱼᵀw), w a random
    teacher. Strictly convex for λ > 0: the minimiser is found by Newton's method at
    construction, so `minimum` and `argmin` are known to round-off.
    """

    dim: int
    minimum: float
    argmin: Tensor

    def __init__(
        self, samples: int = 200, dim: int = 5, *, l2: float = 1e-2, seed: int = 0
    ) -> None:
        self.samples = _checks.integer("samples", samples, low=1, high=_MAX_DIM)
        self.dim = _checks.integer("dim", dim, low=1, high=_MAX_DIM)
        self.l2 = _checks.real("l2", l2, low=0.0, strict=True)
        gen = torch.Generator().manual_seed(_checks.integer("seed", seed, low=0, high=_SEEDS))
        need = 8 * (4 * self.samples * self.dim + 4 * self.dim * self.dim)
        _checks.memory("samples/dim", need, f"{self.samples} samples of dimension {self.dim}")
        self.features = torch.randn(self.samples, self.dim, generator=gen, dtype=torch.float64)
        teacher = 2.0 * torch.randn(self.dim, generator=gen, dtype=torch.float64) / self.dim**0.5
        p = torch.sigmoid(self.features @ teacher)
        self.labels = torch.where(
            torch.rand(self.samples, generator=gen, dtype=torch.float64) < p, 1.0, -1.0
        )
        self.argmin = self._newton()
        self.minimum = float(self.value(self.argmin[None])[0])

    def _margins(self, q: Tensor) -> Tensor:
        return (q @ _like(self.features, q).T) * _like(self.labels, q)

    def value(self, q: Tensor) -> Tensor:
        data = nn.functional.softplus(-self._margins(q)).mean(-1)
        return data + 0.5 * self.l2 * (q * q).sum(-1)

    def value_and_grad(self, q: Tensor) -> tuple[Tensor, Tensor]:
        m = self._margins(q)
        data = nn.functional.softplus(-m).mean(-1)
        weights = torch.sigmoid(-m) * _like(self.labels, q) / self.samples
        grad = self.l2 * q - weights @ _like(self.features, q)
        return data + 0.5 * self.l2 * (q * q).sum(-1), grad

    def _newton(self) -> Tensor:
        theta = torch.zeros(1, self.dim, dtype=torch.float64)
        eye = torch.eye(self.dim, dtype=torch.float64)
        for _ in range(100):
            _, grad = self.value_and_grad(theta)
            s = torch.sigmoid(self._margins(theta))[0]
            curvature = (self.features.T * (s * (1 - s))) @ self.features / self.samples
            step = torch.linalg.solve(curvature + self.l2 * eye, grad[0])
            theta = theta - step
            if float(step.abs().max()) < 1e-15 * (1 + float(theta.abs().max())):
                break
        return theta[0]


class TeacherStudentMLP(Potential):
    """Mean squared error ½ mean((f_θ(x) − f_θ*(x))²) of a one-hidden-layer tanh network.

    θ is the flattened parameter vector of `module` (a `torch.nn.Sequential`); the teacher θ*
    has the same architecture, so the global minimum L* = 0 is attained at θ* (`argmin`) and
    at its symmetric images. Inputs x ~ N(0, I) are generated from `seed`.
    """

    dim: int
    minimum: float
    argmin: Tensor

    def __init__(
        self, input_dim: int = 3, hidden: int = 4, samples: int = 64, *, seed: int = 0
    ) -> None:
        input_dim = _checks.integer("input_dim", input_dim, low=1, high=_MAX_DIM)
        hidden = _checks.integer("hidden", hidden, low=1, high=_MAX_DIM)
        self.samples = _checks.integer("samples", samples, low=1, high=_MAX_DIM)
        gen = torch.Generator().manual_seed(_checks.integer("seed", seed, low=0, high=_SEEDS))
        need = 8 * (4 * (input_dim + 3) * hidden + 2 * self.samples * (input_dim + 1))
        _checks.memory("input_dim/hidden/samples", need, "this network and its data")
        self.module = nn.Sequential(
            nn.Linear(input_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        ).to(torch.float64)
        self._shapes = {name: p.shape for name, p in self.module.named_parameters()}
        self.dim = sum(p.numel() for p in self.module.parameters())
        self.argmin = torch.randn(self.dim, generator=gen, dtype=torch.float64)
        self.inputs = torch.randn(self.samples, input_dim, generator=gen, dtype=torch.float64)
        self.targets = self.predict(self.argmin[None])[0]
        self.minimum = 0.0

    def unflatten(self, q: Tensor) -> dict[str, Tensor]:
        """The parameters of `module` for each row of q: name ↦ tensor (paths, *shape)."""
        sizes = [s.numel() for s in self._shapes.values()]
        parts = torch.split(q, sizes, dim=-1)
        return {
            name: part.reshape(q.shape[0], *shape)
            for (name, shape), part in zip(self._shapes.items(), parts, strict=True)
        }

    def predict(self, q: Tensor) -> Tensor:
        """Network outputs for each row of q: shape (paths, samples)."""
        x = _like(self.inputs, q)

        def forward(params: dict[str, Tensor]) -> Tensor:
            out: Tensor = torch.func.functional_call(self.module, params, (x,))
            return out[:, 0]

        out: Tensor = torch.func.vmap(forward)(self.unflatten(q))
        return out

    def value(self, q: Tensor) -> Tensor:
        err = self.predict(q) - _like(self.targets, q)
        return 0.5 * (err * err).mean(-1)


def _chain_start(n: int) -> Tensor:
    """One half-sine displacement of the chain: its lowest mode, amplitude 1."""
    return torch.sin(torch.pi * torch.arange(1, n + 1, dtype=torch.float64) / (n + 1))


_NAMED: dict[str, Callable[[int], tuple[Potential, Tensor]]] = {
    "quadratic": lambda d: (
        Quadratic(eigenvalues=torch.linspace(1.0, 4.0, d, dtype=torch.float64)),
        torch.ones(d, dtype=torch.float64),
    ),
    "rosenbrock": lambda d: (
        Rosenbrock(d),
        torch.tensor([-1.2, 1.0], dtype=torch.float64).repeat((d + 1) // 2)[:d],
    ),
    "double-well": lambda d: (DoubleWell(d), torch.full((d,), 1.6, dtype=torch.float64)),
    "anharmonic-chain": lambda d: (AnharmonicChain(d), _chain_start(d)),
    "logistic": lambda d: (LogisticRegression(200, d), torch.zeros(d, dtype=torch.float64)),
}
#: The systems known by name (the command line's --system).
NAMES = tuple(_NAMED)


def named(name: str, dim: int) -> tuple[Potential, Tensor]:
    """A system by name, of dimension `dim`, with its standard start q0.

    quadratic: eigenvalues 1 … 4, start (1, …, 1); rosenbrock: start (−1.2, 1, −1.2, …);
    double-well: start 1.6 per coordinate (over the barrier); anharmonic-chain: its lowest
    mode, amplitude 1; logistic: 200 generated samples, start 0.
    """
    if not isinstance(name, str) or name not in _NAMED:
        raise _checks.fail("system", f"one of {', '.join(NAMES)}", name)
    dim = _checks.integer("dim", dim, low=1, high=_MAX_DIM)
    square = name in ("quadratic", "anharmonic-chain", "logistic")  # a (d, d) matrix or more
    need = 32 * dim + (32 * dim * dim if square else 0)
    _checks.memory("dim", need, f"the system {name} of dimension {dim}")
    return _NAMED[name](dim)
