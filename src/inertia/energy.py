"""Energies and the energy ledger.

Computational inertia (THEORY.md §1): I(θ, v) = K + L = ½ vᵀMv + L(θ), with diagonal mass M.
The ledger (THEORY.md §3) splits every change of I into dissipated (D), injected (N) and
integrator residual (R): I_n − I_0 = −D_n + N_n + R_n.
"""

from __future__ import annotations

import csv
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
        self._carry = torch.zeros(shape, dtype=dtype)
        self._tmp = torch.zeros(shape, dtype=dtype)

    def add_(self, x: Tensor) -> None:
        """total += x, keeping the rounding error of the addition in the carry."""
        y = x - self._carry
        torch.add(self.total, y, out=self._tmp)
        torch.sub(self._tmp, self.total, out=self._carry).sub_(y)
        self.total, self._tmp = self._tmp, self.total


class Ledger(Mapping[str, Tensor]):
    """The energy ledger of one or many paths: times ``t`` (R,) and columns (R, paths).

    Columns: kinetic, potential, inertia and the cumulative dissipated, injected and residual
    energy, so that ``inertia − inertia[0] = −dissipated + injected + residual``.
    """

    def __init__(self, t: Tensor, columns: Mapping[str, Tensor]):
        missing = [name for name in COLUMNS if name not in columns]
        if missing:
            raise ValueError(f"columns: missing {missing}")
        self.t = t
        self._columns = dict(columns)

    def __getitem__(self, name: str) -> Tensor:
        return self._columns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    @property
    def paths(self) -> int:
        return self._columns["inertia"].shape[1]

    def closure_error(self) -> Tensor:
        """(I − I₀) − (−D + N + R) per record and path: round-off if the books are right."""
        c = self._columns
        change = c["inertia"] - c["inertia"][0]
        return change - (c["injected"] + c["residual"] - c["dissipated"])

    def to_csv(self, path: str | Path) -> Path:
        """Write one row per (record, path): ``t, path, kinetic, …, residual``."""
        path = Path(path)
        columns = [self._columns[name].tolist() for name in COLUMNS]
        times = self.t.tolist()
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["t", "path", *COLUMNS])
            for r, t in enumerate(times):
                for p in range(self.paths):
                    writer.writerow([repr(t), p, *(repr(col[r][p]) for col in columns)])
        return path

    def to_dataframe(self):
        """A long pandas DataFrame (one row per record and path); needs pandas."""
        import pandas as pd

        records, paths = self._columns["inertia"].shape
        frame = {
            "t": self.t.repeat_interleave(paths).numpy(),
            "path": torch.arange(paths).repeat(records).numpy(),
        }
        frame.update({name: self._columns[name].reshape(-1).numpy() for name in COLUMNS})
        return pd.DataFrame(frame)
