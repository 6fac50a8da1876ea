"""Eager argument checks: each failure is a ValueError naming the argument and what is allowed;
a law whose valid inputs give a result beyond float64 raises FloatingPointError (`finite`)."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

import torch
from numpy.typing import NDArray
from torch import Tensor

#: What the package accepts where it takes numbers: a tensor, a NumPy array, a number or a
#: (nested) sequence of numbers, anything `torch.as_tensor` reads. Shapes are checked at run time.
ArrayLike: TypeAlias = Tensor | NDArray[Any] | float | Sequence[float] | Sequence[Sequence[float]]

Out = TypeVar("Out", float, Tensor)


def show(x: object) -> str:
    """A short description of a value for an error message (long reprs are cut)."""
    if isinstance(x, Tensor):
        if x.numel() <= 4 and not x.is_complex():
            return f"{x.tolist()!r}"
        return f"a tensor of shape {tuple(x.shape)}"
    try:
        text = repr(x)
    except Exception:  # a hostile __repr__ must not hide the real error
        text = f"a {type(x).__name__}"
    return text if len(text) <= 60 else f"{text[:40]}… ({len(text)} characters)"


def fail(name: str, allowed: str, got: object) -> ValueError:
    return ValueError(f"{name} must be {allowed}; got {show(got)}")


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
    item = x.item() if isinstance(x, Tensor) and x.numel() == 1 and not x.is_complex() else x
    value = math.nan
    if not isinstance(item, bool) and isinstance(item, numbers.Real):
        try:
            value = float(item)
        except (OverflowError, ValueError):  # an integer beyond float64
            pass
    if math.isfinite(value):
        too_low = low is not None and (value <= low if strict else value < low)
        too_high = high is not None and (value >= high if strict_high else value > high)
        if not (too_low or too_high):
            return value
    bounds: list[str] = []
    if low is not None:
        bounds.append(f"{'>' if strict else '≥'} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if strict_high else '≤'} {high:g}")
    raise fail(name, "a finite number" + (" " + " and ".join(bounds) if bounds else ""), x)


def integer(name: str, x: object, *, low: int, high: int | None = None) -> int:
    """An integer ≥ low (and < high when given)."""
    if not isinstance(x, bool) and isinstance(x, numbers.Integral):
        n = int(x)
        if n >= low and (high is None or n < high):
            return n
    bound = f"in [{low}, {_power(high)})" if high is not None else f"≥ {low}"
    raise fail(name, f"an integer {bound}", x)


def _power(n: int) -> str:
    """2**k for a power of two, else the number."""
    return f"2**{n.bit_length() - 1}" if n > 1024 and n & (n - 1) == 0 else str(n)


def boolean(name: str, x: object) -> bool:
    """True or False (not any truthy object)."""
    if not isinstance(x, bool):
        raise fail(name, "True or False", x)
    return x


def tensor(name: str, x: object, allowed: str, dtype: torch.dtype = torch.float64) -> Tensor:
    """`x` as a tensor of `dtype`, or ValueError naming `name` and what is `allowed`."""
    if isinstance(x, Tensor) and x.is_complex() and not dtype.is_complex:
        raise fail(name, allowed, x)
    try:
        return torch.as_tensor(x, dtype=dtype)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise fail(name, allowed, x) from None


def scalar_or_vector(name: str, x: object, *, low: float, strict: bool) -> float | Tensor:
    """A finite number or a 1-D float64 tensor of them, each ≥ low (> low when strict); a
    tensor is copied (detached: parameters are never differentiated through)."""
    if isinstance(x, numbers.Real) or (isinstance(x, Tensor) and x.dim() == 0):
        return real(name, x, low=low, strict=strict)
    bound = f"{'>' if strict else '≥'} {low:g}"
    allowed = f"a number {bound} or a 1-D tensor of finite values {bound}"
    t = tensor(name, x, allowed)
    ok = t.dim() == 1 and t.numel() > 0 and bool(torch.isfinite(t).all())
    if not ok or bool((t <= low).any() if strict else (t < low).any()):
        raise fail(name, allowed, t)
    return t.detach().clone()


def vector_dim(x: float | Tensor) -> int | None:
    """The length d of a per-coordinate parameter, None for a scalar."""
    return x.numel() if isinstance(x, Tensor) else None


def finite(law: str, inputs: Mapping[str, object], out: Out) -> Out:
    """`out`, or FloatingPointError naming the law and its inputs if any value of it is inf or
    NaN: valid (finite) inputs whose result lies beyond float64's range."""
    bad = not bool(torch.isfinite(out).all()) if isinstance(out, Tensor) else not math.isfinite(out)
    if bad:
        args = ", ".join(f"{k}={show(v)}" for k, v in inputs.items())
        raise FloatingPointError(
            f"{law}({args}): the result is not finite (beyond float64's range) for these inputs"
        )
    return out


def available_memory(device: torch.device | None = None) -> int | None:
    """Bytes that may still be allocated on `device` (the CPU by default): a CUDA device's free
    memory, else the system's MemAvailable capped by a cgroup (v2) limit; None if unknown."""
    if device is not None and device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    if device is not None and device.type != "cpu":
        return None
    found = []
    try:
        with open("/proc/meminfo") as info:
            found += [int(s.split()[1]) * 1024 for s in info if s.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        with (
            open("/sys/fs/cgroup/memory.max") as limit,
            open("/sys/fs/cgroup/memory.current") as now,
        ):
            cap = limit.read().strip()
            if cap != "max":
                found.append(int(cap) - int(now.read()))
    except (OSError, ValueError):
        pass
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            pass
    return min(found) if found else None


def memory(names: str, need: int, what: str, device: torch.device | None = None) -> None:
    """ValueError naming `names` if `need` bytes (for `what`) exceed the memory available."""
    free = available_memory(device)
    if free is not None and need > free:
        raise ValueError(
            f"{names}: {what} needs about {need:,} bytes ({need / 2**30:.3g} GiB), more than "
            f"the {max(free, 0):,} bytes available"
        )
