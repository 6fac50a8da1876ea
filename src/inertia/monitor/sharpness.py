"""The sharpness of a probe loss in the optimizer's metric, and the stability margin it gives,
from Hessian-vector products (`InertiaMonitor(..., alarm=True, sharpness=closure)`).

The heavy ball in a diagonal metric M, with step h and momentum μ, is stable on a quadratic
iff h²λ_max(M⁻¹H)/(2(1 + μ)) < 1 (docs/theory.md (4.9) in the coordinates M^{1/2}θ); for Adam,
h² = η(1 − β₁) after the bias correction, so the threshold on λ_max(M⁻¹H) is
(2 + 2β₁)/((1 − β₁)η), that of Cohen et al. 2022. With parameter groups of different maps the
margin is the top eigenvalue of

    S = W^{1/2}(H + wd)W^{1/2},    W = h²/(2(1 + μ))·M⁻¹ on each group's parameters,

(wd: a coupled weight decay, part of the potential), which a power iteration on S finds,
warm-started at the last measurement's eigenvector, until the Rayleigh quotient changes by
less than `TOLERANCE` relative, at most `ITERATIONS` Hessian-vector products (one backward pass
with a graph, then one backward pass each, and one host synchronisation each; per
measurement 13–23 warm-started products on the edge-of-stability MLP of
benchmarks/stability.py). A power iteration finds the eigenvalue largest in magnitude: where
that is negative (a saddle), the iteration runs again on S + |λ|·Id, whose largest eigenvalue
is the largest algebraic one of S plus |λ|. The closure and the products run under the math
attention kernel (the fused ones have no double backward). The `sharpness` column is
λ_max(M^{−1/2}(H + wd)M^{−1/2}) = margin·2(1 + μ)/h² of the first group (exact with one
group).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from .layout import F64, GroupLayout
from .maps import GroupMap, metric

#: At most 30 products, until the Rayleigh quotient changes by less than 3e-4 relative: at the
#: edge of stability the top two eigenvalues are close and a power iteration converges slowly;
#: stopping at 1e-3 left errors up to 11% there (benchmarks/stability.py, width 200), at 3e-4
#: up to 5%, for about twice the products (13–23 a warm-started measurement against 7–14).
ITERATIONS, TOLERANCE = 30, 3e-4


class Sharpness:
    """The margin λ_max(S) from a probe `closure` (a scalar loss with its graph) and the
    optimizer's maps and state."""

    def __init__(
        self,
        closure: Callable[[], Tensor],
        layouts: Sequence[GroupLayout],
        *,
        iterations: int = ITERATIONS,
        tolerance: float = TOLERANCE,
    ):
        self.closure, self.layouts = closure, list(layouts)
        self.iterations, self.tolerance = iterations, tolerance
        self._params = [p for x in self.layouts for p in x.params]
        self._vector: list[Tensor] | None = None  # the last eigenvector, per parameter (F64)

    def measure(
        self, optimizer: torch.optim.Optimizer, maps: list[GroupMap]
    ) -> tuple[float, float]:
        """(margin, sharpness) at the current parameters for the step `maps` is about to take;
        NaN where a map has no metric state yet or no friction below 1."""
        weights = self._weights(optimizer, maps)
        if weights is None:
            return math.nan, math.nan
        decay = [m.weight_decay for m, x in zip(maps, self.layouts, strict=True) for _ in x.params]
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            loss = self.closure()
            grads = self._grad(loss, create_graph=True)

            def apply(vector: list[Tensor]) -> list[Tensor]:
                return self._apply(grads, weights, decay, vector)

            if self._vector is None:
                gen = torch.Generator(device=self._params[0].device).manual_seed(0)
                start = [
                    torch.randn(p.shape, generator=gen, dtype=F64, device=p.device)
                    for p in self._params
                ]
                self._vector = _normalised(start)
            margin, vector = self._iterate(apply, self._vector, 0.0)
            if margin < 0:  # a saddle's negative curvature dominates: shift it below 0
                margin, vector = self._iterate(apply, vector, -margin)
        self._vector = [v.detach() for v in vector]
        m = maps[0]
        return margin, margin * 2.0 * (1.0 + m.momentum) / (m.h * m.h)

    def _iterate(
        self, apply: Callable[[list[Tensor]], list[Tensor]], vector: list[Tensor], shift: float
    ) -> tuple[float, list[Tensor]]:
        """The top eigenvalue of S + shift·Id by power iteration from `vector`, less `shift`,
        and its eigenvector."""
        last = math.nan
        for _ in range(self.iterations):
            image = [s + shift * v for s, v in zip(apply(vector), vector, strict=True)]
            value = float(
                torch.stack([(v * s).sum() for v, s in zip(vector, image, strict=True)]).sum()
            )
            vector = _normalised(image)
            if abs(value - last) <= self.tolerance * abs(value):
                break
            last = value
        return value - shift, vector

    def _grad(
        self, output: Tensor, *, create_graph: bool = False, retain_graph: bool | None = None
    ) -> list[Tensor | None]:
        """∂output/∂θ per parameter, None for one that does not require a gradient."""
        live = [p for p in self._params if p.requires_grad]
        found = iter(
            torch.autograd.grad(
                output,
                live,
                create_graph=create_graph,
                retain_graph=retain_graph,
                allow_unused=True,
            )
        )
        return [next(found) if p.requires_grad else None for p in self._params]

    def _weights(
        self, optimizer: torch.optim.Optimizer, maps: list[GroupMap]
    ) -> list[Tensor] | None:
        """W^{1/2} per parameter (F64): sqrt(h²/(2(1 + μ))·M⁻¹), 0 for a parameter without a
        gradient, which the step does not move; None where unknown."""
        out = []
        for group, m, layout in zip(optimizer.param_groups, maps, self.layouts, strict=True):
            if not (m.h > 0 and m.momentum < 1):
                return None
            scale = m.h * m.h / (2.0 * (1.0 + m.momentum))
            metrics = metric(optimizer, group, m, before=True)
            if metrics is None and m.kind in ("adam", "rmsprop"):
                return None  # no state yet: the metric is unknown
            for j, p in enumerate(layout.params):
                moved = p.grad is not None
                w = torch.full(p.shape, scale if moved else 0.0, dtype=F64, device=p.device)
                if metrics is not None and moved:
                    inverse = metrics[j].block(0, p.numel(), inverse=True).to(F64)
                    w = w * inverse.view(p.shape)
                out.append(w.sqrt_())
        return out

    def _apply(
        self,
        grads: Sequence[Tensor | None],
        weights: list[Tensor],
        decay: list[float],
        vector: list[Tensor],
    ) -> list[Tensor]:
        """S v = W^{1/2}(H + wd)W^{1/2} v, one Hessian-vector product."""
        x = [w * v for w, v in zip(weights, vector, strict=True)]
        along = sum(
            ((g * xi.to(g.dtype)).sum() for g, xi in zip(grads, x, strict=True) if g is not None),
            torch.zeros((), device=weights[0].device),
        )
        products = self._grad(along, retain_graph=True)
        return [
            w * ((hx.to(F64) if hx is not None else torch.zeros_like(xi)) + wd * xi)
            for w, hx, xi, wd in zip(weights, products, x, decay, strict=True)
        ]

    def state_dict(self) -> list[Tensor] | None:
        return None if self._vector is None else [v.clone() for v in self._vector]

    def load_state_dict(self, vector: list[Tensor] | None) -> None:
        self._vector = None if vector is None else [v.clone() for v in vector]


def _normalised(vector: list[Tensor]) -> list[Tensor]:
    norm = torch.stack([(v * v).sum() for v in vector]).sum().sqrt()
    return [v / norm for v in vector]
