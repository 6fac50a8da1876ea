"""The monitor's checkpoint layout: version 2 is composed of its parts' own state dicts; a
checkpoint written before the parts existed (no "version") is upgraded on load."""

from __future__ import annotations

from typing import Any

import torch

VERSION = 2


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """`state` in the current layout: a version-2 state as it is, the single-class layout of
    earlier releases rewritten key by key; ValueError for anything else."""
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict from InertiaMonitor.state_dict; got {state!r}")
    version = state.get("version", 1)
    if version == VERSION:
        return state
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
        }
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"state: not a monitor checkpoint ({type(err).__name__}: {err})") from None
