"""`simulate`: run a `Dynamics` with an integrator and record the energy ledger."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from . import _checks
from .dynamics import Dynamics
from .energy import BOOKS, COLUMNS, CompensatedSum, Ledger
from .integrators import METHODS, make_integrator

__all__ = ["Estimate", "SimulationDiverged", "Trajectory", "resolve_method", "simulate"]


class Estimate(NamedTuple):
    """A Monte-Carlo mean over paths and its standard error, per record."""

    mean: Tensor
    stderr: Tensor


class Trajectory:
    """The result of `simulate`: the ledger at the recorded steps and the final state.

    `t` has shape (R,); `kinetic`, `potential`, `inertia`, `dissipated`, `injected` and
    `residual` have shape (R, paths), the last three cumulative from step 0. `q`, `v` are the
    final state (paths, d).
    """

    def __init__(
        self, ledger: Ledger, q: Tensor, v: Tensor, *, method: str, dt: float, steps: int
    ) -> None:
        self.ledger, self.q, self.v = ledger, q, v
        self.method, self.dt, self.steps = method, dt, steps

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
    def paths(self) -> int:
        return self.ledger.paths

    def summary(self) -> dict[str, float | int | str]:
        """Plain numbers: the run, its drift of I and how well the ledger closes."""
        inertia = self.inertia
        scale = float(inertia.abs().max()) or 1.0
        start = float(inertia[0].abs().max()) or scale
        final = {name: float(self.ledger[name][-1].mean()) for name in COLUMNS}
        return {
            "method": self.method,
            "dt": self.dt,
            "steps": self.steps,
            "paths": self.paths,
            "records": len(self.t),
            "t_final": float(self.t[-1]),
            "inertia_initial": float(inertia[0].mean()),
            **{f"{name}_final": value for name, value in final.items()},
            "max_relative_drift": float((inertia - inertia[0]).abs().max()) / start,
            "max_abs_residual": float(self.residual.abs().max()),
            "ledger_closure_error": float(self.ledger.closure_error().abs().max()) / scale,
        }

    def to_csv(self, path: str | Path) -> Path:
        """Write the ledger, one row per (record, path)."""
        return self.ledger.to_csv(path)

    def mean(self) -> dict[str, Estimate]:
        """Per-record mean over paths and its standard error, for every ledger column."""
        if self.paths < 2:
            raise ValueError(
                f"mean over paths needs paths ≥ 2 for a standard error; got {self.paths}"
            )
        root_n = math.sqrt(self.paths)
        return {
            name: Estimate(self.ledger[name].mean(1), self.ledger[name].std(1) / root_n)
            for name in COLUMNS
        }

    def confidence(self, level: float = 0.95) -> dict[str, tuple[Tensor, Tensor]]:
        """The normal-approximation band mean ± z·stderr of every column, z for `level`."""
        level = _checks.real("level", level, low=0.0, strict=True)
        if level >= 1:
            raise _checks.fail("level", "a number in (0, 1)", level)
        z = float(torch.special.ndtri(torch.tensor(0.5 + 0.5 * level, dtype=torch.float64)))
        return {name: (m - z * se, m + z * se) for name, (m, se) in self.mean().items()}

    def __repr__(self) -> str:
        return (
            f"Trajectory(method={self.method!r}, dt={self.dt:g}, steps={self.steps}, "
            f"paths={self.paths}, records={len(self.t)})"
        )


class SimulationDiverged(FloatingPointError):
    """I became NaN or infinite: at `step` on `path`; `trajectory` holds the records kept
    before it (its `steps` is the last recorded step; its `q`, `v` the state at the failure)."""

    def __init__(self, message: str, *, step: int, path: int, trajectory: Trajectory) -> None:
        super().__init__(message)
        self.step, self.path, self.trajectory = step, path, trajectory


def resolve_method(method: str, dynamics: Dynamics) -> str:
    """A method name checked against `METHODS`; "auto" picks verlet (γ = σ = 0),
    conformal_verlet (σ = 0) or baoab."""
    if method == "auto":
        if dynamics.is_hamiltonian:
            return "verlet"
        return "baoab" if dynamics.has_noise else "conformal_verlet"
    if method not in METHODS:
        raise _checks.fail("method", f"'auto' or one of {', '.join(METHODS)}", method)
    return method


def _initial_state(name: str, x: object, paths: int, dtype: torch.dtype) -> Tensor:
    t = _checks.tensor(name, x, "a tensor of shape (d,) or (paths, d)", dtype)
    if t.dim() == 1 and t.numel() > 0:
        t = t.expand(paths, -1)
    if t.dim() != 2 or t.shape[0] != paths or t.shape[1] == 0:
        raise _checks.fail(name, f"a tensor of shape (d,) or (paths, d) = ({paths}, d)", t)
    if not bool(torch.isfinite(t).all()):
        raise _checks.fail(name, "finite", t)
    return t.clone()


def _record_steps(steps: int, every: int) -> list[int]:
    """Step 0, every `every` steps, and the last step."""
    marks = list(range(0, steps + 1, every))
    return marks if marks[-1] == steps else [*marks, steps]


class _Progress:
    """A one-line progress bar on stderr, redrawn at most 100 times."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.every = max(1, total // 100)

    def update(self, n: int) -> None:
        if self.enabled and (n % self.every == 0 or n == self.total):
            filled = 30 * n // self.total
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] step {n}/{self.total}")
            if n == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def simulate(
    dynamics: Dynamics,
    q0: Tensor,
    v0: Tensor | None = None,
    *,
    dt: float,
    steps: int,
    method: str = "auto",
    paths: int = 1,
    record_every: int = 1,
    seed: int | None = None,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
    t0: float = 0.0,
) -> Trajectory:
    """Integrate `dynamics` from (q0, v0) at t0 for `steps` steps of size `dt`.

    q0, v0: shape (d,) (the same start for every path) or (paths, d); v0=None is rest.
    method: one of `METHODS` or "auto" (verlet, conformal_verlet or baoab by the dynamics).
    Records the ledger at step 0, every `record_every` steps and the last step. Paths get
    independent noise from one generator seeded by `seed` (None: a fresh random seed).

    Raises ValueError for bad arguments before any step, and `SimulationDiverged` (a
    FloatingPointError) if I becomes NaN or infinite, with `.step` and `.path` where it happened
    and `.trajectory`, the records kept so far (its `q`, `v` are the state at the failure).
    """
    if not isinstance(dynamics, Dynamics):
        raise _checks.fail("dynamics", "an inertia.Dynamics", dynamics)
    dt = _checks.real("dt", dt, low=0.0, strict=True)
    steps = _checks.integer("steps", steps, low=1)
    paths = _checks.integer("paths", paths, low=1)
    record_every = _checks.integer("record_every", record_every, low=1)
    t0 = _checks.real("t0", t0)
    if dtype not in (torch.float32, torch.float64):
        raise _checks.fail("dtype", "torch.float32 or torch.float64", dtype)
    method = resolve_method(method, dynamics)
    q = _initial_state("q0", q0, paths, dtype)
    v = torch.zeros_like(q) if v0 is None else _initial_state("v0", v0, paths, dtype)
    if v.shape != q.shape:
        raise _checks.fail("v0", f"of the same dimension as q0 ({q.shape[1]})", v)
    dynamics.check(q)
    dynamics.damping(t0)
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(_checks.integer("seed", seed, low=0))

    integrator = make_integrator(method, dynamics, q, v, dt, generator)
    marks = _record_steps(steps, record_every)
    times = torch.tensor([t0 + n * dt for n in marks], dtype=torch.float64)
    table = {name: torch.zeros(len(marks), paths, dtype=torch.float64) for name in COLUMNS}
    books = CompensatedSum((len(BOOKS), paths))  # rows as the integrator's increments

    def record(r: int) -> None:
        table["kinetic"][r] = integrator.kinetic
        table["potential"][r] = integrator.potential
        table["inertia"][r] = table["kinetic"][r] + table["potential"][r]
        for name, total in zip(BOOKS, books.total, strict=True):
            table[name][r] = total

    def trajectory(records: int, steps_done: int) -> Trajectory:
        ledger = Ledger(times[:records], {name: col[:records] for name, col in table.items()})
        return Trajectory(ledger, q, v, method=method, dt=dt, steps=steps_done)

    record(0)
    bar = _Progress(steps, progress)
    r = 1
    for n in range(1, steps + 1):
        integrator.step(t0 + (n - 1) * dt)
        books.add_(integrator.increments)
        # A non-finite K or L enters the step's ledger increments, hence the running totals.
        if not math.isfinite(float(books.total.sum())):
            path = int((~torch.isfinite(books.total)).any(0).nonzero()[0, 0])
            raise SimulationDiverged(
                f"inertia became non-finite at step {n} (t = {t0 + n * dt:g}) on path {path}; "
                f"the trajectory recorded up to step {marks[r - 1]} is in .trajectory",
                step=n,
                path=path,
                trajectory=trajectory(r, marks[r - 1]),
            )
        if n == marks[r]:
            record(r)
            r += 1
        bar.update(n)
    return trajectory(len(marks), steps)
