"""A small training run for the crash test (tests/test_reliability.py), deterministic on CPU:

    python crash_training.py LOG_DIR STEPS [--delay SECONDS] [--resume]

Streams the ledger to LOG_DIR/ledger.csv and ledger.jsonl and checkpoints model, optimizer and
monitor every 10 steps (atomically); --resume continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from inertia import InertiaMonitor
from inertia.monitor import JSONLSink


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    return x, x.sum(1, keepdim=True) + 0.1 * torch.randn(16, 1, generator=gen, dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("steps", type=int)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = InertiaMonitor(
        opt, log_dir=args.log_dir, sinks=[JSONLSink(args.log_dir / "ledger.jsonl")]
    )
    checkpoint = args.log_dir / "checkpoint.pt"
    start = 0
    if args.resume:
        state = torch.load(checkpoint)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        monitor.load_state_dict(state["monitor"])
        start = state["step"]
    for step in range(start, args.steps):
        x, y = batch(step)
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        monitor.observe(loss)
        opt.step()
        if (step + 1) % 10 == 0:
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "monitor": monitor.state_dict(),
                "step": step + 1,
            }
            torch.save(state, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
        time.sleep(args.delay)
    monitor.detach()


if __name__ == "__main__":
    main()
