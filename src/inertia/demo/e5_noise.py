"""E5, noise (docs/theory.md §2, laws S, heating and noise floor): d E[I]/dt = −γ E[vᵀMv] +
½ Σ mσ² (Itô). At γ = 0, E[I] = I₀ + ½dσ²t for any loss; with friction E[I − L*] relaxes to the
floor dT = dσ²/(2γ), not to L*. Monte-Carlo means are held to within 4 standard errors (SE)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import figures, systems, theory
from ..dynamics import Dynamics
from ..simulate import simulate
from ..trajectory import Estimate, Trajectory
from .checks import AtMost, Check
from .core import DemoConfig, Experiment, Result
from .measures import max_z, stationary_mean

F64 = torch.float64
GAMMA = 0.3  # friction of the relaxation runs
FLOORS = [(2, 0.5, 0.3), (2, 1.0, 0.5), (2, 2.0, 1.0), (2, 1.0, 1.0)]  # (d, γ, σ) …
FLOORS += [(1, 1.0, 0.5), (4, 1.0, 0.5), (8, 1.0, 0.5)]  # … and d at γ = 1, σ = 0.5


@dataclass
class Noise(Result):
    heat: Trajectory
    law: Tensor  # I₀ + ½dσ²t
    relax: dict[float, tuple[Trajectory, Estimate, Tensor, Tensor]]  # σ ↦ (MC, exact, closed)
    floors: list[tuple[int, float, float, float, float, float]]  # (d, γ, σ, mean, SE, dT)


def compute(cfg: DemoConfig) -> Noise:
    """Heating on a double well, relaxation on a quadratic (λ = 1, 2), floors over (d, γ, σ)."""
    paths, sigma = cfg.paths, 0.5
    heat = simulate(
        Dynamics(systems.DoubleWell(2), sigma=sigma),
        torch.tensor([1.0, -1.0]),
        dt=0.01,
        steps=cfg.scale(1000, 500),
        paths=paths,
        seed=cfg.seed,
        record_every=50,
    )
    law = theory.heating(float(heat.inertia[0, 0]), sigma, heat.t, dim=2)
    z = max_z(heat.mean()["inertia"], law)
    checks = [Check("heating: double well, γ = 0", "max |MC − law| / SE", z, AtMost(4.0))]
    lam = torch.tensor([1.0, 2.0], dtype=F64)
    q0, worst = torch.tensor([1.5, 0.0]), 0.0
    relax: dict[float, tuple[Trajectory, Estimate, Tensor, Tensor]] = {}
    for s in (0.2, 0.4, 0.6):
        traj = simulate(
            Dynamics(systems.Quadratic(eigenvalues=lam), gamma=GAMMA, sigma=s),
            q0,
            dt=0.02,
            steps=cfg.scale(1250, 750),
            paths=paths,
            seed=cfg.seed + 1,
            record_every=25,
        )
        exact = theory.expected_inertia(torch.diag(lam), q0, [0.0, 0.0], GAMMA, s, traj.t)
        closed = theory.relaxation(float(exact[0]), GAMMA, s, traj.t, dim=2)
        est = traj.mean()["inertia"]
        relax[s] = (traj, est, exact, closed)
        z = max_z(est, exact)
        checks.append(Check(f"relaxation, σ = {s}", "max |MC − exact E[I]| / SE", z, AtMost(4.0)))
        worst = max(worst, float(((closed - exact) / exact).abs().max()))
    floors = []
    for dim, g, s in FLOORS:
        traj = simulate(
            Dynamics(
                systems.Quadratic(eigenvalues=torch.linspace(1.0, 2.0, dim, dtype=F64)),
                gamma=g,
                sigma=s,
            ),
            torch.zeros(dim),
            dt=0.02,
            steps=round(16.0 / g / 0.02),  # t = 16/γ: the transient e^{−γt} is below 1e-7
            paths=cfg.scale(paths, paths // 2),
            seed=cfg.seed + 2,
            record_every=10,
        )
        mean, se = stationary_mean(traj)
        floors.append((dim, g, s, mean, se, theory.stationary_inertia(dim, g, s)))
    z = max(abs(m - p) / se for *_, m, se, p in floors)
    checks.append(
        Check(
            f"stationary E[I − L*], {len(FLOORS)} (d, γ, σ)", "max |MC − dT| / SE", z, AtMost(4.0)
        )
    )
    findings = {"closed form vs exact E[I]: max relative error": worst}
    return Noise(checks, findings, heat, law, relax, floors)


def plot(result: Noise, out: Path) -> list[Path]:
    """Heating with its 95% band; relaxation to the floor; the floor against σ²/γ and d."""
    paths = [out / f"e5_{name}.png" for name in ("heating", "relaxation", "floor")]
    heat, n = result.heat, result.heat.paths
    with figures.figure(paths[0]) as ax:
        low, high = heat.confidence(0.95)["inertia"]
        t = heat.t.numpy()
        ax.fill_between(t, low.numpy(), high.numpy(), alpha=0.25, color="#1f77b4", label="95% band")
        mean = heat.mean()["inertia"].mean.numpy()
        ax.plot(t, mean, color="#1f77b4", label=f"Monte Carlo mean ({n} paths)")
        ax.plot(t, result.law.numpy(), "--", color="black", label="exact: I₀ + ½ d σ² t")
        ax.set(xlabel="t", ylabel="E[I]", title="γ = 0, double well: noise heats, for any loss")
    with figures.figure(paths[1]) as ax:
        colors = ("#1f77b4", "#2ca02c", "#d62728")
        for color, (s, (traj, est, exact, closed)) in zip(
            colors, result.relax.items(), strict=True
        ):
            t, low, high = traj.t.numpy(), est.mean - 2 * est.stderr, est.mean + 2 * est.stderr
            ax.fill_between(t, low.numpy(), high.numpy(), color=color, alpha=0.25)
            ax.plot(t, exact.numpy(), color=color, label=f"σ = {s}: exact E[I]")
            ax.plot(t, closed.numpy(), ":", color=color, label="closed form")
            ax.axhline(theory.stationary_inertia(2, GAMMA, s), color=color, lw=0.6, ls="--")
        ax.set(xlabel="t", ylabel="E[I]")
        ax.set_ylim(0, 1.5 * theory.stationary_inertia(2, GAMMA, max(result.relax)))
        ax.legend(fontsize=7, ncol=3, loc="upper center", frameon=False)
        ax.set_title(f"relaxation to the floor dT (γ = {GAMMA}); bands: MC ± 2 SE")
    with figures.figure(paths[2], ncols=2) as (ax_t, ax_d):
        by_temp = [f for f in result.floors if f[0] == 2]
        x = np.array([s * s / g for _, g, s, *_ in by_temp])
        by_dim = sorted((f for f in result.floors if f[1:3] == (1.0, 0.5)), key=lambda f: f[0])
        dims = np.array([f[0] for f in by_dim])
        for ax, xs, floors in ((ax_t, x, by_temp), (ax_d, dims, by_dim)):
            means, bars = [f[3] for f in floors], [2 * f[4] for f in floors]
            ax.errorbar(xs, means, yerr=bars, fmt="o", label="Monte Carlo (± 2 SE)")
        fine = np.linspace(0, x.max() * 1.1, 50)
        ax_t.plot(fine, 2 * fine / 2, color="black", label="d T = d σ²/(2γ)")
        ax_t.set(xlabel="σ²/γ", ylabel="stationary E[I − L*]", title="floor against σ²/γ (d = 2)")
        ax_d.plot(dims, dims * theory.temperature(1.0, 0.5), color="black", label="d T")
        ax_d.set(xlabel="dimension d", title="floor against dimension (γ = 1, σ = 0.5)")
    return paths


EXPERIMENT = Experiment(
    "E5",
    "Noise heats: the Itô term, the floor, and the closed form",
    "Noise does not make inertia decay. Without friction it heats I linearly, for any loss; "
    "with friction I relaxes to the floor dT = dσ²/(2γ), not to L*.",
    "d E[I]/dt = −γ E[vᵀMv] + ½ Σ mσ²;  γ = 0: E[I] = I₀ + ½dσ²t;  E[I − L*]∞ = dT",
    compute,
    plot,
)
