"""A check: a measured value held against a bound of one of three kinds (at most L, at least L,
within tol of a target), read plainly as `max |MC − law| / SE = 1.615, must be ≤ 4`.

A bound's `holds(x, digits)` compares x with the bound's numbers as printed to `digits`
significant digits (17, the default, prints every float exactly): `Check.requirement` prints as
many digits as the verdict needs, so a row never reads as passing when it fails.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar


def _text(x: float, digits: int) -> str:
    return f"{x:.{digits}g}"


def _shown(x: float, digits: int) -> float:
    """`x` as printed to `digits` significant digits (17 print every float exactly)."""
    return float(_text(x, digits))


@dataclass(frozen=True)
class AtMost:
    """Met when measured ≤ limit; `note` says where the limit comes from."""

    limit: float
    note: str = ""
    kind: ClassVar[str] = "at_most"

    def holds(self, x: float, digits: int = 17) -> bool:
        return x <= _shown(self.limit, digits)

    def words(self, digits: int = 4) -> str:
        return f"must be ≤ {_text(self.limit, digits)}"


@dataclass(frozen=True)
class AtLeast:
    """Met when measured ≥ limit."""

    limit: float
    note: str = ""
    kind: ClassVar[str] = "at_least"

    def holds(self, x: float, digits: int = 17) -> bool:
        return x >= _shown(self.limit, digits)

    def words(self, digits: int = 4) -> str:
        return f"must be ≥ {_text(self.limit, digits)}"


@dataclass(frozen=True)
class Within:
    """Met when |measured − target| ≤ tol; tol = 0 asks for equality."""

    target: float
    tol: float
    note: str = ""
    kind: ClassVar[str] = "within"

    def holds(self, x: float, digits: int = 17) -> bool:
        return abs(x - _shown(self.target, digits)) <= _shown(self.tol, digits)

    def words(self, digits: int = 4) -> str:
        if self.tol == 0:
            return f"must equal {_text(self.target, digits)}"
        return f"must be within {_text(self.tol, digits)} of {_text(self.target, digits)}"


Bound = AtMost | AtLeast | Within


@dataclass(frozen=True)
class Check:
    """The `measured` value of `quantity` in the case `name`, held against `bound`."""

    name: str
    quantity: str
    measured: float
    bound: Bound

    def __post_init__(self) -> None:
        object.__setattr__(self, "measured", float(self.measured))

    @property
    def passed(self) -> bool:
        """The bound holds for the exact measured value; a non-finite one never passes."""
        return math.isfinite(self.measured) and self.bound.holds(self.measured)

    @property
    def requirement(self) -> str:
        """`quantity = measured, must be …` to 4 significant digits, or as many more as it takes
        for the numbers shown to give the verdict the exact numbers give."""
        for digits in range(4, 17):
            shown = _shown(self.measured, digits)
            if (math.isfinite(shown) and self.bound.holds(shown, digits)) == self.passed:
                break
        else:
            digits = 17
        note = f" ({self.bound.note})" if self.bound.note else ""
        measured = _text(self.measured, digits)
        return f"{self.quantity} = {measured}, {self.bound.words(digits)}{note}"

    def to_dict(self) -> dict[str, Any]:
        """name, quantity, measured, bound (kind and its numbers), requirement, passed."""
        bound = {"kind": self.bound.kind, **asdict(self.bound)}
        return {
            **asdict(self),
            "bound": bound,
            "requirement": self.requirement,
            "passed": self.passed,
        }
