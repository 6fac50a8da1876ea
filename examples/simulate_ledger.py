"""A simulation with its energy ledger: a double well, without and with friction and noise.

1. Frictionless (γ = σ = 0), Verlet: the inertia I = K + L is conserved up to a bounded error
   (docs/theory.md (2.1)); the ledger's residual holds all of it.
2. Underdamped Langevin (γ, σ > 0), BAOAB, an ensemble of paths: the ledger closes,
   I − I₀ = −dissipated + injected + residual to round-off, and the kinetic energy settles at
   the noise floor E[K] = dT/2, T = mσ²/(2γ), for any loss (docs/theory.md (2.6)).

    python examples/simulate_ledger.py [--quick] [--out DIR]

Writes DIR/ledger.csv (one row per record and path), DIR/ledger.png and DIR/summary.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import inertia
from inertia import systems, theory
from inertia.figures import plot_ledger


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    parser.add_argument("--out", type=Path, default=Path("example-output/simulate_ledger"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    steps, paths = (2_000, 128) if args.quick else (20_000, 1024)
    loss = systems.DoubleWell(dim=2)
    start = torch.tensor([1.5, -0.5], dtype=torch.float64)

    # 1. Frictionless: I is conserved; Verlet's error is bounded and does not drift.
    frictionless = inertia.Dynamics(loss, gamma=0.0, sigma=0.0)
    traj = inertia.simulate(
        frictionless, q0=start, v0=torch.tensor([0.0, 1.0]), dt=0.01, steps=steps, method="verlet"
    )
    drift = traj.summary()["max_relative_drift"]
    print(f"frictionless, verlet, {steps} steps: max |I − I₀| / I₀ = {drift:.2e}")

    # --8<-- [start:langevin]
    # 2. Langevin: friction dissipates, noise injects, the ledger closes, K settles at dT/2.
    gamma, sigma = 1.0, 0.5
    dynamics = inertia.Dynamics(loss, gamma=gamma, sigma=sigma)
    traj = inertia.simulate(
        dynamics,
        q0=start,
        dt=0.01,
        steps=steps,
        method="baoab",
        paths=paths,
        seed=0,
        record_every=max(1, steps // 200),
    )
    summary = traj.summary()
    print(
        f"langevin, baoab, {paths} paths: dissipated {summary['dissipated_final']:.4f}, "
        f"injected {summary['injected_final']:.4f}, residual {summary['residual_final']:.2e}, "
        f"ledger closure error {summary['ledger_closure_error']:.1e}"
    )
    kinetic = traj.mean()["kinetic"]  # Estimate(mean, stderr) per record, over the paths
    floor = loss.dim * theory.temperature(gamma, sigma) / 2  # E[K]∞ = dT/2
    measured, stderr = float(kinetic.mean[-1]), float(kinetic.stderr[-1])
    print(f"E[K] at t = {float(traj.t[-1]):g}: {measured:.4f} ± {stderr:.4f}, dT/2 = {floor:.4f}")
    # --8<-- [end:langevin]

    traj.to_csv(args.out / "ledger.csv")
    plot_ledger(traj.ledger, args.out / "ledger.png", title="double well, BAOAB")
    result = {
        "frictionless_drift": float(drift),
        "closure_error": float(summary["ledger_closure_error"]),
        "kinetic": measured,
        "kinetic_stderr": stderr,
        "kinetic_floor": floor,
    }
    (args.out / "summary.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}/ledger.csv, ledger.png, summary.json")
    return result


if __name__ == "__main__":
    main()
