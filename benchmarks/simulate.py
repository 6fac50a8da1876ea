"""Speed of `inertia.simulate` with its full energy ledger, beside hand-written loops and other
SDE libraries, measured side by side in one run. Langevin dynamics on a dense quadratic,
dθ = v dt, dv = −(γv + Aθ) dt + σ dW, γ = 1, σ = 0.5, h = 0.01.

1. The loop (d = 64, 1024 paths, 2000 steps, float64 state): a plain hand-written in-place
   BAOAB loop drawing its noise in float64 (the reference) and in float32 widened;
   inertia.simulate (BAOAB, ledger recorded every step; default float32 draws, float64 draws,
   records every 100 steps); diffrax's Euler–Maruyama (jit, compiled beforehand; if installed:
   pip install jax diffrax) and torchsde's (pip install torchsde). Best of --repeats,
   interleaved so that machine load hits all alike; torchsde runs once, over --torchsde-steps
   (scaled to the full run when fewer: a lower bound of its time, since its cost per step
   grows over the first few hundred steps, about 7 ms at 100 steps, 19 ms from 400 on).
2. Scaling: path-steps per second from 10³ to 10⁶ paths, float32 and float64 states:
   inertia.simulate in one process (all threads) and in two (torch.distributed gloo, paths
   sharded, one thread each), ledger recorded at the first and last step; the plain loop;
   diffrax; torchsde. Each cell: the rate once running, n / (t(2n) − t(n)) with n steps
   lasting about --seconds and t the best of --cell-repeats runs, so that allocating and first
   touching the memory (seconds at 10⁶ paths) cancels; a cell that would need more than half
   the free memory is skipped ("memory").

    python benchmarks/simulate.py [--quick] [--dim 64] [--paths 1024] [--steps 2000]
        [--repeats 7] [--torchsde-steps N] [--sizes 1e3,1e4,1e5,1e6] [--seconds 2]
        [--cell-repeats 2] [--threads N] [--skip-loop] [--skip-scaling]

--quick (a few minutes on 2 cores): --repeats 2 --torchsde-steps 400 --seconds 0.5
--cell-repeats 1. The machine should be otherwise idle: with other jobs on its cores, torch's
threads wait for each other and every figure degrades. Prints markdown tables (µs per step too).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import tempfile
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import inertia
from inertia import systems

GAMMA, SIGMA, DT = 1.0, 0.5, 0.01
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def problem(dim: int, seed: int = 0) -> tuple[systems.Quadratic, torch.Tensor]:
    """L = ½ θᵀAθ, A = BBᵀ/d + Id (dense), and a random start."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    hessian = a @ a.T / dim + torch.eye(dim, dtype=torch.float64)
    q0 = torch.randn(dim, generator=gen, dtype=torch.float64)
    return systems.Quadratic(hessian), q0


def ours(potential, q0, *, paths, steps, record_every=1, dtype=torch.float64, **kw):
    dynamics = inertia.Dynamics(potential, gamma=GAMMA, sigma=SIGMA)
    return inertia.simulate(
        dynamics,
        q0,
        dt=DT,
        steps=steps,
        method="baoab",
        paths=paths,
        seed=0,
        record_every=record_every,
        dtype=dtype,
        **kw,
    )


def plain_baoab(potential, q0, *, paths, steps, dtype=torch.float64, noise_dtype=None):
    """The loop a user would write by hand: in place, no ledger; noise drawn in noise_dtype
    (default: the state's) and widened into the state."""
    a = potential.hessian.to(dtype)
    q = q0.to(dtype).expand(paths, -1).clone()
    v = torch.zeros_like(q)
    g = q @ a
    xi = torch.empty_like(q)
    draw = xi if noise_dtype in (None, dtype) else torch.empty_like(q, dtype=noise_dtype)
    gen = torch.Generator().manual_seed(0)
    c = math.exp(-GAMMA * DT)
    s = SIGMA * math.sqrt((1 - c * c) / (2 * GAMMA))  # the exact OU step, as in inertia
    half = 0.5 * DT
    for _ in range(steps):
        v.add_(g, alpha=-half)
        q.add_(v, alpha=half)
        draw.normal_(generator=gen)
        if draw is not xi:
            xi.copy_(draw)
        v.mul_(c).add_(xi, alpha=s)
        q.add_(v, alpha=half)
        torch.matmul(q, a, out=g)
        v.add_(g, alpha=-half)
    return q, v


def torchsde_em(potential, q0, *, paths, steps, dtype=torch.float64):
    import torchsde

    a = potential.hessian.to(dtype)
    dim = a.shape[0]

    class Langevin(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            q, v = y[:, :dim], y[:, dim:]
            return torch.cat([v, -GAMMA * v - q @ a], dim=1)

        def g(self, t, y):
            return torch.cat([torch.zeros_like(y[:, :dim]), torch.full_like(y[:, dim:], SIGMA)], 1)

    q = q0.to(dtype).expand(paths, -1)
    y0 = torch.cat([q, torch.zeros_like(q)], dim=1)
    ts = torch.tensor([0.0, steps * DT], dtype=dtype)
    with torch.no_grad():
        return torchsde.sdeint(Langevin(), y0, ts, method="euler", dt=DT)


def diffrax_em(potential, q0, *, paths, dtype=torch.float64) -> Callable[[int], object]:
    """diffrax's Euler–Maruyama, compiled once for (paths, dtype); call it with the steps."""
    import diffrax
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    jdtype = jnp.float64 if dtype == torch.float64 else jnp.float32
    a = jnp.asarray(potential.hessian.numpy(), dtype=jdtype)
    q = jnp.broadcast_to(jnp.asarray(q0.numpy(), dtype=jdtype), (paths, a.shape[0]))
    y0 = (q, jnp.zeros_like(q))

    def drift(t, y, args):
        return y[1], -GAMMA * y[1] - y[0] @ a

    class Noise(diffrax.AbstractTerm):  # σ dW on v only: one draw per velocity coordinate
        bm: diffrax.AbstractBrownianPath

        def vf(self, t, y, args):
            return SIGMA

        def contr(self, t0, t1, **kwargs):
            return self.bm.evaluate(t0, t1)

        def prod(self, vf, control):
            return jnp.zeros_like(control), vf * control

    brownian = diffrax.UnsafeBrownianPath(
        shape=jax.ShapeDtypeStruct(q.shape, jdtype), key=jax.random.key(0)
    )
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), Noise(brownian))

    def solve(t1):
        return diffrax.diffeqsolve(
            terms,
            diffrax.Euler(),
            0.0,
            t1,
            DT,
            y0,
            saveat=diffrax.SaveAt(t1=True),
            max_steps=10**7,
            adjoint=diffrax.ForwardMode(),
        ).ys

    compiled = jax.jit(solve).lower(jnp.asarray(DT, dtype=jdtype)).compile()
    return lambda steps: jax.block_until_ready(compiled(jnp.asarray(steps * DT, dtype=jdtype)))


def available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- 1. the loop, d = 64, 1024 paths, 2000 steps, float64 ----------------------------------


def the_loop(args: argparse.Namespace) -> None:
    potential, q0 = problem(args.dim)
    kw = {"paths": args.paths, "steps": args.steps}
    reference = "plain BAOAB loop, float64 draws, no ledger"
    runs: dict[str, Callable[[], object]] = {
        reference: lambda: plain_baoab(potential, q0, **kw),
        "plain BAOAB loop, float32 draws widened, no ledger": lambda: plain_baoab(
            potential, q0, noise_dtype=torch.float32, **kw
        ),
        "`inertia.simulate` baoab, ledger every step": lambda: ours(potential, q0, **kw),
        "`inertia.simulate` baoab, ledger every step, float64 draws": lambda: ours(
            potential, q0, noise_dtype=torch.float64, **kw
        ),
        "`inertia.simulate` baoab, ledger every 100 steps": lambda: ours(
            potential, q0, record_every=100, **kw
        ),
    }
    if available("diffrax"):
        solve = diffrax_em(potential, q0, paths=args.paths)
        runs["diffrax `diffeqsolve`, Euler–Maruyama (jit)"] = lambda: solve(args.steps)
    else:
        print("diffrax is not installed: its row is skipped (pip install jax diffrax)")
    for fn in runs.values():  # warm up
        fn()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            samples[name].append(seconds(fn))
    best = {name: min(t) for name, t in samples.items()}
    if available("torchsde"):
        share = min(args.torchsde_steps, args.steps)
        name = "torchsde `sdeint`, Euler–Maruyama (one run)"
        if share < args.steps:
            name = f"torchsde `sdeint`, Euler–Maruyama (one run of {share} steps, scaled)"
        took = seconds(lambda: torchsde_em(potential, q0, paths=args.paths, steps=share))
        best[name] = took * args.steps / share
    else:
        print("torchsde is not installed: its row is skipped (pip install torchsde)")
    print(
        f"\nd = {args.dim}, paths = {args.paths}, steps = {args.steps}, float64 state, "
        f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, best of {args.repeats}\n"
    )
    print("| run | seconds | µs per step | ÷ plain loop (float64 draws) |\n|---|---|---|---|")
    for name, t in best.items():
        print(f"| {name} | {t:.3f} | {1e6 * t / args.steps:.0f} | {t / best[reference]:.3f} |")


# --- 2. scaling: path-steps per second ----------------------------------------------------

#: The columns of the scaling table, and how many (paths, d) float64 arrays each holds at its
#: peak (measured at 10⁵ paths: inertia 11.5, the plain loop 4.3, diffrax 10.8, torchsde 44 at
#: 8 steps and about 2 more per step, its Brownian interval caching the increments).
ARRAYS = {
    "inertia, 1 process": 12,
    "inertia, 2 processes": 12,
    "plain loop": 5,
    "diffrax": 12,
    "torchsde": 110,
}
#: torchsde's runs are capped at 2 × this many steps, which bounds its cache (ARRAYS).
TORCHSDE_STEPS = 16


def fits(kind: str, paths: int, dim: int) -> bool:
    """Whether a cell's arrays take at most half the free memory (Linux; elsewhere: yes)."""
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return True
    return ARRAYS[kind] * paths * dim * 8 < 0.5 * free


def rate(
    run: Callable[[int], object],
    target: float,
    repeats: int,
    timer: Callable[[Callable[[], object]], float] = seconds,
    most: int = 10**6,
) -> float:
    """Steps per second of run(steps) once running: n / (t(2n) − t(n)), so that its setup
    (allocation, first touch of the memory) cancels; t is the best of `repeats` timings, and n
    (4 to `most`) lasts about `target` seconds by a first run of 4 steps, which also warms up."""
    probe = timer(lambda: run(4))
    n = max(4, min(most, round(4 * target / probe)))
    once = min(timer(lambda: run(n)) for _ in range(repeats))
    twice = min(timer(lambda: run(2 * n)) for _ in range(repeats))
    return n / max(twice - once, 1e-9)


def scaling_run(kind: str, dtype: torch.dtype, paths: int, dim: int) -> Callable[[int], object]:
    """run(steps) for one cell of the scaling table, built when the cell is measured."""
    potential, q0 = problem(dim)
    if kind == "inertia, 1 process":
        return lambda s: ours(potential, q0, paths=paths, steps=s, record_every=s, dtype=dtype)
    if kind == "plain loop":
        return lambda s: plain_baoab(potential, q0, paths=paths, steps=s, dtype=dtype)
    if kind == "diffrax":
        return diffrax_em(potential, q0, paths=paths, dtype=dtype)
    return lambda s: torchsde_em(potential, q0, paths=paths, steps=s, dtype=dtype)


def _sharded(rank: int, sizes: list[int], args: argparse.Namespace, init: str, out: str) -> None:
    """One of two ranks: the "inertia, 2 processes" cells, timed as the slower rank's."""
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    potential, q0 = problem(args.dim)

    def collective(fn: Callable[[], object]) -> float:
        dist.barrier()
        elapsed = torch.tensor([seconds(fn)])
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        return float(elapsed)  # the same on both ranks, so both choose the same step counts

    results = {}
    for name, dtype in DTYPES.items():
        for paths in sizes:

            def run(steps: int, paths: int = paths, dtype: torch.dtype = dtype) -> object:
                return ours(
                    potential,
                    q0,
                    paths=paths,
                    steps=steps,
                    record_every=steps,
                    dtype=dtype,
                    distributed=True,
                )

            results[name, paths] = paths * rate(run, args.seconds, args.cell_repeats, collective)
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def scaling(args: argparse.Namespace) -> None:
    sizes = [int(float(x)) for x in args.sizes.split(",")]
    kinds = ["inertia, 1 process", "plain loop"]
    kinds += [k for k in ("diffrax", "torchsde") if available(k)]
    table: dict[tuple[str, int], dict[str, float | str]] = {}
    for name, dtype in DTYPES.items():
        for paths in sizes:
            cells: dict[str, float | str] = {}
            for kind in kinds:
                if not fits(kind, paths, args.dim):
                    cells[kind] = "memory"
                    continue
                run = scaling_run(kind, dtype, paths, args.dim)
                most = TORCHSDE_STEPS if kind == "torchsde" else 10**6
                cells[kind] = paths * rate(run, args.seconds, args.cell_repeats, most=most)
                del run
                gc.collect()
            table[name, paths] = cells
            shown = ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in cells.items()
            )
            print(f"  {name}, {paths} paths: {shown}", flush=True)
    sharded = [p for p in sizes if fits("inertia, 2 processes", p, args.dim)]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sharded.pt")
        init = os.path.join(tmp, "init")
        mp.spawn(_sharded, args=(sharded, args, init, out), nprocs=2, join=True)
        for key, value in torch.load(out).items():
            table[key]["inertia, 2 processes"] = value
    order = ["inertia, 1 process", "inertia, 2 processes", "plain loop", "diffrax", "torchsde"]
    print(
        f"\npath-steps per second (millions) once running, d = {args.dim}; inertia: BAOAB with "
        "the full ledger (recorded at the first and last step), one process with "
        f"{torch.get_num_threads()} thread(s) or two (gloo, one thread each); the plain loop: "
        "BAOAB in place, no ledger, noise drawn in the state's dtype; diffrax and torchsde: "
        f"Euler–Maruyama; {os.cpu_count()} cores, torch {torch.__version__}; 'memory': "
        "skipped, would not fit; '—': not installed\n"
    )
    print("| paths | state | " + " | ".join(order) + " |")
    print("|---" * (2 + len(order)) + "|")
    for (name, paths), cells in table.items():
        cells.setdefault("inertia, 2 processes", "memory")
        row = [
            f"{cells[k] / 1e6:.3g}" if isinstance(cells.get(k), float) else str(cells.get(k, "—"))
            for k in order
        ]
        print(f"| 10^{round(math.log10(paths))} | {name} | " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes on 2 cores")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--paths", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=None, help="loop runs (default 7)")
    parser.add_argument(
        "--torchsde-steps", type=int, default=None, help="torchsde's loop run (default --steps)"
    )
    parser.add_argument("--sizes", default="1e3,1e4,1e5,1e6", help="path counts for the scaling")
    parser.add_argument(
        "--seconds", type=float, default=None, help="time per scaling run (default 2)"
    )
    parser.add_argument(
        "--cell-repeats", type=int, default=None, help="runs per scaling cell (default 2)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()
    defaults = (
        {"repeats": 2, "torchsde_steps": 400, "seconds": 0.5, "cell_repeats": 1}
        if args.quick
        else {"repeats": 7, "torchsde_steps": args.steps, "seconds": 2.0, "cell_repeats": 2}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not args.skip_loop:
        the_loop(args)
    if not args.skip_scaling:
        scaling(args)


if __name__ == "__main__":
    main()
