"""What a gradient-noise estimator is: how it weighs a group's noise (`Weighing`: M⁻¹ of the
map's metric, the identity for SGD), what it returns (`NoiseEstimate`: tr(M⁻¹C)/B, the noise
along the last step and ‖g_B‖²_{M⁻¹} per group, as float64 tensors on the parameters' device)
and its `observe`/`take` contract (`NoiseEstimator`); the estimators are in
`inertia.monitor.noise`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import reduce
from .layout import F64, GroupLayout, Segments
from .maps import METRIC_KINDS, GroupMap, metric

Values = list[Tensor]  # one 0-d float64 tensor per parameter group


@dataclass(frozen=True)
class Weighing:
    """How a group's gradient noise is weighed: by M⁻¹ of each parameter tensor (`metrics`;
    None: the identity). `known` is False where the map has a metric the optimizer has no
    state for yet (Adam's first step): that group's estimate is NaN."""

    metrics: list[reduce.Metric] | None = None
    known: bool = True

    def metric(self, j: int) -> reduce.Metric | None:
        """M of parameter tensor j (None: the identity)."""
        return None if self.metrics is None else self.metrics[j]

    def parts(self, x: Tensor, j: int) -> list[Tensor]:
        """Partial sums of ‖x‖²_{M⁻¹} for parameter tensor j (plain ‖x‖² where M = I)."""
        metric = self.metric(j)
        if metric is None:
            return reduce.square_parts(x)
        return reduce.weighted_square_parts(x, metric, inverse=True)

    def square(self, x: Tensor, j: int, device: torch.device) -> Tensor:
        """‖x‖²_{M⁻¹} for parameter tensor j, a 0-d float64 tensor on `device`."""
        return reduce.total(self.parts(x, j), device)


EUCLIDEAN = Weighing()


@dataclass(frozen=True)
class NoiseEstimate:
    """Per group: `trace` = tr(M⁻¹C)/B, `along` = Δθᵀ(C/B)Δθ and `gradient` = ‖g_B‖²_{M⁻¹} of
    the step's gradient as the backward passes left it (NaN where not estimated); `batch`, the
    samples behind the step where known; `segments`: the trace per segment of the per-layer
    books, or None; `clip`: c² = ‖g‖²_{M⁻¹}/‖g_B‖²_{M⁻¹}, the square of the factor by which
    the gradient the step used (`.grad` at the step: after clipping) differs from g_B, so that
    the step's noise is c·ξ and its heat c² times that of g_B's (None: not measured, 1)."""

    trace: Values
    along: Values
    gradient: Values
    batch: int | None = None
    segments: Tensor | None = None
    clip: Values | None = None


class NoiseEstimator:
    """Collects one booked step's gradients (`observe`, per micro-batch); `take` returns the
    estimate at the row and resets."""

    def __init__(self, layouts: list[GroupLayout], segments: Segments | None = None):
        self.layouts, self.segments = layouts, segments
        self.device = layouts[0].device if layouts else torch.device("cpu")
        self._nan = torch.full((), float("nan"), dtype=F64, device=self.device)
        self._zero = torch.zeros((), dtype=F64, device=self.device)
        self._batch: int | None = 0

    def nan(self) -> Values:
        return [self._nan] * len(self.layouts)

    def unknown(self, gradient: Values, batch: int | None) -> NoiseEstimate:
        """No estimate at this row (NaN per group, and per segment of the per-layer books, so
        that every row has the same columns), with the step's ‖g_B‖² and batch."""
        segments = None
        if self.segments is not None:
            segments = self._nan.expand(len(self.segments.names))
        return NoiseEstimate(self.nan(), self.nan(), gradient, batch, segments)

    def observe(
        self,
        per_sample: Tensor | None,
        steps: list[Tensor] | None,
        weighing: list[Weighing],
        *,
        batch: int | None = None,
        unscale: Tensor | None = None,
    ) -> None:
        """After (or, per_sample, before) a micro-batch's backward; `steps`: each group's last
        step Δθ (flat, either sign), if one was measured; `weighing`: each group's metric;
        `batch`: its samples, if known; `unscale`: 1/S where the gradients are still scaled by
        a GradScaler's S."""
        if batch is None or self._batch is None:
            self._batch = None
        else:
            self._batch += batch

    def take(self, weighing: list[Weighing]) -> NoiseEstimate:
        """The estimate since the last row (`weighing`: each group's metric, for ‖g_B‖²)."""
        raise NotImplementedError

    def discard(self) -> None:
        """Forget what was observed since the last row: its step is left unbooked, and a
        partial sum must not reach the next row's estimate."""
        self._batch = 0

    def _gradient(self, weighing: list[Weighing]) -> Values:
        """‖g_B‖²_{M⁻¹} of each group's gradient now (the step's, unscaled at the row)."""
        out = []
        for layout, w in zip(self.layouts, weighing, strict=True):
            grads = layout.grads()
            parts = [p for j, g in enumerate(grads) for p in w.parts(g, j)]
            out.append(reduce.total(parts, self.device) if w.known else self._nan)
        return out

    def _batch_taken(self) -> int | None:
        batch, self._batch = self._batch, 0
        return batch or None


def weighing(optimizer: torch.optim.Optimizer, maps: list[GroupMap]) -> list[Weighing]:
    """Each group's metric for its gradient noise: M⁻¹ of the state the step starts from for a
    map with a metric (unknown before the optimizer has one), the identity otherwise."""
    out = []
    for group, m in zip(optimizer.param_groups, maps, strict=True):
        if m.kind not in METRIC_KINDS:
            out.append(EUCLIDEAN)
            continue
        metrics = metric(optimizer, group, m, before=True)
        out.append(Weighing(metrics, known=metrics is not None))
    return out
