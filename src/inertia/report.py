"""Figures (matplotlib, no global pyplot state) and the self-contained HTML report."""

from __future__ import annotations

import base64
import csv
import html
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never open a window
from matplotlib.figure import Figure

from .energy import Ledger

COLORS = {
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
) -> Iterator:
    """Yield the axes of a new figure and save it as a PNG at `path` on exit."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="tight")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    yield axes.ravel() if axes.size > 1 else axes[0, 0]
    for ax in axes.ravel():
        if ax.get_legend() is None and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False)
        ax.grid(alpha=0.25)
    fig.savefig(path, dpi=110)


def plot_ledger(ledger: Ledger, path: Path, *, title: str = "") -> Path:
    """Energies (left) and cumulative ledger terms (right) against t, mean over paths with
    the 5–95% band across paths when there are several."""
    t = ledger.t.numpy()
    with figure(path, ncols=2) as (energies, books):
        for ax, names in (
            (energies, ("kinetic", "potential", "inertia")),
            (books, ("dissipated", "injected", "residual")),
        ):
            for name in names:
                values = ledger[name].numpy()
                ax.plot(t, values.mean(1), color=COLORS[name], label=name)
                if values.shape[1] > 1:
                    low, high = (
                        (values.min(1), values.max(1))
                        if values.shape[1] < 20
                        else (_quantile(values, 0.05), _quantile(values, 0.95))
                    )
                    ax.fill_between(t, low, high, color=COLORS[name], alpha=0.15, linewidth=0)
            ax.set_xlabel("t")
        energies.set_ylabel("energy")
        energies.set_title(title or "inertia I = K + L")
        books.set_title("ledger: I − I₀ = −dissipated + injected + residual")
    return path


def _quantile(values, q: float):
    import numpy as np

    return np.quantile(values, q, axis=1)


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


def _number(x: float) -> str:
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


def stack_ledger(ax, t, kinetic, potential, dissipated) -> None:
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


def html_report(title: str, intro: str, sections: Sequence[dict], path: Path) -> Path:
    """Write a self-contained HTML report.

    Each section is a dict with keys `key`, `title`, `claim`, `law`, `checks` (dicts with
    name, measured, predicted, tolerance, relation, passed), `findings` (name ↦ number),
    `figures` (PNG paths) and `passed`.
    """
    parts = [f"<h1>{html.escape(title)}</h1><p>{intro}</p>"]
    verdicts = ", ".join(
        f"{html.escape(s['key'])}: <span class='{'pass' if s['passed'] else 'fail'}'>"
        f"{'pass' if s['passed'] else 'FAIL'}</span>"
        for s in sections
    )
    parts.append(f"<p>{verdicts}</p>")
    for s in sections:
        verdict = "pass" if s["passed"] else "fail"
        parts.append(
            f"<section id='{html.escape(s['key'])}'><h2>{html.escape(s['key'])}. "
            f"{html.escape(s['title'])} <span class='{verdict}'>{verdict.upper()}</span></h2>"
            f"<p><b>Claim.</b> {html.escape(s['claim'])}</p>"
            f"<p><b>Law.</b> <span class='law'>{html.escape(s['law'])}</span></p>"
            "<table><tr><th>check</th><th>measured</th><th>relation</th><th>predicted</th>"
            "<th>tolerance</th><th>verdict</th></tr>"
        )
        for c in s["checks"]:
            ok = "pass" if c["passed"] else "fail"
            parts.append(
                f"<tr><td>{html.escape(c['name'])}</td><td>{_number(c['measured'])}</td>"
                f"<td>{html.escape(c['relation'])}</td><td>{_number(c['predicted'])}</td>"
                f"<td>{_number(c['tolerance'])}</td><td class='{ok}'>{ok}</td></tr>"
            )
        parts.append("</table>")
        if s["findings"]:
            items = "".join(
                f"<li>{html.escape(name)}: {_number(value)}</li>"
                for name, value in s["findings"].items()
            )
            parts.append(f"<p><b>What we measured besides.</b></p><ul>{items}</ul>")
        parts.extend(embed_png(p) for p in s["figures"])
        parts.append("</section>")
    return write_page(path, title, parts)


def read_ledger(path: Path) -> tuple[str, dict]:
    """Read a ledger CSV (from `InertiaMonitor` or `Trajectory.to_csv`): ("step" | "t", columns),
    a simulation's paths averaged per time. ValueError if it is not a ledger."""
    import numpy as np

    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"LEDGER: {str(path)!r} has no rows")
    names = list(rows[0])
    missing = [
        c
        for c in ("kinetic", "potential", "inertia", "dissipated", "injected", "residual")
        if c not in names
    ]
    time_name = "step" if "step" in names else "t" if "t" in names else None
    if missing or time_name is None:
        raise ValueError(
            f"LEDGER: {str(path)!r} is not an inertia ledger (missing {missing or [time_name]})"
        )
    try:
        table = {name: np.array([float(r[name]) for r in rows]) for name in names}
    except (TypeError, ValueError):
        raise ValueError(f"LEDGER: {str(path)!r} has a value that is not a number") from None
    if "path" in table:  # a simulation: mean over paths at each time
        times, index = np.unique(table[time_name], return_inverse=True)
        counts = np.bincount(index)
        table = {
            name: np.bincount(index, weights=col) / counts
            for name, col in table.items()
            if name != "path"
        }
        table[time_name] = times
    return time_name, table


def ledger_report(path: Path, out: Path) -> Path:
    """Figures of a ledger CSV and a self-contained `report.html` in `out`.

    Stacked ledger (K + L + D = I₀ + N + R), kinetic against potential, kinetic energy with the
    noise-floor prediction h² tr(C)/(2B(1 − μ²)) where the ledger has a noise estimate, and the
    stability margin with alarms marked where it has one.
    """
    import numpy as np

    time_name, c = read_ledger(path)
    out.mkdir(parents=True, exist_ok=True)
    t = c[time_name]
    figures = []
    fig_path = out / "ledger_stack.png"
    with figure(fig_path, ncols=2) as (stack, books):
        stack_ledger(stack, t, c["kinetic"], c["potential"], c["dissipated"])
        stack.plot(
            t,
            c["inertia"][0] + c["injected"] + c["residual"],
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
    findings: dict[str, float] = {
        "rows": float(len(t)),
        "inertia first": float(c["inertia"][0]),
        "inertia last": float(c["inertia"][-1]),
        "dissipated": float(c["dissipated"][-1]),
        "injected": float(c["injected"][-1]),
        "residual": float(c["residual"][-1]),
        "closure |I − I₀ + D − N − R| / max |I|": float(
            np.nanmax(
                np.abs(
                    c["inertia"] - c["inertia"][0] + c["dissipated"] - c["injected"] - c["residual"]
                )
            )
            / max(np.nanmax(np.abs(c["inertia"])), 1e-300)
        ),
    }
    if "noise_trace" in c and np.isfinite(c["noise_trace"]).any():
        mu = 1.0 - c["gamma"] * c["h"]
        predicted = c["h"] ** 2 * c["noise_trace"] / (2.0 * (1.0 - mu * mu))
        fig_path = out / "noise_floor.png"
        with figure(fig_path) as ax:
            ax.semilogy(
                t,
                np.where(c["kinetic"] > 0, c["kinetic"], np.nan),  # K₀ = 0 has no logarithm
                color=COLORS["kinetic"],
                lw=0.8,
                label="kinetic K",
            )
            ax.semilogy(
                t, predicted, color="black", lw=1, label="predicted floor h²tr(C)/(2B(1 − μ²))"
            )
            ax.set_xlabel(time_name)
            ax.set_title("kinetic energy and its noise floor")
        figures.append(fig_path)
        later = slice(len(t) // 2, None)
        findings["kinetic, later half (measured)"] = float(np.nanmean(c["kinetic"][later]))
        findings["kinetic, later half (predicted)"] = float(np.nanmean(predicted[later]))
        findings["excess loss floor h²tr(C)/(4B(1 − μ)), later half"] = float(
            np.nanmean((c["h"] ** 2 * c["noise_trace"] / (4.0 * (1.0 - mu)))[later])
        )
    if "margin" in c and np.isfinite(c["margin"]).any():
        fig_path = out / "margin.png"
        with figure(fig_path) as ax:
            ax.plot(t, c["margin"], color="#1f77b4", label="stability margin")
            ax.axhline(1.0, color="#d62728", ls="--", lw=0.8, label="threshold")
            alarms = t[c.get("alarm", np.zeros_like(t)) > 0]
            if len(alarms):
                ax.axvline(
                    alarms[0],
                    color="#d62728",
                    lw=1.5,
                    label=f"first alarm ({time_name} {alarms[0]:g})",
                )
            ax.set_xlabel(time_name)
            ax.set_title("stability margin h²λ̂/(2(1 + μ))")
        figures.append(fig_path)
        findings["alarm rows"] = float((c.get("alarm", np.zeros_like(t)) > 0).sum())
    if "flag" in c:
        findings["non-finite losses"] = float((c["flag"] == 1).sum())
        findings["skipped steps"] = float((c["flag"] == 2).sum())
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_number(v)}</td></tr>" for k, v in findings.items()
    )
    name = Path(path).name
    return write_page(
        out / "report.html",
        f"Energy ledger: {name}",
        [
            f"<h1>Energy ledger of {html.escape(name)}</h1>",
            "<p>inertia − inertia₀ = −dissipated + injected + residual (THEORY.md §3–4).</p>",
            f"<table><tr><th>quantity</th><th>value</th></tr>{rows}</table>",
            *(embed_png(p) for p in figures),
        ],
    )
