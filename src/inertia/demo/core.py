"""Shared types of the demonstration: its sizes, an experiment, its result and outcome.

`compute(cfg)` returns a `Result` (checks, see `checks.py`, and findings); `plot(result, out)`
draws it; `run_demo` records each as an `Outcome`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from .checks import Check

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demonstration: `quick` shrinks runs and ensembles, keeping every check."""

    quick: bool = False
    seed: int = 0

    @property
    def paths(self) -> int:
        return 400 if self.quick else 2000

    def scale(self, full: int, quick: int) -> int:
        return quick if self.quick else full


@dataclass
class Result:
    """What an experiment's `compute` returns: its checks and other findings (name ↦ number);
    each experiment's subclass adds the data its `plot` draws."""

    checks: list[Check]
    findings: dict[str, float]


R = TypeVar("R", bound=Result)


@dataclass(frozen=True)
class Experiment(Generic[R]):
    """An entry of `EXPERIMENTS`: the claim, the law it checks, how to compute and plot it."""

    key: str
    title: str
    claim: str
    law: str
    compute: Callable[[DemoConfig], R]
    plot: Callable[[R, Path], list[Path]]


@dataclass
class Outcome:
    """An experiment as `run_demo` ran it: its result, figures and wall time."""

    experiment: Experiment[Any]
    result: Result
    figures: list[Path]
    seconds: float

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.result.checks)

    def to_dict(self) -> dict[str, Any]:
        e, r = self.experiment, self.result
        head = {"key": e.key, "title": e.title, "claim": e.claim, "law": e.law}
        return {
            **head,
            "checks": [c.to_dict() for c in r.checks],
            "findings": r.findings,
            "figures": [p.name for p in self.figures],
            "seconds": round(self.seconds, 3),
            "passed": self.passed,
        }
