"""The ledger's reductions: sums over parameters on the parameters' own device, returned as
float64 tensors, so that nothing waits for the host between rows.

Norms (kinetic energy, ‖θ‖², step sizes) are accumulated in float64: a float32 or bf16 tensor
is widened `BLOCK` elements at a time into two float64 blocks kept per device (1 MB), so no
float64 copy of a whole tensor is ever made and nothing is allocated per block (allocating a
block at a time fragments the heap: the process grew by the size of a whole float64 copy).
Cross products (⟨Δθ, ∇L⟩, which the shadow energy and the alarm's secant use) are summed in
the buffer's own precision within a block, float64 across blocks: their error is
ε‖a‖‖b‖√BLOCK at most, round-off of the data. float64 tensors are summed as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor

F64 = torch.float64
BLOCK = 1 << 16  # elements reduced at a time


_WORKSPACE: dict[torch.device, tuple[Tensor, Tensor]] = {}


def _wide(x: Tensor, slot: int = 0) -> Tensor:
    """x (at most BLOCK elements) widened to float64 in a reused block of this device."""
    pair = _WORKSPACE.get(x.device)
    if pair is None:
        pair = _WORKSPACE[x.device] = (
            torch.empty(BLOCK, dtype=F64, device=x.device),
            torch.empty(BLOCK, dtype=F64, device=x.device),
        )
    out = pair[slot][: x.numel()]
    out.copy_(x)
    return out


def _spans(n: int) -> list[tuple[int, int]]:
    return [(start, min(start + BLOCK, n)) for start in range(0, n, BLOCK)]


def total(parts: list[Tensor], device: torch.device) -> Tensor:
    """The float64 sum of 0-d partial sums (0 for none)."""
    if not parts:
        return torch.zeros((), dtype=F64, device=device)
    if len(parts) == 1:
        return parts[0].to(F64)
    return torch.stack([p.to(F64) for p in parts]).sum()


def square_parts(a: Tensor) -> list[Tensor]:
    """Partial sums of Σᵢ aᵢ², in float64."""
    flat = a.reshape(-1)
    if flat.dtype == F64:
        return [torch.dot(flat, flat)]
    parts = []
    for start, stop in _spans(flat.numel()):
        wide = _wide(flat[start:stop])
        parts.append(torch.dot(wide, wide))
    return parts


def dot_parts(a: Tensor, b: Tensor) -> list[Tensor]:
    """Partial sums of Σᵢ aᵢbᵢ, in the wider of float32 and a's dtype within a block."""
    x, y = a.reshape(-1), b.reshape(-1)
    dtype = F64 if F64 in (x.dtype, y.dtype) else torch.float32
    if dtype == F64 or x.numel() <= BLOCK:
        return [torch.dot(x.to(dtype), y.to(dtype))]
    return [torch.dot(x[i:j].to(dtype), y[i:j].to(dtype)) for i, j in _spans(x.numel())]


class Metric:
    """A diagonal metric M = sqrt((v − m²)/c) + ε on one parameter tensor (Adam: v the second
    moment, c its bias correction, no m; centred RMSprop: m the running mean), evaluated a
    block at a time."""

    def __init__(self, second: Tensor, correction: float, eps: float, mean: Tensor | None = None):
        self.second, self.correction, self.eps = second.reshape(-1), correction, eps
        self.mean = None if mean is None else mean.reshape(-1)

    def block(self, start: int, stop: int, *, inverse: bool = False) -> Tensor:
        """M (or M⁻¹) over elements [start, stop) of the flattened tensor, in the state's
        dtype."""
        v = self.second[start:stop]
        if self.mean is not None:
            v = v - self.mean[start:stop] ** 2
        elif self.correction != 1.0:
            v = v.div(self.correction)
        m = v.sqrt().add_(self.eps)
        return m.reciprocal_() if inverse else m


def weighted_square_parts(a: Tensor, metric: Metric, *, inverse: bool = False) -> list[Tensor]:
    """Partial sums of Σᵢ Mᵢaᵢ² (with `inverse`, Σᵢ aᵢ²/Mᵢ), in float64."""
    flat, parts = a.reshape(-1), []
    for start, stop in _spans(flat.numel()):
        wide = _wide(flat[start:stop])
        weight = _wide(metric.block(start, stop, inverse=inverse), slot=1)
        parts.append(torch.dot(wide.mul_(wide), weight))
    return parts


def weighted_dot_parts(a: Tensor, b: Tensor, metric: Metric) -> list[Tensor]:
    """Partial sums of Σᵢ Mᵢaᵢbᵢ, in float64."""
    x, y, parts = a.reshape(-1), b.reshape(-1), []
    for start, stop in _spans(x.numel()):
        wide = _wide(x[start:stop]).mul_(_wide(metric.block(start, stop), slot=1))
        parts.append(torch.dot(wide, y[start:stop].to(F64)))
    return parts
