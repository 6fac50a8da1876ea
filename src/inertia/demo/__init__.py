"""The paper's demonstration as named experiments E1–E6, run by `inertia demo` and the tests.

Each experiment (`e1_conservation` … `e6_non_quadratic`) has `compute(cfg)`, which simulates and
holds the result against a law of `inertia.theory` (docs/theory.md §2) with a bound the theory
supplies (a proven bound, an integrator's order, Monte-Carlo standard errors), and
`plot(result, out)`, which draws its figures. `run_demo` runs them all and writes the figures,
summary.json and a self-contained report.html.
"""

from .checks import AtLeast, AtMost, Bound, Check, Within
from .core import DemoConfig, Experiment, Outcome, Result
from .runner import EXPERIMENTS, run_demo

__all__ = [
    "EXPERIMENTS",
    "AtLeast",
    "AtMost",
    "Bound",
    "Check",
    "DemoConfig",
    "Experiment",
    "Outcome",
    "Result",
    "Within",
    "run_demo",
]
