"""E2, integrators (docs/theory.md §3): a symplectic method of order p keeps |I − I₀| = O(hᵖ)
bounded for all time (symplectic Euler p = 1, Verlet 2, Forest–Ruth 4); explicit Euler
multiplies I by 1 + h²λ/m per step on a quadratic mode, and Runge–Kutta drifts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import figures, systems
from ..dynamics import Dynamics, Potential
from ..simulate import SimulationDiverged, simulate
from ..trajectory import Trajectory
from .checks import AtLeast, AtMost, Check, Within
from .core import Array, DemoConfig, Experiment, Result
from .measures import drift_ratio, order, relative_error

RK45 = "RK45 (scipy, rtol 1e-6)"


@dataclass
class Integrators(Result):
    h: float
    curves: dict[str, tuple[Array, Array]]  # method ↦ (t, |I − I₀|/I₀)
    steps: list[float]
    order_time: int
    errors: dict[str, list[float]]  # method ↦ max |I − I₀|/I₀ per step in `steps`


def _rk45_inertia(potential: Potential, q0: float, t_end: float, times: Array) -> Array:
    from scipy.integrate import solve_ivp

    def rhs(_t: float, z: Array) -> list[float]:
        _, g = potential.value_and_grad(torch.tensor([[z[0]]], dtype=torch.float64))
        return [z[1], -float(g[0, 0])]

    sol = solve_ivp(rhs, (0, t_end), [q0, 0.0], method="RK45", t_eval=times, rtol=1e-6, atol=1e-9)
    value = potential.value(torch.tensor(sol.y[0][:, None], dtype=torch.float64)).numpy()
    inertia: Array = value + 0.5 * sol.y[1] ** 2
    return inertia


def compute(cfg: DemoConfig) -> Integrators:
    """Energy error against t on a double well, Euler's growth factor, orders by step halving."""
    well = systems.DoubleWell(1)
    dyn = Dynamics(well)
    q0, t_end, h = torch.tensor([1.6]), cfg.scale(100, 25), 0.01
    curves = {}
    for method in ("euler", "symplectic_euler", "verlet", "forest_ruth"):
        traj: Trajectory
        try:
            traj = simulate(dyn, q0, dt=h, steps=round(t_end / h), method=method, record_every=10)
        except SimulationDiverged as err:  # explicit Euler may blow up: keep what was recorded
            traj = err.trajectory
        curves[method] = (traj.t.numpy(), relative_error(traj))
    times = curves["verlet"][0]
    rk = _rk45_inertia(well, 1.6, t_end, times)
    curves[RK45] = (times, np.abs(rk - rk[0]) / abs(rk[0]))
    checks = [
        Check(
            "double well, Verlet",
            "drift ratio (max error, last 10% ÷ first 10%)",
            drift_ratio(curves["verlet"][1]),
            AtMost(1.5),
        ),
        Check(
            f"double well, {RK45}",
            "drift ratio (max error, last 10% ÷ first 10%)",
            drift_ratio(curves[RK45][1]),
            AtLeast(3.0),
        ),
    ]
    lam, dt = 2.0, 0.1
    te = simulate(
        Dynamics(systems.Quadratic(eigenvalues=torch.tensor([lam]))),
        torch.ones(1),
        dt=dt,
        steps=50,
        method="euler",
    )
    growth = (te.inertia[1:, 0] / te.inertia[:-1, 0]).numpy()
    checks.append(
        Check(
            "explicit Euler, quadratic λ = 2, h = 0.1",
            "worst growth factor of I per step",
            float(np.abs(growth - (1 + dt * dt * lam)).max()) + 1 + dt * dt * lam,
            Within(1 + dt * dt * lam, 1e-12, "1 + h²λ"),
        )
    )
    steps = [0.04, 0.02, 0.01] if cfg.quick else [0.04, 0.02, 0.01, 0.005]
    order_time = cfg.scale(10, 5)
    orders = {}
    for method, p in (("symplectic_euler", 1), ("verlet", 2), ("forest_ruth", 4)):
        errors = []
        for s in steps:
            traj = simulate(dyn, q0, dt=s, steps=round(order_time / s), method=method)
            errors.append(float(relative_error(traj).max()))
        orders[method] = errors
        fitted = order(steps, errors)
        checks.append(
            Check(f"{method}, double well", "fitted order", fitted, Within(float(p), 0.2))
        )
    return Integrators(checks, {}, h, curves, steps, order_time, orders)


def plot(result: Integrators, out: Path) -> list[Path]:
    """Energy error against t (left) and against the step h, log–log (right)."""
    path = out / "e2_integrators.png"
    with figures.figure(path, ncols=2) as (ax_t, ax_h):
        for name, (t, err) in result.curves.items():
            ax_t.semilogy(t[1:], np.maximum(err[1:], 1e-16), label=name, linewidth=1)
        ax_t.set_ylim(1e-12, 1e2)
        ax_t.set_xlabel("t")
        ax_t.set_ylabel("|I − I₀| / I₀")
        ax_t.set_title(f"energy error, h = {result.h} (double well)")
        for method, errors in result.errors.items():
            slope = order(result.steps, errors)
            ax_h.loglog(result.steps, errors, "o-", label=f"{method}: slope {slope:.2f}")
        ax_h.set_xlabel("step h")
        ax_h.set_ylabel(f"max |I − I₀| / I₀ over t ≤ {result.order_time}")
        ax_h.set_title("order by step halving")
    return [path]


EXPERIMENT = Experiment(
    "E2",
    "Integrators: bounded versus drifting energy, and measured orders",
    "Symplectic methods of order p keep |I − I₀| = O(hᵖ) bounded for all time; explicit "
    "Euler inflates it geometrically and Runge–Kutta drifts linearly in t.",
    "Euler per quadratic mode: I ← (1 + h²λ/m) I;  symplectic Euler p = 1, Verlet p = 2, "
    "Forest–Ruth p = 4",
    compute,
    plot,
)
