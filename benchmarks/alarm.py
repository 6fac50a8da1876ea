"""Lead time of the stability alarm: on runs at 1.02× and 1.05× the heavy-ball threshold
2(1 + μ)/λ_max (the unstable direction starting small), the step of the first alarm and the
step at which the loss first exceeds 10× its start; at 0.8× the threshold, how many runs
raised an alarm and in how many the loss still grew tenfold (an alarm is false only where
it did not). Quadratic (linear regression) and an MLP near a minimum, full batch and
minibatch (per-sample noise estimate), 3 seeds each. The scenarios (`workloads.py`) are those
of tests/test_alarm.py.

    python benchmarks/alarm.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics

from workloads import mlp_near_a_minimum, mlp_run, regression_run

STEPS = 300


def describe(results: list[tuple[int | None, int | None]]) -> str:
    """'alarm / 10× step' per seed, and the mean lead where both exist."""
    cells = [f"{'—' if a is None else a} / {'—' if b is None else b}" for a, b in results]
    leads = [b - a for a, b in results if a is not None and b is not None]
    lead = f"{statistics.mean(leads):.1f}" if leads else "—"
    return f"{', '.join(cells)} | {lead}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    seeds = range(parser.parse_args().seeds)
    mlps = {seed: mlp_near_a_minimum(seed) for seed in seeds}
    systems = {
        "quadratic": lambda mu, f, batch, seed: regression_run(mu, f, STEPS, batch, seed),
        "MLP": lambda mu, f, batch, seed: mlp_run(mlps[seed], mu, f, STEPS, batch, seed),
    }
    batches = {"quadratic": (None, 64, 1024), "MLP": (None, 128)}
    print(
        "| system | batch | μ | lr ÷ threshold | alarm / loss > 10× start (per seed) | mean lead |"
    )
    print("|---|---|---|---|---|---|")
    for name, run in systems.items():
        for batch in batches[name]:
            for mu in (0.0, 0.9):
                for factor in (1.02, 1.05, 0.8):
                    runs = [run(mu, factor, batch, seed)[1:] for seed in seeds]
                    label = "full" if batch is None else str(batch)
                    if factor < 1:
                        fired = sum(a is not None for a, _ in runs)
                        grew = sum(b is not None for _, b in runs)
                        cell = f"alarms: {fired} of {len(runs)}; loss > 10× start in {grew} | —"
                    else:
                        cell = describe(runs)
                    print(f"| {name} | {label} | {mu:g} | {factor:g} | {cell} |", flush=True)


if __name__ == "__main__":
    main()
