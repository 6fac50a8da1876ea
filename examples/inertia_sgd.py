"""InertiaSGD: SGD with momentum whose brake reads the shadow energy.

Below the heavy-ball threshold lr < 2(1 + μ)/λ_max, `InertiaSGD` takes the same steps as
`torch.optim.SGD(momentum=μ)` to round-off. Above it, SGD diverges; InertiaSGD sees the
shadow energy rise before the step is taken, restarts the velocity from rest and shrinks the
step, then lets it recover (docs/optimizers.md). `InertiaMonitor` books its ledger from the
optimizer's own energy report, with no pass over the parameters (`monitor.reads_report`).

    python examples/inertia_sgd.py [--quick] [--factor 3]
"""

from __future__ import annotations

import argparse
import math

import torch

from inertia import InertiaMonitor
from inertia.optim import InertiaSGD

SAMPLES, DIM, MOMENTUM = 512, 20, 0.9


def train(optimizer_class: type, lr: float, steps: int, x: torch.Tensor, y: torch.Tensor):
    """Full-batch training from zero: the monitor's ledger and the optimizer."""
    model = torch.nn.Linear(DIM, 1, bias=False, dtype=torch.float64)
    torch.nn.init.zeros_(model.weight)
    # --8<-- [start:train]
    optimizer = optimizer_class(model.parameters(), lr=lr, momentum=MOMENTUM)
    monitor = InertiaMonitor(optimizer)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = 0.5 * (model(x) - y).square().mean()
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
    monitor.detach()
    # --8<-- [end:train]
    return monitor, optimizer


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    parser.add_argument("--factor", type=float, default=3.0, help="lr ÷ heavy-ball threshold")
    args = parser.parse_args(argv)
    steps = 300 if args.quick else 3_000

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, DIM, dtype=torch.float64, generator=generator)
    y = x @ torch.randn(DIM, 1, dtype=torch.float64, generator=generator)
    top = float(torch.linalg.eigvalsh(x.T @ x / SAMPLES)[-1])
    lr = args.factor * 2 * (1 + MOMENTUM) / top
    print(f"lr = {args.factor:g} × the heavy-ball threshold 2(1 + μ)/λ_max, μ = {MOMENTUM}")

    result = {}
    for name, cls in (("SGD", torch.optim.SGD), ("InertiaSGD", InertiaSGD)):
        monitor, optimizer = train(cls, lr, steps, x, y)
        loss = monitor.ledger["loss"]
        finite = loss[loss.isfinite()]
        last = float(loss[-1]) if math.isfinite(float(loss[-1])) else math.inf
        brakes = sum(group.get("brakes", 0) for group in optimizer.param_groups)
        print(
            f"{name:>10}: loss {float(loss[0]):.3g} → {last:.3g} after {steps} steps "
            f"(largest {float(finite.max()):.3g}); brakes {brakes}; "
            f"ledger from the optimizer's report: {monitor.reads_report}"
        )
        result[name] = last
        result[f"{name}_brakes"] = brakes
    return result


if __name__ == "__main__":
    main()
