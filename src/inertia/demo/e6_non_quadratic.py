"""E6, non-quadratic losses (docs/theory.md §2, laws D and S): for any loss the balance
I(t) − I(0) + ∫γ vᵀMv ds − ½ Σ mσ² t = 0 holds (per path at σ = 0, in mean at σ > 0), up to the
integrator's O(h²); the quadratic closed forms (envelope, floor dT) are only approximations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import figures, systems, theory
from ..dynamics import Dynamics, Potential
from ..simulate import simulate
from .checks import AtMost, Check, Within
from .core import Array, DemoConfig, Experiment, Result
from .measures import stationary_mean


@dataclass
class NonQuadratic(Result):
    curves: dict[str, tuple[Array, Array, Array, Array]]  # loss ↦ (t, I − L*, envelope, residual)


def _known(pot: Potential) -> tuple[float, Tensor, int]:
    """L*, argmin and dimension of a loss that knows them."""
    if pot.minimum is None or pot.argmin is None or pot.dim is None:
        raise ValueError(f"{type(pot).__name__} does not know its minimum")
    return pot.minimum, pot.argmin, pot.dim


def compute(cfg: DemoConfig) -> NonQuadratic:
    """Balance residual at h and h/2, ledger closure, and the closed forms' error, per loss."""
    cases = {
        "double well": (systems.DoubleWell(2), torch.tensor([1.6, -0.4])),
        "Rosenbrock": (systems.Rosenbrock(2), torch.tensor([-1.2, 1.0])),
        "logistic regression": (systems.LogisticRegression(200, 5, seed=cfg.seed), torch.zeros(5)),
    }
    gamma, t_end = 0.5, 20.0
    checks, findings, curves = [], {}, {}
    for name, (pot, q0) in cases.items():
        minimum = _known(pot)[0]
        gaps = []
        for steps in (cfg.scale(2000, 800), cfg.scale(4000, 1600)):
            dyn = Dynamics(pot, gamma=gamma)  # every step recorded: the trapezoid is O(h²) too
            traj = simulate(dyn, q0, dt=t_end / steps, steps=steps, method="conformal_verlet")
            gaps.append(float(theory.balance_residual(traj, dyn).abs().max()))
        ratio, closure = gaps[0] / gaps[1], float(traj.summary()["ledger_closure_error"])
        checks.append(
            Check(
                name,
                "balance residual ratio when h halves",
                ratio,
                Within(4.0, 0.8, "second order: 2² = 4"),
            )
        )
        checks.append(Check(name, "ledger closure / max|I|", closure, AtMost(1e-12)))
        t = traj.t.numpy()
        excess = traj.inertia[:, 0].numpy() - minimum
        env = theory.envelope(float(excess[0]), gamma, t).numpy()
        curves[name] = (t, excess, env, theory.balance_residual(traj, dyn)[:, 0].numpy())
        early = excess > 1e-6 * excess[0]
        findings[f"{name}: envelope vs simulated I − L*, max |log10 ratio|"] = float(
            np.abs(np.log10(env[early] / excess[early])).max()
        )
    sigma, g = 0.3, 1.0
    for name, (pot, _q0) in cases.items():
        minimum, argmin, dim = _known(pot)
        traj = simulate(
            Dynamics(pot, gamma=g, sigma=sigma),
            argmin,
            dt=0.01,
            steps=cfg.scale(2000, 800),
            paths=cfg.scale(1000, 200),
            seed=cfg.seed + 3,
            record_every=20,
        )
        mean, _ = stationary_mean(traj, minimum)
        floor = theory.stationary_inertia(dim, g, sigma)
        findings[f"{name}: stationary E[I − L*] ÷ dT"] = mean / floor
    return NonQuadratic(checks, findings, curves)


def plot(result: NonQuadratic, out: Path) -> list[Path]:
    """Per loss: I − L* against the envelope (top), balance residual / (I₀ − L*) (bottom)."""
    path = out / "e6_nonquadratic.png"
    with figures.figure(path, ncols=3, nrows=2, width=4.2, height=3.2) as axes:
        for i, (name, (t, excess, env, residual)) in enumerate(result.curves.items()):
            top, bottom = axes[i], axes[3 + i]
            top.semilogy(t, np.maximum(excess, 1e-16), color="#1f77b4", label="simulated I − L*")
            top.semilogy(t, env, "--", color="#d62728", label="envelope")
            top.set_title(name)
            bottom.plot(
                t, residual / excess[0], color="#9467bd", label="balance residual / (I₀ − L*)"
            )
            bottom.set_xlabel("t")
    return [path]


EXPERIMENT = Experiment(
    "E6",
    "Non-quadratic losses: the balance is exact, the closed forms are not",
    "For any loss the energy balance I(t) − I(0) = −∫γ vᵀMv holds (up to the integrator's "
    "O(h²)); the quadratic closed forms (envelope, floor dT) are only approximations.",
    "I(t) − I(0) + ∫γ vᵀMv ds − ½ Σ mσ² t = 0 (σ = 0: per path; σ > 0: in mean)",
    compute,
    plot,
)
