"""The paper's demonstration as named experiments E1–E6, reused by `inertia demo` and the tests.

Each experiment simulates, holds the result against a law of `inertia.theory` with a tolerance
the theory supplies (integrator order, a proven bound, Monte-Carlo standard errors), draws its
figures and returns an `Experiment`: claim, law, checks, other findings, figures.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import report, systems, theory
from .dynamics import Dynamics
from .simulate import Trajectory, simulate

__all__ = ["EXPERIMENTS", "Check", "DemoConfig", "Experiment", "run_demo"]

F64 = torch.float64


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demonstration: `quick` shrinks runs and ensembles, keeping every check."""

    quick: bool = False
    seed: int = 0

    @property
    def paths(self) -> int:
        return 400 if self.quick else 2000

    def scale(self, full: int, quick: int) -> int:
        return quick if self.quick else full


@dataclass
class Check:
    """measured `relation` predicted, within `tolerance`: "≈" |m − p| ≤ tol, "≤" m ≤ p + tol,
    "≥" m ≥ p − tol."""

    name: str
    measured: float
    predicted: float
    tolerance: float
    relation: str = "≈"

    def __post_init__(self):
        self.measured, self.predicted = float(self.measured), float(self.predicted)
        self.tolerance = float(self.tolerance)

    @property
    def passed(self) -> bool:
        m, p, tol = self.measured, self.predicted, self.tolerance
        if not math.isfinite(m):
            return False
        return {"≈": abs(m - p) <= tol, "≤": m <= p + tol, "≥": m >= p - tol}[self.relation]

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass
class Experiment:
    key: str
    title: str
    claim: str
    law: str
    checks: list[Check] = field(default_factory=list)
    findings: dict[str, float] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "title": self.title,
            "claim": self.claim,
            "law": self.law,
            "checks": [c.to_dict() for c in self.checks],
            "findings": self.findings,
            "figures": [p.name for p in self.figures],
            "seconds": round(self.seconds, 3),
            "passed": self.passed,
        }


# ---------------------------------------------------------------- helpers


def _relative_error(traj: Trajectory) -> np.ndarray:
    i = traj.inertia[:, 0].numpy()
    return np.abs(i - i[0]) / abs(i[0])


def _drift_ratio(error: np.ndarray) -> float:
    """max error over the last 10% of a run ÷ max over the first 10%: ≈ 1 bounded, ≫ 1 drifting."""
    tenth = max(1, len(error) // 10)
    return float(error[-tenth:].max() / error[1 : tenth + 1].max())


def _order(steps: list[float], errors: list[float]) -> float:
    """Least-squares slope of log(error) against log(step)."""
    return float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


def _fitted_rate(
    t: np.ndarray, excess: np.ndarray, high: float = 1e-2, low: float = 1e-11
) -> float:
    """Decay rate of `excess` by a log-linear fit where excess/excess₀ ∈ [low, high]."""
    ratio = excess / excess[0]
    window = (ratio <= high) & (ratio >= low)
    return float(-np.polyfit(t[window], np.log(excess[window]), 1)[0])


def _max_z(estimate, predicted) -> float:
    """Largest |mean − predicted| / stderr over the records after t = 0."""
    z = (estimate.mean - predicted) / estimate.stderr
    return float(z[1:].abs().max())


# ---------------------------------------------------------------- E1


def conservation(cfg: DemoConfig, out: Path) -> Experiment:
    exp = Experiment(
        "E1",
        "Conservation without friction",
        "With γ = σ = 0 the inertia I = K + L is conserved, for any loss. A symplectic integrator "
        "keeps it to a bounded O(h²) error with no drift.",
        "dI/dt = vᵀ(Mv̇ + ∇L) = 0;  Verlet on a quadratic: |I(t) − I(0)| ≤ b·I(0), "
        "b = (h²λmax/4)/(1 − h²λmax/4)",
    )
    quad = systems.Quadratic(torch.tensor([[2.5, 1.5], [1.5, 2.5]], dtype=F64))  # λ = 1, 4
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
    exp.checks.append(
        Check(
            "quadratic: max |I − I₀|/I₀ (Verlet)", float(_relative_error(tq).max()), bound, 0.0, "≤"
        )
    )
    well = systems.DoubleWell(1)
    tw = simulate(
        Dynamics(well),
        torch.tensor([1.6]),
        dt=0.02,
        steps=cfg.scale(20000, 5000),
        method="verlet",
        record_every=5,
    )
    error = _relative_error(tw)
    exp.checks.append(
        Check("double well: drift ratio (last 10% ÷ first 10%)", _drift_ratio(error), 1.5, 0.0, "≤")
    )
    exp.findings["double well: max |I − I₀|/I₀"] = float(error.max())
    path = out / "e1_conservation.png"
    with report.figure(path, ncols=2) as axes:
        for ax, traj, name in ((axes[0], tq, "quadratic (λ = 1, 4)"), (axes[1], tw, "double well")):
            shown = traj.t <= 20
            t = traj.t[shown].numpy()
            for col in ("kinetic", "potential", "inertia"):
                ax.plot(
                    t, getattr(traj, col)[shown, 0].numpy(), color=report.COLORS[col], label=col
                )
            ax.set_title(f"{name}: I is constant")
            ax.set_xlabel("t")
    exp.figures.append(path)
    return exp


# ---------------------------------------------------------------- E2


def _rk45_inertia(potential, q0: float, t_end: float, times: np.ndarray) -> np.ndarray:
    from scipy.integrate import solve_ivp

    def rhs(_, z):
        _, g = potential.value_and_grad(torch.tensor([[z[0]]], dtype=F64))
        return [z[1], -float(g[0, 0])]

    sol = solve_ivp(rhs, (0, t_end), [q0, 0.0], method="RK45", t_eval=times, rtol=1e-6, atol=1e-9)
    value = potential.value(torch.tensor(sol.y[0][:, None], dtype=F64)).numpy()
    return value + 0.5 * sol.y[1] ** 2


def integrators(cfg: DemoConfig, out: Path) -> Experiment:
    exp = Experiment(
        "E2",
        "Integrators: bounded versus drifting energy, and measured orders",
        "Symplectic methods of order p keep |I − I₀| = O(hᵖ) bounded for all time; explicit "
        "Euler inflates it geometrically and Runge–Kutta drifts linearly in t.",
        "Euler per quadratic mode: I ← (1 + h²λ/m) I;  symplectic Euler p = 1, Verlet p = 2, "
        "Forest–Ruth p = 4",
    )
    well = systems.DoubleWell(1)
    dyn = Dynamics(well)
    q0, t_end, h = torch.tensor([1.6]), cfg.scale(100, 25), 0.01
    curves = {}
    for method in ("euler", "symplectic_euler", "verlet", "forest_ruth"):
        try:
            traj = simulate(dyn, q0, dt=h, steps=round(t_end / h), method=method, record_every=10)
        except FloatingPointError as err:  # explicit Euler may blow up: keep what was recorded
            traj = err.trajectory
        curves[method] = (traj.t.numpy(), _relative_error(traj))
    times = curves["verlet"][0]
    rk = _rk45_inertia(well, 1.6, t_end, times)
    curves["RK45 (scipy, rtol 1e-6)"] = (times, np.abs(rk - rk[0]) / abs(rk[0]))
    exp.checks.append(
        Check(
            "Verlet drift ratio (last ÷ first 10%)",
            _drift_ratio(curves["verlet"][1]),
            1.5,
            0.0,
            "≤",
        )
    )
    exp.checks.append(
        Check(
            "RK45 drift ratio (last ÷ first 10%)",
            _drift_ratio(curves["RK45 (scipy, rtol 1e-6)"][1]),
            3.0,
            0.0,
            "≥",
        )
    )
    lam, dt = 2.0, 0.1
    te = simulate(
        Dynamics(systems.Quadratic(eigenvalues=torch.tensor([lam]))),
        torch.ones(1),
        dt=dt,
        steps=50,
        method="euler",
    )
    growth = (te.inertia[1:, 0] / te.inertia[:-1, 0]).numpy()
    exp.checks.append(
        Check(
            "explicit Euler growth per step (quadratic, λ = 2, h = 0.1)",
            float(np.abs(growth - (1 + dt * dt * lam)).max()) + 1 + dt * dt * lam,
            1 + dt * dt * lam,
            1e-12,
        )
    )
    steps = [0.04, 0.02, 0.01] if cfg.quick else [0.04, 0.02, 0.01, 0.005]
    order_time = cfg.scale(10, 5)
    orders = {}
    for method, order in (("symplectic_euler", 1), ("verlet", 2), ("forest_ruth", 4)):
        errors = []
        for s in steps:
            traj = simulate(dyn, q0, dt=s, steps=round(order_time / s), method=method)
            errors.append(float(_relative_error(traj).max()))
        orders[method] = errors
        exp.checks.append(Check(f"fitted order of {method}", _order(steps, errors), order, 0.2))
    path = out / "e2_integrators.png"
    with report.figure(path, ncols=2) as (ax_t, ax_h):
        for name, (t, err) in curves.items():
            ax_t.semilogy(t[1:], np.maximum(err[1:], 1e-16), label=name, linewidth=1)
        ax_t.set_ylim(1e-12, 1e2)
        ax_t.set_xlabel("t")
        ax_t.set_ylabel("|I − I₀| / I₀")
        ax_t.set_title(f"energy error, h = {h} (double well)")
        for method, errors in orders.items():
            slope = _order(steps, errors)
            ax_h.loglog(steps, errors, "o-", label=f"{method}: slope {slope:.2f}")
        ax_h.set_xlabel("step h")
        ax_h.set_ylabel(f"max |I − I₀| / I₀ over t ≤ {order_time}")
        ax_h.set_title("order by step halving")
    exp.figures.append(path)
    return exp


# ---------------------------------------------------------------- E3

REGIMES = {"light": 0.2, "critical": 2.0, "over": 8.0}  # λ = 1: critical at γ = 2


def damping(cfg: DemoConfig, out: Path) -> Experiment:
    exp = Experiment(
        "E3",
        "Damping: the exact law, and the envelope that is not one",
        "Under friction I falls by exactly ∫γ vᵀMv. The popular e^{−γt} law is an envelope: "
        "a few % off for light damping and wrong by orders of magnitude when overdamped.",
        "dI/dt = −γ vᵀMv;  quadratic: I(t) = ½ zᵀQz, z = e^{Ft} z₀;  "
        "envelope (I₀ − L*) e^{−γt} + L*",
    )
    lam, h, t_end = 1.0, cfg.scale(10, 20) / 1000, 20.0
    pot = systems.Quadratic(eigenvalues=torch.tensor([lam]))
    runs = {}
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
        exp.checks.append(
            Check(
                f"{name} (γ = {gamma}): order of max |I − I_exact| under h → h/2",
                math.log2(errors[0] / errors[1]),
                2.0,
                0.2,
            )
        )
        exp.findings[f"{name}: max |I − I_exact| / I₀ at h = {h}"] = errors[1]
    traj, exact, env = runs["light"]
    gamma = REGIMES["light"]
    r = (gamma / 2) / math.sqrt(lam - gamma**2 / 4)
    exp.checks.append(
        Check(
            "light: max |I/envelope − 1| (simulated)",
            float(np.abs(traj.inertia[:, 0].numpy() / env - 1).max()),
            r * math.sqrt(1 + r * r) + r * r,
            0.1 * r,
        )
    )
    traj, exact, env = runs["over"]
    t = traj.t.numpy()
    rate = _fitted_rate(t, traj.inertia[:, 0].numpy(), high=0.5, low=1e-12)
    exp.checks.append(
        Check(
            "over: measured decay rate",
            rate,
            theory.decay_rate([lam], 8.0),
            0.02 * theory.decay_rate([lam], 8.0),
        )
    )
    exp.findings["over: envelope ÷ exact at t = 20"] = float(env[-1] / exact[-1])
    exp.findings["over: envelope rate γ ÷ true rate"] = 8.0 / theory.decay_rate([lam], 8.0)
    path = out / "e3_damping.png"
    with report.figure(path, ncols=3, width=4.2) as axes:
        for ax, (name, (traj, exact, env)) in zip(axes, runs.items(), strict=True):
            t = traj.t.numpy()
            ax.semilogy(t, exact, color="black", lw=1, zorder=3, label="exact law")
            ax.semilogy(
                t, traj.inertia[:, 0].numpy(), "o", ms=2.5, color="#1f77b4", label="simulated"
            )
            ax.semilogy(t, env, "--", color="#d62728", label=r"envelope $e^{-\gamma t}$")
            ax.set_ylim(max(1e-14, float(exact.min()) / 10), 1)
            ax.set_title(f"{name}: γ = {REGIMES[name]}")
            ax.set_xlabel("t")
    exp.figures.append(path)
    path = out / "e3_ledger.png"
    with report.figure(path, ncols=2) as axes:
        for ax, name in zip(axes, ("light", "critical"), strict=True):
            traj = runs[name][0]
            t = traj.t.numpy()
            report.stack_ledger(
                ax,
                t,
                traj.kinetic[:, 0].numpy(),
                traj.potential[:, 0].numpy(),
                traj.dissipated[:, 0].numpy(),
            )
            ax.axhline(float(traj.inertia[0, 0]), color="black", lw=0.8, label="I₀")
            ax.set_title(f"ledger, {name} damping: K + L + D = I₀ + R")
            ax.set_xlabel("t")
    exp.figures.append(path)
    return exp


# ---------------------------------------------------------------- E4


def damping_sweep(cfg: DemoConfig, out: Path) -> Experiment:
    exp = Experiment(
        "E4",
        "Damping sweep: more friction is not faster",
        "The asymptotic decay rate of I − L* rises as γ up to critical damping of the slowest "
        "mode, then falls like 2λ/γ: overdamping slows convergence.",
        "rate(γ) = minᵢ [γ − sqrt(max(γ² − 4λᵢ, 0))],  peak at γ* = 2 sqrt(λmin)",
    )
    lam = torch.tensor([1.0, 4.0], dtype=F64)
    pot = systems.Quadratic(eigenvalues=lam)
    gammas = (
        np.array([0.5, 1.0, 1.5, 2.3, 3.0, 4.5, 6.0])
        if cfg.quick
        else np.round(np.linspace(0.25, 6.0, 24), 4)
    )
    h, t_end = 0.05, 90.0
    measured, exact_fit = [], []
    for gamma in gammas:
        traj = simulate(
            Dynamics(pot, gamma=float(gamma)),
            torch.ones(2),
            dt=h,
            steps=round(t_end / h),
            method="conformal_verlet",
            record_every=2,
        )
        t = traj.t.numpy()
        measured.append(_fitted_rate(t, traj.inertia[:, 0].numpy()))
        exact_fit.append(
            _fitted_rate(
                t,
                theory.quadratic_inertia(
                    torch.diag(lam), [1.0, 1.0], [0.0, 0.0], float(gamma), t
                ).numpy(),
            )
        )
    measured, exact_fit = np.array(measured), np.array(exact_fit)
    asymptotic = np.array([theory.decay_rate(lam, float(g)) for g in gammas])
    critical = theory.critical_damping(lam)
    # conformal Verlet's modified equation shifts each mode's rate by O(h²λ) relative
    exp.checks.append(
        Check(
            "max relative gap, simulated vs exact-law rates (same fit)",
            float(np.abs(measured / exact_fit - 1).max()),
            0.0,
            h * h * float(lam.max()),
            "≤",
        )
    )
    far = np.abs(gammas / critical - 1) > 0.3  # near γ*, the t² prefactor biases finite-time fits
    exp.checks.append(
        Check(
            "max relative gap to the asymptotic law (|γ/γ* − 1| > 0.3)",
            float(np.abs(measured[far] / asymptotic[far] - 1).max()),
            0.0,
            0.05,
            "≤",
        )
    )
    exp.checks.append(
        Check(
            "γ of the fastest measured decay (theory: argmax on the same grid)",
            float(gammas[np.argmax(measured)]),
            float(gammas[np.argmax(asymptotic)]),
            0.0,
        )
    )
    exp.findings["critical damping γ* = 2 sqrt(λmin)"] = critical
    exp.findings["fastest measured rate"] = float(measured.max())
    path = out / "e4_damping_sweep.png"
    with report.figure(path) as ax:
        fine = np.linspace(0.05, gammas.max(), 400)
        ax.plot(
            fine,
            [theory.decay_rate(lam, float(g)) for g in fine],
            color="black",
            label="theory: decay_rate(λ, γ)",
        )
        ax.plot(gammas, measured, "o", color="#1f77b4", label="measured (simulation)")
        ax.axvline(critical, ls="--", color="#d62728", label="critical damping γ*")
        ax.plot(fine, fine, ":", color="gray", label="envelope's claim: rate = γ")
        ax.set_ylim(0, 1.3 * float(max(asymptotic.max(), measured.max())))
        ax.set_xlabel("γ")
        ax.set_ylabel("decay rate of I − L*")
        ax.set_title("λ = 1, 4: rate peaks at γ* = 2")
    exp.figures.append(path)
    return exp


# ---------------------------------------------------------------- E5


def _stationary_mean(traj: Trajectory, minimum: float = 0.0) -> tuple[float, float]:
    """Mean over paths of each path's time-average of I − L* over the last quarter, and its
    standard error (paths are independent)."""
    tail = traj.inertia[-max(1, len(traj.t) // 4) :] - minimum
    per_path = tail.mean(0)
    return float(per_path.mean()), float(per_path.std() / math.sqrt(traj.paths))


def noise(cfg: DemoConfig, out: Path) -> Experiment:
    exp = Experiment(
        "E5",
        "Noise heats: the Itô term, the floor, and the closed form",
        "Noise does not make inertia decay. Without friction it heats I linearly, for any loss; "
        "with friction I relaxes to the floor dT = dσ²/(2γ), not to L*.",
        "d E[I]/dt = −γ E[vᵀMv] + ½ Σ mσ²;  γ = 0: E[I] = I₀ + ½dσ²t;  E[I − L*]∞ = dT",
    )
    paths = cfg.paths
    sigma = 0.5
    well = systems.DoubleWell(2)
    heat = simulate(
        Dynamics(well, sigma=sigma),
        torch.tensor([1.0, -1.0]),
        dt=0.01,
        steps=cfg.scale(1000, 500),
        paths=paths,
        seed=cfg.seed,
        record_every=50,
    )
    law = theory.heating(float(heat.inertia[0, 0]), sigma, heat.t, dim=2)
    est = heat.mean()["inertia"]
    exp.checks.append(
        Check("heating, double well γ = 0: max |MC − law| / SE", _max_z(est, law), 0.0, 4.0, "≤")
    )
    lam = torch.tensor([1.0, 2.0], dtype=F64)
    quad = systems.Quadratic(eigenvalues=lam)
    gamma, q0 = 0.3, torch.tensor([1.5, 0.0])
    relax = {}
    worst_closed_form = 0.0
    for s in (0.2, 0.4, 0.6):
        traj = simulate(
            Dynamics(quad, gamma=gamma, sigma=s),
            q0,
            dt=0.02,
            steps=cfg.scale(1250, 750),
            paths=paths,
            seed=cfg.seed + 1,
            record_every=25,
        )
        exact = theory.expected_inertia(torch.diag(lam), q0, [0.0, 0.0], gamma, s, traj.t)
        closed = theory.relaxation(float(exact[0]), gamma, s, traj.t, dim=2)
        est = traj.mean()["inertia"]
        relax[s] = (traj, est, exact, closed)
        exp.checks.append(
            Check(
                f"relaxation σ = {s}: max |MC − exact E[I]| / SE", _max_z(est, exact), 0.0, 4.0, "≤"
            )
        )
        worst_closed_form = max(worst_closed_form, float(((closed - exact) / exact).abs().max()))
    exp.findings["closed form vs exact E[I]: max relative error"] = worst_closed_form
    floors = []
    for dim, g, s in [
        (2, 0.5, 0.3),
        (2, 1.0, 0.5),
        (2, 2.0, 1.0),
        (2, 1.0, 1.0),
        (1, 1.0, 0.5),
        (4, 1.0, 0.5),
        (8, 1.0, 0.5),
    ]:
        pot = systems.Quadratic(eigenvalues=torch.linspace(1.0, 2.0, dim, dtype=F64))
        t_end = 16.0 / g  # transient e^{−γt} below 1e-7
        traj = simulate(
            Dynamics(pot, gamma=g, sigma=s),
            torch.zeros(dim),
            dt=0.02,
            steps=round(t_end / 0.02),
            paths=cfg.scale(paths, paths // 2),
            seed=cfg.seed + 2,
            record_every=10,
        )
        mean, se = _stationary_mean(traj)
        floors.append((dim, g, s, mean, se, theory.stationary_inertia(dim, g, s)))
    z_floor = max(abs(m - p) / se for *_, m, se, p in floors)
    exp.checks.append(
        Check("stationary E[I − L*] vs dT: max |MC − dT| / SE", z_floor, 0.0, 4.0, "≤")
    )
    path = out / "e5_heating.png"
    with report.figure(path) as ax:
        est = heat.mean()["inertia"]
        low, high = heat.confidence(0.95)["inertia"]
        t = heat.t.numpy()
        ax.fill_between(t, low.numpy(), high.numpy(), alpha=0.25, color="#1f77b4", label="95% band")
        ax.plot(t, est.mean.numpy(), color="#1f77b4", label=f"Monte Carlo mean ({paths} paths)")
        ax.plot(t, law.numpy(), "--", color="black", label="exact: I₀ + ½ d σ² t")
        ax.set_xlabel("t")
        ax.set_ylabel("E[I]")
        ax.set_title("γ = 0, double well: noise heats, for any loss")
    exp.figures.append(path)
    path = out / "e5_relaxation.png"
    with report.figure(path) as ax:
        for color, (s, (traj, est, exact, closed)) in zip(
            ("#1f77b4", "#2ca02c", "#d62728"), relax.items(), strict=True
        ):
            t = traj.t.numpy()
            ax.fill_between(
                t,
                (est.mean - 2 * est.stderr).numpy(),
                (est.mean + 2 * est.stderr).numpy(),
                color=color,
                alpha=0.25,
            )
            ax.plot(t, exact.numpy(), color=color, label=f"σ = {s}: exact E[I]")
            ax.plot(t, closed.numpy(), ":", color=color, label="closed form")
            ax.axhline(theory.stationary_inertia(2, gamma, s), color=color, lw=0.6, ls="--")
        ax.set_xlabel("t")
        ax.set_ylabel("E[I]")
        ax.set_ylim(0, 1.5 * theory.stationary_inertia(2, gamma, max(relax)))
        ax.legend(fontsize=7, ncol=3, loc="upper center", frameon=False)
        ax.set_title(f"relaxation to the floor dT (γ = {gamma}); bands: MC ± 2 SE")
    exp.figures.append(path)
    path = out / "e5_floor.png"
    with report.figure(path, ncols=2) as (ax_t, ax_d):
        by_temp = [f for f in floors if f[0] == 2]
        x = np.array([s * s / g for _, g, s, *_ in by_temp])
        ax_t.errorbar(
            x,
            [f[3] for f in by_temp],
            yerr=[2 * f[4] for f in by_temp],
            fmt="o",
            label="Monte Carlo (± 2 SE)",
        )
        fine = np.linspace(0, x.max() * 1.1, 50)
        ax_t.plot(fine, 2 * fine / 2, color="black", label="d T = d σ²/(2γ)")
        ax_t.set_xlabel("σ²/γ")
        ax_t.set_ylabel("stationary E[I − L*]")
        ax_t.set_title("floor against σ²/γ (d = 2)")
        by_dim = sorted((f for f in floors if f[1] == 1.0 and f[2] == 0.5), key=lambda f: f[0])
        dims = np.array([f[0] for f in by_dim])
        ax_d.errorbar(
            dims,
            [f[3] for f in by_dim],
            yerr=[2 * f[4] for f in by_dim],
            fmt="o",
            label="Monte Carlo (± 2 SE)",
        )
        ax_d.plot(dims, dims * theory.temperature(1.0, 0.5), color="black", label="d T")
        ax_d.set_xlabel("dimension d")
        ax_d.set_title("floor against dimension (γ = 1, σ = 0.5)")
    exp.figures.append(path)
    return exp


# ---------------------------------------------------------------- E6


def non_quadratic(cfg: DemoConfig, out: Path) -> Experiment:
    exp = Experiment(
        "E6",
        "Non-quadratic losses: the balance is exact, the closed forms are not",
        "For any loss the energy balance I(t) − I(0) = −∫γ vᵀMv holds (up to the integrator's "
        "O(h²)); the quadratic closed forms (envelope, floor dT) are only approximations.",
        "I(t) − I(0) + ∫γ vᵀMv ds − ½ Σ mσ² t = 0 (σ = 0: per path; σ > 0: in mean)",
    )
    logistic = systems.LogisticRegression(200, 5, seed=cfg.seed)
    cases = {
        "double well": (systems.DoubleWell(2), torch.tensor([1.6, -0.4])),
        "Rosenbrock": (systems.Rosenbrock(2), torch.tensor([-1.2, 1.0])),
        "logistic regression": (logistic, torch.zeros(5)),
    }
    gamma, t_end = 0.5, 20.0
    curves = {}
    for name, (pot, q0) in cases.items():
        gaps = []
        for steps in (cfg.scale(2000, 800), cfg.scale(4000, 1600)):
            dyn = Dynamics(pot, gamma=gamma)  # every step recorded: the trapezoid is O(h²) too
            traj = simulate(dyn, q0, dt=t_end / steps, steps=steps, method="conformal_verlet")
            gaps.append(float(theory.balance_residual(traj, dyn).abs().max()))
        exp.checks.append(
            Check(
                f"{name}: balance residual ratio when h halves (order 2 ⇒ 4)",
                gaps[0] / gaps[1],
                4.0,
                0.8,
            )
        )
        exp.checks.append(
            Check(
                f"{name}: ledger closure / max|I|",
                traj.summary()["ledger_closure_error"],
                0.0,
                1e-12,
                "≤",
            )
        )
        t = traj.t.numpy()
        excess = traj.inertia[:, 0].numpy() - pot.minimum
        env = theory.envelope(float(excess[0]), gamma, t).numpy()
        curves[name] = (t, excess, env, theory.balance_residual(traj, dyn)[:, 0].numpy())
        early = excess > 1e-6 * excess[0]
        exp.findings[f"{name}: envelope vs simulated I − L*, max |log10 ratio|"] = float(
            np.abs(np.log10(env[early] / excess[early])).max()
        )
    sigma, g = 0.3, 1.0
    for name, (pot, _q0) in cases.items():
        traj = simulate(
            Dynamics(pot, gamma=g, sigma=sigma),
            pot.argmin,
            dt=0.01,
            steps=cfg.scale(2000, 800),
            paths=cfg.scale(1000, 200),
            seed=cfg.seed + 3,
            record_every=20,
        )
        mean, _ = _stationary_mean(traj, pot.minimum)
        exp.findings[f"{name}: stationary E[I − L*] ÷ dT"] = mean / theory.stationary_inertia(
            pot.dim, g, sigma
        )
    path = out / "e6_nonquadratic.png"
    with report.figure(path, ncols=3, nrows=2, width=4.2, height=3.2) as axes:
        for i, (name, (t, excess, env, residual)) in enumerate(curves.items()):
            top, bottom = axes[i], axes[3 + i]
            top.semilogy(t, np.maximum(excess, 1e-16), color="#1f77b4", label="simulated I − L*")
            top.semilogy(t, env, "--", color="#d62728", label="envelope")
            top.set_title(name)
            bottom.plot(
                t, residual / excess[0], color="#9467bd", label="balance residual / (I₀ − L*)"
            )
            bottom.set_xlabel("t")
    exp.figures.append(path)
    return exp


EXPERIMENTS: dict[str, Callable[[DemoConfig, Path], Experiment]] = {
    "E1": conservation,
    "E2": integrators,
    "E3": damping,
    "E4": damping_sweep,
    "E5": noise,
    "E6": non_quadratic,
}


def run_demo(
    out: Path,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[Experiment]:
    """Run E1–E6 into `out`: one PNG per figure, summary.json and report.html."""
    cfg = DemoConfig(quick=quick, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, (key, run) in enumerate(EXPERIMENTS.items()):
        if progress:
            progress(i, len(EXPERIMENTS), key)
        start = time.perf_counter()
        exp = run(cfg, out)
        exp.seconds = time.perf_counter() - start
        results.append(exp)
    if progress:
        progress(len(EXPERIMENTS), len(EXPERIMENTS), "done")
    summary = {
        "quick": quick,
        "seed": seed,
        "passed": all(e.passed for e in results),
        "experiments": {e.key: e.to_dict() for e in results},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    report.html_report(
        "Computational inertia: the demonstration",
        "Each section states a claim about computational inertia I = K + L, the law behind it, "
        "what the simulation measured against that law, and the verdict. Tolerances come from "
        "the theory: proven bounds, integrator orders and Monte-Carlo standard errors (SE)."
        + (" Quick mode: smaller runs and ensembles." if quick else ""),
        [{**e.to_dict(), "figures": e.figures} for e in results],
        out / "report.html",
    )
    return results
