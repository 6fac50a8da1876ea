"""Gradient-noise estimates: tr(C)/B, the variance of one step's minibatch gradient, per
parameter group (docs/theory.md §4: g_B = ∇L + ξ, Cov ξ = C/B).

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
one step (independent batches) "per_sample" gives the estimate of their mean: ÷ m².
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .layout import F64, GroupLayout

KINDS = ("per_sample", "microbatch", "fluctuation")


@dataclass(frozen=True)
class NoiseEstimate:
    """Per group: `trace` = tr(C)/B and `along` = Δθᵀ(C/B)Δθ (NaN where not estimated)."""

    trace: list[float]
    along: list[float]


def _nan(n: int) -> list[float]:
    return [math.nan] * n


class NoiseEstimator:
    """Collects one booked step's gradients (`observe`, per micro-batch); `take` returns the
    estimate at the row and resets."""

    def __init__(self, layouts: list[GroupLayout]):
        self.layouts = layouts

    def observe(self, per_sample: Tensor | None, steps: list[Tensor] | None) -> None:
        """After (or, per_sample, before) a micro-batch's backward; `steps`: each group's last
        step Δθ (flat float64, either sign), if one was measured."""

    def take(self, grad_sq: list[float]) -> NoiseEstimate:
        """The estimate since the last row (`grad_sq`: ‖g_B‖² of the step, per group)."""
        raise NotImplementedError


class PerSample(NoiseEstimator):
    """tr(C)/B from the per-sample gradients: Σᵢ‖gᵢ − ḡ‖²/(B − 1) = tr(C), ÷ B for the mean."""

    def __init__(self, layouts: list[GroupLayout]):
        super().__init__(layouts)
        self._params = [p for layout in layouts for p in layout.params]
        self._traces = [0.0] * len(layouts)
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
            for g in grads[i : i + len(layout.params)]:
                if g is not None:
                    centred = g.reshape(batch, -1).to(F64)
                    centred = centred - centred.mean(0)
                    self._traces[k] += float(centred.square().sum()) / (batch - 1) / batch
            i += len(layout.params)
        self._count += 1

    def take(self, grad_sq: list[float]) -> NoiseEstimate:
        m = self._count
        traces = [t / m**2 for t in self._traces] if m else _nan(len(self.layouts))
        self._traces, self._count = [0.0] * len(self.layouts), 0
        return NoiseEstimate(traces, _nan(len(self.layouts)))


def per_sample_losses(per_sample: Tensor | None) -> Tensor:
    """The unreduced losses as a flat tensor, or ValueError naming `per_sample`."""
    if per_sample is None:
        raise ValueError("per_sample: noise='per_sample' needs observe(loss, per_sample=losses)")
    losses = per_sample.reshape(-1)
    if losses.numel() < 2:
        raise ValueError(f"per_sample: needs at least 2 samples; got {losses.numel()}")
    return losses


class MicroBatch(NoiseEstimator):
    """Two float64 buffers per group take the accumulated gradient G_j in turn: the one with
    G_{j−1} becomes −d_j = G_{j−1} − G_j in place (it is overwritten next anyway), so a
    micro-batch costs a copy, a subtraction and its dot products."""

    def __init__(self, layouts: list[GroupLayout]):
        super().__init__(layouts)
        self._buffers = [(layout.zeros(), layout.zeros()) for layout in layouts]
        self._views = [
            (layout.views_of(a), layout.views_of(b))
            for layout, (a, b) in zip(layouts, self._buffers, strict=True)
        ]
        self._square = [0.0] * len(layouts)  # Σ‖d_j‖²
        self._projected = [[0.0, 0.0] for _ in layouts]  # Σ⟨d_j, Δθ⟩, Σ⟨d_j, Δθ⟩²
        self._along = False
        self._count = 0

    def observe(self, per_sample: Tensor | None, steps: list[Tensor] | None) -> None:
        j = self._count
        self._along = steps is not None
        for i, layout in enumerate(self.layouts):
            now, before = self._buffers[i][j % 2], self._buffers[i][1 - j % 2]
            torch._foreach_copy_(self._views[i][j % 2], layout.grads())
            increment, sign = (before.sub_(now), -1.0) if j else (now, 1.0)  # ±d_j (G_0 = 0)
            self._square[i] += float(torch.dot(increment, increment))
            if steps is not None:
                p = sign * float(torch.dot(increment, steps[i]))
                self._projected[i][0] += p
                self._projected[i][1] += p * p
        self._count += 1

    def take(self, grad_sq: list[float]) -> NoiseEstimate:
        m = self._count
        traces, alongs = [], []
        for i in range(len(self.layouts)):
            if m < 2:
                traces.append(math.nan)
                alongs.append(math.nan)
            else:  # the variance of the sum of m increments: m·Var(d)
                total = self._buffers[i][(m - 1) % 2]  # Σ d_j: the accumulated gradient
                var = (self._square[i] - float(torch.dot(total, total)) / m) / (m - 1)
                traces.append(m * var)
                first, second = self._projected[i]
                alongs.append(
                    m * (second - first * first / m) / (m - 1) if self._along else math.nan
                )
            self._square[i] = 0.0
            self._projected[i] = [0.0, 0.0]
        self._count = 0
        return NoiseEstimate(traces, alongs)


class Fluctuation(NoiseEstimator):
    """‖g_B‖² per group, measured by the probe with the step's gradient; nothing along Δθ."""

    def take(self, grad_sq: list[float]) -> NoiseEstimate:
        return NoiseEstimate(list(grad_sq), _nan(len(self.layouts)))


def estimator(kind: str | None, layouts: list[GroupLayout]) -> NoiseEstimator | None:
    """The estimator `kind` names (None: no estimate)."""
    if kind is None:
        return None
    if kind == "per_sample":
        return PerSample(layouts)
    if kind == "microbatch":
        return MicroBatch(layouts)
    if kind == "fluctuation":
        return Fluctuation(layouts)
    raise ValueError(f"noise must be None or one of {', '.join(KINDS)}; got {kind!r}")
