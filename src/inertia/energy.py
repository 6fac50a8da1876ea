"""Energies and the energy ledger.

Computational inertia (docs/theory.md §1): I(θ, v) = K + L = ½ vᵀMv + L(θ), with diagonal mass
M. The ledger (docs/theory.md §3) splits every change of I into dissipated (D), injected (N) and
integrator residual (R): I_n − I_0 = −D_n + N_n + R_n.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import _checks, ledger_io

if TYPE_CHECKING:
    import pandas as pd

#: The energies at each record: K, L and I = K + L.
ENERGIES = ("kinetic", "potential", "inertia")
#: The cumulative ledger terms D, N, R, in the order integrators book them (rows of increments).
BOOKS = ("dissipated", "injected", "residual")
#: The ledger's energy columns, in the order they are written.
COLUMNS = (*ENERGIES, *BOOKS)


class Mass:
    """Diagonal mass M = diag(m), m a positive scalar or a tensor of shape (d,).

    Gives vᵀMv, xᵀMy and ½ vᵀMv over the last axis and M⁻¹ (`inverse`), each in as few tensor
    operations as possible (one for m = 1), since they run in every integrator sub-step.
    """

    def __init__(self, m: float | Tensor) -> None:
        self.value = m
        self.is_scalar = not isinstance(m, Tensor)
        self.inverse = 1.0 / m

    def to(self, dtype: torch.dtype) -> Mass:
        """This mass with a tensor m cast to `dtype`."""
        return Mass(self.value.to(dtype)) if isinstance(self.value, Tensor) else self

    def dot(self, x: Tensor, y: Tensor, scale: float = 1.0) -> Tensor:
        """scale · xᵀMy over the last axis."""
        out: Tensor
        if not self.is_scalar:
            out = torch.linalg.vecdot(x * self.value, y)
            return out if scale == 1.0 else out.mul_(scale)
        out = torch.linalg.vecdot(x, y)
        factor = scale * self.value
        return out if factor == 1.0 else out.mul_(factor)

    def sqnorm(self, v: Tensor) -> Tensor:
        """vᵀMv over the last axis."""
        return self.dot(v, v)

    def kinetic(self, v: Tensor) -> Tensor:
        """K = ½ vᵀMv over the last axis."""
        return self.dot(v, v, 0.5)

    def total(self, weights: float | Tensor, dim: int) -> float:
        """Σᵢ mᵢ wᵢ for per-coordinate (or scalar) weights wᵢ over d = dim coordinates."""
        prod = torch.as_tensor(self.value * weights, dtype=torch.float64)
        return float(prod.sum()) if prod.numel() > 1 else float(prod) * dim


def kinetic(v: Tensor, mass: float | Tensor = 1.0) -> Tensor:
    """K = ½ vᵀMv over the last axis of v (a floating-point tensor); mass a number > 0 or a
    tensor of shape (d,). FloatingPointError if K is beyond the range of v's dtype."""
    if not isinstance(v, Tensor) or v.dim() == 0 or not v.is_floating_point():
        raise _checks.fail("v", "a floating-point tensor of shape (..., d)", v)
    m = _checks.scalar_or_vector("mass", mass, low=0.0, strict=True)
    if isinstance(m, Tensor):
        if m.shape != v.shape[-1:]:
            raise _checks.fail("mass", f"a number or a tensor of shape ({v.shape[-1]},)", m)
        m = m.to(v.device, v.dtype)
    return _checks.finite("kinetic", {"v": v, "mass": mass}, Mass(m).kinetic(v))


class CompensatedSum:
    """Kahan-compensated running sums, elementwise over a tensor: error O(ε), not O(nε).

    Each `add_(x)` is the recurrence y = x − c; t = s + y; c = (t − s) − y; s = t on the total s
    and carry c, in the tensor's dtype (the same floats as that recurrence in plain Python).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> None:
        raw: object = shape
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = (raw,)
        if not isinstance(raw, tuple | list | torch.Size) or len(raw) > 8:
            raise _checks.fail("shape", "a tuple of integers ≥ 0", shape)
        shape = tuple(_checks.integer("shape", n, low=0, high=2**62) for n in raw)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise _checks.fail("dtype", "a floating-point torch.dtype", dtype)
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise _checks.fail("device", "a torch device", device) from None
        size = dtype.itemsize * math.prod(shape)
        _checks.memory("shape", 3 * size, f"a sum of shape {shape}", device)
        self.total = torch.zeros(shape, dtype=dtype, device=device)
        self.carry = torch.zeros(shape, dtype=dtype, device=device)
        self._tmp = torch.zeros(shape, dtype=dtype, device=device)

    def add_(self, x: Tensor) -> None:
        """total += x (a tensor of the sum's shape), keeping the rounding error of the addition in
        the carry."""
        if not isinstance(x, Tensor) or x.shape != self.total.shape:
            raise _checks.fail("x", f"a tensor of shape {tuple(self.total.shape)}", x)
        y = x - self.carry
        torch.add(self.total, y, out=self._tmp)
        torch.sub(self._tmp, self.total, out=self.carry).sub_(y)
        self.total, self._tmp = self._tmp, self.total

    def state_dict(self) -> dict[str, Tensor]:
        """Copies of the total and the carry: all it takes to continue the sum."""
        return {"total": self.total.clone(), "carry": self.carry.clone()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Continue the sums saved by `state_dict`: tensors `total` and `carry` of this sum's
        shape and dtype (any device); ValueError naming the field otherwise."""
        if not isinstance(state, Mapping):
            raise ValueError(f"state must be a mapping with 'total' and 'carry'; got {state!r}")
        for name in ("total", "carry"):
            own, value = getattr(self, name), state.get(name)
            if isinstance(value, Tensor) and (value.shape, value.dtype) == (own.shape, own.dtype):
                continue
            got = (
                f"a {value.dtype} tensor of shape {tuple(value.shape)}"
                if isinstance(value, Tensor)
                else repr(value)
            )
            raise ValueError(
                f"state['{name}'] must be a {own.dtype} tensor of shape {tuple(own.shape)}; "
                f"got {got}"
            )
        self.total.copy_(state["total"])
        self.carry.copy_(state["carry"])


class Ledger(Mapping[str, Tensor]):
    """The energy ledger: a time axis and named float64 columns, one row per record.

    A simulation gives columns of shape (R, paths) against times ``t``; a monitored training
    run gives 1-D columns (R,) against ``step`` (plus lr, h, gamma, shadow, …). Either way the
    energy columns satisfy ``inertia − inertia[0] = −dissipated + injected + residual``.
    """

    def __init__(self, t: Tensor, columns: Mapping[str, Tensor], *, time_name: str = "t") -> None:
        if not isinstance(t, Tensor) or t.dim() != 1:
            raise _checks.fail("t", "a 1-D tensor of times", t)
        if not isinstance(time_name, str) or not time_name:
            raise _checks.fail("time_name", "a non-empty string", time_name)
        if not isinstance(columns, Mapping):
            raise _checks.fail("columns", "a mapping of names to tensors", columns)
        missing = [name for name in COLUMNS if name not in columns]
        if missing:
            raise ValueError(f"columns: missing {missing}")
        for name, column in columns.items():
            if not isinstance(name, str) or name in (time_name, "path"):
                raise _checks.fail("columns", f"names other than '{time_name}' and 'path'", name)
            if not isinstance(column, Tensor) or column.dim() not in (1, 2):
                raise _checks.fail(f"columns['{name}']", "a 1-D or 2-D tensor", column)
            if column.shape[0] != len(t):
                raise _checks.fail(f"columns['{name}']", f"{len(t)} rows (one per time)", column)
        self.t, self.time_name = t, time_name
        self._columns = dict(columns)

    def __getitem__(self, name: str) -> Tensor:
        if name == self.time_name:
            return self.t
        return self._columns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    @property
    def paths(self) -> int:
        """Paths per record: 1 for a 1-D (training-run) ledger."""
        inertia = self._columns["inertia"]
        return 1 if inertia.dim() == 1 else inertia.shape[1]

    def closure_error(self) -> Tensor:
        """(I − I₀) − (−D + N + R) per record (and path), with a monitored run's decay work and
        schedule energy where the ledger has them, − decay + schedule: round-off if the books
        are right."""
        c = self._columns
        change = c["inertia"] - c["inertia"][0]
        books = c["injected"] + c["residual"] - c["dissipated"]
        if "decay" in c:
            books = books - c["decay"]
        if "schedule" in c:
            books = books + c["schedule"]
        return change - books

    def rows(self) -> Iterator[dict[str, float]]:
        """One dict per record (per path for a simulation), time and path first."""
        names = list(self._columns)
        columns = [self._columns[name].tolist() for name in names]
        for r, t in enumerate(self.t.tolist()):
            if self._columns["inertia"].dim() == 1:
                yield {
                    self.time_name: t,
                    **{n: col[r] for n, col in zip(names, columns, strict=True)},
                }
            else:
                for p in range(self.paths):
                    yield {
                        self.time_name: t,
                        "path": p,
                        **{n: col[r][p] for n, col in zip(names, columns, strict=True)},
                    }

    def to_csv(self, path: str | Path) -> Path:
        """Write one CSV row per record (and path), floats in full precision."""
        return ledger_io.write_rows(path, self.rows(), "csv")

    def to_jsonl(self, path: str | Path) -> Path:
        """Write one JSON object per record (and path)."""
        return ledger_io.write_rows(path, self.rows(), "jsonl")

    @classmethod
    def read_csv(cls, path: str | Path) -> Ledger:
        """The ledger in a CSV file written by `to_csv` or the monitor (same floats, bit for bit).

        Time `step` (a training run: 1-D columns) or `t`; with a `path` column (a simulation:
        rows by time, then path 0 … P − 1) the columns have shape (R, P). ValueError naming the
        file and what is wrong for anything that is not a ledger.
        """
        return cls._from_table(path, *ledger_io.read_table(path, "csv"))

    @classmethod
    def read_jsonl(cls, path: str | Path) -> Ledger:
        """The ledger in a JSONL file written by `to_jsonl` or the monitor; as `read_csv`."""
        return cls._from_table(path, *ledger_io.read_table(path, "jsonl"))

    @classmethod
    def _from_table(cls, path: str | Path, names: list[str], table: Tensor) -> Ledger:
        time_name = "step" if "step" in names else "t"
        missing = [name for name in (time_name, *COLUMNS) if name not in names]
        if missing:
            raise ledger_io.ledger_error(path, f"not an inertia ledger (missing {missing})")
        columns = dict(zip(names, table.T.contiguous(), strict=True))
        if "path" in columns:  # a simulation: rows by time, then by path 0 … P − 1
            index = columns.pop("path")
            top = float(index.max())  # NaN if a path is
            paths = int(top) + 1 if 0 <= top < len(index) else 0
            records = len(index) // max(paths, 1)
            if torch.equal(index, torch.arange(paths, dtype=index.dtype).repeat(records)):
                columns = {name: col.reshape(records, paths) for name, col in columns.items()}
            times = columns[time_name]
            if times.dim() == 1 or not bool((times == times[:, :1]).all()):
                raise ledger_io.ledger_error(
                    path, "not a simulation ledger (rows are not by time, then path 0 … P − 1)"
                )
            columns[time_name] = times[:, 0].contiguous()
        return cls(columns.pop(time_name), columns, time_name=time_name)

    def to_dataframe(self) -> pd.DataFrame:
        """A long pandas DataFrame (one row per record and path); needs pandas."""
        import pandas as pd

        return pd.DataFrame(list(self.rows()))
