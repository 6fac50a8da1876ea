"""E1, conservation (docs/theory.md §2, law C): with γ = σ = 0, dI/dt = vᵀ(Mv̇ + ∇L) = 0 for any
loss. Verlet keeps I within the proven band |I − I₀| ≤ b·I₀, b = (h²λmax/4)/(1 − h²λmax/4), on a
quadratic, and without drift on a double well."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import figures, systems
from ..dynamics import Dynamics
from ..simulate import simulate
from ..trajectory import Trajectory
from .checks import AtMost, Check
from .core import DemoConfig, Experiment, Result
from .measures import drift_ratio, relative_error


@dataclass
class Conservation(Result):
    quadratic: Trajectory
    well: Trajectory


def compute(cfg: DemoConfig) -> Conservation:
    """Verlet on a quadratic (λ = 1, 4) against the proven band, on a double well for drift."""
    quad = systems.Quadratic(torch.tensor([[2.5, 1.5], [1.5, 2.5]], dtype=torch.float64))
    h = 0.05
    tq = simulate(
        Dynamics(quad),
        torch.tensor([1.0, 0.0]),
        torch.tensor([0.0, 0.5]),
        dt=h,
        steps=cfg.scale(2000, 600),
        method="verlet",
    )
    lam_max = float(quad.eigenvalues.max())
    bound = (h * h * lam_max / 4) / (1 - h * h * lam_max / 4)
    tw = simulate(
        Dynamics(systems.DoubleWell(1)),
        torch.tensor([1.6]),
        dt=0.02,
        steps=cfg.scale(20000, 5000),
        method="verlet",
        record_every=5,
    )
    error = relative_error(tw)
    checks = [
        Check(
            "quadratic (λ = 1, 4), Verlet h = 0.05",
            "max |I − I₀|/I₀",
            float(relative_error(tq).max()),
            AtMost(bound, "proven bound"),
        ),
        Check(
            "double well, Verlet h = 0.02",
            "drift ratio (max error, last 10% ÷ first 10%)",
            drift_ratio(error),
            AtMost(1.5),
        ),
    ]
    findings = {"double well: max |I − I₀|/I₀": float(error.max())}
    return Conservation(checks, findings, quadratic=tq, well=tw)


def plot(result: Conservation, out: Path) -> list[Path]:
    """K, L and I against t for t ≤ 20, quadratic (left) and double well (right)."""
    path = out / "e1_conservation.png"
    with figures.figure(path, ncols=2) as axes:
        for ax, traj, name in (
            (axes[0], result.quadratic, "quadratic (λ = 1, 4)"),
            (axes[1], result.well, "double well"),
        ):
            shown = traj.t <= 20
            t = traj.t[shown].numpy()
            for col in ("kinetic", "potential", "inertia"):
                ax.plot(
                    t, getattr(traj, col)[shown, 0].numpy(), color=figures.COLORS[col], label=col
                )
            ax.set_title(f"{name}: I is constant")
            ax.set_xlabel("t")
    return [path]


EXPERIMENT = Experiment(
    "E1",
    "Conservation without friction",
    "With γ = σ = 0 the inertia I = K + L is conserved, for any loss. A symplectic integrator "
    "keeps it to a bounded O(h²) error with no drift.",
    "dI/dt = vᵀ(Mv̇ + ∇L) = 0;  Verlet on a quadratic: |I(t) − I(0)| ≤ b·I(0), "
    "b = (h²λmax/4)/(1 − h²λmax/4)",
    compute,
    plot,
)
