"""`Trajectory`: what `simulate` returns, the ledger at the recorded steps and the final state,
with Monte-Carlo means, confidence intervals and a summary pooled over paths (and ranks)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from . import _checks, _distributed
from .energy import COLUMNS, Ledger

__all__ = ["Estimate", "Trajectory"]


class Estimate(NamedTuple):
    """A Monte-Carlo mean over paths and its standard error, per record."""

    mean: Tensor
    stderr: Tensor


class Trajectory:
    """The result of `simulate`: the ledger at the recorded steps and the final state.

    `t` has shape (R,); `kinetic`, `potential`, `inertia`, `dissipated`, `injected` and
    `residual` have shape (R, local paths), the last three cumulative from step 0. `q`, `v` are
    the final state (local paths, d). All on the simulation's device. In a distributed run
    the columns hold this rank's paths `path_offset … path_offset + local_paths − 1` of `paths`,
    and `mean`, `confidence` and `summary` are collective: every rank calls them and gets the
    values pooled over all paths.
    """

    def __init__(
        self,
        ledger: Ledger,
        q: Tensor,
        v: Tensor,
        *,
        method: str,
        dt: float,
        steps: int,
        paths: int | None = None,
        path_offset: int = 0,
        distributed: bool = False,
    ) -> None:
        self.ledger, self.q, self.v = ledger, q, v
        self.method, self.dt, self.steps = method, dt, steps
        self.paths = ledger.paths if paths is None else paths
        self.path_offset, self.distributed = path_offset, distributed

    @property
    def t(self) -> Tensor:
        """Recorded times (R,)."""
        return self.ledger.t

    @property
    def kinetic(self) -> Tensor:
        """K = ½ vᵀMv (R, paths)."""
        return self.ledger["kinetic"]

    @property
    def potential(self) -> Tensor:
        """L(θ) (R, paths)."""
        return self.ledger["potential"]

    @property
    def inertia(self) -> Tensor:
        """I = K + L (R, paths)."""
        return self.ledger["inertia"]

    @property
    def dissipated(self) -> Tensor:
        """Cumulative D (R, paths)."""
        return self.ledger["dissipated"]

    @property
    def injected(self) -> Tensor:
        """Cumulative N (R, paths)."""
        return self.ledger["injected"]

    @property
    def residual(self) -> Tensor:
        """Cumulative R (R, paths)."""
        return self.ledger["residual"]

    @property
    def local_paths(self) -> int:
        """The paths held here: `paths`, or this rank's share of them."""
        return self.ledger.paths

    def _reduce(self, t: Tensor, op: str = "sum") -> Tensor:
        return _distributed.all_reduce(t, op) if self.distributed else t

    def summary(self) -> dict[str, float | int | str]:
        """Plain numbers: the run, its drift of I and how well the ledger closes (pooled over
        the ranks of a distributed run: means over all paths, maxima over all paths)."""
        inertia = self.inertia
        sums = torch.stack([inertia[0].sum(), *(self.ledger[c][-1].sum() for c in COLUMNS)])
        maxima = torch.stack(
            [
                inertia.abs().max(),
                inertia[0].abs().max(),
                (inertia - inertia[0]).abs().max(),
                self.residual.abs().max(),
                self.ledger.closure_error().abs().max(),
            ]
        )
        means = (self._reduce(sums) / self.paths).tolist()
        scale, start, drift, residual, closure = self._reduce(maxima, "max").tolist()
        scale = scale or 1.0
        start = start or scale
        return {
            "method": self.method,
            "dt": self.dt,
            "steps": self.steps,
            "paths": self.paths,
            "records": len(self.t),
            "t_final": float(self.t[-1]),
            "inertia_initial": means[0],
            **{f"{name}_final": value for name, value in zip(COLUMNS, means[1:], strict=True)},
            "max_relative_drift": drift / start,
            "max_abs_residual": residual,
            "ledger_closure_error": closure / scale,
        }

    def to_csv(self, path: str | Path) -> Path:
        """Write the ledger of the paths held here, one row per (record, path)."""
        return self.ledger.to_csv(path)

    def mean(self) -> dict[str, Estimate]:
        """Per-record mean over all paths and its standard error, for every ledger column.

        Two passes, pooled over the ranks of a distributed run: x̄ = Σx / P, then
        SE = sqrt(Σ(x − x̄)² / (P − 1)) / sqrt(P).
        """
        if self.paths < 2:
            raise ValueError(
                f"mean over paths needs paths ≥ 2 for a standard error; got {self.paths}"
            )
        columns = [self.ledger[name] for name in COLUMNS]
        means = self._reduce(torch.stack([c.sum(1) for c in columns])) / self.paths
        squares = torch.stack(
            [(c - m[:, None]).square().sum(1) for c, m in zip(columns, means, strict=True)]
        )
        stderr = (self._reduce(squares) / ((self.paths - 1) * self.paths)).sqrt()
        return {name: Estimate(means[i], stderr[i]) for i, name in enumerate(COLUMNS)}

    def confidence(self, level: float = 0.95) -> dict[str, tuple[Tensor, Tensor]]:
        """The normal-approximation band mean ± z·stderr of every column, z for `level`."""
        level = _checks.real("level", level, low=0.0, strict=True)
        if level >= 1:
            raise _checks.fail("level", "a number in (0, 1)", level)
        z = float(torch.special.ndtri(torch.tensor(0.5 + 0.5 * level, dtype=torch.float64)))
        return {name: (m - z * se, m + z * se) for name, (m, se) in self.mean().items()}

    def cpu(self) -> Trajectory:
        """This trajectory with its ledger and state on the CPU."""
        ledger = Ledger(self.t.cpu(), {name: col.cpu() for name, col in self.ledger.items()})
        return Trajectory(
            ledger,
            self.q.cpu(),
            self.v.cpu(),
            method=self.method,
            dt=self.dt,
            steps=self.steps,
            paths=self.paths,
            path_offset=self.path_offset,
            distributed=self.distributed,
        )

    def gather(self, dst: int = 0) -> Trajectory | None:
        """All paths in one trajectory on the CPU, in path order, on rank `dst` (None on the
        other ranks; collective). Outside a distributed run: `cpu()`."""
        if not self.distributed:
            return self.cpu()
        mine = self.cpu()
        part = ({name: mine.ledger[name] for name in mine.ledger}, mine.q, mine.v)
        rank = torch.distributed.get_rank()
        parts: list[object] | None = None
        if rank == dst:
            parts = [None] * torch.distributed.get_world_size()
        torch.distributed.gather_object(part, parts, dst=dst)
        if parts is None:
            return None
        shards: list[tuple[dict[str, Tensor], Tensor, Tensor]] = parts  # type: ignore[assignment]
        columns = {name: torch.cat([s[0][name] for s in shards], 1) for name in mine.ledger}
        return Trajectory(
            Ledger(mine.t, columns),
            torch.cat([s[1] for s in shards]),
            torch.cat([s[2] for s in shards]),
            method=self.method,
            dt=self.dt,
            steps=self.steps,
        )

    def __repr__(self) -> str:
        shard = (
            f", paths {self.path_offset}…{self.path_offset + self.local_paths - 1} here"
            if self.distributed
            else ""
        )
        return (
            f"Trajectory(method={self.method!r}, dt={self.dt:g}, steps={self.steps}, "
            f"paths={self.paths}{shard}, records={len(self.t)})"
        )
