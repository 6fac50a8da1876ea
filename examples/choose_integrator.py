"""Choose an integrator: the energy error of each method, and its order by step halving.

A frictionless anharmonic (FPU-β) chain conserves I exactly (docs/theory.md (2.1)). Each
method is run at steps h and h/2 over the same time; the largest |I − I₀| over the run gives
its error, and log₂ of the ratio its order: about 1 for symplectic Euler, 2 for Verlet, 4 for
Forest–Ruth, and the error stays bounded (late ÷ early ≈ 1), while explicit Euler's grows
with time (late ÷ early > 1: its "order" depends on the horizon). Last, which scheme
`method="auto"` picks without friction, with friction, and with friction and noise.

    python examples/choose_integrator.py [--quick]
"""

from __future__ import annotations

import argparse
import math

import torch

import inertia
from inertia import systems

METHODS = ("euler", "symplectic_euler", "verlet", "forest_ruth")


def energy_error(
    dynamics: inertia.Dynamics, q0: torch.Tensor, method: str, dt: float, t: float
) -> tuple[float, float]:
    """max |I − I₀| over the run, and its growth: the max over the last half ÷ the first."""
    traj = inertia.simulate(dynamics, q0, dt=dt, steps=round(t / dt), method=method)
    error = (traj.inertia - traj.inertia[0]).abs()[:, 0]
    half = len(error) // 2
    return float(error.max()), float(error[half:].max() / error[:half].max())


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    args = parser.parse_args(argv)
    horizon, dt = (5.0, 0.02) if args.quick else (50.0, 0.02)

    chain = systems.AnharmonicChain(n=8, beta=1.0)
    q0 = 0.5 * torch.sin(torch.arange(1, 9, dtype=torch.float64))
    frictionless = inertia.Dynamics(chain, gamma=0.0, sigma=0.0)
    orders = {}
    print(f"frictionless FPU-β chain to t = {horizon:g}: max |I − I₀| at h = {dt:g} and h/2")
    for method in METHODS:
        coarse, growth = energy_error(frictionless, q0, method, dt, horizon)
        fine, _ = energy_error(frictionless, q0, method, dt / 2, horizon)
        orders[method] = math.log2(coarse / fine)
        print(
            f"  {method:>16}: {coarse:.2e}  {fine:.2e}  order {orders[method]:.2f}; "
            f"error late ÷ early {growth:.2f}"
        )

    langevin = inertia.Dynamics(chain, gamma=0.5, sigma=0.3)
    chosen = inertia.simulate(langevin, q0, dt=dt, steps=10, seed=0).method
    damped = inertia.Dynamics(chain, gamma=0.5, sigma=0.0)
    print(
        f'method="auto": {inertia.simulate(frictionless, q0, dt=dt, steps=10).method} without '
        f"friction, {inertia.simulate(damped, q0, dt=dt, steps=10).method} with friction, "
        f"{chosen} with friction and noise"
    )
    return orders


if __name__ == "__main__":
    main()
