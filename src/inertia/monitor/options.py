"""The `InertiaMonitor`'s arguments, checked before it attaches: each bad one is a ValueError
naming it and what is allowed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .. import _checks
from .noise import KINDS
from .sinks import CSVSink, FileSink, Sink

#: Rows kept in memory by default (`history=None`): when a file sink streams them, and not.
STREAMED_HISTORY, MEMORY_HISTORY = 10_000, 100_000


class Options(NamedTuple):
    every: int
    on_nan: str
    on_error: str
    sinks: list[Sink]
    history: int
    noise: str | None
    alarm: bool
    alarm_patience: int
    on_alarm: Callable[[dict[str, float | int]], None] | None
    sharpness_every: int


def observation(loss: object, batch_size: object) -> int | None:
    """`observe`'s loss, a scalar, and `batch_size`, None or a positive integer (returned)."""
    if not (isinstance(loss, float | int) or (isinstance(loss, Tensor) and loss.numel() == 1)):
        raise _checks.fail("loss", "a scalar: a float or a one-element tensor", loss)
    return None if batch_size is None else _checks.integer("batch_size", batch_size, low=1)


def options(
    optimizer: torch.optim.Optimizer,
    *,
    every: int,
    log_dir: str | Path | None,
    sinks: list[Sink] | None,
    on_nan: str,
    on_error: str,
    history: int | None,
    noise: str | None,
    alarm: bool,
    alarm_patience: int,
    on_alarm: Callable[[dict[str, float | int]], None] | None,
    sharpness: Callable[[], Any] | None,
    sharpness_every: int,
) -> Options:
    """The checked arguments; `sinks` gains the CSV sink of `log_dir`, and `history` its
    default: the last `STREAMED_HISTORY` rows when a file sink streams them, else the last
    `MEMORY_HISTORY`."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise _checks.fail("optimizer", "a torch.optim.Optimizer", optimizer)
    if any(group.get("maximize") for group in optimizer.param_groups):
        raise ValueError(
            "optimizer: maximize=True ascends the loss, which the ledger books as a potential "
            "to descend: minimise the negated objective instead"
        )
    if on_nan not in ("flag", "raise"):
        raise _checks.fail("on_nan", "'flag' or 'raise'", on_nan)
    if on_error not in ("warn", "raise"):
        raise _checks.fail("on_error", "'warn' or 'raise'", on_error)
    if not isinstance(sinks, list | tuple | type(None)) or not all(
        isinstance(s, Sink) for s in sinks or []
    ):
        raise _checks.fail("sinks", "a list of inertia.monitor sinks", sinks)
    if noise is not None and noise not in KINDS:
        raise _checks.fail("noise", f"None or one of {', '.join(KINDS)}", noise)
    alarm = _checks.boolean("alarm", alarm)
    if log_dir is not None and not isinstance(log_dir, str | os.PathLike):
        raise _checks.fail("log_dir", "a folder path (str or os.PathLike)", log_dir)
    if sharpness is not None and not (alarm and callable(sharpness)):
        allowed = "a callable returning a probe loss, with alarm=True"
        raise _checks.fail("sharpness", allowed, sharpness)
    if on_alarm is not None and not callable(on_alarm):
        raise _checks.fail("on_alarm", "a callable taking the ledger row", on_alarm)
    every = _checks.integer("every", every, low=1)
    alarm_patience = _checks.integer("alarm_patience", alarm_patience, low=1)
    sharpness_every = _checks.integer("sharpness_every", sharpness_every, low=1)
    kept = None if history is None else _checks.integer("history", history, low=1)
    streams = list(sinks or [])
    if log_dir is not None:
        streams.append(CSVSink(Path(log_dir) / "ledger.csv", on_error=on_error))
    if kept is None:
        streamed = any(isinstance(s, FileSink) for s in streams)
        kept = STREAMED_HISTORY if streamed else MEMORY_HISTORY
    return Options(
        every,
        on_nan,
        on_error,
        streams,
        kept,
        noise,
        alarm,
        alarm_patience,
        on_alarm,
        sharpness_every,
    )
