"""The top curvature of the step's minibatch Hessian from Hessian-vector products: the stability
alarm's λ̂ with `noise="per_sample"` (`inertia.monitor.alarm`).

Each row takes the Rayleigh–Ritz value of H_B, the Hessian of the step's minibatch loss at
θ_k, over the span of three directions: the last step d, and the last row's maximiser x̂ and
H_B'x̂ (its image under the last row's Hessian; a restarted Lanczos step):

    λ̂ = max over unit x ∈ span(d, x̂, H_B'x̂) of xᵀH_Bx,    x̂ ← the maximiser.

On a fixed quadratic λ̂ never decreases and never exceeds λ_max(H_B); it climbs to λ_max like a
power iteration, with the steps (noise kicks included) feeding it new directions. No gradient
noise enters, unlike a secant's ⟨g_k − g_{k−1}, Δθ⟩: only the minibatch Hessian's own
fluctuation, whose variance along x̂, Var_i(x̂ᵀHᵢx̂)/B, the per-sample second directional
derivatives give (the double-backward trick: with dummy weights w, sᵢ = ∂/∂wᵢ⟨∇_θ Σ wⱼℓⱼ, x̂⟩
= ⟨∇ℓᵢ, x̂⟩, and the same again on s gives x̂ᵀHᵢx̂). Cost per row: one backward pass with a
graph, one Hessian-vector product per direction (up to three) and three more backward passes.

The fused CPU and CUDA kernels of `scaled_dot_product_attention` have no double backward: the
first row through one finds its curvature missing (NaN, with a warning) and switches attention
to the math kernel, whose backward has one, for the forwards after it (`MathAttention`, until
the monitor detaches).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

F64 = torch.float64
INDEPENDENT = 1e-12  # a direction adds to the span if more than this share of it (squared) is new

Vector = list[Tensor]  # one flat float64 tensor per parameter group


def _dot(a: Vector, b: Vector) -> float:
    return sum(float(x @ y) for x, y in zip(a, b, strict=True))


def _combine(coefficients: list[float], vectors: list[Vector]) -> Vector:
    """Σⱼ cⱼ vⱼ, group by group."""
    out = []
    for i in range(len(vectors[0])):
        total = coefficients[0] * vectors[0][i]
        for c, v in zip(coefficients[1:], vectors[1:], strict=True):
            total = total + c * v[i]
        out.append(total)
    return out


def _grad(
    output: Tensor, inputs: list[Tensor], *, create_graph: bool = False, retain_graph: bool = False
) -> list[Tensor | None]:
    """∂output/∂inputs, None for each input it does not depend on (also where it depends on
    none: a loss linear in θ has no curvature)."""
    if not output.requires_grad:
        return [None] * len(inputs)
    grads = torch.autograd.grad(
        output,
        inputs,
        allow_unused=True,
        create_graph=create_graph,
        retain_graph=retain_graph or create_graph,
    )
    return list(grads)


def _orthonormal(vectors: list[Vector]) -> list[Vector]:
    """Gram–Schmidt (twice, for round-off), dropping what the earlier vectors already span."""
    basis: list[Vector] = []
    for vector in vectors:
        rest = vector
        for _ in range(2):
            for u in basis:
                share = _dot(rest, u)
                rest = [x - share * y for x, y in zip(rest, u, strict=True)]
        norm_sq = _dot(rest, rest)
        if norm_sq > INDEPENDENT * _dot(vector, vector):
            basis.append([x / math.sqrt(norm_sq) for x in rest])
    return basis


class MathAttention:
    """`scaled_dot_product_attention` held to its math kernel from `enable` to `restore`."""

    def __init__(self) -> None:
        self._held: AbstractContextManager[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._held is not None

    def enable(self) -> None:
        if self._held is None:
            self._held = sdpa_kernel(SDPBackend.MATH)
            self._held.__enter__()

    def restore(self) -> None:
        """The kernels chosen as before `enable`."""
        if self._held is not None:
            self._held.__exit__(None, None, None)
            self._held = None


def _fused_attention_failed(error: RuntimeError) -> bool:
    """A double backward through a fused attention kernel, which has none."""
    text = str(error)
    return "attention" in text and "derivative for" in text and "not implemented" in text


class TopCurvature:
    """Tracks the top curvature of the minibatch Hessian along the training's motion."""

    def __init__(self, groups: Sequence[Sequence[Tensor]], attention: MathAttention | None = None):
        """`groups`: the parameters of each group, as the optimizer holds them; `attention`:
        switched to the math kernel if a fused one is met (default: a fresh `MathAttention`)."""
        self._sizes = [[p.numel() for p in g] for g in groups]
        self._params = [p for g in groups for p in g]
        device = self._params[0].device if self._params else None
        self._empty = torch.zeros(0, dtype=F64, device=device)  # an empty group's vector
        self._tracked: list[Vector] = []  # x̂ and H_B'x̂/‖H_B'x̂‖ of the last row
        self.attention = MathAttention() if attention is None else attention

    def state_dict(self) -> list[Vector]:
        return [[t.clone() for t in v] for v in self._tracked]

    def load_state_dict(self, tracked: list[Vector]) -> None:
        self._tracked = [[t.clone() for t in v] for v in tracked]

    def _per_parameter(self, vector: Vector) -> list[Tensor]:
        """A flat float64 vector as per-parameter tensors in the parameters' shapes and dtypes."""
        views = (
            v
            for flat, sizes in zip(vector, self._sizes, strict=True)
            for v in torch.split(flat, sizes)
        )
        return [v.view_as(p).to(p.dtype) for v, p in zip(views, self._params, strict=True)]

    def _flat(self, tensors: list[Tensor | None]) -> Vector:
        parts = [
            (t if t is not None else torch.zeros_like(p)).reshape(-1).to(F64)
            for t, p in zip(tensors, self._params, strict=True)
        ]
        out, i = [], 0
        for sizes in self._sizes:  # torch.cat refuses an empty group's []
            out.append(torch.cat(parts[i : i + len(sizes)]) if sizes else self._empty)
            i += len(sizes)
        return out

    def measure(self, losses: Tensor, step: Vector) -> tuple[float, float]:
        """(λ̂, Var_i(x̂ᵀHᵢx̂)/B) at the current parameters from the unreduced `losses` (with
        their graph); `step`: the last step (flat float64 per group, either sign). NaN once
        if the graph holds a fused attention kernel: later forwards use the math kernel."""
        try:
            return self._measure(losses, step)
        except RuntimeError as error:
            if self.attention.enabled or not _fused_attention_failed(error):
                raise
            self.attention.enable()
            warnings.warn(
                "inertia: the stability alarm's Hessian-vector products need a double backward, "
                "which the fused scaled_dot_product_attention kernel lacks; attention now runs "
                "on the math kernel while the monitor is attached (this row's curvature is NaN)",
                RuntimeWarning,
                stacklevel=4,
            )
            return math.nan, math.nan

    def _measure(self, losses: Tensor, step: Vector) -> tuple[float, float]:
        basis = _orthonormal([[s.to(F64) for s in step], *self._tracked])
        losses = losses.reshape(-1)
        batch = losses.numel()
        weights = torch.ones(batch, dtype=losses.dtype, device=losses.device, requires_grad=True)
        grads = _grad((losses * weights).sum(), self._params, create_graph=True)
        if not basis or all(g is None for g in grads):
            return math.nan, math.nan

        def along(gradients: list[Tensor | None], direction: Vector) -> Tensor:  # ⟨·, d⟩
            pairs = zip(gradients, self._per_parameter(direction), strict=True)
            return sum(((g * d).sum() for g, d in pairs if g is not None), losses.new_zeros(()))

        products = [  # H_B u = ∇_θ⟨∇L_B, u⟩ for each basis vector
            [x / batch for x in self._flat(_grad(along(grads, u), self._params, retain_graph=True))]
            for u in basis
        ]
        ritz = torch.tensor([[_dot(u, hv) for hv in products] for u in basis], dtype=F64)
        values, vectors = torch.linalg.eigh(0.5 * (ritz + ritz.T))
        top = vectors[:, -1].tolist()
        x, hx = _combine(top, basis), _combine(top, products)
        # per sample: sᵢ = ⟨∇ℓᵢ, x̂⟩, then qᵢ = ⟨∇sᵢ, x̂⟩ = x̂ᵀHᵢx̂
        s = torch.autograd.grad(along(grads, x), weights, create_graph=True)[0]
        again = torch.ones_like(weights, requires_grad=True)
        grads_s = _grad((s * again).sum(), self._params, create_graph=True)
        q = _grad(along(grads_s, x), [again], retain_graph=True)[0]  # the caller's backward
        q = torch.zeros(batch, dtype=F64, device=losses.device) if q is None else q.detach().to(F64)
        image = math.sqrt(_dot(hx, hx))
        self._tracked = [x, *([[v / image for v in hx]] if image > 0 else [])]
        return float(values[-1]), float(q.var()) / batch
