"""Optimizers as discretised dynamics (docs/theory.md §4): one `GroupMap` per parameter group.

Every map reads the group's hyper-parameters at the step and says
- the step h, so that the velocity is u = Δθ/h and the kinetic energy K = ½ uᵀMu;
- the momentum μ, so that one step multiplies u by μ·r and its friction removes (1 − μ²) of
  the rescaled r²K, r = (h_k/h_{k−1})·b_k: r accounts for a changing learning rate and, with
  b_k = (1 − β₁,k−1)/(1 − β₁,k) (the ratio of the maps' `gain`), for Adam's changing β₁;
- the diagonal metric M (None: identity) and the weight decay wd, part of the potential
  L + (wd/2)‖θ‖².

SGD (momentum μ, dampening τ, lr η): h = sqrt(η(1 − τ)); the heavy ball. With Nesterov the
look-ahead adds Hessian-driven damping ημ(g_{k−1} − g_k) that this map leaves to the residual.
Adam/AdamW: μ = β₁, h = sqrt(η(1 − β₁)/(1 − β₁ᵗ)) (bias correction folded into η),
M = diag(sqrt(v̂) + ε) with v̂ = v/(1 − β₂ᵗ) (AMSGrad: v's running maximum): an approximation,
as M changes every step (the change lands in the residual); AdamW's decoupled decay is booked
as `decay` work (`inertia.monitor.books`). Its velocity is u = −(h/(1 − β₁))M⁻¹m, with β₁ and
t of the step as torch's bias correction takes them, and m ← β₁m + (1 − β₁)g: a β₁ schedule
(OneCycleLR, CyclicLR cycling momentum) rescales u by b_k.
RMSprop: μ = momentum, h = sqrt(η), M = diag(sqrt(v) + ε) (centred: sqrt(v − ḡ²) + ε).
An optimizer that reports its energies (`inertia.reporting.ReportsEnergy`, e.g. InertiaSGD):
h and μ of the step it took, read after the step; its velocity is physical, so a change of h
does not rescale it. Any other optimizer: h = sqrt(lr) (1 without an lr), no friction, M = Id,
with a UserWarning when the monitor attaches (`UNMAPPED`: a `warnings` filter on it silences it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..reporting import EnergyReport, ReportsEnergy
from .reduce import Metric

Group = dict[str, Any]  # a torch.optim parameter group
State = dict[Any, Any]  # torch.optim.Optimizer.state


@dataclass(frozen=True)
class GroupMap:
    """How one parameter group moves: u = Δθ/h, friction μ, metric M, weight decay wd (coupled:
    part of the potential), and `decoupled`, the share ηλ by which a decoupled decay (AdamW's)
    shrinks θ each step, θ ← (1 − ηλ)θ, outside the metric: booked as work (docs/theory.md §4)."""

    kind: str
    lr: float
    h: float
    momentum: float
    weight_decay: float = 0.0
    physical_velocity: bool = False  # the optimizer carries u itself, not Δθ/η (SGD's buffer)
    steps: int = 0  # Adam: the step's number t, 1 for the first (its bias corrections)
    decoupled: float = 0.0

    @property
    def gamma(self) -> float:
        """Continuous friction γ = (1 − μ)/h of the heavy-ball ODE (docs/theory.md §4); NaN
        for a step of length 0 (a learning rate of 0: no time passes)."""
        return (1.0 - self.momentum) / self.h if self.h > 0 else math.nan

    @property
    def gain(self) -> float:
        """1 − β₁, the share of the gradient Adam's buffer m takes (m ← β₁m + (1 − β₁)g):
        u = −(h/(1 − β₁))M⁻¹m, so a step whose β₁ changed rescales u by the ratio of the last
        step's gain to its own, besides h_k/h_{k−1}. 1 for the other maps, whose buffer's share
        is fixed (SGD's dampening is taken constant)."""
        return 1.0 - self.momentum if self.kind == "adam" else 1.0

    @classmethod
    def of_report(cls, report: EnergyReport) -> GroupMap:
        """The map of a step an optimizer reported."""
        return cls("reported", report.lr, report.h, report.momentum, report.weight_decay, True)


NO_MAP = GroupMap("none", math.nan, math.nan, 0.0)  # the row of an optimizer with no groups
METRIC_KINDS = ("adam", "rmsprop")  # the maps whose kinetic energy is in a diagonal metric
NESTEROV = "sgd-nesterov"  # its look-ahead adds Hessian-driven damping μ(g_k − g_{k−1})
KINDS = ("sgd", NESTEROV, "adam", "rmsprop", "generic", "reported", "none")  # every map's kind


def _sgd(group: Group, state: State) -> GroupMap:
    lr, mu = float(group["lr"]), float(group.get("momentum", 0.0))
    damp = float(group.get("dampening", 0.0)) if mu > 0 else 0.0
    kind = NESTEROV if group.get("nesterov") else "sgd"
    return GroupMap(
        kind, lr, math.sqrt(lr * (1.0 - damp)), mu, float(group.get("weight_decay", 0.0))
    )


def _adam(group: Group, state: State) -> GroupMap:
    lr, (beta1, _) = float(group["lr"]), group["betas"]
    steps = _step_count(state, group["params"]) + 1  # the step about to be taken
    h = math.sqrt(lr * (1.0 - beta1) / (1.0 - beta1**steps))
    wd = float(group.get("weight_decay", 0.0))
    if group.get("decoupled_weight_decay", False):  # AdamW: θ ← (1 − ηλ)θ, outside the metric
        return GroupMap("adam", lr, h, float(beta1), steps=steps, decoupled=lr * wd)
    return GroupMap("adam", lr, h, float(beta1), wd, steps=steps)


def _rmsprop(group: Group, state: State) -> GroupMap:
    lr = float(group["lr"])
    return GroupMap(
        "rmsprop",
        lr,
        math.sqrt(lr),
        float(group.get("momentum", 0.0)),
        float(group.get("weight_decay", 0.0)),
    )


def _generic(group: Group, state: State) -> GroupMap:
    lr = float(group.get("lr", 1.0))
    return GroupMap("generic", lr, math.sqrt(lr), 1.0, 0.0)  # μ = 1: no friction


def _step_count(state: State, params: list[Tensor]) -> int:
    for p in params:
        step = state.get(p, {}).get("step")
        if step is not None:
            return int(step)
    return 0


Maker = Callable[[Group, State], GroupMap]
_MAPS: dict[type, Maker] = {
    torch.optim.SGD: _sgd,
    torch.optim.Adam: _adam,
    torch.optim.AdamW: _adam,
    torch.optim.RMSprop: _rmsprop,
}


def _maker(kind: type) -> Maker:
    """The map of an optimizer class: its own, else its nearest mapped base, else generic."""
    return next((_MAPS[cls] for cls in kind.__mro__ if cls in _MAPS), _generic)


#: The start of the warning an optimizer with no map of its own gets when a monitor attaches
#: (`warnings.filterwarnings("ignore", message=UNMAPPED)` silences it).
UNMAPPED = "inertia: no energy map for "


def map_reader(optimizer: torch.optim.Optimizer) -> Callable[[], list[GroupMap]]:
    """A function giving the map of each parameter group of `optimizer` at its current
    hyper-parameters (for an optimizer that reports its energies, those of its last step),
    its dispatch resolved once: the monitor's, at attach, where an optimizer falling to the
    generic map is warned about, once (`warn_unmapped`)."""
    warn_unmapped(optimizer, stacklevel=4)  # at the line that made the monitor
    return _reader(optimizer)


def warn_unmapped(optimizer: torch.optim.Optimizer, *, stacklevel: int = 2) -> None:
    """A UserWarning if `optimizer` falls to the generic map: neither a mapped class (nor a
    subclass of one) nor an optimizer that reports its energies."""
    if isinstance(optimizer, ReportsEnergy) or _maker(type(optimizer)) is not _generic:
        return
    kind = type(optimizer)
    mapped = ", ".join(cls.__name__ for cls in _MAPS)
    warnings.warn(
        f"{UNMAPPED}{kind.__module__}.{kind.__qualname__}: the monitor books it with the "
        "generic map, the kinetic energy in the identity metric with h = sqrt(lr) and no "
        "friction, so `dissipated` stays 0 and the energy change lands in `residual`. Mapped: "
        f"torch.optim's {mapped} and their subclasses, and optimizers that report their "
        "energies (inertia.reporting.ReportsEnergy, such as inertia.optim.InertiaSGD) "
        "(docs/monitor.md, Maps)",
        UserWarning,
        stacklevel=stacklevel,
    )


def _reader(optimizer: torch.optim.Optimizer) -> Callable[[], list[GroupMap]]:
    if isinstance(optimizer, ReportsEnergy):
        reporter = optimizer
        return lambda: [GroupMap.of_report(r) for r in reporter.energy_report()]
    make = _maker(type(optimizer))

    def read() -> list[GroupMap]:
        """Each group's map; an empty group, which takes no step, stands in the first
        stepping group's (Adam's of an empty group would be a first step's forever)."""
        groups = optimizer.param_groups
        maps = [make(group, optimizer.state) for group in groups]
        empty = [not group["params"] for group in groups]
        stepping = next((m for m, e in zip(maps, empty, strict=True) if not e), None)
        if stepping is None or not any(empty):
            return maps
        return [stepping if e else m for m, e in zip(maps, empty, strict=True)]

    return read


def group_maps(optimizer: torch.optim.Optimizer) -> list[GroupMap]:
    """The map of each parameter group of `optimizer`, at its current hyper-parameters (the
    generic one, kind "generic", for an optimizer with no map of its own: no warning here)."""
    return _reader(optimizer)()


def metric(
    optimizer: torch.optim.Optimizer, group: Group, step: GroupMap, *, before: bool = False
) -> list[Metric] | None:
    """The diagonal metric M of each parameter of `group` after the `step` it took (Adam's
    bias correction from the step's number; AMSGrad's running maximum of v), or with
    `before`, the metric of the state the step starts from (the one its gradient's noise is
    weighed in); None: the identity, or no state yet. A parameter with neither state nor
    gradient (frozen, or unused so far) is not moved by the step: its metric is that of a
    zero second moment, M = ε, a view of one zero, and its share of K and of the noise is 0."""
    if step.kind not in METRIC_KINDS:
        return None
    if not group["params"]:  # an empty group: nothing to weigh, known from the start
        return []
    adam = step.kind == "adam"
    steps = step.steps - 1 if before else step.steps
    if adam and steps < 1:
        return None
    correction = 1.0 - group["betas"][1] ** steps if adam else 1.0
    key = ("max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq") if adam else "square_avg"
    centered = not adam and group.get("centered")
    states = [optimizer.state.get(p, {}) for p in group["params"]]
    if not any(key in st for st in states):
        return None
    out = []
    for p, st in zip(group["params"], states, strict=True):
        if key in st:
            mean = st["grad_avg"] if centered else None
            out.append(Metric(st[key], correction, group["eps"], mean))
        elif p.grad is None:
            zero = _zero(p.dtype, p.device).expand(p.numel())
            out.append(Metric(zero, correction, group["eps"], zero if centered else None))
        else:  # a gradient the state has not seen yet
            return None
    return out


_ZEROS: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _zero(dtype: torch.dtype, device: torch.device) -> Tensor:
    """One 0-d zero per dtype and device (made once: a frozen parameter's zero second moment
    is a view of it)."""
    key = (dtype, device)
    if key not in _ZEROS:
        _ZEROS[key] = torch.zeros((), dtype=dtype, device=device)
    return _ZEROS[key]


@dataclass
class MapHistory:
    """The maps of the step under way (read before it, or after it for a reporting optimizer),
    of the last step taken and of the step before it: friction and the alarm need all three."""

    under_way: list[GroupMap] | None = None
    last: list[GroupMap] | None = None
    before: list[GroupMap] | None = None

    def advance(self) -> None:
        """The step under way has been taken (a step neither booked nor measured keeps none)."""
        if self.under_way is not None:
            self.before, self.last = self.last, self.under_way

    def state_dict(self) -> dict[str, list[dict[str, Any]] | None]:
        """`last` and `before` as plain dicts (a checkpoint loads with weights_only=True)."""
        return {"last": _plain(self.last), "before": _plain(self.before)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last, self.before = _maps_of(state["last"]), _maps_of(state["before"])


def _plain(maps: list[GroupMap] | None) -> list[dict[str, Any]] | None:
    return None if maps is None else [asdict(m) for m in maps]


def _maps_of(plain: list[dict[str, Any]] | None) -> list[GroupMap] | None:
    return None if plain is None else [GroupMap(**m) for m in plain]
