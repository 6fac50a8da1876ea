"""The monitor's checkpoint layout: version 4 is composed of its parts' own state dicts, the
step of the last row and the noise scale's averages; earlier layouts are upgraded on load (3:
without the noise scale, which starts afresh; 2: nor the last row's step; 1, no "version": the
single class the monitor was before it had parts)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .alarm import StabilityAlarm
from .books import Books
from .maps import MapHistory
from .noise_scale import NoiseScale
from .probe import Probe

VERSION = 4
KEYS = ("step", "every", "last_row", "maps", "books", "probe", "alarm", "noise_scale")


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
    return {
        "version": VERSION,
        "step": step,
        "every": every,
        "last_row": last_row,
        "maps": parts.maps.state_dict(),
        "books": parts.books.state_dict(),
        "probe": parts.probe.state_dict(),
        "alarm": None if parts.alarm is None else parts.alarm.state_dict(),
        "noise_scale": parts.noise_scale.state_dict(),
    }


def load(
    state: dict[str, Any], parts: Parts, groups: int, device: torch.device
) -> tuple[int, int, int, Parts]:
    """(step, every, last row) of `state`, upgraded, and fresh parts holding it (books of
    `groups` groups on `device`); the probe, the one part kept, is loaded only once everything
    else has been: a ValueError, and nothing of `parts` changed, if any of it cannot be read."""
    state = upgrade(state)
    parts.probe.check(state["probe"])
    books, maps, scale = Books(groups, device), MapHistory(), NoiseScale()
    alarm = None if parts.alarm is None else parts.alarm.fresh()
    step, every, last = restore(state, books, maps, alarm, scale)
    parts.probe.load_state_dict(state["probe"])  # checked above: it cannot fail
    return step, every, last, Parts(books, maps, parts.probe, alarm, scale)


def last_row(step: int, every: int) -> int:
    """The step of the last row a monitor `step` steps in has booked, rows every `every`."""
    return max(step - 1, 0) // every * every


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """`state` in the current layout: a state of this version as it is, versions 2 and 3
    completed, the single-class layout of earlier releases rewritten key by key; ValueError for
    anything else."""
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict from InertiaMonitor.state_dict; got {state!r}")
    version = state.get("version", 1)
    if version == VERSION:
        missing = [key for key in KEYS if key not in state]
        if missing:
            raise ValueError(f"state: not a monitor checkpoint (missing {missing})")
        return state
    if version == 3:
        return {**state, "version": VERSION, "noise_scale": None}
    if version == 2:  # before rows were booked by the steps between them: the last row's step
        last = last_row(state["step"], state["every"])
        return {**state, "version": VERSION, "last_row": last, "noise_scale": None}
    if version != 1:
        raise ValueError(f"state: layout version {version!r} is not one this release reads")
    try:
        total, carry = state["books"]
        grad_dot_before, ema, above, evidence = state["alarm"]
        previous, cross_before, last_secant = state["two_steps"]
        return {
            "version": VERSION,
            "step": state["step"],
            "every": state["every"],
            "last_row": last_row(state["step"], state["every"]),
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
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"state: not a monitor checkpoint ({type(err).__name__}: {err})") from None


def restore(
    state: dict[str, Any],
    books: Books,
    maps: MapHistory,
    alarm: StabilityAlarm | None,
    scale: NoiseScale,
) -> tuple[int, int, int]:
    """Load an upgraded `state` into fresh parts, and return its (step, every, last row): a
    ValueError, and nothing of the monitor changed, if any of it cannot be read."""
    try:
        step, every, last = int(state["step"]), int(state["every"]), int(state["last_row"])
        if not 0 <= last <= step or every < 1:
            raise ValueError(f"step {step}, every {every}, last row {last}")
        books.load_state_dict(state["books"])
        maps.load_state_dict(state["maps"])
        if alarm is not None and state["alarm"] is not None:  # none saved: a fresh alarm
            alarm.load_state_dict(state["alarm"])
        if state["noise_scale"] is not None:  # none saved: the averages start afresh
            scale.load_state_dict(state["noise_scale"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
        raise ValueError(f"state: not a checkpoint of this monitor ({err})") from None
    return step, every, last
