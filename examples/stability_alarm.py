"""Watch stability: the alarm comes before the loss blows up.

Heavy-ball SGD on a quadratic (full-batch linear regression) is stable iff its margin
h²λ_max/(2(1 + μ)) < 1, i.e. lr < 2(1 + μ)/λ_max (docs/theory.md (2.9), §4). With
`alarm=True` the monitor estimates the margin at every step from the gradients the steps
already have, and raises a `RuntimeWarning` and calls `on_alarm(row)` once the run is
diverging. Two runs: one at 0.8× the threshold (silent) and one just above it (the alarm
fires, and well before the loss has grown tenfold).

    python examples/stability_alarm.py [--quick] [--momentum 0] [--factor 1.02]
"""

from __future__ import annotations

import argparse
import warnings

import torch

from inertia import InertiaMonitor

SAMPLES, DIM = 512, 20


def run(lr: float, momentum: float, steps: int, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Train from zero; the step of the first alarm and of the first tenfold loss (or None)."""
    model = torch.nn.Linear(DIM, 1, bias=False, dtype=torch.float64)
    torch.nn.init.zeros_(model.weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    # --8<-- [start:alarm]
    alarms: list[dict] = []
    monitor = InertiaMonitor(optimizer, alarm=True, on_alarm=alarms.append)
    tenfold, first = None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the alarm's warning: kept in `alarms`
        for step in range(steps):
            optimizer.zero_grad()
            loss = 0.5 * (model(x) - y).square().mean()
            loss.backward()
            monitor.observe(loss)
            optimizer.step()
            value = float(loss.detach())
            first = value if first is None else first
            if tenfold is None and value > 10 * first:
                tenfold = step
            if tenfold is not None and alarms:
                break
    monitor.detach()
    # --8<-- [end:alarm]
    margin = monitor.ledger["margin"]
    return {
        "alarm": None if not alarms else int(alarms[0]["step"]),
        "tenfold": tenfold,
        "margin": float(margin[margin.isfinite()][-1]),
    }


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--factor", type=float, default=1.02, help="lr ÷ threshold, above 1")
    args = parser.parse_args(argv)
    steps = 200 if args.quick else 2_000

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, DIM, dtype=torch.float64, generator=generator)
    x[:, 0] *= 3  # one stiff direction
    y = x @ torch.randn(DIM, 1, dtype=torch.float64, generator=generator)
    top = float(torch.linalg.eigvalsh(x.T @ x / SAMPLES)[-1])  # λ_max of the loss's Hessian
    threshold = 2 * (1 + args.momentum) / top
    print(f"λ_max = {top:.3f}; heavy-ball threshold lr = 2(1 + μ)/λ_max = {threshold:.4f}")

    results = {}
    for factor in (0.8, args.factor):
        result = run(factor * threshold, args.momentum, steps, x, y)
        results[f"{factor:g}"] = result
        print(
            f"lr = {factor:g} × threshold: alarm at step {result['alarm']}, loss > 10× its "
            f"start at step {result['tenfold']}, last margin {result['margin']:.3f}"
        )
    return results


if __name__ == "__main__":
    main()
