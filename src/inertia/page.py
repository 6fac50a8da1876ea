"""Self-contained HTML pages: style and a render-marking script inline, figures embedded."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path


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


def number(x: float | str) -> str:
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
