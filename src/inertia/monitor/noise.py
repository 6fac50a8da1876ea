"""Gradient-noise estimates: tr(C)/B, the variance of one step's minibatch gradient, per
parameter group (docs/theory.md §4: g_B = ∇L + ξ, Cov ξ = C/B), as float64 tensors on the
parameters' device.

- "per_sample": exact from per-sample gradients (vectorised autograd over the unreduced losses,
  which `observe(loss, per_sample=losses)` receives before `backward`); for small and medium
  models: it holds B gradients at once.
- "microbatch": the spread of the gradients of the m micro-batches of one step
  (`observe(loss, accumulate=True)` after each micro-batch's `backward`): the accumulated
  gradient is a sum of m independent increments d_j, so its variance is m·Var(d).
- "fluctuation": no extra work, ‖g_B‖² of the step: tr(C)/B + ‖∇L‖², so an upper bound that is
  tight at stationarity, where ∇L ≈ 0.

"microbatch" also gives the noise along the last step, Δθᵀ(C/B)Δθ (the secant margin's
standard error, `inertia.monitor.alarm`); the others cannot (NaN). Over the m micro-batches of
one step (independent batches) "per_sample" gives the estimate of their mean: ÷ m². With
per-layer books (`segments`) each estimator also gives tr(C)/B per segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import reduce
from .layout import F64, GroupLayout, Segments

KINDS = ("per_sample", "microbatch", "fluctuation")
Values = list[Tensor]  # one 0-d float64 tensor per parameter group


@dataclass(frozen=True)
class NoiseEstimate:
    """Per group: `trace` = tr(C)/B and `along` = Δθᵀ(C/B)Δθ (NaN where not estimated);
    `segments`: tr(C)/B per segment of the per-layer books, or None."""

    trace: Values
    along: Values
    segments: Tensor | None = None


class NoiseEstimator:
    """Collects one booked step's gradients (`observe`, per micro-batch); `take` returns the
    estimate at the row and resets."""

    def __init__(self, layouts: list[GroupLayout], segments: Segments | None = None):
        self.layouts, self.segments = layouts, segments
        self.device = layouts[0].device if layouts else torch.device("cpu")
        self._nan = torch.full((), float("nan"), dtype=F64, device=self.device)
        self._zero = torch.zeros((), dtype=F64, device=self.device)

    def nan(self) -> Values:
        return [self._nan] * len(self.layouts)

    def observe(self, per_sample: Tensor | None, steps: list[Tensor] | None) -> None:
        """After (or, per_sample, before) a micro-batch's backward; `steps`: each group's last
        step Δθ (flat, either sign), if one was measured."""

    def take(self) -> NoiseEstimate:
        """The estimate since the last row."""
        raise NotImplementedError


class PerSample(NoiseEstimator):
    """tr(C)/B from the per-sample gradients: Σᵢ‖gᵢ − ḡ‖²/(B − 1) = tr(C), ÷ B for the mean."""

    def __init__(self, layouts: list[GroupLayout], segments: Segments | None = None):
        super().__init__(layouts, segments)
        self._params = [p for layout in layouts for p in layout.params]
        self._tensors: list[list[Tensor]] = [[self._zero] * len(x.params) for x in layouts]
        self._count = 0

    def observe(self, per_sample: Tensor | None, steps: list[Tensor] | None) -> None:
        losses = per_sample_losses(per_sample)
        batch = losses.numel()
        grads = torch.autograd.grad(
            losses,
            self._params,
            grad_outputs=torch.eye(batch, dtype=losses.dtype, device=losses.device),
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
        i = 0
        for k, layout in enumerate(self.layouts):
            for j, g in enumerate(grads[i : i + len(layout.params)]):
                if g is not None:  # Σ over samples of ‖gᵢ − ḡ‖² / (B − 1) = tr(C); ÷ B: the mean's
                    centred = g.reshape(batch, -1).to(F64)
                    centred = centred - centred.mean(0)
                    trace = centred.square().sum() / (batch - 1) / batch
                    self._tensors[k][j] = self._tensors[k][j] + trace
            i += len(layout.params)
        self._count += 1

    def take(self) -> NoiseEstimate:
        m = self._count
        traces = self._tensors
        self._tensors, self._count = [[self._zero] * len(x.params) for x in self.layouts], 0
        if not m:
            return NoiseEstimate(self.nan(), self.nan())
        groups = [_sum(t, self._zero) / m**2 for t in traces]
        segments = None if self.segments is None else self.segments.sum(traces) / m**2
        return NoiseEstimate(groups, self.nan(), segments)


def _sum(values: list[Tensor], zero: Tensor) -> Tensor:
    """Σ of 0-d tensors in order (as a running sum: the same floats as a Python loop)."""
    out = zero
    for i, v in enumerate(values):
        out = v if i == 0 else out + v
    return out


def per_sample_losses(per_sample: Tensor | None) -> Tensor:
    """The unreduced losses as a flat tensor, or ValueError naming `per_sample`."""
    if per_sample is None:
        raise ValueError("per_sample: noise='per_sample' needs observe(loss, per_sample=losses)")
    losses = per_sample.reshape(-1)
    if losses.numel() < 2:
        raise ValueError(f"per_sample: needs at least 2 samples; got {losses.numel()}")
    return losses


def _squares(views: list[Tensor], device: torch.device) -> list[Tensor]:
    return [reduce.total(reduce.square_parts(v), device) for v in views]


class MicroBatch(NoiseEstimator):
    """One buffer per group, in the parameters' precision, holds the accumulated gradient
    G_{j−1}; micro-batch j turns it into −d_j = G_{j−1} − G_j in place for its dot products,
    then takes G_j: a copy, a subtraction and the dots per micro-batch."""

    def __init__(self, layouts: list[GroupLayout], segments: Segments | None = None):
        super().__init__(layouts, segments)
        self._buffers = [layout.zeros() for layout in layouts]
        self._views = [x.views_of(b) for x, b in zip(layouts, self._buffers, strict=True)]
        self._reset()

    def _reset(self) -> None:
        n = len(self.layouts)
        self._square = [self._zero] * n  # Σ‖d_j‖²
        self._tensor_squares = [[self._zero] * len(x.params) for x in self.layouts]
        self._projected = [[self._zero, self._zero] for _ in range(n)]  # Σ⟨d, Δθ⟩, Σ⟨d, Δθ⟩²
        self._along = False
        self._count = 0

    def observe(self, per_sample: Tensor | None, steps: list[Tensor] | None) -> None:
        j = self._count
        self._along = steps is not None
        for i, layout in enumerate(self.layouts):
            grads, views, buffer = layout.grads(), self._views[i], self._buffers[i]
            if j:  # −d_j = G_{j−1} − G_j
                torch._foreach_sub_(views, grads)
            else:  # d_0 = G_0 (G_{−1} = 0)
                torch._foreach_copy_(views, grads)
            if self.segments is None:
                self._square[i] = self._square[i] + reduce.total(
                    reduce.square_parts(buffer), self.device
                )
            else:
                squares = _squares(views, self.device)
                self._tensor_squares[i] = [
                    a + b for a, b in zip(self._tensor_squares[i], squares, strict=True)
                ]
                self._square[i] = self._square[i] + torch.stack(squares).sum()
            if steps is not None:
                p = reduce.total(reduce.dot_parts(buffer, steps[i]), self.device)
                p = -p if j else p
                first, second = self._projected[i]
                self._projected[i] = [first + p, second + p * p]
            if j:
                torch._foreach_copy_(views, grads)  # G_j, for the next increment
        self._count += 1

    def take(self) -> NoiseEstimate:
        m = self._count
        if m < 2:
            self._reset()
            return NoiseEstimate(self.nan(), self.nan())
        traces, alongs, tensors = [], [], []
        for i, buffer in enumerate(self._buffers):  # the buffer holds G_m = Σ d_j
            total = reduce.total(reduce.square_parts(buffer), self.device)
            traces.append(m * ((self._square[i] - total / m) / (m - 1)))
            first, second = self._projected[i]
            along = m * (second - first * first / m) / (m - 1)
            alongs.append(along if self._along else self._nan)
            if self.segments is not None:
                totals = _squares(self._views[i], self.device)
                tensors.append(
                    [
                        m * ((s - t / m) / (m - 1))
                        for s, t in zip(self._tensor_squares[i], totals, strict=True)
                    ]
                )
        segments = None if self.segments is None else self.segments.sum(tensors)
        self._reset()
        return NoiseEstimate(traces, alongs, segments)


class Fluctuation(NoiseEstimator):
    """‖g_B‖² of the step's gradient, per group; nothing along Δθ."""

    def take(self) -> NoiseEstimate:
        per_tensor = [_squares(layout.grads(), self.device) for layout in self.layouts]
        groups = [_sum(t, self._zero) for t in per_tensor]
        segments = None if self.segments is None else self.segments.sum(per_tensor)
        return NoiseEstimate(groups, self.nan(), segments)


def estimator(
    kind: str | None, layouts: list[GroupLayout], segments: Segments | None = None
) -> NoiseEstimator | None:
    """The estimator `kind` names (None: no estimate)."""
    if kind is None:
        return None
    if kind == "per_sample":
        return PerSample(layouts, segments)
    if kind == "microbatch":
        return MicroBatch(layouts, segments)
    if kind == "fluctuation":
        return Fluctuation(layouts, segments)
    raise ValueError(f"noise must be None or one of {', '.join(KINDS)}; got {kind!r}")
