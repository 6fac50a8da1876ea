"""A row of the monitor's ledger: its typed record (`Row`, from which the columns derive) and
the observed loss it carries (`LossMean`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..energy import Ledger

OK, NONFINITE, SKIPPED = 0, 1, 2  # `Row.flag`


@dataclass(slots=True)
class Row:
    """Row k describes the parameters θ_k that step k starts from (docs/monitor.md, Rows).

    `lr`, `h`, `gamma`: the first parameter group's map; `kinetic`, `potential`, `inertia`:
    the energies at θ_k; `dissipated`, `injected`, `residual`: the cumulative books;
    `shadow`: the modified energy H̃_k; `noise_trace`: tr(C)/B (NaN without a noise
    estimate); `margin`: the stability margin (NaN without the alarm); `alarm`: 1 while the
    alarm is raised; `flag`: OK (0), NONFINITE (1, a non-finite loss) or SKIPPED (2, an
    iteration whose optimizer step was skipped, e.g. by GradScaler).
    """

    step: int
    lr: float
    h: float
    gamma: float
    kinetic: float
    potential: float
    inertia: float
    dissipated: float
    injected: float
    residual: float
    shadow: float
    noise_trace: float
    margin: float
    alarm: int
    flag: int

    def as_dict(self) -> dict[str, float | int]:
        """The row as a dict of plain numbers, in column order (what sinks receive)."""
        return {name: getattr(self, name) for name in MONITOR_COLUMNS}


#: The monitor's columns, in order.
MONITOR_COLUMNS = tuple(f.name for f in fields(Row))


def ledger_of(rows: Iterable[Row]) -> Ledger:
    """Rows as a `Ledger`: 1-D float64 columns against `step`."""
    rows = list(rows)
    table = {
        name: torch.tensor([getattr(row, name) for row in rows], dtype=torch.float64)
        for name in MONITOR_COLUMNS
    }
    step = table.pop("step")
    return Ledger(step, table, time_name="step")


class LossMean:
    """The loss observed at a step's parameters, averaged over its micro-batches (summed in
    float64 when there are several); kept on the device until the row takes it."""

    def __init__(self) -> None:
        self._sum: Tensor | float = 0.0
        self.count = 0

    def add(self, loss: Tensor | float) -> None:
        value = loss.detach() if isinstance(loss, Tensor) else float(loss)
        if self.count:
            value = value.to(torch.float64) if isinstance(value, Tensor) else value
            self._sum = self._sum + value
        else:
            self._sum = value
        self.count += 1

    def take(self) -> float:
        """The mean so far (NaN if nothing was observed), then reset."""
        mean = float(self._sum) / self.count if self.count else math.nan
        self.reset()
        return mean

    def reset(self) -> None:
        self._sum, self.count = 0.0, 0
