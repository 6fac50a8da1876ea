"""The monitor's checkpoint layout: version 6 is composed of its parts' own state dicts, the
step of the last row, the noise scale's averages and the shapes of the parameters per group
(`layout`); earlier layouts are upgraded on load (5: without the probe's per-layer books of
the last measured step, which are then unknown: the first row's `kinetic/<layer>` and
`step_size/<layer>` are NaN, and without the books' h and q of the last row's step, which
fall back to the maps kept (q = 1: that step's schedule energy is not booked when rows are
more than one step apart); 4: nor the shapes, which then go unchecked; 3: nor the noise
scale, which starts afresh; 2: nor the last row's step; 1, no "version": the single class
the monitor was before it had parts).

A state is read whole before anything is applied (`check`, `inertia.monitor.state_schema`):
every key of every part, its type, its length per parameter group, the shape, dtype and
finiteness of each tensor, against the parameter layout of the optimizer the monitor is
attached to. The first field that is missing or wrong is named in a ValueError, and the
monitor is left as it was."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .alarm import StabilityAlarm
from .books import BOOKS, Books
from .maps import MapHistory
from .noise_scale import NoiseScale
from .probe import Probe
from .state_schema import check, layout_of

VERSION = 6
_MAP_DEFAULTS = {"weight_decay": 0.0, "physical_velocity": False, "steps": 0, "decoupled": 0.0}
_ALARM_DEFAULTS = {
    "growth": 0.0,
    "floor": math.nan,
    "last_energy": None,
    "sharp": [math.nan, math.nan],
    "vector": None,
}


class Parts(NamedTuple):
    """The monitor's parts that carry state from row to row."""

    books: Books
    maps: MapHistory
    probe: Probe
    alarm: StabilityAlarm | None
    noise_scale: NoiseScale


def save(step: int, every: int, last_row: int, parts: Parts) -> dict[str, Any]:
    """The checkpoint of a monitor `step` steps in, booking every `every`, its last row at
    `last_row` (layout `VERSION`; loads with weights_only=True)."""
    shapes = layout_of(parts.probe).shapes
    return {
        "version": VERSION,
        "step": step,
        "every": every,
        "last_row": last_row,
        "layout": [[list(shape) for shape in group] for group in shapes],
        "maps": parts.maps.state_dict(),
        "books": parts.books.state_dict(),
        "probe": parts.probe.state_dict(),
        "alarm": None if parts.alarm is None else parts.alarm.state_dict(),
        "noise_scale": parts.noise_scale.state_dict(),
    }


def load(state: dict[str, Any], parts: Parts, groups: int) -> tuple[int, int, int, Parts]:
    """(step, every, last row) of `state`, upgraded, and fresh parts holding it (books of
    `groups` groups); the probe, the one part kept, is loaded last. The whole state
    is checked first (`check`): a ValueError naming the first bad field, and nothing of `parts`
    changed, if any of it cannot be read."""
    state = upgrade(state)
    check(state, layout_of(parts.probe))
    books, maps, scale = Books(groups), MapHistory(), NoiseScale()
    alarm = None if parts.alarm is None else parts.alarm.fresh()
    step, every, last = restore(state, books, maps, alarm, scale)
    parts.probe.load_state_dict(state["probe"])  # checked above: it cannot fail
    return step, every, last, Parts(books, maps, parts.probe, alarm, scale)


def last_row(step: int, every: int) -> int:
    """The step of the last row a monitor `step` steps in has booked, rows every `every`."""
    return max(step - 1, 0) // every * every


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """`state` in the current layout: a state of this version as it is, versions 2 to 5
    completed, the single-class layout of earlier releases rewritten key by key; ValueError for
    anything else. Nothing is checked beyond what the rewriting needs (`check` does that)."""
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict from InertiaMonitor.state_dict; got {state!r}")
    if "version" not in state and "two_steps" not in state:  # layout 1 had no version
        raise ValueError("state: version is missing: not a monitor checkpoint")
    version = state.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION:
        raise ValueError(
            f"state: version must be a layout this release reads (1 to {VERSION}); got layout "
            f"version {version!r}"
        )
    if version == VERSION:
        return state
    if version == 5:
        return _to_layout_6(state)
    if version == 4:
        return _to_layout_6(_unclipped({**state, "layout": None}))
    if version == 3:
        return _to_layout_6(_complete({**state, "layout": None}))
    if version == 2:  # before rows were booked by the steps between them: the last row's step
        step, every = _known(state, "step", 0), _known(state, "every", 1)
        return _to_layout_6(_complete({**state, "layout": None, "last_row": last_row(step, every)}))
    return _to_layout_6(_complete(_from_layout_1(state)))


def _to_layout_6(state: dict[str, Any]) -> dict[str, Any]:
    """A state of layouts 1 to 5: the probe's per-layer books of the last measured step
    unknown (None), the books' h and q of the last row's step unknown (NaN, 1)."""
    state = {**state, "version": VERSION}
    probe, books = state.get("probe"), state.get("books")
    if isinstance(probe, dict) and set(probe) != {"kinetic"}:  # not an optimizer's report
        state["probe"] = {"segments": None, **probe}
    if isinstance(books, dict):  # as many groups as it has energies (a damaged one is named)
        last = books.get("last_kinetic")
        groups = len(last) if isinstance(last, list | tuple) else 0
        state["books"] = {"last_h": [math.nan] * groups, "last_q": [1.0] * groups, **books}
    return state


def _known(state: dict[str, Any], key: str, low: int) -> int:
    """The integer `state[key]`, at least `low`, that an upgrade needs; ValueError naming it."""
    if key not in state:
        raise ValueError(f"state: {key} is missing: not a monitor checkpoint")
    value = state[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"state: {key} must be an integer ≥ {low}; got {value!r}")
    return value


def _from_layout_1(state: dict[str, Any]) -> dict[str, Any]:
    """The single-class layout of earlier releases, rewritten key by key."""
    step, every = _known(state, "step", 0), _known(state, "every", 1)
    try:
        total, carry = state["books"]
        grad_dot_before, ema, above, evidence = state["alarm"]
        previous, cross_before, last_secant = state["two_steps"]
        return {
            "version": VERSION,
            "step": step,
            "every": every,
            "last_row": last_row(step, every),
            "layout": None,
            "maps": {"last": state["maps"], "before": state["maps_before"]},
            "books": {
                "sums": {
                    "total": torch.tensor(total, dtype=torch.float64),
                    "carry": torch.tensor(carry, dtype=torch.float64),
                },
                "last_inertia": state["last_inertia"],
                "last_kinetic": state["last_kinetic"],
                "last_noise": state["noise"],
            },
            "probe": {
                "measured": state["snapshot_taken"],
                "has_delta": state["has_delta"],
                "kinetic": state["kinetic_local"],
                "grad_dot_before": grad_dot_before,
                "cross_before": cross_before,
                "steps": state["buffers"],
                "norms": state["norms"],
                "previous": previous,
            },
            "alarm": {
                "ema": ema,
                "last_secant": last_secant,
                "above": above,
                "evidence": evidence,
                "tracked": state["top_curvature"],
            },
            "noise_scale": None,
        }
    except KeyError as err:
        raise ValueError(f"state: {err.args[0]} is missing: not a monitor checkpoint") from None
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"state: not a monitor checkpoint ({type(err).__name__}: {err})") from None


def _unclipped(state: dict[str, Any]) -> dict[str, Any]:
    """A state of layouts 1 to 4, which did not book clipping: c² = 1 for every group."""
    books = state.get("books")
    if isinstance(books, dict) and isinstance(books.get("last_kinetic"), list | tuple):
        state = {**state, "books": {"last_clip": [1.0] * len(books["last_kinetic"]), **books}}
    return state


def _complete(state: dict[str, Any]) -> dict[str, Any]:
    """A state of layouts 1 to 3 with what they did not keep at its value for a fresh monitor:
    the fifth book and the per-group energies of the books, the maps' later fields, the
    alarm's regime; the noise scale starts afresh. Whatever is damaged is left for `check`."""
    state = {"noise_scale": None, **state, "version": VERSION}
    books = state.get("books")
    if isinstance(books, dict):
        books = state["books"] = dict(books)
        sums = books.get("sums")
        if isinstance(sums, dict) and all(
            isinstance(sums.get(k), torch.Tensor) and sums[k].dim() == 1 for k in ("total", "carry")
        ):
            pad = len(BOOKS) - sums["total"].numel()
            if pad > 0 and sums["carry"].numel() == sums["total"].numel():
                books["sums"] = {k: torch.cat([sums[k], sums[k].new_zeros(pad)]) for k in sums}
        groups = books.get("last_kinetic")
        if isinstance(groups, list | tuple):
            for name in ("last_power", "last_damping", "last_theta_grad"):
                books.setdefault(name, [0.0] * len(groups))
    state = _unclipped(state)
    maps = state.get("maps")
    if isinstance(maps, dict):
        state["maps"] = {
            key: [{**_MAP_DEFAULTS, **m} if isinstance(m, dict) else m for m in value]
            if isinstance(value, list | tuple)
            else value
            for key, value in maps.items()
        }
    if isinstance(state.get("alarm"), dict):
        state["alarm"] = {**_ALARM_DEFAULTS, **state["alarm"]}
    return state


def restore(
    state: dict[str, Any],
    books: Books,
    maps: MapHistory,
    alarm: StabilityAlarm | None,
    scale: NoiseScale,
) -> tuple[int, int, int]:
    """Load an upgraded, checked `state` into fresh parts, and return its (step, every, last
    row); a ValueError if any of it still cannot be read (only fresh parts are changed)."""
    try:
        step, every, last = int(state["step"]), int(state["every"]), int(state["last_row"])
        books.load_state_dict(state["books"])
        maps.load_state_dict(state["maps"])
        if alarm is not None and state["alarm"] is not None:  # none saved: a fresh alarm
            alarm.load_state_dict(state["alarm"])
        if state["noise_scale"] is not None:  # none saved: the averages start afresh
            scale.load_state_dict(state["noise_scale"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
        raise ValueError(f"state: not a checkpoint of this monitor ({err})") from None
    return step, every, last
