"""Probes: what the monitor measures of the parameters at a row (docs/theory.md §4).

A row at θ_k needs, per parameter group, the kinetic energy K = ½ uᵀMu of the velocity
u = (θ_k − θ_{k−1})/h, the weight-decay potential (wd/2)‖θ_k‖², the power of the last step
against the forces ⟨−Δθ_{k−1}, ∇L(θ_k) + wd θ_k⟩ (the shadow term and the map's exact
friction, docs/theory.md §4) and the work of a decoupled decay over the step; the stability
alarm's secant needs a few more dot products. The values are partial sums on the parameters'
device (one reduction per tensor or per block of a group's flat buffer), added up on the
host after the row's one transfer (`inertia.monitor.row.Pack`): nothing waits for the host
before it. Two probes give them behind one protocol:

- `ParameterProbe` keeps a buffer of the parameters in their own precision (float32 for
  float32, bf16 and fp16 parameters; float64 for float64): θ_k at the step, then
  θ_k − θ_{k+1} after it, and measures from it (`inertia.monitor.reduce`);
- `ReportProbe` reads an optimizer's own report (`inertia.reporting.ReportsEnergy`), with no
  pass over the parameters; its rows are booked after the step, when the report exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import torch
from torch import Tensor

from .._distributed import local
from ..reporting import ReportsEnergy
from . import reduce
from .layout import F64, GroupLayout, Segments
from .maps import NESTEROV, GroupMap, metric

Values = list[Tensor]  # one 0-d float64 tensor per parameter group
Parts = list[Tensor | float]  # a value's 0-d partial sums (any float dtype) and host constants
NAN = float("nan")
SUMMED = tuple("theta_grad grad_dot grad_dot_before delta_sq theta_sq cross_grad cross".split())
SUMMED += ("cross_before",)  # the per-group values given as partial sums (`Measurement.sums`)
PER_LAYER = ("kinetic", "step_sq")  # the per-layer books of the last measured step


@dataclass(slots=True)
class Measurement:
    """A row's measurement: on the device, the weight-decay potential Σ (wd/2)‖θ_k‖²
    (`penalty`) and each group's kinetic energy; as partial sums per group (`sums`, the names
    of `SUMMED`), ⟨θ_k, g_k⟩ where a decoupled decay acts (`theta_grad`, its work), and the dot
    products of the alarm's curvature and Nesterov's look-ahead (NaN where not measured):
    ⟨−Δθ_{k−1}, g_k⟩ (`grad_dot`) and ⟨−Δθ_{k−1}, g_{k−1}⟩ (`grad_dot_before`), ‖Δθ_{k−1}‖²,
    ‖θ‖² at the last snapshot, and for the two-step curvature ⟨−Δθ_{k−2}, g_k⟩
    (`cross_grad`), ⟨Δθ_{k−1}, Δθ_{k−2}⟩ (`cross`), ⟨−Δθ_{k−2}, g_{k−1}⟩ (`cross_before`);
    `finish` completes the values on the host: the power ⟨−Δθ_{k−1}, g_k + wd θ_k⟩ (`power`,
    Δθ the step the momentum carries). `segments`: per-layer sums (name → (S,))."""

    penalty: Tensor
    kinetic: Values
    sums: dict[str, list[Parts]]
    finish: Callable[[dict[str, list[float]]], None] | None = None
    segments: dict[str, Tensor] = field(default_factory=dict)


class Probe(Protocol):
    """Measures the parameters for the rows; `books_after_step`: rows are booked after the step
    (from the optimizer's report), not before it."""

    books_after_step: bool
    measured: bool  # the last step was measured: `steps()` holds its −Δθ
    has_delta: bool  # some step was measured: the alarm's curvature has a step to look along

    def snapshot(self, maps: list[GroupMap]) -> None: ...
    def after_step(self, optimizer: torch.optim.Optimizer, maps: list[GroupMap]) -> None: ...
    def measure(self, maps: list[GroupMap], *, snapshot: bool, after_step: bool) -> Measurement: ...
    def steps(self) -> list[Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _cross(flats: list[Tensor], tensors: list[Tensor]) -> Parts:
    """The partial sums of Σ over a group's parameters of ⟨flat, tensor⟩ (`flats` 1-D)."""
    return list(reduce.dots_of(flats, tensors))


def _power(decay: list[float], values: dict[str, list[float]]) -> None:
    """values["power"] = ⟨−Δθ_{k−1}, g_k⟩ + wd⟨−Δθ_{k−1}, θ_k⟩, the second term from norms:
    wd ⟨−Δθ, θ_k⟩ = ½ wd (‖θ_{k−1}‖² − ‖θ_k‖² − ‖Δθ‖²) (`decay`: wd per group, 0 where not
    booked)."""
    power = list(values["grad_dot"])
    for i, wd in enumerate(decay):
        if wd:
            before, now = values["theta_before"][i], values["theta_now"][i]
            power[i] = power[i] + 0.5 * wd * (before - now - values["delta_sq"][i])
    values["power"] = power


class _Buffers:
    """One group's flat buffer in the group's buffer dtype: `step` holds θ_k at the step, then
    θ_k − θ_{k+1} after it; with `two_steps`, `previous` keeps the step before the last.
    `delta_sq` = ‖Δθ‖² of the last measured step, `theta_sq` = ‖θ‖² at the last snapshot."""

    def __init__(self, layout: GroupLayout, two_steps: bool):
        self.layout = layout
        self.step = layout.zeros()
        self.step_views = layout.views_of(self.step)
        self.step_flats = list(torch.split(self.step, layout.sizes))
        self.previous = layout.zeros() if two_steps else None
        previous = () if self.previous is None else torch.split(self.previous, layout.sizes)
        self.previous_flats = list(previous)
        self.has_previous = False
        self.delta_sq: Parts = [0.0]  # as partial sums
        self.theta_sq: Parts = [0.0]

    def snapshot(self, norm: bool) -> None:
        """step ← θ, remembering ‖θ‖² if `norm` (weight decay books it; else NaN)."""
        if self.step_views:  # an empty group has none (torch's foreach ops refuse [])
            torch._foreach_copy_(self.step_views, self.layout.local_params())
        self.theta_sq = list(reduce.square_parts(self.step)) if norm else [NAN]


class ParameterProbe:
    """Measures from buffers of the parameters. `secant`: also the dots of the alarm's secant
    curvature; `two_steps`: and those over the last two steps; `segments`: the per-layer
    kinetic energy and step size; `norms`: ‖Δθ‖² of every step (the alarm reads it; the
    books only where weight decay is coupled, for Nesterov and as K itself where M = I)."""

    books_after_step = False

    def __init__(
        self,
        layouts: list[GroupLayout],
        *,
        secant: bool,
        two_steps: bool,
        segments: Segments | None = None,
        norms: bool = True,
    ):
        device = layouts[0].device if layouts else torch.device("cpu")
        self._zero = torch.zeros((), dtype=F64, device=device)
        self.groups = [_Buffers(layout, two_steps) for layout in layouts]
        self.secant, self.two_steps = secant, two_steps
        self.norms = norms  # ‖Δθ‖² even where no book reads it (the alarm does)
        self.segments = segments
        self.measured = False  # the last step's −Δθ is in the buffers
        self.has_delta = False  # some step was measured
        n = len(layouts)
        self.kinetic = [self._zero] * n  # per group, measured after the last measured step
        self.grad_dot_before: list[Parts] = [[0.0]] * n  # ⟨−Δθ, g⟩, the step's own gradient
        self.cross_before: list[Parts] = [[NAN]] * n  # ⟨−Δθ_prev, g⟩, the last step's gradient
        # the per-layer books of the last measured step (0 before one)
        zeros = torch.zeros(len(segments.names) if segments else 0, dtype=F64, device=device)
        self.segment_values = {} if segments is None else dict.fromkeys(PER_LAYER, zeros)

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
            if views:
                torch._foreach_sub_(views, params)
            if m.decoupled:  # θ_k − θ_{k+1} − ηλθ_k = (1 − ηλ)(θ_k − θ_{k+1}) − ηλθ_{k+1}, for
                # the parameters the step decayed: a parameter without a gradient is not
                taken = zip(views, params, group.layout.params, strict=True)
                pairs = [(v, p) for v, p, q in taken if q.grad is not None]
                if pairs:
                    decayed, after = [v for v, _ in pairs], [p for _, p in pairs]
                    torch._foreach_mul_(decayed, 1.0 - m.decoupled)
                    torch._foreach_add_(decayed, after, alpha=-m.decoupled)
            mass = metric(optimizer, optimizer.param_groups[i], m)
            if self.norms or m.weight_decay or m.kind == NESTEROV or mass is None:
                group.delta_sq = list(reduce.square_parts(group.step))
            else:  # read by none of the books: Adam's K is ‖Δθ‖²_M, not ‖Δθ‖²
                group.delta_sq = [NAN]
            if self.secant or m.kind == NESTEROV:  # ⟨−Δθ_k, g_k⟩, and the cross term
                grads = group.layout.grads()
                self.grad_dot_before[i] = _cross(group.step_flats, grads)
                if group.previous is not None and group.has_previous:
                    self.cross_before[i] = _cross(group.previous_flats, grads)
            scale = 0.5 / (m.h * m.h) if m.h > 0 else 0.0
            if self.segments is None:  # K = ½‖Δθ‖²_M/h² over the flat buffer
                if mass is None:
                    weighted = group.delta_sq
                else:
                    sizes = group.layout.sizes
                    weighted = list(reduce.weighted_square_flat(group.step, mass, sizes))
                total = reduce.total(weighted, device)
                self.kinetic[i] = total * scale if m.h > 0 else self._zero
                continue
            squares = [reduce.total(reduce.square_parts(v), device) for v in views]
            per_tensor = squares
            if mass is not None:
                per_tensor = [
                    reduce.total(reduce.weighted_square_parts(v, w), device)
                    for v, w in zip(views, mass, strict=True)
                ]
            per_tensor = [x * scale for x in per_tensor]
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
        n = len(self.groups)
        sums: dict[str, list[Parts]] = {name: [[0.0]] * n for name in SUMMED}
        for name in ("cross_grad", "cross"):
            sums[name] = [[NAN]] * n
        sums["grad_dot_before"] = list(self.grad_dot_before)
        sums["cross_before"] = list(self.cross_before)
        sums["delta_sq"] = [g.delta_sq for g in self.groups]
        penalty: Tensor | None = None
        before: list[Parts | None] = [None] * n  # ‖θ_{k−1}‖², where weight decay books power
        for i, (group, m) in enumerate(zip(self.groups, maps, strict=True)):
            grads = group.layout.grads() if self.has_delta or m.decoupled else []
            if self.has_delta:  # step = −Δθ_{k−1}: ⟨−Δθ, ∇L⟩ (shadow, curvature)
                sums["grad_dot"][i] = _cross(group.step_flats, grads)
                if group.previous is not None:
                    if group.has_previous:
                        sums["cross_grad"][i] = _cross(group.previous_flats, grads)
                        sums["cross"][i] = list(reduce.dot_parts(group.step, group.previous))
                    group.previous.copy_(group.step)
                    group.has_previous = True
            if m.decoupled:  # ⟨θ_k, g_k⟩: the decay's work over the steps on either side
                sums["theta_grad"][i] = _cross(group.layout.local_params(), grads)
            if not m.weight_decay:
                if snapshot:
                    group.snapshot(norm=self.two_steps)  # the two-step curvature's precision
                sums["theta_sq"][i] = group.theta_sq
                continue
            if self.has_delta:
                before[i] = group.theta_sq  # at the last snapshot; NaN if wd was 0 then
            if snapshot:
                group.snapshot(norm=True)
                theta_sq = group.theta_sq
            else:
                theta_sq = list(reduce.squares_of(group.layout.local_params()))
            sums["theta_sq"][i] = group.theta_sq
            sums["theta_now"] = sums.get("theta_now", [[0.0]] * n)
            sums["theta_now"][i] = theta_sq
            term = 0.5 * m.weight_decay * reduce.total(theta_sq, group.step.device)
            penalty = term if penalty is None else penalty + term
        if any(b is not None for b in before):
            sums["theta_before"] = [[0.0] if b is None else b for b in before]
        decay = [
            m.weight_decay if b is not None else 0.0 for m, b in zip(maps, before, strict=True)
        ]
        return Measurement(
            penalty=self._zero if penalty is None else penalty,
            kinetic=list(self.kinetic),
            sums=sums,
            finish=partial(_power, decay),
            segments=dict(self.segment_values),
        )

    def state_dict(self) -> dict[str, Any]:
        """Host numbers and the buffers; `segments`: the per-layer books of the last measured
        step (the layers' names, K and ‖Δθ‖² per layer), which the next row reads."""
        n = len(self.groups)
        sums = [[k] for k in self.kinetic] + [*self.grad_dot_before, *self.cross_before]
        sums += [x for g in self.groups for x in (g.delta_sq, g.theta_sq)]
        layers = [] if self.segments is None else list(self.segments.names)
        sums += [[x] for name in PER_LAYER if layers for x in self.segment_values[name].unbind()]
        floats = reduce.host_sums(sums)
        per_layer, size = floats[5 * n :], len(layers)
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
            "segments": {"layers": layers}
            | {name: per_layer[i * size : (i + 1) * size] for i, name in enumerate(PER_LAYER)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A checked state. The per-layer books of the last measured step are restored where
        it holds them for these layers; otherwise (`segments` None: layouts before 6, or other
        layers) they are unknown, and the first row's per-layer columns are NaN, not 0."""

        def scalar(x: float) -> Tensor:
            return torch.tensor(x, dtype=F64, device=self._zero.device)

        self.measured, self.has_delta = state["measured"], state["has_delta"]
        self.kinetic = [scalar(x) for x in state["kinetic"]]
        self.grad_dot_before = [[scalar(x)] for x in state["grad_dot_before"]]
        self.cross_before = [[scalar(x)] for x in state["cross_before"]]
        for group, step, (delta_sq, theta_sq), previous in zip(
            self.groups, state["steps"], state["norms"], state["previous"], strict=True
        ):
            group.step.copy_(step)
            group.delta_sq, group.theta_sq = [scalar(delta_sq)], [scalar(theta_sq)]
            group.has_previous = group.previous is not None and previous is not None
            if group.previous is not None and previous is not None:
                group.previous.copy_(previous)
        if self.segments is not None:
            saved, names = state["segments"], self.segments.names
            known = saved is not None and list(saved["layers"]) == names
            for name in PER_LAYER:
                values = saved[name] if known else [NAN] * len(names)
                self.segment_values[name] = self._zero.new_tensor(values)


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
        sums: dict[str, list[Parts]] = {name: [[0.0]] * n for name in SUMMED}
        for name in ("delta_sq", "theta_sq", "cross_grad", "cross", "cross_before"):
            sums[name] = [[NAN]] * n
        sums["power"] = [[x] for x in values[n:]]
        return Measurement(penalty=penalty, kinetic=list(values[:n]), sums=sums)

    def state_dict(self) -> dict[str, Any]:
        return {"kinetic": list(self.kinetic)}

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
        norms=alarm is not None,
    )
