"""Probes: what the monitor measures of the parameters at a row (docs/theory.md §4).

A row at θ_k needs, per parameter group, the kinetic energy K = ½ uᵀMu of the velocity
u = (θ_k − θ_{k−1})/h, the weight-decay potential (wd/2)‖θ_k‖² and the shadow term
−½⟨θ_k − θ_{k−1}, ∇L(θ_k) + wd θ_k⟩; the stability alarm's secant needs a few more dot
products. Two probes give them behind one protocol:

- `ParameterProbe` keeps float64 buffers of the parameters (θ_k at the step, then −Δθ_k after
  it: any two float32/bf16 values differ exactly in float64) and measures from them;
- `ReportProbe` reads an optimizer's own report (`inertia.reporting.ReportsEnergy`), with no
  pass over the parameters; its rows are booked after the step, when the report exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
from torch import Tensor

from .._distributed import local
from ..reporting import ReportsEnergy
from .layout import F64, GroupLayout
from .maps import GroupMap, metric


@dataclass(slots=True)
class Measurement:
    """A row's measurement: the weight-decay potential Σ (wd/2)‖θ_k‖², the shadow term, and per
    group the kinetic energy and the dot products of the alarm's curvature (NaN where not
    measured): ⟨−Δθ_{k−1}, g_k⟩ (`grad_dot`) and ⟨−Δθ_{k−1}, g_{k−1}⟩ (`grad_dot_before`),
    ‖Δθ_{k−1}‖², ‖θ‖² at the last snapshot, and for the two-step curvature
    ⟨−Δθ_{k−2}, g_k⟩ (`cross_grad`), ⟨Δθ_{k−1}, Δθ_{k−2}⟩ (`cross`), ⟨−Δθ_{k−2}, g_{k−1}⟩
    (`cross_before`). `grad_sq` = ‖g_k‖² is local to the rank (the "fluctuation" noise)."""

    decay: float
    shadow: float
    kinetic: list[float]
    grad_dot: list[float]
    grad_dot_before: list[float]
    delta_sq: list[float]
    theta_sq: list[float]
    cross_grad: list[float]
    cross: list[float]
    cross_before: list[float]
    grad_sq: list[float]

    def per_group(self) -> dict[str, list[float]]:
        """The per-group values summed over ranks (all but `grad_sq`), by name."""
        return {name: getattr(self, name) for name in _SUMMED}


_SUMMED = tuple(f.name for f in fields(Measurement) if f.name not in ("decay", "shadow", "grad_sq"))


class Probe(Protocol):
    """Measures the parameters for the rows; `books_after_step`: rows are booked after the step
    (from the optimizer's report), not before it."""

    books_after_step: bool
    measured: bool  # the last step was measured: `steps()` holds its −Δθ
    has_delta: bool  # some step was measured: the alarm's curvature has a step to look along

    def check(self, state: dict[str, Any]) -> None: ...
    def snapshot(self, maps: list[GroupMap]) -> None: ...
    def after_step(self, optimizer: torch.optim.Optimizer, maps: list[GroupMap]) -> None: ...
    def measure(self, maps: list[GroupMap], *, snapshot: bool, after_step: bool) -> Measurement: ...
    def steps(self) -> list[Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _dot(a: Tensor, b: Tensor) -> float:
    return float(torch.dot(a, b))


def _nan(n: int) -> list[float]:
    return [math.nan] * n


class _Buffers:
    """One group's flat float64 buffers: `step` holds θ_k at the step, then −Δθ_k after it;
    `scratch` takes ∇L or the metric for a dot product; with `two_steps`, `previous` keeps the
    step before the last."""

    def __init__(self, layout: GroupLayout, two_steps: bool):
        self.layout = layout
        self.step, self.scratch = layout.zeros(), layout.zeros()
        self.step_views = layout.views_of(self.step)
        self.scratch_views = layout.views_of(self.scratch)
        self.previous = layout.zeros() if two_steps else None
        self.has_previous = False
        self.delta_sq = 0.0  # ‖Δθ‖² of the last measured step
        self.theta_sq = 0.0  # ‖θ‖² at the last snapshot

    def load_scratch(self, tensors: list[Tensor]) -> Tensor:
        torch._foreach_copy_(self.scratch_views, tensors)
        return self.scratch

    def snapshot(self, norm: bool) -> None:
        """step ← θ, remembering ‖θ‖² if `norm` (weight decay books it; else NaN)."""
        torch._foreach_copy_(self.step_views, self.layout.local_params())
        self.theta_sq = _dot(self.step, self.step) if norm else math.nan


class ParameterProbe:
    """Measures from float64 buffers of the parameters. `secant`: also the dots of the alarm's
    secant curvature; `two_steps`: and those over the last two steps; `fluctuation`: ‖g_k‖²."""

    books_after_step = False

    def __init__(
        self, layouts: list[GroupLayout], *, secant: bool, two_steps: bool, fluctuation: bool
    ):
        self.groups = [_Buffers(layout, two_steps) for layout in layouts]
        self.secant, self.two_steps, self.fluctuation = secant, two_steps, fluctuation
        self.measured = False  # the last step's −Δθ is in the buffers
        self.has_delta = False  # some step was measured
        n = len(layouts)
        self.kinetic = [0.0] * n  # per group, measured after the last measured step
        self.grad_dot_before = [0.0] * n  # ⟨−Δθ, g⟩ with the step's own gradient
        self.cross_before = _nan(n)  # ⟨−Δθ_prev, g⟩ with the last step's gradient

    def steps(self) -> list[Tensor]:
        """Each group's last measured step −Δθ (flat float64)."""
        return [g.step for g in self.groups]

    def snapshot(self, maps: list[GroupMap]) -> None:
        """θ_k into the buffers before a measured step that books no row."""
        for group, m in zip(self.groups, maps, strict=True):
            group.snapshot(norm=m.weight_decay != 0 or self.two_steps)

    def after_step(self, optimizer: torch.optim.Optimizer, maps: list[GroupMap]) -> None:
        """Buffers ← θ_k − θ_{k+1} = −Δθ; K = ½ΔθᵀMΔθ/h² in the map's metric; the secant's dots."""
        for i, (group, m) in enumerate(zip(self.groups, maps, strict=True)):
            # a float64 copy, then one flat kernel: faster than a mixed-dtype foreach subtraction
            group.step.sub_(group.load_scratch(group.layout.local_params()))
            delta = group.step
            group.delta_sq = _dot(delta, delta)
            if self.secant:  # ⟨−Δθ_k, g_k⟩: the secant's other half, and the cross term
                grads = group.load_scratch(group.layout.grads())
                self.grad_dot_before[i] = _dot(delta, grads)
                if group.previous is not None and group.has_previous:
                    self.cross_before[i] = _dot(group.previous, grads)
            mass = metric(optimizer, optimizer.param_groups[i], m.kind)
            sq = group.delta_sq if mass is None else _dot(delta * delta, group.load_scratch(mass))
            self.kinetic[i] = 0.5 * sq / (m.h * m.h) if m.h > 0 else 0.0
        self.has_delta = True

    def measure(self, maps: list[GroupMap], *, snapshot: bool, after_step: bool) -> Measurement:
        """Energies at θ_k from the buffers (−Δθ_{k−1} where the last step was measured); with
        `snapshot`, θ_k is left in them for the step's velocity."""
        n = len(self.groups)
        out = Measurement(
            decay=0.0,
            shadow=0.0,
            kinetic=list(self.kinetic),
            grad_dot=[0.0] * n,
            grad_dot_before=self.grad_dot_before,
            delta_sq=[g.delta_sq for g in self.groups],
            theta_sq=[],  # appended below, after any snapshot
            cross_grad=_nan(n),
            cross=_nan(n),
            cross_before=self.cross_before,
            grad_sq=_nan(n),
        )
        for i, (group, m) in enumerate(zip(self.groups, maps, strict=True)):
            if self.has_delta or self.fluctuation:
                grads = group.load_scratch(group.layout.grads())
                if self.has_delta:  # step = −Δθ_{k−1}: ⟨−Δθ, ∇L⟩ (shadow, curvature)
                    out.grad_dot[i] = _dot(group.step, grads)
                    out.shadow += 0.5 * out.grad_dot[i]
                    if group.previous is not None:
                        if group.has_previous:
                            out.cross_grad[i] = _dot(group.previous, grads)
                            out.cross[i] = _dot(group.step, group.previous)
                        group.previous.copy_(group.step)
                        group.has_previous = True
                if self.fluctuation:
                    out.grad_sq[i] = _dot(grads, grads)
            if not m.weight_decay:
                if snapshot:
                    group.snapshot(norm=self.two_steps)  # the two-step curvature's precision
                out.theta_sq.append(group.theta_sq)
                continue
            before = group.theta_sq  # ‖θ_{k−1}‖² (at the last snapshot; NaN if wd was 0 then)
            if snapshot:
                group.snapshot(norm=True)
                theta_sq = group.theta_sq
            else:
                norms = torch._foreach_norm(group.layout.local_params(), 2, dtype=F64)
                theta_sq = float(torch.stack(norms).square().sum()) if norms else 0.0
            out.theta_sq.append(group.theta_sq)
            out.decay += 0.5 * m.weight_decay * theta_sq
            if self.has_delta:  # ½ wd ⟨−Δθ, θ_k⟩ = ¼ wd (‖θ_{k−1}‖² − ‖θ_k‖² − ‖Δθ‖²)
                out.shadow += 0.25 * m.weight_decay * (before - theta_sq - group.delta_sq)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "measured": self.measured,
            "has_delta": self.has_delta,
            "kinetic": list(self.kinetic),
            "grad_dot_before": list(self.grad_dot_before),
            "cross_before": list(self.cross_before),
            "steps": [g.step.clone() for g in self.groups],
            "norms": [(g.delta_sq, g.theta_sq) for g in self.groups],
            "previous": [
                g.previous.clone() if g.previous is not None and g.has_previous else None
                for g in self.groups
            ],
        }

    def check(self, state: dict[str, Any]) -> None:
        """ValueError unless `state` holds one step per group, of this group's size."""
        sizes = [t.numel() for t in state.get("steps", [])]
        expected = [g.step.numel() for g in self.groups]
        if sizes != expected:
            raise ValueError(
                f"state: parameter sizes {sizes} do not match this optimizer's {expected}"
            )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.measured, self.has_delta = state["measured"], state["has_delta"]
        self.kinetic = list(state["kinetic"])
        self.grad_dot_before = list(state["grad_dot_before"])
        self.cross_before = list(state["cross_before"])
        for group, step, (delta_sq, theta_sq), previous in zip(
            self.groups, state["steps"], state["norms"], state["previous"], strict=True
        ):
            group.step.copy_(step)
            group.delta_sq, group.theta_sq = delta_sq, theta_sq
            group.has_previous = group.previous is not None and previous is not None
            if group.previous is not None and previous is not None:
                group.previous.copy_(previous)


class ReportProbe:
    """Reads an optimizer's report (`ReportsEnergy`): K = ½‖p_k‖², the shadow term
    −½h⟨p_k, ∇L + wd θ⟩ and (wd/2)‖θ_k‖². A row with no step behind it (skipped) reads K from
    the current velocity and books no shadow term."""

    books_after_step = True
    measured = has_delta = False

    def __init__(self, optimizer: ReportsEnergy, params: list[list[Tensor]]):
        self.optimizer, self.params = optimizer, params
        self.kinetic = [0.0] * len(params)

    def steps(self) -> list[Tensor]:
        """None: the optimizer keeps its own velocity."""
        return []

    def snapshot(self, maps: list[GroupMap]) -> None:
        """Nothing: the report describes the point the step started from."""

    def after_step(self, optimizer: torch.optim.Optimizer, maps: list[GroupMap]) -> None:
        """Nothing: the row is booked from the report."""

    def measure(self, maps: list[GroupMap], *, snapshot: bool, after_step: bool) -> Measurement:
        n = len(self.params)
        out = Measurement(0.0, 0.0, self.kinetic, *(_nan(n) for _ in range(8)))
        if after_step:
            for i, (report, m) in enumerate(zip(self.optimizer.energy_report(), maps, strict=True)):
                self.kinetic[i] = report.kinetic
                out.shadow -= 0.5 * report.h_before * report.power
                out.decay += 0.5 * m.weight_decay * report.theta_sq
        else:
            self.kinetic[:] = self.optimizer.kinetic_energy()
            for params, m in zip(self.params, maps, strict=True):
                norms = torch._foreach_norm([local(p) for p in params], 2, dtype=F64)
                out.decay += 0.5 * m.weight_decay * float(torch.stack(norms).square().sum())
        out.kinetic = list(self.kinetic)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"kinetic": list(self.kinetic)}

    def check(self, state: dict[str, Any]) -> None:
        """ValueError unless `state` holds one kinetic energy per group."""
        if len(state.get("kinetic", ())) != len(self.params):
            raise ValueError(f"state: not the report of {len(self.params)} parameter groups")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kinetic = list(state["kinetic"])


def make_probe(
    optimizer: torch.optim.Optimizer,
    layouts: list[GroupLayout],
    alarm: str | None,
    noise: str | None,
) -> Probe:
    """The report of an optimizer that gives one (`ReportsEnergy`) where neither the alarm nor
    a noise estimate needs the parameters' buffers; otherwise the parameters' own."""
    if isinstance(optimizer, ReportsEnergy) and alarm is None and noise is None:
        return ReportProbe(optimizer, [layout.params for layout in layouts])
    return ParameterProbe(
        layouts,
        secant=alarm in ("two_steps", "secant"),
        two_steps=alarm == "two_steps",
        fluctuation=noise == "fluctuation",
    )
