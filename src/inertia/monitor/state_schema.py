"""The schema of a monitor checkpoint (`inertia.monitor.checkpoint`), checked whole before any
of it is applied: each part's keys, the type of each value, one entry per parameter group, and
each tensor's dtype, shape and finiteness against the optimizer the monitor is attached to.

Fields are named by their path in the state, `books.sums.total` or `probe.steps[0]`; the
first one missing or wrong is named in a ValueError. NaN is a value some fields hold in a
healthy run (a noise estimate not yet taken, the power of a step whose gradient overflowed);
tensors (the probe's buffers, the alarm's directions, the books' sums) and counts never are.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .books import BOOKS, PER_GROUP
from .layout import F64
from .maps import KINDS, GroupMap
from .probe import PER_LAYER, ParameterProbe, Probe, ReportProbe

Shape = tuple[int, ...]
KEYS = ("step", "every", "last_row", "layout", "maps", "books", "probe", "alarm", "noise_scale")
PROBE = tuple("measured has_delta kinetic grad_dot_before cross_before steps norms".split())
PROBE += ("previous", "segments")
ALARM = ("ema", "last_secant", "above", "evidence", "growth", "floor", "last_energy", "sharp")
MAP_FIELDS = tuple(GroupMap.__dataclass_fields__)
_REPORT = (
    "state: probe was booked from the optimizer's own report (InertiaSGD without the alarm or "
    "a noise estimate), while this monitor keeps parameter buffers: resume with the alarm and "
    "noise estimate it was saved with"
)
_BUFFERS = (
    "state: probe was booked from parameter buffers (with the alarm or a noise estimate), "
    "while this monitor reads the optimizer's report: resume with the alarm and noise "
    "estimate it was saved with"
)


class Layout(NamedTuple):
    """What a checkpoint must match: per parameter group, the parameters' shapes, and the size
    and dtype of the probe's flat buffer (None: no buffers, rows from the optimizer's report)."""

    shapes: list[list[Shape]]
    buffers: list[tuple[int, torch.dtype]] | None


def layout_of(probe: Probe) -> Layout:
    """The parameter layout `probe` measures."""
    if isinstance(probe, ParameterProbe):
        shapes = [[tuple(p.shape) for p in g.layout.params] for g in probe.groups]
        return Layout(shapes, [(g.step.numel(), g.step.dtype) for g in probe.groups])
    if isinstance(probe, ReportProbe):
        return Layout([[tuple(p.shape) for p in group] for group in probe.params], None)
    raise TypeError(f"no checkpoint layout for a {type(probe).__name__}")


def check(state: dict[str, Any], layout: Layout) -> None:
    """ValueError naming the first field of an upgraded `state` that is missing or does not fit
    a monitor of parameters laid out as `layout`."""
    _keys(state, "", KEYS)
    step = _int(state["step"], "step", 0)
    _int(state["every"], "every", 1)
    _int(state["last_row"], "last_row", 0, high=step)
    _layout(state["layout"], layout.shapes)
    n = len(layout.shapes)
    _maps(state["maps"], n)
    _books(state["books"], n)
    _probe(state["probe"], layout)
    if state["alarm"] is not None:
        _alarm(state["alarm"], layout)
    scale = state["noise_scale"]
    if scale is not None:
        _keys(scale, "noise_scale", ("noise", "signal", "rows"))
        _real(scale["noise"], "noise_scale.noise", finite=True)
        _real(scale["signal"], "noise_scale.signal", finite=True)
        _int(scale["rows"], "noise_scale.rows", 0)


def _layout(saved: Any, shapes: list[list[Shape]]) -> None:
    """The saved shapes per group against the optimizer's (None: a layout that kept none)."""
    if saved is None:
        return
    groups = _seq(saved, "layout", None, "a list of parameter shapes per group")
    if len(groups) != len(shapes):
        raise ValueError(
            f"state: layout holds {len(groups)} parameter groups, this optimizer {len(shapes)}: "
            "a checkpoint of another model or grouping"
        )
    for i, (group, own) in enumerate(zip(groups, shapes, strict=True)):
        path = f"layout[{i}]"
        group = _seq(group, path, None, "a list of parameter shapes")
        if len(group) != len(own):
            raise ValueError(
                f"state: {path} holds {len(group)} parameters, this optimizer's group {i} "
                f"{len(own)}: a checkpoint of another model or grouping"
            )
        for j, (shape, mine) in enumerate(zip(group, own, strict=True)):
            where = f"{path}[{j}]"
            dims = _seq(shape, where, None, "a parameter shape (a list of sizes)")
            saved_shape = tuple(_int(d, f"{where}[{k}]", 0) for k, d in enumerate(dims))
            if saved_shape != mine:
                raise ValueError(
                    f"state: {where} is a parameter of shape {list(saved_shape)}, this "
                    f"optimizer's is {list(mine)}: a checkpoint of another model"
                )


def _maps(state: Any, n: int) -> None:
    _keys(state, "maps", ("last", "before"))
    for key in ("last", "before"):
        path = f"maps.{key}"
        if state[key] is None:
            continue
        for i, m in enumerate(_seq(state[key], path, n, f"a list of {n} maps, one per group")):
            where = f"{path}[{i}]"
            _keys(m, where, MAP_FIELDS)
            extra = sorted(str(k) for k in m if k not in MAP_FIELDS)
            if extra:
                raise ValueError(f"state: {where}.{extra[0]} is not a field of a map")
            if m["kind"] not in KINDS:
                raise _bad(f"{where}.kind", f"one of {', '.join(KINDS)}", m["kind"])
            _flag(m["physical_velocity"], f"{where}.physical_velocity")
            _int(m["steps"], f"{where}.steps", 0)
            for name in ("lr", "h", "momentum", "weight_decay", "decoupled"):
                _real(m[name], f"{where}.{name}")


def _books(state: Any, n: int) -> None:
    _keys(state, "books", ("sums", "last_inertia", *PER_GROUP))
    _keys(state["sums"], "books.sums", ("total", "carry"))
    for key in ("total", "carry"):
        _tensor(state["sums"][key], f"books.sums.{key}", F64, (len(BOOKS),))
    if state["last_inertia"] is not None:
        _real(state["last_inertia"], "books.last_inertia")
    for name in PER_GROUP:
        _reals(state[name], f"books.{name}", n)


def _probe(state: Any, layout: Layout) -> None:
    n = len(layout.shapes)
    steps = state.get("steps") if isinstance(state, dict) else None
    if layout.buffers is None:  # read from the optimizer's report
        if isinstance(steps, list | tuple) and any(
            isinstance(t, Tensor) and t.numel() for t in steps
        ):
            raise ValueError(_BUFFERS)
        _keys(state, "probe", ("kinetic",))
        _reals(state["kinetic"], "probe.kinetic", n)
        return
    if isinstance(state, dict) and set(state) == {"kinetic"} and any(s for s, _ in layout.buffers):
        raise ValueError(_REPORT)
    _keys(state, "probe", PROBE)
    _flag(state["measured"], "probe.measured")
    _flag(state["has_delta"], "probe.has_delta")
    for name in ("kinetic", "grad_dot_before", "cross_before"):
        _reals(state[name], f"probe.{name}", n)
    for i, pair in enumerate(_seq(state["norms"], "probe.norms", n, f"a list of {n} pairs")):
        _reals(pair, f"probe.norms[{i}]", 2)
    sizes = [size for size, _ in layout.buffers]
    for name in ("steps", "previous"):
        values = _seq(state[name], f"probe.{name}", n, f"a list of {n} tensors, one per group")
        for i, (t, (size, dtype)) in enumerate(zip(values, layout.buffers, strict=True)):
            if t is None and name == "previous":  # no step before the last yet
                continue
            _tensor(t, f"probe.{name}[{i}]", dtype, (size,), f"(parameter sizes {sizes})")
    if state["segments"] is not None:  # None: not kept (layouts before 6)
        _keys(state["segments"], "probe.segments", ("layers", *PER_LAYER))
        layers = _seq(state["segments"]["layers"], "probe.segments.layers", None, "a list of names")
        for i, name in enumerate(layers):
            if not isinstance(name, str):
                raise _bad(f"probe.segments.layers[{i}]", "a layer's name", name)
        for name in PER_LAYER:
            _reals(state["segments"][name], f"probe.segments.{name}", len(layers))


def _alarm(state: Any, layout: Layout) -> None:
    n = len(layout.shapes)
    _keys(state, "alarm", (*ALARM, "vector", "tracked"))
    for i, ema in enumerate(_seq(state["ema"], "alarm.ema", n, f"a list of {n} averages")):
        _reals(ema, f"alarm.ema[{i}]", 3)
    secants = _seq(state["last_secant"], "alarm.last_secant", n, f"a list of {n} entries")
    for i, secant in enumerate(secants):
        if secant is not None:
            _reals(secant, f"alarm.last_secant[{i}]", 2)
    _int(state["above"], "alarm.above", 0)
    _real(state["evidence"], "alarm.evidence", low=0.0)
    _real(state["growth"], "alarm.growth", low=0.0)
    _real(state["floor"], "alarm.floor")
    if state["last_energy"] is not None:
        _reals(state["last_energy"], "alarm.last_energy", 2)
    _reals(state["sharp"], "alarm.sharp", 2)
    shapes = [shape for group in layout.shapes for shape in group]
    if state["vector"] is not None:
        vector = _seq(state["vector"], "alarm.vector", len(shapes), "one tensor per parameter")
        for i, (t, shape) in enumerate(zip(vector, shapes, strict=True)):
            _tensor(t, f"alarm.vector[{i}]", F64, shape)
    if state["tracked"] is not None:
        sizes = [sum(math.prod(s) for s in group) for group in layout.shapes]
        tracked = _seq(state["tracked"], "alarm.tracked", None, "a list of directions")
        if len(tracked) > 2:
            raise _bad("alarm.tracked", "at most two directions", tracked)
        for j, direction in enumerate(tracked):
            where = f"alarm.tracked[{j}]"
            for i, (t, size) in enumerate(
                zip(_seq(direction, where, n, "one per group"), sizes, strict=True)
            ):
                _tensor(t, f"{where}[{i}]", F64, (size,))


# ---------------------------------------------------------------- one value


def _bad(path: str, allowed: str, got: object) -> ValueError:
    if isinstance(got, Tensor):
        shown = f"a {got.dtype} tensor of shape {list(got.shape)}"
    else:
        try:
            shown = repr(got)
        except Exception:  # a hostile __repr__ must not hide the real error
            shown = f"a {type(got).__name__}"
        shown = shown if len(shown) <= 60 else f"{shown[:40]}… ({len(shown)} characters)"
    return ValueError(f"state: {path} must be {allowed}; got {shown}")


def _keys(state: Any, path: str, keys: Sequence[str]) -> None:
    if not isinstance(state, dict):
        raise _bad(path or "state", "a dict", state)
    for key in keys:
        if key not in state:
            raise ValueError(f"state: {path + '.' if path else ''}{key} is missing")


def _int(x: Any, path: str, low: int, *, high: int | None = None) -> int:
    integral = isinstance(x, numbers.Integral) and not isinstance(x, bool)
    if not (integral and x >= low and (high is None or x <= high)):
        bound = f"an integer ≥ {low}" if high is None else f"an integer from {low} to {high}"
        raise _bad(path, bound, x)
    return int(x)


def _real(x: Any, path: str, *, finite: bool = False, low: float | None = None) -> None:
    ok = isinstance(x, numbers.Real) and not isinstance(x, bool)
    if ok and finite:
        ok = math.isfinite(x)
    if ok and low is not None:
        ok = x >= low  # NaN is not
    if not ok:
        kind = "a finite number" if finite else "a number" if low is None else f"a number ≥ {low}"
        raise _bad(path, kind, x)


def _flag(x: Any, path: str) -> None:
    if not isinstance(x, bool):
        raise _bad(path, "True or False", x)


def _seq(x: Any, path: str, n: int | None, what: str) -> Sequence[Any]:
    if not isinstance(x, list | tuple) or (n is not None and len(x) != n):
        raise _bad(path, what, x)
    return x


def _reals(x: Any, path: str, n: int) -> None:
    for i, value in enumerate(_seq(x, path, n, f"a list of {n} numbers")):
        _real(value, f"{path}[{i}]")


def _tensor(x: Any, path: str, dtype: torch.dtype, shape: Shape, note: str = "") -> None:
    if not (
        isinstance(x, Tensor)
        and x.layout == torch.strided
        and x.dtype == dtype
        and tuple(x.shape) == shape
    ):
        raise _bad(path, f"a {dtype} tensor of shape {list(shape)}{' ' + note if note else ''}", x)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"state: {path} holds NaN or infinite values")
