"""The report of a ledger (`inertia report`): inertia − inertia₀ = −dissipated + injected +
residual (docs/theory.md §3; a monitored run's also − decay + schedule, §4), with the heavy
ball's noise floor (§4) where the run has a noise estimate and its map has friction, as figures
(`inertia.figures`) on a self-contained page (`inertia.page`). A run that blew up is drawn up
to its divergence, on the scales of its rows before the blow-up.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_hex

from .energy import Ledger
from .figures import BINS, COLORS, ESCAPE, Array, binned, curve, figure, span_of, stack_ledger
from .monitor.books import BOOKS as MONITOR_BOOKS
from .page import embed_png, number, write_page
from .theory import heavy_ball_noise_floor

REGIMES = {1: ("#f2b134", "edge of stability"), 2: ("#d62728", "diverging")}  # `regime` column
FLAGS = ((1, "#d62728", "non-finite loss"), (2, "#777777", "skipped step"))  # `flag` column
SEGMENTS = 8  # per-layer panels: the segments with the largest mean
TAB20 = matplotlib.colormaps["tab20"]


def _finite(x: Array) -> Array:
    """x with its non-finite values as NaN."""
    return np.where(np.isfinite(x), x, np.nan)


def _nanmax(x: Array) -> float:
    """The largest finite value of x (NaN if none is)."""
    x = x[np.isfinite(x)]
    return float(x.max()) if len(x) else float("nan")


def _later_half(x: Array) -> float:
    """The mean of the finite values of the later half of x."""
    x = x[len(x) // 2 :]
    return float(x[np.isfinite(x)].mean()) if bool(np.isfinite(x).any()) else float("nan")


def _range(values: Sequence[Array], positive: bool = False) -> tuple[float, float]:
    """The smallest and largest finite (and positive) value of all arrays: (inf, −inf) if
    none; reduced in place, without copies."""
    low, high = np.inf, -np.inf
    for x in values:
        ok = np.isfinite(x) & (x > 0) if positive else np.isfinite(x)
        low = min(low, float(np.min(x, where=ok, initial=np.inf)))
        high = max(high, float(np.max(x, where=ok, initial=-np.inf)))
    return low, high


def _log_scale(values: Sequence[Array]) -> bool:
    """Whether the finite values, none negative, span two decades or more."""
    low, high = _range(values, positive=True)
    return bool(_range(values)[0] >= 0 and low < high and high >= 100 * low)


def _limits(values: Sequence[Array], log: bool, blowup: bool) -> tuple[float, float] | None:
    """Axis limits holding the finite values (positive ones on a log scale), with room above
    for the start of a blow-up; None if there are none."""
    low, high = _range(values, positive=log)
    if low > high:
        return None
    if log:
        return low / 1.3, high * (ESCAPE if blowup else 1.3)
    pad = high - low or abs(high) or 1.0
    return low - 0.05 * pad, high + (0.5 if blowup else 0.05) * pad


def _view(
    ys: Sequence[Array], calm: int, log: bool, include: Sequence[float] = ()
) -> tuple[float, float] | None:
    """Limits for curves `ys` from their calm rows (all rows if those have no value to show),
    with room for the start of a blow-up where later values exceed them."""
    extra = np.array(include, dtype=np.float64)
    limits = _limits([*(y[:calm] for y in ys), extra], log, False)
    if limits is None:
        return _limits([*ys, extra], log, False)
    if _range([y[calm:] for y in ys])[1] > limits[1]:
        return _limits([*(y[:calm] for y in ys), extra], log, True)
    return limits


def _near(y: Array, limits: tuple[float, float] | None, log: bool) -> Array:
    """y clipped to a range around `limits`: what lies far outside is drawn leaving the view,
    and never overflows matplotlib's transforms."""
    if limits is None:
        return y
    low, high = limits
    far = (low / 1e3, high * 1e3) if log else (11 * low - 10 * high, 11 * high - 10 * low)
    return np.clip(y, *far)


class _Run:
    """A ledger's columns as arrays (a simulation's mean over paths), its span, and the column
    its loss is read from: `loss` if it has one, else the potential."""

    def __init__(self, ledger: Ledger) -> None:
        columns = {n: (x.mean(1) if x.dim() == 2 else x) for n, x in ledger.items()}
        self.ledger = Ledger(ledger.t, columns, time_name=ledger.time_name)
        self.time, self.t = ledger.time_name, ledger.t.double().numpy()
        self.c = {name: x.double().numpy() for name, x in columns.items()}
        self.loss = "loss" if "loss" in self.c else "potential"
        self.span = span_of(self.t, self.c[self.loss], self.c.get("flag"))

    def panel(
        self,
        ax: Axes,
        curves: Sequence[tuple[str, Array, str]],
        title: str,
        *,
        log: bool | None = None,
        include: Sequence[float] = (),
        marks: bool = False,
    ) -> None:
        """Curves (label, values, colour) on the rows drawn, on a log scale where they span
        decades, limits from the calm rows; `mark`ed (with labels and flags if `marks`)."""
        stop, calm = self.span.stop, self.span.calm
        ys = [y[:stop] for _, y, _ in curves]
        log = _log_scale(ys) if log is None else log
        limits = _view(ys, calm, log, include)
        for (label, _, color), y in zip(curves, ys, strict=True):
            y = np.where(np.isfinite(y) & ((y > 0) if log else True), y, np.nan)
            curve(ax, self.t[:stop], _near(y, limits, log), color, label, band=True)
        if log:
            ax.set_yscale("log")
        if limits is not None:
            ax.set_ylim(*limits)
        ax.set_title(title)
        self.mark(ax, labels=marks)

    def mark(self, ax: Axes, *, labels: bool = False) -> None:
        """Shade the `regime` spans, mark the blow-up and the divergence (and the flags)."""
        span, t = self.span, self.t[: self.span.stop]
        if "regime" in self.c and len(t):
            tb, _, _, regime = binned(t, self.c["regime"][: span.stop])  # a group's worst
            edges = np.flatnonzero(np.diff(np.nan_to_num(regime))) + 1
            seen: set[int] = set()
            for start, end in zip(np.r_[0, edges], np.r_[edges, len(tb)], strict=True):
                if (kind := int(np.nan_to_num(regime[start]))) in REGIMES:
                    color, name = REGIMES[kind]
                    text = name if labels and kind not in seen else None
                    seen.add(kind)
                    right = tb[min(end, len(tb) - 1)]
                    ax.axvspan(tb[start], right, color=color, alpha=0.15, lw=0, label=text)
        for time, style, what in (
            (span.blowup, "--", "blow-up from"),
            (span.diverged, "-", "diverged at"),
        ):
            if time is not None:
                text = f"{what} {self.time} {time:g}" if labels else None
                ax.axvline(time, color="#d62728", ls=style, lw=1.2, label=text)
        for value, color, label in FLAGS if labels and "flag" in self.c else ():
            times = t[self.c["flag"][: span.stop] == value]  # ticks at the bottom
            times = times[np.linspace(0, len(times) - 1, min(len(times), BINS)).astype(np.intp)]
            if len(times):
                axis = ax.get_xaxis_transform()
                ax.plot(times, 0.02 + 0 * times, "|", c=color, ms=10, label=label, transform=axis)
        if len(t) and span.right > self.t[0]:
            ax.set_xlim(self.t[0], span.right + 0.01 * (span.right - self.t[0]))
        ax.set_xlabel(self.time)

    def stack(self, stack: Axes, books: Axes) -> None:
        """K, L and D (with a monitored run's decay work W) stacked (binned means) under
        I₀ + N + R (+ S, the schedule's energy); the books other than D."""
        c, stop, calm, t = self.c, self.span.stop, self.span.calm, self.t[: self.span.stop]
        top = self.plus(c["inertia"][0] + c["injected"] + c["residual"], "schedule")[:stop]
        k, p = (_finite(c[n][:stop]) for n in ("kinetic", "potential"))
        d = _finite(self.plus(c["dissipated"], "decay")[:stop])
        limits = _view([k + p + d, top, p, np.zeros(1)], calm, False)
        parts = (binned(t, _near(x, limits, False))[1] for x in (k, p, d))
        stack_ledger(stack, binned(t, k)[0], *parts)
        label = "I₀ + N + S + R" if "schedule" in c else "I₀ + injected + residual"
        curve(stack, t, _near(_finite(top), limits, False), "black", label, band=False)
        if limits is not None:
            stack.set_ylim(*limits)
        stack.set_title(
            "K + L + D + W = I₀ + N + S + R" if "decay" in c else "K + L + D = I₀ + N + R"
        )
        self.mark(stack)
        names = [n for n in ("injected", "residual", "decay", "schedule") if n in c]
        curves = [(n, c[n], COLORS[n]) for n in names]
        self.panel(books, curves, f"{', '.join(names)} (cumulative)", log=False)

    def plus(self, x: Array, book: str) -> Array:
        """x + a monitored run's `decay` or `schedule` book (x itself where there is none)."""
        return x + self.c[book] if book in self.c else x

    def phase(self, ax: Axes) -> None:
        """Kinetic against potential energy, coloured by time (at most 4000 rows, evenly)."""
        stop, calm = self.span.stop, self.span.calm
        rows = np.unique(np.linspace(0, stop - 1, min(stop, 4000)).astype(np.intp))
        keep = np.ones(len(rows), dtype=bool)
        for x, axis in ((self.c["potential"], ax.xaxis), (self.c["kinetic"], ax.yaxis)):
            log = _log_scale([x[:stop]])
            limits = _view([x[:stop]], calm, log)
            keep &= np.isfinite(x[rows]) & ((x[rows] > 0) if log else True)
            if limits is not None:
                keep &= (x[rows] >= limits[0]) & (x[rows] <= limits[1])
                (ax.set_xlim if axis is ax.xaxis else ax.set_ylim)(*limits)
            if log:
                (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
        rows = rows[keep]
        x, y = self.c["potential"][rows], self.c["kinetic"][rows]
        points = ax.scatter(x, y, c=self.t[rows], s=6, cmap="viridis")
        ax.figure.colorbar(points, ax=ax, label=self.time)
        ax.set(xlabel="potential L", ylabel="kinetic K", title="kinetic against potential")


def _floor(c: dict[str, Array]) -> tuple[Array, Array] | None:
    """The heavy ball's E[K] and E[L − L*] in the map's metric (docs/theory.md §4) on the rows
    where the law applies: a noise estimate and friction (γ > 0, 0 ≤ μ = 1 − γh < 1), with
    clipped steps (`clip` c) as `inertia.monitor.noise_floor` takes them; None on none (a
    generic optimizer has γ = 0, μ = 1)."""
    if not all(name in c for name in ("noise_trace", "gamma", "h")):
        return None
    h, noise, gamma = c["h"], c["noise_trace"], c["gamma"]
    mu = 1.0 - gamma * h
    applies = np.isfinite(noise) & np.isfinite(h) & (gamma > 0) & (mu >= 0) & (mu < 1)
    if not applies.any():
        return None
    kinetic, loss = np.full(len(h), np.nan), np.full(len(h), np.nan)
    # linear in the trace, whose unbiased estimates may fall below 0 on a row
    k, excess = heavy_ball_noise_floor(h[applies], np.ones(applies.sum()), mu[applies])
    kinetic[applies] = k.numpy() * noise[applies]
    loss[applies] = excess.numpy() * noise[applies]
    if "clip" in c:  # steps scaled by c: the learning rate c·h², the noise c·ξ
        clip = np.where(np.isfinite(c["clip"]), c["clip"], 1.0)
        kinetic, loss = kinetic * clip * clip, loss * clip
    return kinetic, loss


def _segments(c: dict[str, Array], calm: int) -> dict[str, list[str]]:
    """Per-layer columns `<quantity>/<segment>` by quantity, the largest mean first."""
    groups: dict[str, list[str]] = {}
    for name in c:
        if "/" in name:
            groups.setdefault(name.partition("/")[0], []).append(name)

    def size(name: str) -> float:
        x = c[name][:calm]
        return -float(np.abs(x[np.isfinite(x)]).mean()) if bool(np.isfinite(x).any()) else 0.0

    return {q: sorted(names, key=size) for q, names in sorted(groups.items())}


def ledger_report(path: str | Path | Ledger, out: Path) -> Path:
    """Figures of a ledger (a CSV file, read by `Ledger.read_csv`, or a `Ledger`) and a
    self-contained `report.html` in `out`.

    A training run: its loss (the `loss` column, else the potential) and learning rate; the
    stacked ledger (K + L + D = I₀ + N + R) with injected and residual; kinetic against
    potential; the kinetic energy, with its noise floor E[K] = h²tr(C)/(2B(1 − μ²)),
    μ = 1 − γh (`theory.heavy_ball_noise_floor`) where the floor applies (`_floor`), beside the
    noise tr(C)/B; the stability margin with its alarms; per-layer columns
    `<quantity>/<segment>`, the `SEGMENTS` largest of each quantity. The `regime` column is
    shaded (1: edge of stability, 2: diverging). A simulation (averaged over its paths): the
    stacked ledger and kinetic against potential. Values spanning two decades or more are on
    log scales.
    """
    ledger = path if isinstance(path, Ledger) else Ledger.read_csv(path)
    title = "ledger" if isinstance(path, Ledger) else Path(path).name
    run = _Run(ledger)
    c, t, span = run.c, run.t, run.span
    out.mkdir(parents=True, exist_ok=True)
    figures, notes = [], []

    def draw(name: str, ncols: int = 1, nrows: int = 1, **size: float) -> Any:
        figures.append(out / name)
        return figure(out / name, ncols, nrows, **size)

    if "lr" in c:  # a training run
        with draw("training.png", ncols=2) as (loss_ax, lr_ax):
            name = "loss" if run.loss == "loss" else "potential L = loss + (wd/2)‖θ‖²"
            run.panel(loss_ax, [(run.loss, c[run.loss], COLORS["potential"])], name, marks=True)
            run.panel(lr_ax, [("lr", c["lr"], "#444444")], "learning rate (first group)")
    with draw("ledger_stack.png", ncols=2) as (stack, books):
        run.stack(stack, books)
    with draw("phase.png") as ax:
        run.phase(ax)
    closure, inertia = np.abs(run.ledger.closure_error().double().numpy()), c["inertia"]
    findings: dict[str, float] = {
        "rows": float(len(t)),
        "inertia first": float(inertia[0]),
        "inertia last": float(inertia[-1]),
        **{book: float(c[book][-1]) for book in MONITOR_BOOKS if book in c},
        "closure |I − I₀ − (books)| / max |I|": _nanmax(closure)
        / max(_nanmax(np.abs(inertia)), 1e-300),
    }
    measured = "noise_trace" in c and bool(np.isfinite(c["noise_trace"]).any())
    trace = "tr(M⁻¹C)" if "metric" in c and bool((c["metric"] > 0).any()) else "tr(C)"
    floor = _floor(c)
    if "lr" in c:
        with draw(
            "kinetic.png" if floor is None else "noise_floor.png", ncols=1 + measured
        ) as axes:
            curves = [("kinetic K", c["kinetic"], COLORS["kinetic"])]
            if floor is not None:
                curves.append((f"predicted floor h²{trace}/(2B(1 − μ²))", floor[0], "black"))
            name = "kinetic energy" + ("" if floor is None else " and its noise floor")
            run.panel(axes[0] if measured else axes, curves, name)
            if measured:
                run.panel(
                    axes[1],
                    [(f"{trace}/B", c["noise_trace"], COLORS["injected"])],
                    f"gradient noise {trace}/B",
                )
    if floor is not None:
        findings["kinetic, later half (measured)"] = _later_half(c["kinetic"])
        findings["kinetic, later half (predicted)"] = _later_half(floor[0])
        findings[f"excess loss floor h²{trace}/(4B(1 − μ)), later half"] = _later_half(floor[1])
    elif measured:
        notes.append(
            "No noise floor: its law is that of a heavy ball with friction, which this run's map "
            "is not (a generic optimizer: γ = 0, μ = 1)."
        )
    if "margin" in c and bool(np.isfinite(c["margin"]).any()):
        alarm = c["alarm"] > 0 if "alarm" in c else np.zeros(len(t), dtype=bool)
        with draw("margin.png") as ax:
            curves = [("stability margin", c["margin"], "#1f77b4")]
            run.panel(ax, curves, "stability margin h²λ̂/(2(1 + μ))", include=(1.0,))
            ax.axhline(1.0, color="#d62728", ls="--", lw=0.8, label="threshold")
            if bool(alarm.any()):
                first = float(t[alarm][0])
                ax.axvline(
                    first, color="#d62728", lw=1.5, label=f"first alarm ({run.time} {first:g})"
                )
        findings["alarm rows"] = float(alarm.sum())
    groups = _segments(c, span.calm)
    if groups:
        segments = [n.partition("/")[2] for n in c if "/" in n]  # one colour each, in order
        color = {s: to_hex(TAB20(i % 20)) for i, s in enumerate(dict.fromkeys(segments))}
        with draw("layers.png", nrows=len(groups), width=10.0, height=3.2) as axes:
            for ax, (quantity, names) in zip(np.atleast_1d(axes), groups.items(), strict=True):
                shown = [n.partition("/")[2] for n in names[:SEGMENTS]]
                curves = [(s, c[f"{quantity}/{s}"], color[s]) for s in shown]
                more = (
                    f", the {len(shown)} of {len(names)} largest" if len(names) > len(shown) else ""
                )
                run.panel(ax, curves, f"{quantity} per segment{more}")
                ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    if "flag" in c:  # the monitor's flags: 1 a non-finite loss, 2 a skipped step
        findings["non-finite losses"] = float((c["flag"] == 1).sum())
        findings["skipped steps"] = float((c["flag"] == 2).sum())
    for kind, (_, label) in REGIMES.items() if "regime" in c else ():
        findings[f"rows at the {label}" if kind == 1 else f"rows {label}"] = float(
            (c["regime"] == kind).sum()
        )
    if span.diverged is not None:
        findings[f"diverged at {run.time}"] = span.diverged
        notes.append(
            f"The run diverged at {run.time} {span.diverged:g}: its loss is not finite from "
            "there on."
        )
    if span.blowup is not None:
        notes.append(
            f"Its loss blew up from {run.time} {span.blowup:g}: the figures end at {run.time} "
            f"{span.right:g}, on the scales of the rows before."
        )
    if len(t) > 2 * BINS:
        notes.append(
            f"{len(t)} rows: each curve is the mean of {BINS} groups of consecutive rows, "
            "with their min–max band."
        )
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{number(v)}</td></tr>" for k, v in findings.items()
    )
    return write_page(
        out / "report.html",
        f"Energy ledger: {title}",
        [
            f"<h1>Energy ledger of {html.escape(title)}</h1>",
            "<p>inertia − inertia₀ = −dissipated + injected + residual, and for a monitored run"
            " − decay + schedule (docs/theory.md §3–4).</p>",
            *(f"<p>{html.escape(note)}</p>" for note in notes),
            f"<table><tr><th>quantity</th><th>value</th></tr>{rows}</table>",
            *(embed_png(p) for p in figures),
        ],
    )
