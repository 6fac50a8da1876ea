"""Eager argument checks: each failure is a ValueError naming the argument and what is allowed."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, TypeAlias

import torch
from numpy.typing import NDArray
from torch import Tensor

#: What the package accepts where it takes numbers: a tensor, a NumPy array, a number or a
#: (nested) sequence of numbers, anything `torch.as_tensor` reads. Shapes are checked at run time.
ArrayLike: TypeAlias = Tensor | NDArray[Any] | float | Sequence[float] | Sequence[Sequence[float]]


def fail(name: str, allowed: str, got: object) -> ValueError:
    shown = f"a tensor of shape {tuple(got.shape)}" if isinstance(got, Tensor) else repr(got)
    return ValueError(f"{name} must be {allowed}; got {shown}")


def real(
    name: str,
    x: object,
    *,
    low: float | None = None,
    strict: bool = False,
    high: float | None = None,
    strict_high: bool = False,
) -> float:
    """A finite real number, ≥ low (> low when strict) and ≤ high (< high when strict_high)."""
    bounds: list[str] = []
    if low is not None:
        bounds.append(f"{'>' if strict else '≥'} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if strict_high else '≤'} {high:g}")
    allowed = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(x, Tensor) and x.numel() == 1 and not x.is_complex():
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise fail(name, allowed, x)
    x = float(x)
    too_low = low is not None and (x <= low if strict else x < low)
    too_high = high is not None and (x >= high if strict_high else x > high)
    if not math.isfinite(x) or too_low or too_high:
        raise fail(name, allowed, x)
    return x


def integer(name: str, x: object, *, low: int) -> int:
    """An integer ≥ low."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < low:
        raise fail(name, f"an integer ≥ {low}", x)
    return int(x)


def tensor(name: str, x: object, allowed: str, dtype: torch.dtype = torch.float64) -> Tensor:
    """`x` as a tensor of `dtype`, or ValueError naming `name` and what is `allowed`."""
    try:
        return torch.as_tensor(x, dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        raise fail(name, allowed, x) from None


def scalar_or_vector(name: str, x: object, *, low: float, strict: bool) -> float | Tensor:
    """A finite number or a 1-D float64 tensor of them, each ≥ low (> low when strict)."""
    if isinstance(x, numbers.Real) or (isinstance(x, Tensor) and x.dim() == 0):
        return real(name, x, low=low, strict=strict)
    bound = f"{'>' if strict else '≥'} {low:g}"
    allowed = f"a number {bound} or a 1-D tensor of finite values {bound}"
    t = tensor(name, x, allowed)
    ok = t.dim() == 1 and t.numel() > 0 and bool(torch.isfinite(t).all())
    if not ok or bool((t <= low).any() if strict else (t < low).any()):
        raise fail(name, allowed, t)
    return t.clone()


def vector_dim(x: float | Tensor) -> int | None:
    """The length d of a per-coordinate parameter, None for a scalar."""
    return x.numel() if isinstance(x, Tensor) else None
