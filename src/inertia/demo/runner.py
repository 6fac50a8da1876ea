"""`run_demo`: run each experiment of `EXPERIMENTS`, plot it, write summary.json and report.html."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import (
    e1_conservation,
    e2_integrators,
    e3_damping,
    e4_damping_sweep,
    e5_noise,
    e6_non_quadratic,
)
from .core import DemoConfig, Experiment, Outcome
from .page import write_report

EXPERIMENTS: dict[str, Experiment[Any]] = {
    m.EXPERIMENT.key: m.EXPERIMENT
    for m in (
        e1_conservation,
        e2_integrators,
        e3_damping,
        e4_damping_sweep,
        e5_noise,
        e6_non_quadratic,
    )
}


def run_demo(
    out: Path,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[Outcome]:
    """Run E1–E6 into `out`: one PNG per figure, summary.json and report.html.

    `progress(i, n, key)` is called before experiment i of n, and with (n, n, "done") at the end.
    """
    cfg = DemoConfig(quick=quick, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for i, (key, experiment) in enumerate(EXPERIMENTS.items()):
        if progress:
            progress(i, len(EXPERIMENTS), key)
        start = time.perf_counter()
        result = experiment.compute(cfg)
        figures = experiment.plot(result, out)
        outcomes.append(Outcome(experiment, result, figures, time.perf_counter() - start))
    if progress:
        progress(len(EXPERIMENTS), len(EXPERIMENTS), "done")
    summary = {
        "quick": quick,
        "seed": seed,
        "passed": all(o.passed for o in outcomes),
        "experiments": {o.experiment.key: o.to_dict() for o in outcomes},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    write_report(outcomes, out / "report.html", quick=quick)
    return outcomes
