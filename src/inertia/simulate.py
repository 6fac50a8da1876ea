"""`simulate`: run a `Dynamics` with an integrator and record the energy ledger.

The step loop never waits for the device: blow-ups are looked for every `CHECK_EVERY` steps
(one host synchronisation), and the step and path where one appeared are then found exactly
by replaying the steps since the last check from a checkpoint of (q, v, generator, books).
Under torch.distributed (`distributed=True`) each rank runs its contiguous share of the paths
with its own noise stream, and the ensemble statistics are pooled over the ranks.
"""

from __future__ import annotations

import bisect
import math
import sys
from collections.abc import Callable

import torch
from torch import Tensor

from . import _checks, _distributed
from .dynamics import Dynamics
from .energy import CompensatedSum, Ledger
from .integrators import METHODS, NOISE_DTYPES, Integrator, make_integrator
from .recording import Records, block_rows
from .trajectory import Trajectory

__all__ = [
    "CHECK_EVERY",
    "SimulationDiverged",
    "resolve_device",
    "resolve_method",
    "simulate",
]

#: Steps between the looks for a non-finite ledger, the step loop's only host synchronisation.
CHECK_EVERY = 128


class SimulationDiverged(FloatingPointError):
    """I became NaN or infinite: first at `step`, on `path` (numbered over all ranks);
    `trajectory` holds the records kept before it (its `steps` is the last recorded step; its
    `q`, `v` the state at the failure). In a distributed run every rank raises it, with the
    same step and path and its own share of the trajectory."""

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


def resolve_device(device: object, q0: object) -> torch.device:
    """The device to simulate on: `device` (checked to exist, with its index), or q0's (the
    CPU for a non-tensor q0); a ValueError naming `device` otherwise."""
    if device is None:
        return q0.device if isinstance(q0, Tensor) else torch.device("cpu")
    allowed = "an available torch device with float64 support (e.g. 'cpu', 'cuda', 'cuda:1')"
    try:
        resolved = torch.device(device)  # type: ignore[call-overload]
        if resolved.type == "meta":
            raise RuntimeError("a meta tensor holds no numbers")
        if resolved.type == "cuda" and not (
            torch.cuda.is_available() and (resolved.index or 0) < torch.cuda.device_count()
        ):
            raise RuntimeError("no such CUDA device")
        return torch.empty(0, dtype=torch.float64, device=resolved).device  # with its index
    except (RuntimeError, TypeError, ValueError, AssertionError):
        raise _checks.fail("device", allowed, device) from None


def _initial_state(
    name: str, x: object, paths: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, bool]:
    """x checked as a finite start of shape (d,) or (paths, d), as a (1, d) or (paths, d)
    tensor of dtype on device, and whether it is one start shared by every path. A tensor that
    requires grad is refused (simulate does not differentiate through its steps)."""
    if isinstance(x, Tensor) and x.requires_grad:
        raise _checks.fail(name, f"a tensor that does not require grad ({name}.detach())", x)
    t = _checks.tensor(name, x, "a tensor of shape (d,) or (paths, d)", dtype)
    shared = t.dim() == 1 and t.numel() > 0
    if shared:
        t = t[None]
    if t.dim() != 2 or t.shape[0] != (1 if shared else paths) or t.shape[1] == 0:
        raise _checks.fail(name, f"a tensor of shape (d,) or (paths, d) = ({paths}, d)", t)
    if not bool(torch.isfinite(t).all()):
        raise _checks.fail(name, "finite", t)
    return t.to(device=device), shared


def _check_size(
    records: int, paths: int, dim: int, dtype: torch.dtype, device: torch.device
) -> None:
    """ValueError naming paths/steps/record_every if the records and the state cannot fit in
    the memory available: 7 float64 columns and ~100 bytes of marks per record and path, a
    dozen (paths, d) buffers of the state's dtype, the books and their block per path."""
    size = torch.empty(0, dtype=dtype).element_size()
    need = records * (56 * paths + 100) + paths * (12 * dim * size + 160 + 24 * block_rows(dim))
    what = f"this simulation ({records:,} records × {paths:,} paths, d = {dim})"
    _checks.memory("paths/steps/record_every", need, what, device)


def _rows(t: Tensor, shared: bool, offset: int, count: int) -> Tensor:
    """A fresh contiguous (count, d) state: paths offset … offset + count − 1 of a start."""
    rows = t.expand(count, -1) if shared else t[offset : offset + count]
    return rows.clone(memory_format=torch.contiguous_format)


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


class _Checkpoint:
    """(q, v), the generator's state and the books at the last check, to replay from."""

    def __init__(self, integrator: Integrator, books: CompensatedSum) -> None:
        self.integrator, self.books = integrator, books
        self.q, self.v = torch.empty_like(integrator.q), torch.empty_like(integrator.v)
        self.save(0)

    def save(self, step: int) -> None:
        self.step = step
        self.q.copy_(self.integrator.q)
        self.v.copy_(self.integrator.v)
        self.generator = self.integrator.generator.get_state()
        self.sums = self.books.state_dict()

    def restore(self) -> None:
        self.integrator.q.copy_(self.q)
        self.integrator.v.copy_(self.v)
        self.integrator.generator.set_state(self.generator)
        self.books.load_state_dict(self.sums)
        self.integrator.restart()


def _first_non_finite(books: CompensatedSum) -> int | None:
    """The first (local) path whose running books are not finite, None if all are."""
    bad = ~torch.isfinite(books.total).all(0)
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


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
    noise_dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    distributed: bool = False,
    progress: bool = False,
    t0: float = 0.0,
) -> Trajectory:
    """Integrate `dynamics` from (q0, v0) at t0 for `steps` steps of size `dt`.

    q0, v0: shape (d,) (the same start for every path) or (paths, d); v0=None is rest.
    method: one of `METHODS` or "auto" (verlet, conformal_verlet or baoab by the dynamics).
    Records the ledger at step 0, every `record_every` steps and the last step.

    dtype: the state's, float64 or float32; the ledger is float64 either way.
    noise_dtype: the Gaussian ξ is drawn in float32 by default and widened exactly into a
    float64 state (about 5× faster on the CPU, where only float32 draws are vectorised). The
    statistics are those of N(0, 1) to far below Monte-Carlo error (Box–Muller on 24-bit
    uniforms: |ξ| ≤ 5.77, the variance low by 5.5e-7); the step size, not the draw, limits
    accuracy. The ledger books the increments actually added, so it closes to round-off
    either way. torch.float64 draws in float64.
    device: where the state, generator, buffers and records live (default: q0's device).
    seed: paths get independent noise from one generator seeded by `seed` (None: a fresh
    random seed); in a distributed run rank r seeds its own stream from (seed, r), so a fixed
    world size and seed reproduce bit for bit.
    distributed: under an initialised torch.distributed process group, this rank simulates its
    contiguous share of the `paths` (paths ≥ world size) and `Trajectory.mean`, `confidence`
    and `summary` pool over all ranks; every rank must call simulate with the same arguments.

    Raises ValueError for bad arguments before any step, and `SimulationDiverged` (a
    FloatingPointError) if I becomes NaN or infinite, with `.step` and `.path` where it first
    happened and `.trajectory`, the records kept before (its `q`, `v` the state at that step).
    """
    if not isinstance(dynamics, Dynamics):
        raise _checks.fail("dynamics", "an inertia.Dynamics", dynamics)
    dt = _checks.real("dt", dt, low=0.0, strict=True)
    steps = _checks.integer("steps", steps, low=1, high=2**63)
    paths = _checks.integer("paths", paths, low=1, high=2**63)
    record_every = _checks.integer("record_every", record_every, low=1, high=2**63)
    t0 = _checks.real("t0", t0)
    if not math.isfinite(t0 + steps * dt):
        raise ValueError(f"dt/steps/t0: the last time {t0:g} + {steps}·{dt:g} is beyond float64")
    if seed is not None:
        _checks.integer("seed", seed, low=0, high=2**64)
    if dtype not in (torch.float32, torch.float64):
        raise _checks.fail("dtype", "torch.float32 or torch.float64", dtype)
    if noise_dtype not in NOISE_DTYPES:
        raise _checks.fail("noise_dtype", "torch.float32 or torch.float64", noise_dtype)
    kick = dt / float(torch.as_tensor(dynamics.mass).min())  # the largest coefficient, τ/m
    if not kick <= torch.finfo(dtype).max:
        raise ValueError(f"dt: the kick's coefficient dt/m = {kick:g} is beyond {dtype} (dtype)")
    method = resolve_method(method, dynamics)
    device = resolve_device(device, q0)
    distributed = _checks.boolean("distributed", distributed)
    if distributed and not _distributed.initialized():
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group "
            "(torch.distributed.init_process_group, or a launch by torchrun); there is none"
        )
    rank, world = _distributed.rank_world() if distributed else (0, 1)
    if paths < world:
        raise _checks.fail("paths", f"at least the world size {world} with distributed=True", paths)
    offset, local = _distributed.shard(paths, rank, world)
    q_start, q_shared = _initial_state("q0", q0, paths, dtype, device)
    if v0 is not None:
        v_start, v_shared = _initial_state("v0", v0, paths, dtype, device)
        if v_start.shape[1] != q_start.shape[1]:
            raise _checks.fail("v0", f"of the same dimension as q0 ({q_start.shape[1]})", v_start)
    _check_size(steps // record_every + 2, local, q_start.shape[1], dtype, device)
    _check_dynamics(dynamics, q_start, device)  # every path's start, on every rank
    dynamics.damping(t0)
    q = _rows(q_start, q_shared, offset, local)
    v = torch.zeros_like(q) if v0 is None else _rows(v_start, v_shared, offset, local)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(_distributed.stream_seed(seed, rank) if distributed else seed)

    integrator = make_integrator(method, dynamics, q, v, dt, generator, noise_dtype)
    marks = _record_steps(steps, record_every)
    times = torch.tensor([t0 + n * dt for n in marks], dtype=torch.float64, device=device)
    records = Records(len(marks), local, block_rows(q.shape[1]), device)

    def advance(n: int, settle: bool = True) -> None:
        integrator.step(t0 + (n - 1) * dt, settle)
        records.book(integrator.increments)

    def replay(n: int) -> None:  # a step with the books current after it
        advance(n)
        records.flush()

    def trajectory(kept: int, steps_done: int) -> Trajectory:
        return Trajectory(
            Ledger(times[:kept], records.columns(kept)),
            q,
            v,
            method=method,
            dt=dt,
            steps=steps_done,
            paths=paths,
            path_offset=offset,
            distributed=distributed,
        )

    records.record(0, integrator.vmv, integrator.potential)
    checkpoint = _Checkpoint(integrator, records.books)
    bar = _Progress(steps, progress and rank == 0)
    done, r = 0, 1
    while done < steps:
        block = range(done + 1, min(done + CHECK_EVERY, steps) + 1)
        for n in block:
            recorded = n == marks[r]
            advance(n, settle=recorded or n == block[-1])  # K current where it is read
            if recorded:
                records.record(r, integrator.vmv, integrator.potential)
                r += 1
            bar.update(n)
        done = block[-1]
        # A non-finite K or L enters the step's increments, and the running totals stay
        # non-finite from then on: one look per block finds any blow-up within it.
        records.flush()
        flag = (~torch.isfinite(records.books.total)).any().to(torch.int32)
        if bool(_distributed.all_reduce(flag, "max") if distributed else flag):
            step, path = _locate(
                checkpoint, replay, until=done, paths=paths, offset=offset, collective=distributed
            )
            kept = bisect.bisect_left(marks, step)  # records before the failing step
            raise SimulationDiverged(
                f"inertia became non-finite at step {step} (t = {t0 + step * dt:g}) on path "
                f"{path}; the trajectory recorded up to step {marks[kept - 1]} is in .trajectory",
                step=step,
                path=path,
                trajectory=trajectory(kept, marks[kept - 1]),
            )
        if done < steps:
            checkpoint.save(done)
    return trajectory(len(marks), steps)


def _check_dynamics(dynamics: Dynamics, q: Tensor, device: torch.device) -> None:
    """dynamics.check(q); a loss that fails on a non-CPU device is named as the device's fault."""
    try:
        dynamics.check(q)
    except RuntimeError as err:
        if device.type == "cpu":
            raise
        raise ValueError(f"device: the loss cannot be evaluated on {device} ({err})") from None


def _locate(
    checkpoint: _Checkpoint,
    advance: Callable[[int], None],
    *,
    until: int,
    paths: int,
    offset: int,
    collective: bool,
) -> tuple[int, int]:
    """The first step and (global) path with a non-finite ledger, found by replaying from the
    checkpoint one step at a time; leaves (q, v) at that step (on every rank, `collective`).

    A replay that does not repeat the blow-up (a loss that is not deterministic) names the
    step of the check and the first path found non-finite there.
    """
    at_check = _first_non_finite(checkpoint.books)
    found = None if at_check is None else (until, offset + at_check)
    checkpoint.restore()
    reached = until
    for n in range(checkpoint.step + 1, until + 1):
        advance(n)
        path = _first_non_finite(checkpoint.books)
        if path is not None:
            found, reached = (n, offset + path), n
            break
    if not collective:
        assert found is not None  # the check saw a non-finite total here
        return found
    none = (until + 1) * paths  # above every step · paths + path: no blow-up on this rank
    code = none if found is None else found[0] * paths + found[1]
    first = torch.tensor([code], device=checkpoint.q.device)
    step, path = divmod(int(_distributed.all_reduce(first, "min")), paths)
    if reached != step:  # bring this rank's state to the failing step
        checkpoint.restore()
        for n in range(checkpoint.step + 1, step + 1):
            advance(n)
    return step, path
