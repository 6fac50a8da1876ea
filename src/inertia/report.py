"""Figures (matplotlib, no global pyplot state) and the self-contained HTML report."""

from __future__ import annotations

import base64
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


def html_report(title: str, intro: str, sections: Sequence[dict], path: Path) -> Path:
    """Write a self-contained HTML report.

    Each section is a dict with keys `key`, `title`, `claim`, `law`, `checks` (dicts with
    name, measured, predicted, tolerance, relation, passed), `findings` (name ↦ number),
    `figures` (PNG paths) and `passed`.
    """
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style><script>{_SCRIPT}</script>",
        f"</head><body><h1>{html.escape(title)}</h1><p>{intro}</p>",
    ]
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
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
