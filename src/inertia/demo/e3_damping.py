"""E3, damping (docs/theory.md §2, laws D and Q): under friction dI/dt = −γ vᵀMv exactly, and on
a quadratic I(t) = ½ zᵀQz with z = e^{Ft} z₀. The envelope (I₀ − L*) e^{−γt} + L* is within
r√(1 + r²) + r² of it for light damping (r = γ/2ω) and decays far too fast when overdamped."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import figures, systems, theory
from ..dynamics import Dynamics
from ..simulate import simulate
from ..trajectory import Trajectory
from .checks import Check, Within
from .core import Array, DemoConfig, Experiment, Result
from .measures import fitted_rate

REGIMES = {"light": 0.2, "critical": 2.0, "over": 8.0}  # λ = 1: critical at γ = 2
LABELS = {"light": "light damping", "critical": "critical damping", "over": "overdamped"}


@dataclass
class Damping(Result):
    runs: dict[str, tuple[Trajectory, Array, Array]]  # regime ↦ (run, exact I, envelope)


def compute(cfg: DemoConfig) -> Damping:
    """Conformal Verlet against the exact law in each regime, at h and 2h; the envelope's gap."""
    lam, h, t_end = 1.0, cfg.scale(10, 20) / 1000, 20.0
    pot = systems.Quadratic(eigenvalues=torch.tensor([lam]))
    runs = {}
    checks, findings = [], {}
    for name, gamma in REGIMES.items():
        errors = []
        for dt in (2 * h, h):  # step halving: conformal Verlet is second order in every regime
            traj = simulate(
                Dynamics(pot, gamma=gamma),
                torch.ones(1),
                dt=dt,
                steps=round(t_end / dt),
                method="conformal_verlet",
                record_every=round(0.2 / dt),
            )
            t = traj.t.numpy()
            exact = theory.quadratic_inertia([[lam]], [1.0], [0.0], gamma, t).numpy()
            errors.append(float(np.abs(traj.inertia[:, 0].numpy() - exact).max() / exact[0]))
        runs[name] = (traj, exact, theory.envelope(float(exact[0]), gamma, t).numpy())
        checks.append(
            Check(
                f"{LABELS[name]}, γ = {gamma}",
                "order of max |I − I_exact| under h → h/2",
                math.log2(errors[0] / errors[1]),
                Within(2.0, 0.2),
            )
        )
        findings[f"{name}: max |I − I_exact| / I₀ at h = {h}"] = errors[1]
    traj, exact, env = runs["light"]
    gamma = REGIMES["light"]
    r = (gamma / 2) / math.sqrt(lam - gamma**2 / 4)
    checks.append(
        Check(
            f"light damping, γ = {gamma}",
            "max |I/envelope − 1|",
            float(np.abs(traj.inertia[:, 0].numpy() / env - 1).max()),
            Within(r * math.sqrt(1 + r * r) + r * r, 0.1 * r, "r√(1 + r²) + r², r = γ/2ω"),
        )
    )
    traj, exact, env = runs["over"]
    rate = fitted_rate(traj.t.numpy(), traj.inertia[:, 0].numpy(), high=0.5, low=1e-12)
    exact_rate = theory.decay_rate([lam], 8.0)
    checks.append(
        Check(
            "overdamped, γ = 8.0",
            "fitted decay rate of I",
            rate,
            Within(exact_rate, 0.02 * exact_rate, "2% of the exact rate"),
        )
    )
    findings["over: envelope ÷ exact at t = 20"] = float(env[-1] / exact[-1])
    findings["over: envelope rate γ ÷ true rate"] = 8.0 / exact_rate
    return Damping(checks, findings, runs)


def plot(result: Damping, out: Path) -> list[Path]:
    """Simulated, exact and envelope I per regime; the stacked ledger, light and critical."""
    paths = [out / "e3_damping.png", out / "e3_ledger.png"]
    with figures.figure(paths[0], ncols=3, width=4.2) as axes:
        for ax, (name, (traj, exact, env)) in zip(axes, result.runs.items(), strict=True):
            t = traj.t.numpy()
            ax.semilogy(t, exact, color="black", lw=1, zorder=3, label="exact law")
            ax.semilogy(
                t, traj.inertia[:, 0].numpy(), "o", ms=2.5, color="#1f77b4", label="simulated"
            )
            ax.semilogy(t, env, "--", color="#d62728", label=r"envelope $e^{-\gamma t}$")
            ax.set_ylim(max(1e-14, float(exact.min()) / 10), 1)
            ax.set_title(f"{name}: γ = {REGIMES[name]}")
            ax.set_xlabel("t")
    with figures.figure(paths[1], ncols=2) as axes:
        for ax, name in zip(axes, ("light", "critical"), strict=True):
            traj = result.runs[name][0]
            t = traj.t.numpy()
            figures.stack_ledger(
                ax,
                t,
                traj.kinetic[:, 0].numpy(),
                traj.potential[:, 0].numpy(),
                traj.dissipated[:, 0].numpy(),
            )
            ax.axhline(float(traj.inertia[0, 0]), color="black", lw=0.8, label="I₀")
            ax.set_title(f"ledger, {name} damping: K + L + D = I₀ + R")
            ax.set_xlabel("t")
    return paths


EXPERIMENT = Experiment(
    "E3",
    "Damping: the exact law, and the envelope that is not one",
    "Under friction I falls by exactly ∫γ vᵀMv. The popular e^{−γt} law is an envelope: "
    "a few % off for light damping and wrong by orders of magnitude when overdamped.",
    "dI/dt = −γ vᵀMv;  quadratic: I(t) = ½ zᵀQz, z = e^{Ft} z₀;  envelope (I₀ − L*) e^{−γt} + L*",
    compute,
    plot,
)
