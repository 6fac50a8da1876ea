"""Probes: what the monitor measures of the parameters at a row (docs/theory.md §4).

A row at θ_k needs, per parameter group, the kinetic energy K = ½ uᵀMu of the velocity
u = (θ_k − θ_{k−1})/h, the weight-decay potential (wd/2)‖θ_k‖², the power of the last step
against the forces ⟨−Δθ_{k−1}, ∇L(θ_k) + wd θ_k⟩ (the shadow term and the map's exact
friction, docs/theory.md §4) and the work of a decoupled decay over the step; the stability
alarm's secant needs a few more dot products. Every value is a 0-d float64 tensor on the
parameters' device: nothing waits for the host. Two probes give them behind one protocol:

- `ParameterProbe` keeps a buffer of the parameters in their own precision (float32 for
  float32, bf16 and fp16 parameters; float64 for float64): θ_k at the step, then
  θ_k − θ_{k+1} after it, and measures from it (`inertia.monitor.reduce`);
- `ReportProbe` reads an optimizer's own report (`inertia.reporting.ReportsEnergy`), with no
  pass over the parameters; its rows are booked after the step, when the report exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
from torch import Tensor

from .._distributed import local
from ..reporting import ReportsEnergy
from . import reduce
from .layout import F64, GroupLayout, Segments
from .maps import NESTEROV, GroupMap, metric

Values = list[Tensor]  # one 0-d float64 tensor per parameter group


@dataclass(slots=True)
class Measurement:
    """A row's measurement: the weight-decay potential Σ (wd/2)‖θ_k‖² (`penalty`), and per
    group the kinetic energy, the power ⟨−Δθ_{k−1}, g_k + wd θ_k⟩ (`power`, Δθ the step the
    momentum carries), ⟨θ_k, g_k⟩ where a decoupled decay acts (`theta_grad`, its work), and
    the dot products of the alarm's curvature and Nesterov's look-ahead (NaN where not
    measured): ⟨−Δθ_{k−1}, g_k⟩ (`grad_dot`) and ⟨−Δθ_{k−1}, g_{k−1}⟩ (`grad_dot_before`),
    ‖Δθ_{k−1}‖², ‖θ‖² at the last snapshot, and
    for the two-step curvature ⟨−Δθ_{k−2}, g_k⟩ (`cross_grad`), ⟨Δθ_{k−1}, Δθ_{k−2}⟩
    (`cross`), ⟨−Δθ_{k−2}, g_{k−1}⟩ (`cross_before`). `segments`: per-layer sums
    (name → (S,)), where the monitor keeps per-layer books."""

    penalty: Tensor
    kinetic: Values
    power: Values
    theta_grad: Values
    grad_dot: Values
    grad_dot_before: Values
    delta_sq: Values
    theta_sq: Values
    cross_grad: Values
    cross: Values
    cross_before: Values
    segments: dict[str, Tensor] = field(default_factory=dict)

    def per_group(self) -> dict[str, Values]:
        """The per-group values, by name."""
        return {name: getattr(self, name) for name in _SUMMED}


_SUMMED = tuple(f.name for f in fields(Measurement) if f.name not in ("penalty", "segments"))


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


def _cross(views: list[Tensor], tensors: list[Tensor], device: torch.device) -> Tensor:
    """Σ over a group's parameters of ⟨view, tensor⟩, as a 0-d float64 tensor."""
    parts = [p for v, t in zip(views, tensors, strict=True) for p in reduce.dot_parts(v, t)]
    return reduce.total(parts, device)


class _Buffers:
    """One group's flat buffer in the group's buffer dtype: `step` holds θ_k at the step, then
    θ_k − θ_{k+1} after it; with `two_steps`, `previous` keeps the step before the last."""

    def __init__(self, layout: GroupLayout, two_steps: bool, nan: Tensor):
        self.layout = layout
        self.step = layout.zeros()
        self.step_views = layout.views_of(self.step)
        self.previous = layout.zeros() if two_steps else None
        self.previous_views = [] if self.previous is None else layout.views_of(self.previous)
        self.has_previous = False
        self.delta_sq = nan.new_zeros(())  # ‖Δθ‖² of the last measured step
        self.theta_sq = nan.new_zeros(())  # ‖θ‖² at the last snapshot
        self.nan = nan

    def square(self, flat: Tensor) -> Tensor:
        return reduce.total(reduce.square_parts(flat), flat.device)

    def snapshot(self, norm: bool) -> None:
        """step ← θ, remembering ‖θ‖² if `norm` (weight decay books it; else NaN)."""
        torch._foreach_copy_(self.step_views, self.layout.local_params())
        self.theta_sq = self.square(self.step) if norm else self.nan


class ParameterProbe:
    """Measures from buffers of the parameters. `secant`: also the dots of the alarm's secant
    curvature; `two_steps`: and those over the last two steps; `segments`: the per-layer
    kinetic energy and step size."""

    books_after_step = False

    def __init__(
        self,
        layouts: list[GroupLayout],
        *,
        secant: bool,
        two_steps: bool,
        segments: Segments | None = None,
    ):
        device = layouts[0].device if layouts else torch.device("cpu")
        self._nan = torch.full((), float("nan"), dtype=F64, device=device)
        self._zero = torch.zeros((), dtype=F64, device=device)
        self.groups = [_Buffers(layout, two_steps, self._nan) for layout in layouts]
        self.secant, self.two_steps = secant, two_steps
        self.segments = segments
        self.measured = False  # the last step's −Δθ is in the buffers
        self.has_delta = False  # some step was measured
        n = len(layouts)
        self.kinetic = [self._zero] * n  # per group, measured after the last measured step
        self.grad_dot_before = [self._zero] * n  # ⟨−Δθ, g⟩ with the step's own gradient
        self.cross_before = [self._nan] * n  # ⟨−Δθ_prev, g⟩ with the last step's gradient
        # the per-layer books of the last measured step (0 before one)
        zeros = torch.zeros(len(segments.names) if segments else 0, dtype=F64, device=device)
        self.segment_values = {} if segments is None else {"kinetic": zeros, "step_sq": zeros}

    def steps(self) -> list[Tensor]:
        """Each group's last measured step −Δθ (flat)."""
        return [g.step for g in self.groups]

    def snapshot(self, maps: list[GroupMap]) -> None:
        """θ_k into the buffers before a measured step that books no row."""
        for group, m in zip(self.groups, maps, strict=True):
            group.snapshot(norm=m.weight_decay != 0 or self.two_steps)

    def after_step(self, optimizer: torch.optim.Optimizer, maps: list[GroupMap]) -> None:
        """Buffers ← −h u_k, the step the momentum carries: θ_k − θ_{k+1}, less a decoupled
        decay's own displacement −ηλθ_k (which no momentum carries); K = ½h²uᵀMu/h² in the
        map's metric; ⟨−h u_k, g_k⟩ for the secant and Nesterov's look-ahead."""
        kinetic_parts: list[list[Tensor]] = []
        step_parts: list[list[Tensor]] = []
        for i, (group, m) in enumerate(zip(self.groups, maps, strict=True)):
            device, params, views = group.step.device, group.layout.local_params(), group.step_views
            torch._foreach_sub_(views, params)
            if m.decoupled:  # θ_k − θ_{k+1} − ηλθ_k = (1 − ηλ)(θ_k − θ_{k+1}) − ηλθ_{k+1}
                torch._foreach_mul_(views, 1.0 - m.decoupled)
                torch._foreach_add_(views, params, alpha=-m.decoupled)
            group.delta_sq = group.square(group.step)
            if self.secant or m.kind == NESTEROV:  # ⟨−Δθ_k, g_k⟩, and the cross term
                grads = group.layout.grads()
                self.grad_dot_before[i] = _cross(views, grads, device)
                if group.previous is not None and group.has_previous:
                    self.cross_before[i] = _cross(group.previous_views, grads, device)
            mass = metric(optimizer, optimizer.param_groups[i], m)
            if mass is None and self.segments is None:  # the flat norm already measured
                self.kinetic[i] = 0.5 * group.delta_sq / (m.h * m.h) if m.h > 0 else self._zero
                continue
            squares = [reduce.total(reduce.square_parts(v), device) for v in views]
            weighted = squares
            if mass is not None:
                weighted = [
                    reduce.total(reduce.weighted_square_parts(v, w), device)
                    for v, w in zip(views, mass, strict=True)
                ]
            scale = 0.5 / (m.h * m.h) if m.h > 0 else 0.0
            per_tensor = [x * scale for x in weighted]
            self.kinetic[i] = torch.stack(per_tensor).sum() if per_tensor else self._zero
            kinetic_parts.append(per_tensor)
            step_parts.append(squares)
        if self.segments is not None:
            self.segment_values = {
                "kinetic": self.segments.sum(kinetic_parts),
                "step_sq": self.segments.sum(step_parts),
            }
        self.has_delta = True

    def measure(self, maps: list[GroupMap], *, snapshot: bool, after_step: bool) -> Measurement:
        """Energies at θ_k from the buffers (−Δθ_{k−1} where the last step was measured); with
        `snapshot`, θ_k is left in them for the step's velocity."""
        n, nan = len(self.groups), self._nan
        out = Measurement(
            penalty=self._zero,
            kinetic=list(self.kinetic),
            power=[self._zero] * n,
            theta_grad=[self._zero] * n,
            grad_dot=[self._zero] * n,
            grad_dot_before=list(self.grad_dot_before),
            delta_sq=[g.delta_sq for g in self.groups],
            theta_sq=[],  # appended below, after any snapshot
            cross_grad=[nan] * n,
            cross=[nan] * n,
            cross_before=list(self.cross_before),
            segments=dict(self.segment_values),
        )
        for i, (group, m) in enumerate(zip(self.groups, maps, strict=True)):
            device = group.step.device
            if self.has_delta:  # step = −Δθ_{k−1}: ⟨−Δθ, ∇L⟩ (shadow, curvature)
                grads = group.layout.grads()
                out.grad_dot[i] = out.power[i] = _cross(group.step_views, grads, device)
                if group.previous is not None:
                    if group.has_previous:
                        out.cross_grad[i] = _cross(group.previous_views, grads, device)
                        out.cross[i] = reduce.total(
                            reduce.dot_parts(group.step, group.previous), device
                        )
                    group.previous.copy_(group.step)
                    group.has_previous = True
            if m.decoupled:  # ⟨θ_k, g_k⟩: the decay's work over the steps on either side
                out.theta_grad[i] = _cross(
                    group.layout.local_params(), group.layout.grads(), device
                )
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
                parts = [p for t in group.layout.local_params() for p in reduce.square_parts(t)]
                theta_sq = reduce.total(parts, device)
            out.theta_sq.append(group.theta_sq)
            out.penalty = out.penalty + 0.5 * m.weight_decay * theta_sq
            if self.has_delta:  # wd ⟨−Δθ, θ_k⟩ = ½ wd (‖θ_{k−1}‖² − ‖θ_k‖² − ‖Δθ‖²)
                out.power[i] = out.power[i] + 0.5 * m.weight_decay * (
                    before - theta_sq - group.delta_sq
                )
        return out

    def check(self, state: dict[str, Any]) -> None:
        """ValueError unless `state` holds one step per group, of this group's size."""
        keys = ("measured", "has_delta", "kinetic", "grad_dot_before", "cross_before", "norms")
        sizes = [getattr(t, "numel", lambda: -1)() for t in state.get("steps", [])]
        expected = [g.step.numel() for g in self.groups]
        if not any(sizes) and any(expected):
            raise ValueError(
                "state: booked from the optimizer's own report (InertiaSGD without the alarm or "
                "a noise estimate), while this monitor keeps parameter buffers: resume with the "
                "alarm and noise estimate it was saved with"
            )
        if sizes != expected:
            raise ValueError(
                f"state: parameter sizes {sizes} do not match this optimizer's {expected}"
            )
        missing = [key for key in (*keys, "previous") if key not in state]
        if missing:
            raise ValueError(f"state: not a monitor checkpoint (missing {missing})")

    def state_dict(self) -> dict[str, Any]:
        n = len(self.groups)
        values = [*self.kinetic, *self.grad_dot_before, *self.cross_before]
        values += [x for g in self.groups for x in (g.delta_sq, g.theta_sq)]
        floats = torch.stack(values).tolist() if self.groups else []
        return {
            "measured": self.measured,
            "has_delta": self.has_delta,
            "kinetic": floats[:n],
            "grad_dot_before": floats[n : 2 * n],
            "cross_before": floats[2 * n : 3 * n],
            "steps": [g.step.clone() for g in self.groups],
            "norms": [(floats[3 * n + 2 * i], floats[3 * n + 2 * i + 1]) for i in range(n)],
            "previous": [
                g.previous.clone() if g.previous is not None and g.has_previous else None
                for g in self.groups
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def scalar(x: float) -> Tensor:
            return torch.tensor(x, dtype=F64, device=self._zero.device)

        self.measured, self.has_delta = state["measured"], state["has_delta"]
        self.kinetic = [scalar(x) for x in state["kinetic"]]
        self.grad_dot_before = [scalar(x) for x in state["grad_dot_before"]]
        self.cross_before = [scalar(x) for x in state["cross_before"]]
        for group, step, (delta_sq, theta_sq), previous in zip(
            self.groups, state["steps"], state["norms"], state["previous"], strict=True
        ):
            group.step.copy_(step)
            group.delta_sq, group.theta_sq = scalar(delta_sq), scalar(theta_sq)
            group.has_previous = group.previous is not None and previous is not None
            if group.previous is not None and previous is not None:
                group.previous.copy_(previous)


class ReportProbe:
    """Reads an optimizer's report (`ReportsEnergy`): K = ½‖p_k‖², the power
    ⟨−Δθ_{k−1}, ∇L + wd θ⟩ = −h⟨p_k, ∇L + wd θ⟩ and (wd/2)‖θ_k‖². A row with no step behind it
    (skipped) reads K from the current velocity and has no power."""

    books_after_step = True
    measured = has_delta = False

    def __init__(self, optimizer: ReportsEnergy, params: list[list[Tensor]], device: torch.device):
        self.optimizer, self.params = optimizer, params
        self.kinetic = [0.0] * len(params)
        self._nan = torch.full((), float("nan"), dtype=F64, device=device)

    def steps(self) -> list[Tensor]:
        """No buffers: the optimizer keeps its own velocity."""
        return []

    def snapshot(self, maps: list[GroupMap]) -> None:
        """Nothing: the report describes the point the step started from."""

    def after_step(self, optimizer: torch.optim.Optimizer, maps: list[GroupMap]) -> None:
        """Nothing: the row is booked from the report."""

    def measure(self, maps: list[GroupMap], *, snapshot: bool, after_step: bool) -> Measurement:
        n, device = len(self.params), self._nan.device
        power, penalty = [0.0] * n, torch.zeros((), dtype=F64, device=device)
        if after_step:
            for i, (report, m) in enumerate(zip(self.optimizer.energy_report(), maps, strict=True)):
                self.kinetic[i] = report.kinetic
                power[i] = -report.h_before * report.power  # ⟨−Δθ_{k−1}, g + wd θ⟩
                penalty = penalty + 0.5 * m.weight_decay * report.theta_sq
        else:
            self.kinetic[:] = self.optimizer.kinetic_energy()
            for params, m in zip(self.params, maps, strict=True):
                parts = [q for p in params for q in reduce.square_parts(local(p).detach())]
                penalty = penalty + 0.5 * m.weight_decay * reduce.total(parts, device)
        values = torch.tensor([*self.kinetic, *power], dtype=F64, device=device).unbind()
        nan, zero = [self._nan] * n, torch.zeros((), dtype=F64, device=device)
        return Measurement(
            penalty=penalty,
            kinetic=list(values[:n]),
            power=list(values[n:]),
            theta_grad=[zero] * n,
            grad_dot=[zero] * n,
            grad_dot_before=[zero] * n,
            delta_sq=nan,
            theta_sq=nan,
            cross_grad=nan,
            cross=nan,
            cross_before=nan,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"kinetic": list(self.kinetic)}

    def check(self, state: dict[str, Any]) -> None:
        """ValueError unless `state` holds one kinetic energy per group."""
        if any(getattr(t, "numel", lambda: 0)() for t in state.get("steps", [])):
            raise ValueError(
                "state: booked from parameter buffers (with the alarm or a noise estimate), "
                "while this monitor reads the optimizer's report: resume with the alarm and "
                "noise estimate it was saved with"
            )
        if len(state.get("kinetic", ())) != len(self.params):
            raise ValueError(f"state: not the report of {len(self.params)} parameter groups")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kinetic = list(state["kinetic"])


def make_probe(
    optimizer: torch.optim.Optimizer,
    layouts: list[GroupLayout],
    alarm: str | None,
    noise: str | None,
    segments: Segments | None = None,
) -> Probe:
    """The report of an optimizer that gives one (`ReportsEnergy`) where neither the alarm, a
    noise estimate nor per-layer books need the parameters' buffers; otherwise theirs."""
    if isinstance(optimizer, ReportsEnergy) and alarm is None and noise is None and not segments:
        device = layouts[0].device if layouts else torch.device("cpu")
        return ReportProbe(optimizer, [layout.params for layout in layouts], device)
    return ParameterProbe(
        layouts,
        secant=alarm in ("two_steps", "secant"),
        two_steps=alarm == "two_steps",
        segments=segments,
    )
