"""The ledger's reductions: sums over parameters on the parameters' own device, returned as
float64 tensors, so that nothing waits for the host between rows.

Norms (kinetic energy, ‖θ‖², step sizes) are accumulated in float64: a float32 or bf16 tensor
is widened `BLOCK` elements at a time into two float64 blocks kept per device (1 MB), so no
float64 copy of a whole tensor is ever made and nothing is allocated per block (allocating a
block at a time fragments the heap: the process grew by the size of a whole float64 copy).
Cross products (⟨Δθ, ∇L⟩, which the shadow energy and the alarm's secant use) of a float32
group that fits in one block are widened like the norms (a few operations for any number of
tensors); larger ones are summed in the buffer's own precision within a block, float64
across blocks: their error is ε‖a‖‖b‖√BLOCK at most, round-off of the data. float64 tensors
are summed as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

F64 = torch.float64
BLOCK = 1 << 16  # elements reduced at a time


_WORKSPACE: dict[torch.device, tuple[Tensor, Tensor]] = {}
_VIEWS: dict[tuple[torch.device, tuple[torch.Size, ...], int], list[Tensor]] = {}
_GATHER: dict[tuple[torch.device, torch.dtype, int], Tensor] = {}


def _workspace(device: torch.device, slot: int = 0) -> Tensor:
    """This device's float64 block `slot` (0 or 1) of `BLOCK` elements."""
    pair = _WORKSPACE.get(device)
    if pair is None:
        pair = _WORKSPACE[device] = (
            torch.empty(BLOCK, dtype=F64, device=device),
            torch.empty(BLOCK, dtype=F64, device=device),
        )
    return pair[slot]


def _wide(x: Tensor, slot: int = 0) -> Tensor:
    """x (at most BLOCK elements) widened to float64 in a reused block of this device."""
    out = _workspace(x.device, slot)[: x.numel()]
    out.copy_(x)
    return out


def _block_views(tensors: Sequence[Tensor], slot: int) -> list[Tensor] | None:
    """Views of this device's float64 block `slot` shaped as `tensors` and laid end to end
    (made once per shapes), or None where they do not fit in one block."""
    key = (tensors[0].device, tuple(t.shape for t in tensors), slot)
    views = _VIEWS.get(key)
    if views is None and sum(t.numel() for t in tensors) <= BLOCK:
        block, at = _workspace(key[0], slot), 0
        views = _VIEWS[key] = []
        for t in tensors:
            views.append(block[at : at + t.numel()].view(t.shape))
            at += t.numel()
    return views


def _spans(n: int) -> list[tuple[int, int]]:
    return [(start, min(start + BLOCK, n)) for start in range(0, n, BLOCK)]


def total(parts: Sequence[Tensor | float], device: torch.device) -> Tensor:
    """The float64 sum of 0-d partial sums (0 for none; host numbers among them are left out:
    they are the constants 0 and NaN of values not measured, never mixed with tensors)."""
    tensors = [p for p in parts if isinstance(p, Tensor)]
    if not tensors:
        return torch.zeros((), dtype=F64, device=device)
    if len(tensors) == 1:
        return tensors[0].to(F64)
    return torch.stack([p.to(F64) for p in tensors]).sum()


def host_sums(values: Sequence[Sequence[Tensor | float]]) -> list[float]:
    """Each value's partial sums (0-d tensors, host numbers) added up on the host, after one
    transfer of all the tensors."""
    parts = [p for x in values for p in x if isinstance(p, Tensor)]
    host = torch.stack(parts).to(F64).tolist() if parts else []
    out, at = [], 0
    for x in values:
        count = sum(isinstance(p, Tensor) for p in x)
        constant = sum(p for p in x if not isinstance(p, Tensor))
        out.append(sum(host[at : at + count], 0.0) + constant)
        at += count
    return out


def square_parts(a: Tensor) -> list[Tensor]:
    """Partial sums of Σᵢ aᵢ², in float64."""
    flat = a if a.dim() == 1 else a.reshape(-1)
    if flat.dtype == F64:
        return [torch.dot(flat, flat)]
    parts = []
    for start, stop in _spans(flat.numel()):
        wide = _wide(flat[start:stop])
        parts.append(torch.dot(wide, wide))
    return parts


def squares_of(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Partial sums of Σ over `tensors` of Σᵢ tᵢ², in float64: their concatenation widened
    `BLOCK` elements at a time into a reused block (one copy and one reduction per block, not
    per tensor); float64 tensors are summed as they are."""
    if len(tensors) < 2 or any(t.dtype == F64 for t in tensors):
        return [p for t in tensors for p in square_parts(t)]
    views = _block_views(tensors, 0)
    if views is not None:  # the common case: one block, no slicing
        torch._foreach_copy_(views, list(tensors))
        wide = _workspace(tensors[0].device)[: sum(v.numel() for v in views)]
        return [torch.dot(wide, wide)]
    flats = [t.reshape(-1) for t in tensors]
    offsets, parts = [0], []
    for t in flats[:-1]:
        offsets.append(offsets[-1] + t.numel())
    for start, stop in _spans(offsets[-1] + flats[-1].numel()):
        pieces = [
            t[max(start - o, 0) : min(stop - o, t.numel())]
            for t, o in zip(flats, offsets, strict=True)
            if o < stop and o + t.numel() > start
        ]
        wide = _workspace(flats[0].device)[: stop - start]
        torch._foreach_copy_(list(torch.split(wide, [p.numel() for p in pieces])), pieces)
        parts.append(torch.dot(wide, wide))
    return parts


def dot_parts(a: Tensor, b: Tensor) -> list[Tensor]:
    """Partial sums of Σᵢ aᵢbᵢ, in the wider of float32 and a's dtype within a block."""
    x = a if a.dim() == 1 else a.reshape(-1)
    y = b if b.dim() == 1 else b.reshape(-1)
    if x.dtype == y.dtype == torch.float32 and x.numel() <= BLOCK:
        return [torch.dot(x, y)]
    dtype = F64 if F64 in (x.dtype, y.dtype) else torch.float32
    if dtype == F64 or x.numel() <= BLOCK:
        return [torch.dot(x.to(dtype), y.to(dtype))]
    return [torch.dot(x[i:j].to(dtype), y[i:j].to(dtype)) for i, j in _spans(x.numel())]


def dots_of(a: Sequence[Tensor], b: Sequence[Tensor]) -> list[Tensor]:
    """Partial sums of Σₜ⟨aₜ, bₜ⟩ over pairs of tensors of one size: float32 pairs that fit in
    one block are widened into this device's two float64 blocks and summed there (three
    operations however many tensors, and no float32 partial sum); others pair by pair
    (`dot_parts`)."""
    if a and all(t.dtype == torch.float32 for t in (*a, *b)):
        left, right = _block_views(a, 0), _block_views(b, 1)
        if left is not None and right is not None:
            torch._foreach_copy_(left, list(a))
            torch._foreach_copy_(right, list(b))
            n = sum(t.numel() for t in a)
            device = a[0].device
            return [torch.dot(_workspace(device, 0)[:n], _workspace(device, 1)[:n])]
    return [p for x, y in zip(a, b, strict=True) for p in dot_parts(x, y)]


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


def _gather(tensors: list[Tensor], offsets: list[int], start: int, stop: int, slot: int) -> Tensor:
    """Elements [start, stop) of the concatenation of flat `tensors` (starting at `offsets`),
    copied into a reused block of this device and dtype (`slot` 0 or 1)."""
    pieces = [
        t[max(start - o, 0) : min(stop - o, t.numel())]
        for t, o in zip(tensors, offsets, strict=True)
        if o < stop and o + t.numel() > start
    ]
    key = (tensors[0].device, tensors[0].dtype, slot)
    block = _GATHER.get(key)
    if block is None:
        block = _GATHER[key] = torch.empty(BLOCK, dtype=key[1], device=key[0])
    out = block[: stop - start]
    if len(pieces) == 1:
        return out.copy_(pieces[0])
    return torch.cat(pieces, out=out)


def weighted_square_flat(flat: Tensor, metrics: list[Metric], sizes: list[int]) -> list[Tensor]:
    """Partial sums of Σᵢ Mᵢaᵢ² over a group's flat buffer `flat`, laid out as tensors of
    `sizes` with their `metrics`, in float64: M = sqrt((v − m²)/c) + ε is formed `BLOCK`
    elements at a time across the tensors, in place in reused blocks (the same values,
    element by element, as each tensor's `Metric.block`), so the cost is that of one tensor
    of the group's size. Metrics that differ in their correction, ε, centring or dtype are
    taken a tensor at a time."""
    first = metrics[0] if metrics else None
    shared = first is not None and all(
        (m.correction, m.eps, m.mean is None, m.second.dtype)
        == (first.correction, first.eps, first.mean is None, first.second.dtype)
        for m in metrics
    )
    if first is None or not shared:
        views = torch.split(flat, sizes)
        return [p for v, m in zip(views, metrics, strict=True) for p in weighted_square_parts(v, m)]
    offsets = [0]
    for n in sizes[:-1]:
        offsets.append(offsets[-1] + n)
    seconds = [m.second for m in metrics]
    means = [m.mean for m in metrics if m.mean is not None]
    parts = []
    for start, stop in _spans(flat.numel()):
        v = _gather(seconds, offsets, start, stop, 0)
        if means:  # centred: v − m² (and no correction)
            v.sub_(_gather(means, offsets, start, stop, 1).square_())
        elif first.correction != 1.0:
            v.div_(first.correction)
        weight = v.sqrt_().add_(first.eps)
        wide = _wide(flat[start:stop])
        parts.append(torch.dot(wide.mul_(wide), _wide(weight, slot=1)))
    return parts
