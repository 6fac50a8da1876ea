"""Gradient-noise estimates: tr(M⁻¹C)/B, the variance of one step's minibatch gradient in the
map's metric M (the identity for SGD, diag(sqrt(v̂) + ε) for Adam; docs/theory.md §4:
g_B = ∇L + ξ, Cov ξ = C/B, and the kick −hM⁻¹ξ heats K = ½uᵀMu by ½h²·tr(M⁻¹C)/B), per
parameter group, as float64 tensors on the parameters' device.

- "per_sample": exact from per-sample gradients (vectorised autograd over the unreduced losses,
  which `observe(loss, per_sample=losses)` receives before `backward`); for small and medium
  models: it holds B gradients at once.
- "microbatch": the spread of the gradients of the m micro-batches of one step
  (`observe(loss, accumulate=True)` after each micro-batch's `backward`): the accumulated
  gradient is a sum of m independent increments d_j, so its variance is m·Var(d).
- "fluctuation": no extra work, ‖g_B‖²_{M⁻¹} of the step: tr(M⁻¹C)/B + ‖∇L‖²_{M⁻¹}, so an upper
  bound that is tight at stationarity, where ∇L ≈ 0.
- "ranks" (DDP): the two-batch estimator of McCandlish et al. 2018 (appendix A, as GPT-NeoX
  computes it) from each rank's local gradient g_r, read by a communication hook before the
  all-reduce, beside the all-reduced mean ḡ: no extra buffer, one scalar per group.

Each estimate also gives ‖g_B‖²_{M⁻¹}, the step's gradient, for the gradient noise scale
B·tr(M⁻¹C)/B ÷ (‖g_B‖² − tr(M⁻¹C)/B) (McCandlish et al. 2018, with an unbiased ‖G‖²).
"microbatch" also gives the noise along the last step, Δθᵀ(C/B)Δθ (Euclidean: the secant
margin's standard error, `inertia.monitor.alarm`); the others cannot (NaN). Over the m
micro-batches of one step (independent batches) "per_sample" gives the estimate of their mean:
÷ m². With per-layer books (`segments`) each estimator also gives its trace per segment.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from . import reduce
from .estimate import (
    EUCLIDEAN,
    NoiseEstimate,
    NoiseEstimator,
    Weighing,
)
from .layout import F64, GroupLayout, Segments

KINDS = ("per_sample", "microbatch", "fluctuation", "ranks")


class PerSample(NoiseEstimator):
    """tr(M⁻¹C)/B from the per-sample gradients: Σᵢ‖gᵢ − ḡ‖²_{M⁻¹}/(B − 1) = tr(M⁻¹C), ÷ B
    for the mean."""

    def __init__(self, layouts: list[GroupLayout], segments: Segments | None = None):
        super().__init__(layouts, segments)
        self._params = [p for layout in layouts for p in layout.params]
        self._warned = False
        self._reset()

    def _reset(self) -> None:
        self._tensors: list[list[Tensor]] = [[self._zero] * len(x.params) for x in self.layouts]
        self._known = [True] * len(self.layouts)
        self._unreached: set[tuple[int, int]] = set()  # (group, tensor) without a gradient
        self._count = 0

    def observe(
        self,
        per_sample: Tensor | None,
        steps: list[Tensor] | None,
        weighing: list[Weighing],
        *,
        batch: int | None = None,
        unscale: Tensor | None = None,
    ) -> None:
        losses = per_sample_losses(per_sample)
        size = losses.numel()
        super().observe(per_sample, steps, weighing, batch=size)
        try:  # None where a parameter is unused (allow_unused)
            grads: tuple[Tensor | None, ...] = torch.autograd.grad(
                losses,
                self._params,
                grad_outputs=torch.eye(size, dtype=losses.dtype, device=losses.device),
                is_grads_batched=True,
                retain_graph=True,
                allow_unused=True,
            )
        except NotImplementedError as error:  # batched gradients have no sparse kernels
            if "Sparse" not in str(error):
                raise
            raise ValueError(
                "noise='per_sample' needs dense gradients, and a parameter's is sparse "
                "(nn.Embedding(sparse=True)?); noise='microbatch' reads sparse gradients"
            ) from None
        i = 0
        for k, (layout, w) in enumerate(zip(self.layouts, weighing, strict=True)):
            self._known[k] = self._known[k] and w.known
            for j, g in enumerate(grads[i : i + len(layout.params)]):
                if g is None:
                    self._unreached.add((k, j))
                else:  # Σ over samples of ‖gᵢ − ḡ‖² / (B − 1) = tr(C); ÷ B: the mean's
                    centred = g.reshape(size, -1).to(F64)
                    centred = centred - centred.mean(0)
                    spread = centred.square().sum(0)
                    metric = w.metric(j)
                    if metric is not None:
                        spread = spread * metric.block(0, spread.numel(), inverse=True).to(F64)
                    trace = spread.sum() / (size - 1) / size
                    self._tensors[k][j] = self._tensors[k][j] + trace
            i += len(layout.params)
        self._count += 1

    def take(self, weighing: list[Weighing]) -> NoiseEstimate:
        m, traces, known, unreached = self._count, self._tensors, self._known, self._unreached
        self._reset()
        gradient, batch = self._gradient(weighing), self._batch_taken()
        if not m:
            return self.unknown(gradient, batch)
        for k, j in unreached:  # no per-sample gradient, yet the step's backward reached it
            if self.layouts[k].params[j].grad is not None:
                traces[k][j] = self._nan
                self._warn_unreached()
        groups = [
            _sum(t, self._zero) / m**2 if ok else self._nan
            for t, ok in zip(traces, known, strict=True)
        ]
        segments = None if self.segments is None else self.segments.sum(traces) / m**2
        return NoiseEstimate(groups, self.nan(), gradient, batch, segments)

    def discard(self) -> None:
        super().discard()
        self._reset()

    def _warn_unreached(self) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(
                "inertia: noise='per_sample' found no per-sample gradient for parameters the "
                "backward then reached (activation checkpointing with use_reentrant=True hides "
                "them: use use_reentrant=False); their noise is NaN, not 0",
                RuntimeWarning,
                stacklevel=2,
            )


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


class MicroBatch(NoiseEstimator):
    """One buffer per group, in the parameters' precision, holds the accumulated gradient
    G_{j−1}; micro-batch j turns it into −d_j = G_{j−1} − G_j in place for its dot products,
    then takes G_j: a copy, a subtraction and the dots per micro-batch. Gradients a GradScaler
    still scales by S are divided by it (`unscale`), so the estimate is the unscaled one."""

    def __init__(self, layouts: list[GroupLayout], segments: Segments | None = None):
        super().__init__(layouts, segments)
        self._buffers = [layout.zeros() for layout in layouts]
        self._views = [x.views_of(b) for x, b in zip(layouts, self._buffers, strict=True)]
        self._reset()

    def _reset(self) -> None:
        n = len(self.layouts)
        self._square = [self._zero] * n  # Σ‖d_j‖²_{M⁻¹}
        self._tensor_squares = [[self._zero] * len(x.params) for x in self.layouts]
        self._projected = [[self._zero, self._zero] for _ in range(n)]  # Σ⟨d, Δθ⟩, Σ⟨d, Δθ⟩²
        self._known = [True] * n
        self._unscale: Tensor | None = None
        self._along = False
        self._count = 0

    def observe(
        self,
        per_sample: Tensor | None,
        steps: list[Tensor] | None,
        weighing: list[Weighing],
        *,
        batch: int | None = None,
        unscale: Tensor | None = None,
    ) -> None:
        super().observe(per_sample, steps, weighing, batch=batch)
        j, self._unscale = self._count, unscale
        self._along = steps is not None
        for i, (layout, w) in enumerate(zip(self.layouts, weighing, strict=True)):
            grads, views, buffer = layout.grads(), self._views[i], self._buffers[i]
            self._known[i] = self._known[i] and w.known
            # −d_j = G_{j−1} − G_j; d_0 = G_0 (G_{−1} = 0); torch's foreach ops refuse []
            if views:
                (torch._foreach_sub_ if j else torch._foreach_copy_)(views, grads)
            squares = self._squares(views, buffer, w)
            if unscale is not None:
                squares = [s * unscale * unscale for s in squares]
            self._square[i] = self._square[i] + _sum(squares, self._zero)
            if self.segments is not None:
                self._tensor_squares[i] = [
                    a + b for a, b in zip(self._tensor_squares[i], squares, strict=True)
                ]
            if steps is not None:
                p = reduce.total(reduce.dot_parts(buffer, steps[i]), self.device)
                p = -p if j else p
                p = p if unscale is None else p * unscale
                first, second = self._projected[i]
                self._projected[i] = [first + p, second + p * p]
            if j and views:
                torch._foreach_copy_(views, grads)  # G_j, for the next increment
        self._count += 1

    def discard(self) -> None:
        super().discard()
        self._reset()

    def _squares(self, views: list[Tensor], flat: Tensor, weighing: Weighing) -> list[Tensor]:
        """‖x‖²_{M⁻¹} of a group's buffer, per parameter tensor (one flat sum where neither a
        metric nor per-layer books need them apart)."""
        if weighing.metrics is None and self.segments is None:
            return [reduce.total(reduce.square_parts(flat), self.device)]
        return [weighing.square(v, t, self.device) for t, v in enumerate(views)]

    def take(self, weighing: list[Weighing]) -> NoiseEstimate:
        """The estimate, with ‖g_B‖² of the accumulated gradient as the micro-batches left it
        (before any clipping of `.grad`)."""
        m = self._count
        batch = self._batch_taken()
        if m < 2:
            gradient = self._gradient(weighing)
            self._reset()
            return self.unknown(gradient, batch)
        traces, alongs, tensors, gradient = [], [], [], []
        used = self._gradient(weighing)  # ‖g‖² of `.grad` as the step takes it
        for i, views in enumerate(self._views):  # the buffer holds G_m = Σ d_j
            totals = self._squares(views, self._buffers[i], weighing[i])
            if self._unscale is not None:
                totals = [x * self._unscale * self._unscale for x in totals]
            gradient.append(_sum(totals, self._zero) if weighing[i].known else self._nan)
            trace = m * ((self._square[i] - _sum(totals, self._zero) / m) / (m - 1))
            traces.append(trace if self._known[i] else self._nan)
            if self.segments is not None:
                tensors.append(
                    [
                        m * ((s - t / m) / (m - 1))
                        for s, t in zip(self._tensor_squares[i], totals, strict=True)
                    ]
                )
            first, second = self._projected[i]
            along = m * (second - first * first / m) / (m - 1)
            alongs.append(along if self._along else self._nan)
        segments = None if self.segments is None else self.segments.sum(tensors)
        clip = [u / g for u, g in zip(used, gradient, strict=True)]
        self._reset()
        return NoiseEstimate(traces, alongs, gradient, batch, segments, clip)


class Fluctuation(NoiseEstimator):
    """‖g_B‖²_{M⁻¹} of the step's gradient, per group; nothing along Δθ."""

    def take(self, weighing: list[Weighing]) -> NoiseEstimate:
        per_tensor = [
            [w.square(g, j, self.device) for j, g in enumerate(x.grads())]
            for x, w in zip(self.layouts, weighing, strict=True)
        ]
        groups = [
            _sum(t, self._zero) if w.known else self._nan
            for t, w in zip(per_tensor, weighing, strict=True)
        ]
        segments = None if self.segments is None else self.segments.sum(per_tensor)
        return NoiseEstimate(groups, self.nan(), groups, self._batch_taken(), segments)


class TwoBatch(NoiseEstimator):
    """tr(M⁻¹C)/B from W data-parallel ranks of b samples each. A communication hook on the DDP
    module reads each rank's local gradient g_r before its all-reduce and adds ‖g_r‖²_{M⁻¹} per
    parameter tensor (a scalar each: no buffer). With ḡ the all-reduced mean,
    E‖g_r‖² = ‖∇L‖² + tr(C)/b and E‖ḡ‖² = ‖∇L‖² + tr(C)/(Wb), so each rank's
    W(‖g_r‖² − ‖ḡ‖²)/(W − 1) estimates tr(M⁻¹C)/b, and their mean over ranks ÷ W (as every
    rank's own estimate is reduced, `inertia.monitor.ranks`) is the global batch's. The last
    synchronised backward before the row counts (accumulate under `no_sync`); nothing along
    Δθ."""

    def __init__(
        self,
        layouts: list[GroupLayout],
        segments: Segments | None,
        model: torch.nn.parallel.DistributedDataParallel,
        weigh: Callable[[], list[Weighing]],
    ):
        super().__init__(layouts, segments)
        self._where = {p: (i, j) for i, x in enumerate(layouts) for j, p in enumerate(x.params)}
        self._weigh, self._weighing = weigh, [EUCLIDEAN] * len(layouts)
        self._group = model.process_group
        self._world = torch.distributed.get_world_size(self._group)
        self._local = [[self._zero] * len(x.params) for x in layouts]
        self._fresh = False  # a synchronised backward since the last row
        self._unscale: Tensor | None = None
        # DDP checks a hook's annotations against its own types; this file's are strings
        model.register_comm_hook(None, lambda state, bucket: self._hook(bucket))

    def _hook(self, bucket: Any) -> torch.futures.Future[Tensor]:  # a dist.GradBucket
        """‖g_r‖²_{M⁻¹} of the bucket's local gradients, then DDP's own all-reduce."""
        if bucket.index() == 0:  # the first bucket of a backward
            self._weighing = self._weigh()
            self._local = [[self._zero] * len(x.params) for x in self.layouts]
            self._fresh = True
        for p, g in zip(bucket.parameters(), bucket.gradients(), strict=True):
            if p in self._where:
                i, j = self._where[p]
                square = self._weighing[i].square(g, j, self.device)
                self._local[i][j] = self._local[i][j] + square
        return allreduce_hook(self._group, bucket)

    def observe(
        self,
        per_sample: Tensor | None,
        steps: list[Tensor] | None,
        weighing: list[Weighing],
        *,
        batch: int | None = None,
        unscale: Tensor | None = None,
    ) -> None:
        super().observe(per_sample, steps, weighing, batch=batch)
        self._unscale = unscale

    def discard(self) -> None:
        super().discard()
        self._fresh = False

    def take(self, weighing: list[Weighing]) -> NoiseEstimate:
        global_ = [
            [w.square(g, j, self.device) for j, g in enumerate(x.grads())]
            for x, w in zip(self.layouts, weighing, strict=True)
        ]
        gradient = [_sum(t, self._zero) for t in global_]
        batch, fresh, self._fresh = self._batch_taken(), self._fresh, False
        if not fresh:
            return self.unknown(gradient, batch)
        w = self._world / (self._world - 1)
        unscale = self._unscale  # the hook read gradients still scaled by S
        local = (
            self._local if unscale is None else [[x * unscale**2 for x in t] for t in self._local]
        )
        per_tensor = [
            [w * (a - b) for a, b in zip(la, gl, strict=True)]
            for la, gl in zip(local, global_, strict=True)
        ]
        traces = [
            _sum(t, self._zero) if w.known and self._weighing[i].known else self._nan
            for i, (t, w) in enumerate(zip(per_tensor, weighing, strict=True))
        ]
        segments = None if self.segments is None else self.segments.sum(per_tensor)
        return NoiseEstimate(traces, self.nan(), gradient, batch, segments)


def estimator(
    kind: str | None,
    layouts: list[GroupLayout],
    segments: Segments | None = None,
    *,
    model: torch.nn.Module | None = None,
    weigh: Callable[[], list[Weighing]] | None = None,
) -> NoiseEstimator | None:
    """The estimator `kind` names (None: no estimate); "ranks" reads `model`, a
    DistributedDataParallel module, with each backward's metric from `weigh`."""
    if kind is None:
        return None
    if kind == "per_sample":
        return PerSample(layouts, segments)
    if kind == "microbatch":
        return MicroBatch(layouts, segments)
    if kind == "ranks":
        if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
            raise ValueError(
                "model: noise='ranks' needs the DistributedDataParallel module "
                f"(InertiaMonitor(..., model=ddp_model)); got {type(model).__name__}"
            )
        if torch.distributed.get_world_size(model.process_group) < 2:
            raise ValueError("noise: 'ranks' needs at least 2 ranks; got 1")
        return TwoBatch(layouts, segments, model, weigh or (lambda: [EUCLIDEAN] * len(layouts)))
    return Fluctuation(layouts, segments)
