"""The demonstration's self-contained `report.html`: per experiment its claim, law, checks (each
measured value against the bound it must meet), other findings and embedded figures."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from ..page import embed_png, write_page
from .core import Outcome

TITLE = "Computational inertia: the demonstration"
INTRO = (
    "Each section states a claim about computational inertia I = K + L, the law behind it, "
    "what the simulation measured against that law, and the verdict. Bounds come from the "
    "theory: proven bounds, integrator orders and Monte-Carlo standard errors (SE)."
)


def _verdict(passed: bool) -> str:
    return "<span class='pass'>pass</span>" if passed else "<span class='fail'>FAIL</span>"


def _section(outcome: Outcome) -> list[str]:
    e, passed = outcome.experiment, outcome.passed
    verdict = "pass" if passed else "fail"
    parts = [
        f"<section id='{html.escape(e.key)}'><h2>{html.escape(e.key)}. {html.escape(e.title)} "
        f"<span class='{verdict}'>{verdict.upper()}</span></h2>"
        f"<p><b>Claim.</b> {html.escape(e.claim)}</p>"
        f"<p><b>Law.</b> <span class='law'>{html.escape(e.law)}</span></p>"
        "<table><tr><th>check</th><th>measured, and the bound it must meet</th>"
        "<th>verdict</th></tr>"
    ]
    for c in outcome.result.checks:
        ok = "pass" if c.passed else "fail"
        parts.append(
            f"<tr><td>{html.escape(c.name)}</td>"
            f"<td style='text-align: left'>{html.escape(c.requirement)}</td>"
            f"<td class='{ok}'>{ok}</td></tr>"
        )
    parts.append("</table>")
    if outcome.result.findings:
        items = "".join(
            f"<li>{html.escape(name)}: {value:.4g}</li>"
            for name, value in outcome.result.findings.items()
        )
        parts.append(f"<p><b>What we measured besides.</b></p><ul>{items}</ul>")
    parts.extend(embed_png(p) for p in outcome.figures)
    parts.append("</section>")
    return parts


def write_report(outcomes: Sequence[Outcome], path: Path, *, quick: bool = False) -> Path:
    """Write the page to `path`; every figure is embedded, so it needs no other file."""
    intro = INTRO + (" Quick mode: smaller runs and ensembles." if quick else "")
    verdicts = ", ".join(f"{html.escape(o.experiment.key)}: {_verdict(o.passed)}" for o in outcomes)
    parts = [f"<h1>{html.escape(TITLE)}</h1><p>{html.escape(intro)}</p><p>{verdicts}</p>"]
    for outcome in outcomes:
        parts.extend(_section(outcome))
    return write_page(path, TITLE, parts)
