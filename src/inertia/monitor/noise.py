"""Gradient-noise estimates: tr(C)/B, the variance of one step's minibatch gradient, per
parameter group (THEORY.md §4: g_B = ∇L + ξ, Cov ξ = C/B).

- "per_sample": exact from per-sample gradients (vectorised autograd over the unreduced losses,
  which `observe(loss, per_sample=losses)` receives before `backward`); for small and medium
  models: it holds B gradients at once.
- "microbatch": the spread of the gradients of the m micro-batches of one step
  (`observe(loss, accumulate=True)` after each micro-batch's `backward`): the accumulated
  gradient is a sum of m independent increments d_j, so its variance is m·Var(d).
- "fluctuation": no extra work, ‖g_B‖² of the step: tr(C)/B + ‖∇L‖², so an upper bound that is
  tight at stationarity, where ∇L ≈ 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

F64 = torch.float64
KINDS = ("per_sample", "microbatch", "fluctuation")


class NoiseEstimator:
    """Collects per-group noise between rows; `take` returns tr(C)/B per group and resets."""

    def observe(self, groups, per_sample: Tensor | None) -> None:
        """Called by `InertiaMonitor.observe`."""

    def take(self, groups, grad_sq: list[float]) -> list[float]:
        """tr(C)/B per group since the last row (`grad_sq`: ‖g_B‖² of the step's gradient)."""
        raise NotImplementedError


class PerSample(NoiseEstimator):
    def __init__(self):
        self._sums: list[float] | None = None
        self._count = 0

    def observe(self, groups, per_sample: Tensor | None) -> None:
        if per_sample is None:
            raise ValueError(
                "per_sample: noise='per_sample' needs observe(loss, per_sample=losses)"
            )
        losses = per_sample.reshape(-1)
        batch = losses.numel()
        if batch < 2:
            raise ValueError(f"per_sample: needs at least 2 samples; got {batch}")
        params = [p for g in groups for p in g.params]
        grads = torch.autograd.grad(
            losses,
            params,
            grad_outputs=torch.eye(batch, dtype=losses.dtype),
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
        sums, i = [], 0
        for group in groups:
            total = 0.0
            for _ in group.params:
                g = grads[i]
                i += 1
                if g is not None:  # Σ over samples of ‖gᵢ − ḡ‖² / (B − 1) = tr(C); ÷ B: the mean's
                    flat = g.reshape(batch, -1).to(F64)
                    total += float((flat - flat.mean(0)).square().sum()) / (batch - 1) / batch
            sums.append(total)
        self._sums = (
            sums if self._sums is None else [a + b for a, b in zip(self._sums, sums, strict=True)]
        )
        self._count += 1

    def take(self, groups, grad_sq) -> list[float]:
        if self._sums is None:
            return [math.nan] * len(groups)
        out = [s / self._count for s in self._sums]
        self._sums, self._count = None, 0
        return out


class MicroBatch(NoiseEstimator):
    def __init__(self, groups):
        self._previous = [torch.zeros_like(g.buffer) for g in groups]
        self._square = [0.0] * len(groups)
        self._count = 0

    def observe(self, groups, per_sample: Tensor | None) -> None:
        for i, group in enumerate(groups):
            flat = group.load_scratch(group.grads())
            self._square[i] += float(torch.dot(flat - self._previous[i], flat - self._previous[i]))
            self._previous[i].copy_(flat)
        self._count += 1

    def take(self, groups, grad_sq) -> list[float]:
        m = self._count
        out = []
        for i in range(len(groups)):
            total = self._previous[i]  # Σ d_j: the accumulated gradient
            if m < 2:
                out.append(math.nan)
            else:
                var = (self._square[i] - float(torch.dot(total, total)) / m) / (m - 1)
                out.append(m * var)
            self._previous[i].zero_()
            self._square[i] = 0.0
        self._count = 0
        return out


class Fluctuation(NoiseEstimator):
    def take(self, groups, grad_sq) -> list[float]:
        return list(grad_sq)  # ‖g_B‖² per group, computed by the monitor with the step's gradient


def estimator(kind: str | None, groups) -> NoiseEstimator | None:
    if kind is None:
        return None
    if kind == "per_sample":
        return PerSample()
    if kind == "microbatch":
        return MicroBatch(groups)
    if kind == "fluctuation":
        return Fluctuation()
    raise ValueError(f"noise must be None or one of {', '.join(KINDS)}; got {kind!r}")
