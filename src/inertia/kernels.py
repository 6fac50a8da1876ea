"""The integrators' per-step arithmetic on the (paths, d) state, in as few passes as torch allows.

An integrator step is a dozen elementwise passes over arrays of a few hundred kilobytes, so
what costs is allocating (fresh pages for every temporary of that size), writing a third array
where two would do, and the count of operations. `Evaluation` evaluates L and ∇L into buffers
reused every step; for `systems.Quadratic` (the benchmark's and the theory's loss) it is one
matrix product and one row-wise dot, with no temporary. The values are those of
`potential.value_and_grad` to round-off (the same operations, the matrix product through the
transposed view of the symmetric Hessian, which BLAS runs faster).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .dynamics import Potential
from .systems import Quadratic

__all__ = ["Evaluation", "evaluation"]


class Evaluation:
    """(L(q), ∇L(q)) of the current q, by the potential's own `value_and_grad`.

    Subclasses write into buffers: the gradient into one reused (paths, d) buffer, the value
    alternately into two (paths,) buffers, so that the previous value survives one evaluation
    (the integrator books their difference). Callers must not keep either across two calls.
    """

    def __init__(self, potential: Potential) -> None:
        self.potential = potential

    def __call__(self, q: Tensor) -> tuple[Tensor, Tensor]:
        return self.potential.value_and_grad(q)


class _QuadraticEvaluation(Evaluation):
    """L = ½ xᵀg + L*, g = A x, x = q − c: one product into the gradient buffer, its dot with
    x through `scratch` (shared with the integrator: free between sub-steps)."""

    def __init__(self, potential: Quadratic, q: Tensor, scratch: Tensor) -> None:
        super().__init__(potential)
        dtype, device = q.dtype, q.device
        diagonal = potential._diagonal  # the same package's
        self._diagonal = None if diagonal is None else diagonal.to(device, dtype)
        # A is exactly symmetric (symmetrised at construction), so A.T is A; as a transposed
        # view BLAS multiplies by it about 15% faster than by the contiguous A
        self._matrix = potential.hessian.to(device, dtype).T
        center = potential.center.to(device, dtype)
        self._center = center if bool(center.ne(0).any()) else None  # q − 0 = q exactly
        self._minimum = potential.minimum
        self._x = torch.empty_like(q) if self._center is not None else None
        self._gradient = torch.empty_like(q)
        self._values = (q.new_empty(q.shape[0]), q.new_empty(q.shape[0]))
        self._scratch = scratch
        self._turn = 0

    def __call__(self, q: Tensor) -> tuple[Tensor, Tensor]:
        x = q
        if self._x is not None and self._center is not None:
            x = torch.sub(q, self._center, out=self._x)
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


def evaluation(potential: Potential, q: Tensor, scratch: Tensor) -> Evaluation:
    """The evaluation of `potential` for states shaped and typed like q; `scratch`, a buffer
    like q, may be overwritten by every call."""
    if type(potential) is Quadratic:
        return _QuadraticEvaluation(potential, q, scratch)
    return Evaluation(potential)
