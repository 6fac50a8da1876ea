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

"microbatch" also gives the noise along the last step, Δθᵀ(C/B)Δθ (the secant margin's
error, `InertiaMonitor._secant`); "fluctuation" cannot (NaN). With `curvature`, "per_sample"
gives instead the minibatch Hessian's top curvature along the motion and its variance,
Var_i(x̂ᵀHᵢx̂)/B, from Hessian-vector products on the step's own batch
(`inertia.monitor.curvature`): the stability margin's λ̂ and mean-square term.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .curvature import TopCurvature

F64 = torch.float64
KINDS = ("per_sample", "microbatch", "fluctuation")


class NoiseEstimator:
    """Collects per-group noise between rows; `take` returns it and resets."""

    def observe(self, groups, per_sample: Tensor | None, along: list[Tensor] | None) -> None:
        """Called by `InertiaMonitor.observe`; `along`: each group's last step Δθ (flat), if
        one was measured."""

    def take(self, groups, grad_sq: list[float]) -> tuple[list[float], ...]:
        """tr(C)/B, Δθᵀ(C/B)Δθ, Var(x̂ᵀH_Bx̂) and the top curvature x̂ᵀH_Bx̂ per group since
        the last row (`grad_sq`: ‖g_B‖² of the step's gradient); NaN where the estimator has
        none."""
        raise NotImplementedError


def _nan(groups) -> list[float]:
    return [math.nan] * len(groups)


class PerSample(NoiseEstimator):
    """tr(C)/B from the per-sample gradients; with `curvature`, the alarm's λ̂ and its spread
    (`TopCurvature`) along the last step. Over m micro-batches of a step (independent batches)
    the estimates are those of their mean: variances ÷ m², curvature averaged."""

    def __init__(self, groups, curvature: bool = False):
        self._traces = [0.0] * len(groups)
        self._count = 0
        self.top = TopCurvature(groups) if curvature else None
        self._curvature: list[float] | None = None  # Σλ̂, ΣVar(λ̂) over the micro-batches

    def observe(self, groups, per_sample: Tensor | None, along: list[Tensor] | None) -> None:
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
        if self.top is not None and along is not None:
            measured = self.top.measure(losses, along)
            before = self._curvature or [0.0, 0.0]
            self._curvature = [x + y for x, y in zip(before, measured, strict=True)]
        i = 0
        for k, group in enumerate(groups):
            for g in grads[i : i + len(group.params)]:
                if g is not None:  # Σ over samples of ‖gᵢ − ḡ‖² / (B − 1) = tr(C); ÷ B: the mean's
                    centred = g.reshape(batch, -1).to(F64)
                    centred = centred - centred.mean(0)
                    self._traces[k] += float(centred.square().sum()) / (batch - 1) / batch
            i += len(group.params)
        self._count += 1

    def take(self, groups, grad_sq):
        m = self._count
        traces = [t / m**2 for t in self._traces] if m else _nan(groups)
        curvature, spread = (
            (self._curvature[0] / m, self._curvature[1] / m**2)
            if self._curvature
            else (math.nan, math.nan)
        )
        self._traces, self._count, self._curvature = [0.0] * len(groups), 0, None
        return traces, _nan(groups), [spread] * len(groups), [curvature] * len(groups)


class MicroBatch(NoiseEstimator):
    """Two float64 buffers per group take the accumulated gradient G_j in turn: the one with
    G_{j−1} becomes −d_j = G_{j−1} − G_j in place (it is overwritten next anyway), so a
    micro-batch costs a copy, a subtraction and its dot products."""

    def __init__(self, groups):
        self._buffers = [(torch.zeros_like(g.buffer), torch.zeros_like(g.buffer)) for g in groups]
        self._views = [
            tuple(group.views_of(b) for b in pair)
            for group, pair in zip(groups, self._buffers, strict=True)
        ]
        self._square = [0.0] * len(groups)  # Σ‖d_j‖²
        self._projected = [[0.0, 0.0] for _ in groups]  # Σ⟨d_j, Δθ⟩, Σ⟨d_j, Δθ⟩²
        self._along = False
        self._count = 0

    def observe(self, groups, per_sample: Tensor | None, along: list[Tensor] | None) -> None:
        j = self._count
        self._along = along is not None
        for i, group in enumerate(groups):
            now, before = self._buffers[i][j % 2], self._buffers[i][1 - j % 2]
            torch._foreach_copy_(self._views[i][j % 2], group.grads())
            increment, sign = (before.sub_(now), -1.0) if j else (now, 1.0)  # ±d_j (G_0 = 0)
            self._square[i] += float(torch.dot(increment, increment))
            if along is not None:
                p = sign * float(torch.dot(increment, along[i]))
                self._projected[i][0] += p
                self._projected[i][1] += p * p
        self._count += 1

    def take(self, groups, grad_sq):
        m = self._count
        traces, alongs = [], []
        for i in range(len(groups)):
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
        return traces, alongs, _nan(groups), _nan(groups)


class Fluctuation(NoiseEstimator):
    def take(self, groups, grad_sq):
        # ‖g_B‖² per group, computed by the monitor with the step's gradient; nothing along Δθ
        return list(grad_sq), _nan(groups), _nan(groups), _nan(groups)


def estimator(kind: str | None, groups, *, curvature: bool = False) -> NoiseEstimator | None:
    """The estimator `kind` names; `curvature`: also the top curvature (per_sample only)."""
    if kind is None:
        return None
    if kind == "per_sample":
        return PerSample(groups, curvature)
    if kind == "microbatch":
        return MicroBatch(groups)
    if kind == "fluctuation":
        return Fluctuation()
    raise ValueError(f"noise must be None or one of {', '.join(KINDS)}; got {kind!r}")
