"""A row of the monitor's ledger: its typed record (`Row`, from which the columns derive) and
the observed loss it carries (`LossMean`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from ..energy import Ledger
from .alarm import AlarmReading
from .maps import METRIC_KINDS, NO_MAP, GroupMap
from .noise import NoiseEstimate
from .noise_scale import NoiseScale
from .probe import Measurement

OK = 0
"""`Row.flag` of a normal step."""
NONFINITE = 1
"""`Row.flag` of a step whose loss was not finite."""
SKIPPED = 2
"""`Row.flag` of an iteration whose optimizer step was skipped (e.g. by a GradScaler)."""


@dataclass(slots=True)
class Row:
    """Row k describes the parameters θ_k that step k starts from (docs/monitor.md, Rows).

    `lr`, `h`, `gamma`, `metric`: the first parameter group's map (metric 1: a diagonal metric,
    Adam's or RMSprop's; 0: the identity); `loss`: the observed loss; `kinetic`,
    `potential` (the loss and the weight-decay penalty of coupled weight decay), `inertia`:
    the energies at θ_k; `dissipated`, `injected`, `residual`, `decay` (work of a decoupled
    decay), `schedule` (energy the learning rate's changes added): the cumulative books;
    `shadow`: the modified energy H̃_k; `noise_trace`: tr(M⁻¹C)/B in the map's metric (NaN
    without a noise estimate); `noise_scale`: B_simple = tr(M⁻¹C)/‖G‖²_{M⁻¹}, the gradient
    noise scale, from averages over rows (`inertia.monitor.noise_scale`; NaN where the batch
    size is unknown); `margin`: the stability margin in the map's metric (NaN without the
    alarm); `sharpness`: λ_max(M^{−1/2}HM^{−1/2}) of the probe loss (NaN without
    `sharpness=`); `regime`: STABLE (0), AT_EDGE (1) or DIVERGING (2), `inertia.monitor.alarm`;
    `alarm`: 1 while the alarm is raised; `flag`: OK (0), NONFINITE (1, a non-finite loss)
    or SKIPPED (2, an iteration whose optimizer step was skipped, e.g. by GradScaler).
    """

    step: int
    lr: float
    h: float
    gamma: float
    metric: int
    loss: float
    kinetic: float
    potential: float
    inertia: float
    dissipated: float
    injected: float
    residual: float
    decay: float
    schedule: float
    shadow: float
    noise_trace: float
    noise_scale: float
    margin: float
    sharpness: float
    regime: int
    alarm: int
    flag: int
    extras: dict[str, float] = field(default_factory=dict)  # per-layer columns, name → value

    def as_dict(self) -> dict[str, float | int]:
        """The row as a dict of plain numbers, in column order, then the per-layer columns
        (what sinks receive)."""
        return {**{name: getattr(self, name) for name in MONITOR_COLUMNS}, **self.extras}


#: The monitor's columns, in order (per-layer books add `<quantity>/<layer>` columns after them).
MONITOR_COLUMNS = tuple(f.name for f in fields(Row) if f.name != "extras")


def ledger_of(rows: Iterable[Row]) -> Ledger:
    """Rows as a `Ledger`: 1-D float64 columns against `step`, the per-layer ones included."""
    rows = list(rows)
    table = {
        name: torch.tensor([getattr(row, name) for row in rows], dtype=torch.float64)
        for name in MONITOR_COLUMNS
    }
    for name in rows[0].extras if rows else ():
        table[name] = torch.tensor([row.extras[name] for row in rows], dtype=torch.float64)
    step = table.pop("step")
    return Ledger(step, table, time_name="step")


class Pack:
    """A row's device values by name (lists of 0-d float64 tensors) after the loss, packed
    into one tensor: reduced over ranks there (`inertia.monitor.ranks`), then brought to the
    host in one transfer, the row's only host synchronisation."""

    def __init__(self, loss: Tensor, named: dict[str, list[Tensor]]):
        self.layout = [(name, len(values)) for name, values in named.items()]
        self.tensor = torch.stack([loss, *(t for values in named.values() for t in values)])
        self._slices, start = {"loss": slice(0, 1)}, 1
        for name, length in self.layout:
            self._slices[name] = slice(start, start + length)
            start += length

    def __getitem__(self, name: str) -> Tensor:
        """The values of `name`, on the device (a view of the packed tensor)."""
        return self.tensor[self._slices[name]]

    def fetch(self, *extra: Tensor) -> tuple[dict[str, list[float]], list[float]]:
        """Every value by name, and the `extra` tensors' values flattened in order, as floats."""
        host = torch.cat([self.tensor, *(t.reshape(-1) for t in extra)]).tolist()
        named = {name: host[s] for name, s in self._slices.items()}
        return named, host[self.tensor.numel() :]


def row_values(
    measured: Measurement,
    estimate: NoiseEstimate,
    spread: list[Tensor],
    curvature: list[Tensor],
    layers: list[str],
) -> dict[str, list[Tensor]]:
    """A row's device values by name, as `Pack` takes them: the probe's measurement, the noise
    estimate, the alarm's curvature and the per-layer sums (`<quantity>/<layer>`)."""
    named = {"penalty": [measured.penalty], **measured.per_group()}
    named |= {"noise": estimate.trace, "along": estimate.along, "gradient": estimate.gradient}
    named |= {"spread": spread, "curvature": curvature}
    per_layer = dict(measured.segments)
    if estimate.segments is not None:
        per_layer["noise_trace"] = estimate.segments
    for quantity, values in per_layer.items():
        for layer, value in zip(layers, values.unbind(), strict=True):
            named[f"{quantity}/{layer}"] = [value]
    return named


def make_row(
    step: int,
    now: list[GroupMap],
    values: dict[str, list[float]],
    host: list[float],
    reading: AlarmReading,
    flag: int,
    layers: list[str],
    scale: NoiseScale,
    batch: int | None,
) -> Row:
    """Row `step` from the fetched `values` and `host` = [inertia, potential, the books…]: the
    first group's map, the shadow energy I + ½Σ⟨−Δθ, g + wd θ⟩, the noise trace T and the
    noise scale, `scale` updated with T, ‖g_B‖² and the `batch` size."""
    first = now[0] if now else NO_MAP
    inertia, potential = host[0], host[1]
    dissipated, injected, residual, decay, schedule = host[2:7]
    noise = values["noise"]
    trace = sum(noise) if all(math.isfinite(x) for x in noise) else math.nan
    return Row(
        step,
        first.lr,
        first.h,
        first.gamma,
        int(first.kind in METRIC_KINDS),
        values["loss"][0],
        sum(values["kinetic"]),
        potential,
        inertia,
        dissipated,
        injected,
        residual,
        decay,
        schedule,
        inertia + 0.5 * sum(values["power"]),
        trace,
        scale.update(trace, sum(values["gradient"]), batch),
        reading.margin,
        reading.sharpness,
        reading.regime,
        int(reading.raised),
        flag,
        layer_columns(values, layers),
    )


def layer_columns(values: dict[str, list[float]], layers: list[str]) -> dict[str, float]:
    """The per-layer columns of a row: `kinetic/<layer>`, `step_size/<layer>` = ‖Δθ‖ over the
    layer's parameters and, with a noise estimate, `noise_trace/<layer>`."""
    out = {}
    for layer in layers:
        out[f"kinetic/{layer}"] = values[f"kinetic/{layer}"][0]
        out[f"step_size/{layer}"] = math.sqrt(values[f"step_sq/{layer}"][0])
        if f"noise_trace/{layer}" in values:
            out[f"noise_trace/{layer}"] = values[f"noise_trace/{layer}"][0]
    return out


class LossMean:
    """The loss observed at a step's parameters, averaged over its micro-batches (summed in
    float64 when there are several), kept on the device: taking it does not wait for the host."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
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

    def take(self) -> Tensor:
        """The mean so far (NaN if nothing was observed) as a 0-d float64 tensor, then reset."""
        total = self._sum if self.count else math.nan
        total = torch.as_tensor(total, dtype=torch.float64, device=self.device)
        mean = total.to(torch.float64) / self.count if self.count else total
        self.reset()
        return mean.reshape(())

    def reset(self) -> None:
        self._sum, self.count = 0.0, 0
