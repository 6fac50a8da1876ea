"""Cost of InertiaMonitor on real training steps: the time of a training iteration (forward,
backward, optimizer step) with the monitor attached divided by the same without it, for an MLP
and a small CNN on scikit-learn's digits (CPU, float32), measured side by side in one run:
blocks with and without the monitor alternate, and the ratio of the medians is printed.

    python benchmarks/monitor_overhead.py [--blocks 15] [--block-steps 100] [--every 1]
                                          [--noise {microbatch,fluctuation,per_sample}]
                                          [--optimizer {sgd,inertia}] [--against-monitor]

With --noise the monitored run also estimates the gradient noise; with microbatch both runs
split each batch of 64 into 2 micro-batches (gradient accumulation). With --against-monitor
the baseline is the monitor without a noise estimate, so the ratio is the estimate's own cost.
With --optimizer inertia both runs use InertiaSGD, whose report the monitor books without
touching the parameters.

    python benchmarks/monitor_overhead.py --scaling

prints instead the time the monitor adds to a step against the number of parameters, on a
"model" that is only its parameters (loss ½‖θ‖², SGD with momentum and weight decay), so that
the difference is the monitor's own cost: a fixed part and a part per parameter.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from inertia import InertiaMonitor
from inertia.optim import InertiaSGD
from workloads import digits_batches as digits
from workloads import digits_cnn as cnn
from workloads import digits_mlp as mlp

OPTIMIZERS = {"sgd": torch.optim.SGD, "inertia": InertiaSGD}


class Run:
    """One model, optimizer and data stream; `monitor=True` attaches an InertiaMonitor; each
    batch is split into `micro` micro-batches (gradient accumulation)."""

    def __init__(
        self,
        make_model,
        *,
        monitor: bool,
        every: int,
        noise: str | None = None,
        micro: int = 1,
        batch: int = 64,
        optimizer: str = "sgd",
    ):
        torch.manual_seed(0)
        self.model = make_model()
        self.opt = OPTIMIZERS[optimizer](
            self.model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4
        )
        self.noise = noise
        self.micro = micro
        self.monitor = (
            InertiaMonitor(self.opt, every=every, history=1000, noise=noise) if monitor else None
        )
        self.data = digits(batch // self.micro)

    def steps(self, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            for _ in range(self.micro):
                x, y = next(self.data)
                per_sample = torch.nn.functional.cross_entropy(self.model(x), y, reduction="none")
                loss = per_sample.mean() / self.micro
                if self.monitor is not None and self.noise == "per_sample":
                    self.monitor.observe(loss, per_sample=per_sample)
                loss.backward()
                if self.monitor is not None and self.noise != "per_sample":
                    self.monitor.observe(loss * self.micro, accumulate=self.micro > 1)
            self.opt.step()
        return time.perf_counter() - start


def side_by_side(plain, monitored, blocks: int) -> tuple[float, float]:
    """Median times of `plain()` and `monitored()` over `blocks` alternating calls (warm
    them up first): both see the same machine state, drifts and all."""
    times = ([], [])
    for _ in range(blocks):
        times[0].append(plain())
        times[1].append(monitored())
    return statistics.median(times[0]), statistics.median(times[1])


def parameters_only(n: int, *, monitor: bool):
    """A "model" that is only 4 parameter tensors of n/4 elements (loss ½‖θ‖², SGD with
    momentum and weight decay), so that a monitored step differs by the monitor's own cost;
    returns a function timing 10 steps (seconds a step)."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n // 4)) for _ in range(4)]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    monitored = InertiaMonitor(opt, history=100) if monitor else None

    def steps(k: int = 10) -> float:
        start = time.perf_counter()
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            loss = sum(0.5 * p.square().sum() for p in params)
            loss.backward()
            if monitored is not None:
                monitored.observe(loss)
            opt.step()
        return (time.perf_counter() - start) / k

    return steps


def scaling(blocks: int) -> None:
    """Added time a step of an every=1 monitor against the number of parameters."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, every=1, SGD")
    print(f"{'params':>9s} {'µs/step plain':>14s} {'µs added':>9s} {'ns/param':>9s}")
    for n in (40, 50_000, 500_000, 5_000_000):
        plain, monitored = parameters_only(n, monitor=False), parameters_only(n, monitor=True)
        plain(), monitored()  # warm up
        a, b = side_by_side(plain, monitored, blocks if n < 10**6 else max(blocks // 4, 3))
        print(f"{n:9d} {1e6 * a:14.1f} {1e6 * (b - a):9.1f} {1e9 * (b - a) / n:9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--block-steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument(
        "--noise", choices=("microbatch", "fluctuation", "per_sample"), default=None
    )
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="sgd")
    parser.add_argument(
        "--against-monitor",
        action="store_true",
        help="the baseline is the monitor without a noise estimate: the estimate's own cost",
    )
    parser.add_argument("--scaling", action="store_true", help="added time against size")
    args = parser.parse_args()
    if args.scaling:
        scaling(args.blocks)
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 64, "
        f"{args.optimizer} momentum 0.9, "
        f"every={args.every}, noise={args.noise}, {args.blocks} blocks of {args.block_steps} "
        "steps each way" + (", baseline: the monitor without noise" if args.against_monitor else "")
    )
    print(
        f"{'model':6s} {'params':>8s} {'ms/step plain':>14s} "
        f"{'ms/step monitored':>18s} {'ratio':>7s}"
    )
    micro = 2 if args.noise == "microbatch" else 1
    for name, make in (("MLP", mlp), ("CNN", cnn)):
        common = {"every": args.every, "micro": micro, "optimizer": args.optimizer}
        plain, monitored = (
            Run(make, monitor=args.against_monitor, **common),
            Run(make, monitor=True, noise=args.noise, **common),
        )
        plain.steps(50), monitored.steps(50)  # warm up
        a, b = side_by_side(
            partial(plain.steps, args.block_steps),
            partial(monitored.steps, args.block_steps),
            args.blocks,
        )
        params = sum(p.numel() for p in plain.model.parameters())
        print(
            f"{name:6s} {params:8d} {1e3 * a / args.block_steps:14.3f} "
            f"{1e3 * b / args.block_steps:18.3f} "
            f"{b / a:7.3f}"
        )


if __name__ == "__main__":
    main()
