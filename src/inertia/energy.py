"""Energies and the energy ledger.

Computational inertia (THEORY.md §1): I(θ, v) = K + L = ½ vᵀMv + L(θ), with diagonal mass M.
The ledger (THEORY.md §3) splits every change of I into dissipated (D), injected (N) and
integrator residual (R): I_n − I_0 = −D_n + N_n + R_n.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor

#: The ledger's energy columns, in the order they are written.
COLUMNS = ("kinetic", "potential", "inertia", "dissipated", "injected", "residual")


class Mass:
    """Diagonal mass M = diag(m), m a positive scalar or a tensor of shape (d,).

    Gives vᵀMv, xᵀMy and ½ vᵀMv over the last axis and M⁻¹ (`inverse`), each in as few tensor
    operations as possible (one for m = 1), since they run in every integrator sub-step.
    """

    def __init__(self, m: float | Tensor):
        self.value = m
        self.is_scalar = not isinstance(m, Tensor)
        self.inverse = 1.0 / m

    def to(self, dtype: torch.dtype) -> Mass:
        return self if self.is_scalar else Mass(self.value.to(dtype))

    def dot(self, x: Tensor, y: Tensor, scale: float = 1.0) -> Tensor:
        """scale · xᵀMy over the last axis."""
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
    """K = ½ vᵀMv over the last axis of v."""
    return Mass(mass).kinetic(v)


class CompensatedSum:
    """Kahan-compensated running sums (elementwise over a tensor): error O(ε), not O(nε)."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float64):
        self.total = torch.zeros(shape, dtype=dtype)
        self.carry = torch.zeros(shape, dtype=dtype)
        self._tmp = torch.zeros(shape, dtype=dtype)

    def add_(self, x: Tensor) -> None:
        """total += x, keeping the rounding error of the addition in the carry."""
        y = x - self.carry
        torch.add(self.total, y, out=self._tmp)
        torch.sub(self._tmp, self.total, out=self.carry).sub_(y)
        self.total, self._tmp = self._tmp, self.total


def csv_cells(row: Mapping[str, float | int]) -> dict[str, str | int]:
    """A ledger row for csv: floats in full precision (repr), integers as they are."""
    return {k: repr(v) if isinstance(v, float) else v for k, v in row.items()}


class Ledger(Mapping[str, Tensor]):
    """The energy ledger: a time axis and named float64 columns, one row per record.

    A simulation gives columns of shape (R, paths) against times ``t``; a monitored training
    run gives 1-D columns (R,) against ``step`` (plus lr, h, gamma, shadow, …). Either way the
    energy columns satisfy ``inertia − inertia[0] = −dissipated + injected + residual``.
    """

    def __init__(self, t: Tensor, columns: Mapping[str, Tensor], *, time_name: str = "t"):
        missing = [name for name in COLUMNS if name not in columns]
        if missing:
            raise ValueError(f"columns: missing {missing}")
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
        """(I − I₀) − (−D + N + R) per record (and path): round-off if the books are right."""
        c = self._columns
        change = c["inertia"] - c["inertia"][0]
        return change - (c["injected"] + c["residual"] - c["dissipated"])

    def rows(self) -> Iterator[dict[str, float | int]]:
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
        path = Path(path)
        with path.open("w", newline="") as f:
            writer = None
            for row in self.rows():
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(csv_cells(row))
        return path

    def to_jsonl(self, path: str | Path) -> Path:
        """Write one JSON object per record (and path)."""
        path = Path(path)
        with path.open("w") as f:
            for row in self.rows():
                f.write(json.dumps(row) + "\n")
        return path

    def to_dataframe(self):
        """A long pandas DataFrame (one row per record and path); needs pandas."""
        import pandas as pd

        return pd.DataFrame(list(self.rows()))
