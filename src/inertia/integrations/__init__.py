"""Callbacks that attach an `InertiaMonitor` inside training frameworks, with no user code:
`inertia.integrations.lightning.InertiaCallback` and
`inertia.integrations.transformers.InertiaCallback` (docs/integrations.md). Each imports its
framework only when used; this module imports neither.

What both share: the rows the monitor books reach the callback through a sink (`RowBuffer`),
as the plain numbers the monitor already fetched (no tensor is read again, so no host
synchronisation is added), and go to the framework's loggers as `inertia/<column>`
(`logged_values`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor
from torch.nn import Module

from ..monitor.sinks import Sink

#: Where the ledger's columns go in the framework's logs: `inertia/<column>`.
PREFIX = "inertia/"


class RowBuffer(Sink):
    """Keeps the last row the monitor booked until it is taken (rows booked between two
    takes: only the last is kept; the monitor's own memory and file sinks keep them all)."""

    def __init__(self) -> None:
        self._row: dict[str, float] | None = None

    def write(self, row: dict[str, float]) -> None:
        self._row = row

    def take(self) -> dict[str, float] | None:
        """The last row booked since the last take, or None."""
        row, self._row = self._row, None
        return row


def logged_values(
    row: Mapping[str, float], columns: Iterable[str] | None = None
) -> dict[str, float]:
    """A row's columns as the frameworks' logs take them: `inertia/<column>` for every column
    but `step` (or those in `columns`), a "/" inside a column (per-layer books,
    `kinetic/<layer>`) turned into "." so that MLflow's file store can hold `kinetic` beside
    its layers; non-finite values (NaN: nothing estimated; ±inf: a blow-up, which the `flag`
    column records) are left out, as not every logger takes them."""
    wanted = None if columns is None else set(columns)
    out = {}
    for name, value in row.items():
        if name == "step" or (wanted is not None and name not in wanted):
            continue
        number = float(value)
        if math.isfinite(number):
            out[PREFIX + name.replace("/", ".")] = number
    return out


def batch_size_of(batch: Any, depth: int = 0) -> int | None:
    """The length of the first tensor (with a dimension) in a batch: a tensor, a mapping
    (its values in order) or a sequence; None if there is none or it is empty."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.dim() and batch.shape[0] else None
    if depth > 4 or isinstance(batch, str | bytes):
        return None
    items: Iterable[Any]
    if isinstance(batch, Mapping):
        items = batch.values()
    elif isinstance(batch, list | tuple):
        items = batch
    else:
        return None
    for item in items:
        size = batch_size_of(item, depth + 1)
        if size is not None:
            return size
    return None


def check_noise(monitor_kwargs: Mapping[str, Any]) -> None:
    """ValueError for noise="per_sample", which needs the unreduced losses before `backward`:
    no framework hands them to a callback (the monitor checks the other values)."""
    if monitor_kwargs.get("noise") == "per_sample":
        raise ValueError(
            "noise='per_sample': a callback sees no per-sample losses; use 'microbatch' (with"
            " gradient accumulation) or 'fluctuation', or observe(loss, per_sample=losses)"
            " before backward in a hand-written loop"
        )


def with_buffer(
    monitor_kwargs: Mapping[str, Any], buffer: RowBuffer, model: Module
) -> dict[str, Any]:
    """The monitor's keyword arguments with `buffer` added to its sinks, and the trained
    `model` as the one per-module books name (`by="module"`), unless given."""
    kwargs = dict(monitor_kwargs)
    kwargs["sinks"] = [*(kwargs.get("sinks") or []), buffer]
    if kwargs.get("by") == "module":
        kwargs.setdefault("model", model)
    return kwargs
