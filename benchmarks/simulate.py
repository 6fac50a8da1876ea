"""Cost of the energy ledger: `inertia.simulate` (BAOAB, full ledger) against a plain
hand-written in-place BAOAB loop with no ledger, and torchsde's Euler–Maruyama, on the same
problem, measured side by side in one run (best of --repeats, interleaved).

    python benchmarks/simulate.py [--dim 64] [--paths 1024] [--steps 2000] [--repeats 3]

Prints the time per run of each and the ratios to the plain loop.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import inertia
from inertia import systems


def problem(dim: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    hessian = a @ a.T / dim + torch.eye(dim, dtype=torch.float64)
    q0 = torch.randn(dim, generator=gen, dtype=torch.float64)
    return systems.Quadratic(hessian), q0


def ours(potential, q0, *, paths, steps, dt, gamma, sigma, record_every):
    dynamics = inertia.Dynamics(potential, gamma=gamma, sigma=sigma)
    return inertia.simulate(
        dynamics,
        q0,
        dt=dt,
        steps=steps,
        method="baoab",
        paths=paths,
        seed=0,
        record_every=record_every,
    )


def plain_baoab(potential, q0, *, paths, steps, dt, gamma, sigma):
    """The loop a user would write by hand: in place, no ledger."""
    a = potential.hessian
    q = q0.expand(paths, -1).clone()
    v = torch.zeros_like(q)
    g = q @ a
    xi = torch.empty_like(q)
    gen = torch.Generator().manual_seed(0)
    c = math.exp(-gamma * dt)
    s = sigma * math.sqrt(1 - c * c)
    half = 0.5 * dt
    for _ in range(steps):
        v.add_(g, alpha=-half)
        q.add_(v, alpha=half)
        torch.randn(q.shape, out=xi, generator=gen, dtype=q.dtype)
        v.mul_(c).add_(xi, alpha=s)
        q.add_(v, alpha=half)
        torch.matmul(q, a, out=g)
        v.add_(g, alpha=-half)
    return q, v


def torchsde_em(potential, q0, *, paths, steps, dt, gamma, sigma):
    import torchsde

    a = potential.hessian
    dim = a.shape[0]

    class Langevin(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            q, v = y[:, :dim], y[:, dim:]
            return torch.cat([v, -gamma * v - q @ a], dim=1)

        def g(self, t, y):
            return torch.cat([torch.zeros_like(y[:, :dim]), torch.full_like(y[:, dim:], sigma)], 1)

    y0 = torch.cat([q0.expand(paths, -1), torch.zeros(paths, dim, dtype=q0.dtype)], dim=1)
    ts = torch.tensor([0.0, steps * dt], dtype=q0.dtype)
    with torch.no_grad():
        return torchsde.sdeint(Langevin(), y0, ts, method="euler", dt=dt)


def best_time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--paths", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    potential, q0 = problem(args.dim)
    kw = dict(paths=args.paths, steps=args.steps, dt=0.01, gamma=1.0, sigma=0.5)
    runs = {
        "plain BAOAB loop, no ledger": lambda: plain_baoab(potential, q0, **kw),
        "inertia.simulate baoab, ledger recorded every step": lambda: ours(
            potential, q0, record_every=1, **kw
        ),
        "inertia.simulate baoab, ledger recorded every 100 steps": lambda: ours(
            potential, q0, record_every=100, **kw
        ),
    }
    try:
        import torchsde  # noqa: F401

        runs["torchsde sdeint, Euler–Maruyama"] = lambda: torchsde_em(potential, q0, **kw)
    except ImportError:
        print("torchsde is not installed: its row is skipped (pip install torchsde)")
    for fn in runs.values():  # warm up
        fn()
    samples = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so that machine load hits all alike
        for name, fn in runs.items():
            samples[name] += best_time(fn, 1)
    best = {name: min(t) for name, t in samples.items()}
    base = best["plain BAOAB loop, no ledger"]
    print(
        f"d = {args.dim}, paths = {args.paths}, steps = {args.steps}, float64, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{'run':58s} {'seconds':>8s} {'÷ plain':>8s}")
    for name, seconds in best.items():
        print(f"{name:58s} {seconds:8.3f} {seconds / base:8.3f}")


if __name__ == "__main__":
    main()
