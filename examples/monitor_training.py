"""A plain PyTorch training loop with `InertiaMonitor`, then `inertia report` on its ledger.

An MLP learns three interleaved spirals with SGD (momentum 0.9) on minibatches. The monitor
books one ledger row per optimizer step, streams it to DIR/ledger.csv, estimates the gradient
noise from the per-sample losses (`noise="per_sample"`), watches the stability margin
(`alarm=True`) and keeps per-layer books (`by="module"`). The optimizer is not touched.

    python examples/monitor_training.py [--quick] [--out DIR]
    inertia report DIR/ledger.csv          # what the script runs last

Writes DIR/ledger.csv and DIR/report/ (report.html and its figures).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn

from inertia import InertiaMonitor
from inertia.cli import main as inertia_cli


def spirals(samples: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Three noisy interleaved spirals in the plane: inputs (samples, 2), labels (samples,)."""
    labels = torch.randint(0, 3, (samples,), generator=generator)
    radius = torch.rand(samples, generator=generator)
    angle = (
        4.0 * radius + labels * (2 * math.pi / 3) + 0.2 * torch.randn(samples, generator=generator)
    )
    x = torch.stack([radius * angle.cos(), radius * angle.sin()], 1)
    return x, labels


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    parser.add_argument("--out", type=Path, default=Path("example-output/monitor_training"))
    args = parser.parse_args(argv)
    epochs, samples = (3, 512) if args.quick else (40, 2048)

    generator = torch.Generator().manual_seed(0)
    x, y = spirals(samples, generator)
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, generator=generator)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 3)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    # --8<-- [start:monitor]
    monitor = InertiaMonitor(
        optimizer,
        log_dir=args.out,  # DIR/ledger.csv, flushed at every row
        noise="per_sample",  # exact gradient-noise trace tr(C)/B from the per-sample losses
        alarm=True,  # stability margin h²λ̂/(2(1 + μ)), RuntimeWarning if it passes 1
        by="module",  # kinetic/<layer>, step_size/<layer>, noise_trace/<layer>
        model=model,
    )
    for _ in range(epochs):
        for inputs, labels in loader:
            optimizer.zero_grad()
            losses = nn.functional.cross_entropy(model(inputs), labels, reduction="none")
            loss = losses.mean()
            monitor.observe(loss, per_sample=losses)  # per-sample losses: before backward
            loss.backward()
            optimizer.step()  # the monitor books the row through the optimizer's step hooks
    monitor.detach()  # remove the hooks, close ledger.csv
    # --8<-- [end:monitor]

    ledger = monitor.ledger  # 1-D float64 columns against `step`
    change = float(ledger["inertia"][-1] - ledger["inertia"][0])
    books = {name: float(ledger[name][-1]) for name in ("dissipated", "injected", "residual")}
    booked = abs(books["dissipated"]) + abs(books["injected"])
    first, last = float(ledger["loss"][0]), float(ledger["loss"][-1])
    print(f"{len(ledger['step'])} rows; loss {first:.3f} → {last:.3f}")
    print(
        f"I − I₀ = {change:.4f} = −dissipated {books['dissipated']:.4f} + injected "
        f"{books['injected']:.4f} + residual {books['residual']:.4f} "
        f"(residual / booked = {abs(books['residual']) / booked:.3f})"
    )
    alarms = int((ledger["alarm"] > 0).sum())
    print(f"stability margin at the end {float(ledger['margin'][-1]):.3f}; rows alarmed: {alarms}")
    noise_scale = ledger["noise_scale"][-1]
    print(f"gradient noise scale B_simple at the end: {float(noise_scale):.1f} samples")

    # The report: the same as `inertia report DIR/ledger.csv --out DIR/report` in a shell.
    status = inertia_cli(
        ["report", str(args.out / "ledger.csv"), "--out", str(args.out / "report")]
    )
    return {
        "rows": len(ledger["step"]),
        "first_loss": first,
        "last_loss": last,
        "inertia_change": change,
        **books,
        "report_status": status,
    }


if __name__ == "__main__":
    main()
