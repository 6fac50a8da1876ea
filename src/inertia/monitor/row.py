"""A row of the monitor's ledger: its typed record (`Row`, from which the columns derive) and
the observed loss it carries (`LossMean`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from ..energy import Ledger
from .alarm import AlarmReading
from .estimate import NoiseEstimate
from .layout import F64
from .maps import METRIC_KINDS, NO_MAP, GroupMap
from .noise_scale import NoiseScale
from .probe import Measurement, Parts

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
    size is unknown); `clip`: c = ‖g‖/‖g_B‖, the factor by which the step's gradient was
    scaled after the backward passes, by clipping (NaN unless noise="microbatch"); `margin`:
    the stability margin in the map's metric (NaN without the alarm); `sharpness`:
    λ_max(M^{−1/2}HM^{−1/2}) of the probe loss (NaN without `sharpness=`); `regime`: STABLE
    (0), AT_EDGE (1) or DIVERGING (2), `inertia.monitor.alarm`;
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
    clip: float
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


@dataclass(slots=True)
class RowValues:
    """A row's values before the transfer: `device`, name → 0-d float64 tensors (those the
    monitor combines on the device: the loss, the penalty, K per group, the noise estimates);
    `sums`, name → per group the `Parts` of a value summed on the host; `finish`, the values
    derived on the host from those (the power ⟨−Δθ, g + wd θ⟩ from its dot products)."""

    device: dict[str, list[Tensor]]
    sums: dict[str, list[Parts]] = field(default_factory=dict)
    finish: Callable[[dict[str, list[float]]], None] | None = None


class NoLoss(float):
    """NaN: the loss of a row for which none was observed on `ranks` of the `world` ranks of
    torch.distributed (no `observe`, no closure returning it; 1 of 1 in one process), as
    `Pack.fetch` gives it on every rank, so that `Publisher.flag` can tell it from an observed
    non-finite loss. `make_row` books it as a plain NaN."""

    ranks: int
    world: int

    def __new__(cls, ranks: int = 1, world: int = 1) -> NoLoss:
        value = super().__new__(cls, math.nan)
        value.ranks, value.world = ranks, world
        return value


@functools.cache
def _counts(device: torch.device, unobserved: bool) -> tuple[Tensor, Tensor]:
    """The counts `Pack` sends, float64 on `device`, made once (packing copies them)."""
    return (
        torch.tensor(float(unobserved), dtype=F64, device=device),
        torch.tensor(1.0, dtype=F64, device=device),
    )


class Pack:
    """A row's device values by name (lists of 0-d tensors) after the loss, and the partial
    sums of the values taken on the host, packed into one float64 tensor: reduced over ranks
    there (`inertia.monitor.ranks`), then brought to the host in one transfer, the row's only
    host synchronisation. Partial sums of another dtype (float32 dot products) are packed
    after the float64 values, one conversion per dtype; `layout` names the packed entries in
    order (a name may recur). A `loss` of None (none observed) is packed as NaN; after it
    come two counts of ranks, `unobserved` (1 if this rank observed no loss) and `ranks` (1),
    which the all-reduce sums (`inertia.monitor.ranks`), so that every rank fetches the loss
    as `NoLoss` if any rank observed none, saying on how many of how many."""

    def __init__(self, loss: Tensor | None, named: RowValues):
        self._finish = named.finish
        like = named.device["penalty"][0]  # on the device of the row's values
        unobserved, one = _counts(like.device, loss is None)
        counts = {"unobserved": [unobserved], "ranks": [one]}
        if loss is None:
            loss = torch.full_like(like, math.nan, dtype=F64)
        wide = [loss]  # float64 by contract (stack would promote, more slowly)
        self._slices, start = {"loss": slice(0, 1)}, 1
        device = counts | named.device
        for name, values in device.items():
            wide += values
            self._slices[name] = slice(start, start + len(values))
            start += len(values)
        self._device = [(name, len(values)) for name, values in device.items()]
        narrow: list[Tensor] = []  # parts of another dtype: packed after the float64 ones
        # per summed value and group: where its parts are (j ≥ 0 in `wide`, ~j in `narrow`)
        # and the sum of its host constants
        self._parts: list[tuple[str, list[tuple[list[int], float]]]] = []
        for name, groups in named.sums.items():
            where = []
            for parts in groups:
                at, constant = [], 0.0
                for p in parts:
                    if not isinstance(p, Tensor):
                        constant += p
                    elif p.dtype is F64:
                        at.append(len(wide))
                        wide.append(p)
                    else:
                        at.append(~len(narrow))
                        narrow.append(p)
                where.append((at, constant))
            self._parts.append((name, where))
        self._wide = len(wide)
        self.tensor = torch.stack(wide)
        if narrow:
            self.tensor = torch.cat([self.tensor, torch.stack(narrow).to(F64)])

    @property
    def layout(self) -> list[tuple[str, int]]:
        """The names of the packed entries after the loss, in runs (name, length): the
        counts of ranks and the device values, then the float64 parts, then the others (a
        name may recur)."""
        names = [name for name, n in self._device for _ in range(n)]
        narrow: list[tuple[int, str]] = []
        for name, where in self._parts:
            for at, _ in where:
                names += [name for j in at if j >= 0]
                narrow += [(~j, name) for j in at if j < 0]
        names += [name for _, name in sorted(narrow)]
        runs: list[tuple[str, int]] = []
        for name in names:
            if runs and runs[-1][0] == name:
                runs[-1] = (name, runs[-1][1] + 1)
            else:
                runs.append((name, 1))
        return runs

    def fetch(self) -> dict[str, list[float]]:
        """Every value by name, as floats: the row's one transfer to the host."""
        host = self.tensor.tolist()
        named = {name: host[s] for name, s in self._slices.items()}
        (unobserved,), (ranks,) = named.pop("unobserved"), named.pop("ranks")
        if unobserved:  # on some rank: the loss, a mean over the ranks, is NaN
            named["loss"] = [NoLoss(round(unobserved), round(ranks))]
        for name, where in self._parts:
            named[name] = [
                sum([host[j] if j >= 0 else host[self._wide + ~j] for j in at], c)
                for at, c in where
            ]
        if self._finish is not None:
            self._finish(named)
        return named


def row_values(
    measured: Measurement,
    estimate: NoiseEstimate,
    spread: list[Tensor],
    curvature: list[Tensor],
    layers: list[str],
) -> RowValues:
    """A row's values by name, as `Pack` takes them: the probe's measurement, the noise
    estimate, the alarm's curvature and the per-layer sums (`<quantity>/<layer>`)."""
    named = {"penalty": [measured.penalty], "kinetic": measured.kinetic}
    named |= {"noise": estimate.trace, "along": estimate.along, "gradient": estimate.gradient}
    named |= {"spread": spread, "curvature": curvature}
    if estimate.clip is not None:
        named["clip"] = estimate.clip
    per_layer = dict(measured.segments)
    if estimate.segments is not None:
        per_layer["noise_trace"] = estimate.segments
    for quantity, values in per_layer.items():
        for layer, value in zip(layers, values.unbind(), strict=True):
            named[f"{quantity}/{layer}"] = [value]
    return RowValues(named, measured.sums, measured.finish)


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
        float(values["loss"][0]),  # NoLoss: a plain NaN
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
        _clip(values),
        reading.margin,
        reading.sharpness,
        reading.regime,
        int(reading.raised),
        flag,
        layer_columns(values, layers),
    )


def _clip(values: dict[str, list[float]]) -> float:
    """c = ‖g‖/‖g_B‖ over the groups: the factor by which the step's gradient was scaled after
    the backward passes (clipping; NaN where not measured)."""
    if "clip" not in values:
        return math.nan
    pairs = zip(values["clip"], values["gradient"], strict=True)
    measured = [(c, g) for c, g in pairs if g > 0 and math.isfinite(c)]  # a zero g: no c
    total = sum(g for _, g in measured)
    return math.sqrt(sum(c * g for c, g in measured) / total) if total > 0 else math.nan


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

    def take(self) -> Tensor | None:
        """The mean so far as a 0-d float64 tensor (None if nothing was observed), then reset."""
        if not self.count:
            return None
        total = torch.as_tensor(self._sum, dtype=torch.float64, device=self.device)
        mean = total / self.count if self.count > 1 else total  # x/1 = x
        self.reset()
        return mean.reshape(())

    def reset(self) -> None:
        self._sum, self.count = 0.0, 0
