"""Figures (matplotlib, no global pyplot state), self-contained HTML pages, and the report of a
ledger file (`inertia report`): inertia − inertia₀ = −dissipated + injected + residual
(docs/theory.md §3), with the heavy ball's noise floor (§4) where the ledger has a noise estimate.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import numpy.typing as npt
import torch
from torch import Tensor

matplotlib.use("Agg")  # files only: never open a window
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .energy import BOOKS, ENERGIES, Ledger
from .theory import heavy_ball_noise_floor

COLORS: dict[str, str] = {
    "kinetic": "#1f77b4",
    "potential": "#ff7f0e",
    "inertia": "#222222",
    "dissipated": "#2ca02c",
    "injected": "#d62728",
    "residual": "#9467bd",
}


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


def plot_ledger(ledger: Ledger, path: Path, *, title: str = "") -> Path:
    """Energies (left) and cumulative ledger terms (right) against time: a training run's 1-D
    columns as they are; a simulation's mean over paths, with the band across paths (min–max
    below 20 paths, else 5–95%)."""
    t = ledger.t.numpy()
    with figure(path, ncols=2) as (energies, books):
        for ax, names in ((energies, ENERGIES), (books, BOOKS)):
            for name in names:
                column = ledger[name]
                values = column if column.dim() == 2 else column[:, None]
                ax.plot(t, values.mean(1).numpy(), color=COLORS[name], label=name)
                if values.shape[1] > 1:
                    low, high = (
                        (values.amin(1), values.amax(1))
                        if values.shape[1] < 20
                        else (values.quantile(0.05, dim=1), values.quantile(0.95, dim=1))
                    )
                    ax.fill_between(
                        t, low.numpy(), high.numpy(), color=COLORS[name], alpha=0.15, linewidth=0
                    )
            ax.set_xlabel(ledger.time_name)
        energies.set_ylabel("energy")
        energies.set_title(title or "inertia I = K + L")
        books.set_title("ledger: I − I₀ = −dissipated + injected + residual")
    return path


def embed_png(path: Path) -> str:
    """An <img> tag carrying the PNG itself (base64), so the HTML needs no other file."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).stem)}">'


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } section { border-top: 1px solid #ddd; margin-top: 2em; }
.pass { color: #1a7f37; font-weight: 600; } .fail { color: #c62828; font-weight: 600; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; margin: 0.5em 0; } .law { font-family: ui-monospace, monospace;
       background: #f6f8fa; padding: 0.4em 0.7em; display: inline-block; }
"""

# Marks each image once the browser has decoded it, so a headless browser can tell that every
# figure rendered (data-rendered = "true") or failed ("false").
_SCRIPT = """
window.addEventListener("load", () => {
  for (const img of document.images) {
    img.dataset.rendered = String(img.complete && img.naturalWidth > 0);
  }
  document.body.dataset.loaded = "true";
});
"""


def _number(x: float | str) -> str:
    return f"{x:.4g}" if isinstance(x, float) else html.escape(str(x))


def write_page(path: Path, title: str, body: Sequence[str]) -> Path:
    """A self-contained HTML page: style and the render-marking script inline, `body` parts."""
    head = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style><script>{_SCRIPT}</script>"
        "</head><body>"
    )
    path.write_text("\n".join([head, *body, "</body></html>"]), encoding="utf-8")
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
    ax.stackplot(
        t,
        kinetic,
        potential,
        dissipated,
        colors=[COLORS[n] for n in names],
        labels=list(names),
        alpha=0.8,
    )


def _mean_over_paths(ledger: Ledger) -> Ledger:
    """A simulation's ledger averaged over its paths at each time; a training run's as it is."""
    columns = {name: col.mean(1) if col.dim() == 2 else col for name, col in ledger.items()}
    return Ledger(ledger.t, columns, time_name=ledger.time_name)


def _nanmax(x: Tensor) -> float:
    """The largest value of x, NaNs left out (NaN if all are)."""
    x = x[~x.isnan()]
    return float(x.max()) if x.numel() else float("nan")


def _later_half(x: Tensor) -> float:
    """The mean of the later half of x, NaNs left out."""
    return float(x[len(x) // 2 :].nanmean())


def ledger_report(path: Path, out: Path) -> Path:
    """Figures of a ledger CSV (`Ledger.read_csv`) and a self-contained `report.html` in `out`.

    Stacked ledger (K + L + D = I₀ + N + R), kinetic against potential, kinetic energy with the
    noise floor E[K] = h²tr(C)/(2B(1 − μ²)), μ = 1 − γh (`theory.heavy_ball_noise_floor`) where
    the ledger has a noise estimate, and the stability margin with alarms marked where it has
    one. A simulation's ledger is averaged over its paths.
    """
    ledger = _mean_over_paths(Ledger.read_csv(path))
    time_name = ledger.time_name
    c = {name: ledger[name].numpy() for name in (time_name, *ledger)}  # for matplotlib
    t = c[time_name]
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    fig_path = out / "ledger_stack.png"
    with figure(fig_path, ncols=2) as (stack, books):
        stack_ledger(stack, t, c["kinetic"], c["potential"], c["dissipated"])
        stack.plot(
            t,
            (ledger["inertia"][0] + ledger["injected"] + ledger["residual"]).numpy(),
            color="black",
            lw=1,
            label="I₀ + injected + residual",
        )
        stack.set_title("K + L + D = I₀ + N + R")
        for name in ("injected", "residual"):
            books.plot(t, c[name], color=COLORS[name], label=name)
        books.set_title("injected and residual (cumulative)")
        for ax in (stack, books):
            ax.set_xlabel(time_name)
    figures.append(fig_path)
    fig_path = out / "phase.png"
    with figure(fig_path) as ax:
        points = ax.scatter(c["potential"], c["kinetic"], c=t, s=6, cmap="viridis")
        ax.figure.colorbar(points, ax=ax, label=time_name)
        ax.set_xlabel("potential L")
        ax.set_ylabel("kinetic K")
        ax.set_title("kinetic against potential")
    figures.append(fig_path)
    inertia = ledger["inertia"]
    findings: dict[str, float] = {
        "rows": float(len(t)),
        "inertia first": float(inertia[0]),
        "inertia last": float(inertia[-1]),
        **{name: float(ledger[name][-1]) for name in BOOKS},
        "closure |I − I₀ + D − N − R| / max |I|": _nanmax(ledger.closure_error().abs())
        / max(_nanmax(inertia.abs()), 1e-300),
    }
    noise = all(name in ledger for name in ("noise_trace", "gamma", "h"))
    if noise and bool(ledger["noise_trace"].isfinite().any()):
        h = ledger["h"]
        kinetic_floor, loss_floor = heavy_ball_noise_floor(
            h, ledger["noise_trace"], 1.0 - ledger["gamma"] * h
        )
        kinetic = ledger["kinetic"]
        fig_path = out / "noise_floor.png"
        with figure(fig_path) as ax:
            ax.semilogy(
                t,
                kinetic.where(kinetic > 0, torch.nan).numpy(),  # K₀ = 0 has no logarithm
                color=COLORS["kinetic"],
                lw=0.8,
                label="kinetic K",
            )
            ax.semilogy(
                t,
                kinetic_floor.numpy(),
                color="black",
                lw=1,
                label="predicted floor h²tr(C)/(2B(1 − μ²))",
            )
            ax.set_xlabel(time_name)
            ax.set_title("kinetic energy and its noise floor")
        figures.append(fig_path)
        findings["kinetic, later half (measured)"] = _later_half(kinetic)
        findings["kinetic, later half (predicted)"] = _later_half(kinetic_floor)
        findings["excess loss floor h²tr(C)/(4B(1 − μ)), later half"] = _later_half(loss_floor)
    if "margin" in ledger and bool(ledger["margin"].isfinite().any()):
        alarm = ledger["alarm"] > 0 if "alarm" in ledger else torch.zeros(len(t), dtype=torch.bool)
        fig_path = out / "margin.png"
        with figure(fig_path) as ax:
            ax.plot(t, c["margin"], color="#1f77b4", label="stability margin")
            ax.axhline(1.0, color="#d62728", ls="--", lw=0.8, label="threshold")
            if bool(alarm.any()):
                first = float(ledger.t[alarm][0])
                ax.axvline(
                    first, color="#d62728", lw=1.5, label=f"first alarm ({time_name} {first:g})"
                )
            ax.set_xlabel(time_name)
            ax.set_title("stability margin h²λ̂/(2(1 + μ))")
        figures.append(fig_path)
        findings["alarm rows"] = float(alarm.sum())
    if "flag" in ledger:  # the monitor's flags: 1 a non-finite loss, 2 a skipped step
        findings["non-finite losses"] = float((ledger["flag"] == 1).sum())
        findings["skipped steps"] = float((ledger["flag"] == 2).sum())
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_number(v)}</td></tr>" for k, v in findings.items()
    )
    name = Path(path).name
    return write_page(
        out / "report.html",
        f"Energy ledger: {name}",
        [
            f"<h1>Energy ledger of {html.escape(name)}</h1>",
            "<p>inertia − inertia₀ = −dissipated + injected + residual (docs/theory.md §3–4).</p>",
            f"<table><tr><th>quantity</th><th>value</th></tr>{rows}</table>",
            *(embed_png(p) for p in figures),
        ],
    )
