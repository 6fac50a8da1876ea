"""Figures of ledgers (matplotlib, no global pyplot state): a figure saved as a PNG, the ledger's
energies and books against time for both ledger shapes, the stacked ledger.

Curves of more than 2 × `BINS` rows are drawn as the mean of `BINS` groups of consecutive rows,
with their min–max band: a figure holds a few thousand points whatever the length of the run.
A run that blew up is drawn up to its divergence (`span_of`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import numpy.typing as npt
import torch

matplotlib.use("Agg")  # files only: never open a window
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .energy import BOOKS, ENERGIES, Ledger

Array = npt.NDArray[np.float64]
COLORS: dict[str, str] = {
    "kinetic": "#1f77b4",
    "potential": "#ff7f0e",
    "inertia": "#222222",
    "dissipated": "#2ca02c",
    "injected": "#d62728",
    "residual": "#9467bd",
    "decay": "#8c564b",
    "schedule": "#17becf",
}
BINS = 600  # groups of rows drawn per curve: about one per pixel column of a panel


@contextmanager
def figure(
    path: Path, ncols: int = 1, nrows: int = 1, *, width: float = 5.0, height: float = 3.6
) -> Iterator[Any]:
    """Yield the axes of a new figure (one `Axes`, or an array of them) and save it as a PNG at
    `path` on exit."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="tight")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    yield axes.ravel() if axes.size > 1 else axes[0, 0]
    for ax in axes.ravel():
        if ax.get_legend() is None and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False)
        ax.grid(alpha=0.25)
    fig.savefig(path, dpi=110)


def binned(t: Array, y: Array, bins: int = BINS) -> tuple[Array, Array, Array, Array]:
    """(time, mean, min, max) of `bins` groups of consecutive rows (NaNs left out), at each
    group's middle time; (t, y, y, y) for at most 2 × bins rows."""
    n = len(y)
    if n <= 2 * bins:
        return t, y, y, y
    starts = np.linspace(0, n, bins + 1).astype(np.intp)[:-1]
    ok = ~np.isnan(y)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = np.add.reduceat(np.where(ok, y, 0.0), starts) / np.add.reduceat(ok, starts)
    middle = 0.5 * (t[starts] + t[np.r_[starts[1:], n] - 1])
    return middle, mean, np.fmin.reduceat(y, starts), np.fmax.reduceat(y, starts)


def curve(ax: Axes, t: Array, y: Array, color: str, label: str | None, band: bool) -> None:
    """y against t, binned: the mean line, and the min–max band if `band` and y was binned."""
    tb, mean, low, high = binned(t, y)
    if band and len(tb) < len(t):
        ax.fill_between(tb, low, high, color=color, alpha=0.2, lw=0)
    ax.plot(tb, mean, color=color, lw=1, label=label)


def plot_ledger(ledger: Ledger, path: Path, *, title: str = "") -> Path:
    """Energies (left) and cumulative ledger terms (right) against time: a training run's 1-D
    columns as they are; a simulation's mean over paths, with the band across paths (min–max
    below 20 paths, else 5–95%). Non-finite values are left out; long ledgers are binned."""
    t = ledger.t.double().numpy()
    with figure(path, ncols=2) as (energies, books):
        for ax, names in ((energies, ENERGIES), (books, BOOKS)):
            for name in names:
                column = ledger[name].double()
                x = column if column.dim() == 2 else column[:, None]
                x = x.where(x.isfinite(), torch.nan)
                curve(ax, t, x.nanmean(1).numpy(), COLORS[name], name, band=x.shape[1] == 1)
                if x.shape[1] > 1:
                    few = x.shape[1] < 20
                    low = (x.amin(1) if few else x.nanquantile(0.05, 1)).numpy()
                    high = (x.amax(1) if few else x.nanquantile(0.95, 1)).numpy()
                    (tb, _, low, _), high = binned(t, low), binned(t, high)[3]
                    ax.fill_between(tb, low, high, color=COLORS[name], alpha=0.15, lw=0)
            ax.set_xlabel(ledger.time_name)
        energies.set_ylabel("energy")
        energies.set_title(title or "inertia I = K + L")
        books.set_title("ledger: I − I₀ = −dissipated + injected + residual")
    return path


def stack_ledger(
    ax: Axes,
    t: npt.ArrayLike,
    kinetic: npt.ArrayLike,
    potential: npt.ArrayLike,
    dissipated: npt.ArrayLike,
) -> None:
    """Stacked K, L and cumulative D against t: their top is I₀ + N + R."""
    names = ("kinetic", "potential", "dissipated")
    colors = [COLORS[n] for n in names]
    ax.stackplot(t, kinetic, potential, dissipated, colors=colors, labels=names, alpha=0.8)


@dataclass(frozen=True)
class Span:
    """What of a run is drawn: rows [0, stop) against times up to `right`, on the scales of rows
    [0, calm). A run that `diverged` (the time its loss turned non-finite for good) is drawn up
    to then; one whose loss blew up (left its earlier range for good, from time `blowup`) up to
    where its loss passes ESCAPE times that range, on the scales of the rows before."""

    stop: int
    calm: int
    right: float
    diverged: float | None = None
    blowup: float | None = None


ESCAPE = 100.0


def span_of(t: Array, loss: Array, flag: Array | None = None) -> Span:
    """The `Span` of a run, from its loss and flags (1: a non-finite loss). The loss blew up
    from row s when every later loss exceeds all those before s, the largest by more than 10
    times their range (or their size)."""
    bad = ~np.isfinite(loss) if flag is None else ~np.isfinite(loss) | (flag == 1)
    good = np.flatnonzero(~bad)
    stop = len(loss) if len(loss) and not bad[-1] else int(good[-1]) + 1 if len(good) else 0
    diverged = float(t[stop]) if stop < len(loss) else None
    right = float(t[min(stop, len(t) - 1)]) if len(t) else 0.0
    y = np.where(bad[:stop], np.nan, loss[:stop])
    if stop >= 3 and bool(np.isfinite(y[0])):
        before = np.fmax.accumulate(y)  # the largest loss up to each row
        after = np.fmin.accumulate(y[::-1])[::-1]  # the smallest from each row on
        rising = np.flatnonzero(after[1:] > before[:-1])
        if len(rising):
            s = int(rising[0]) + 1
            top = before[s - 1]
            scale = max(top - np.nanmin(y[:s]), abs(top), 1e-300)
            if np.nanmax(y[s:]) - top > 10.0 * scale:
                escape = np.flatnonzero(y[s:] - top > ESCAPE * scale)
                if len(escape) and s + int(escape[0]) + 1 < stop:
                    stop = s + int(escape[0]) + 1
                    right = float(t[stop - 1])
                return Span(stop, max(s, 2), right, diverged, float(t[s]))
    return Span(stop, stop, right, diverged)
