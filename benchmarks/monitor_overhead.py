"""Cost of InertiaMonitor on real training steps: for the character transformer, the digits CNN
and the digits MLP, at their own sizes and widened to 1e5–1e7 parameters (float32, CPU), the
step-time ratio (forward, backward and optimizer step with the monitor ÷ without), the time the
monitor adds to a step, and the peak memory it adds per parameter.

    python benchmarks/monitor_overhead.py [--models transformer cnn mlp] [--sizes base 1e5 …]
        [--every 1] [--noise {microbatch,fluctuation,per_sample}] [--alarm] [--by {module,group}]
        [--optimizer {sgd,adamw,inertia}] [--against-monitor] [--floor] [--batch B]
        [--threads 1] [--clock {cpu,wall}] [--blocks 15] [--block-seconds 0.3 | --block-steps N]
        [--memory-runs 3]

Time: blocks with and without the monitor alternate in one process, so both see the same
machine state; the ratio is that of the median block times, "pairs" the quartiles of the
ratios of the blocks run one after the other (their spread is the noise), "µs added" the
difference of the medians per step. Memory: the peak resident memory (VmHWM) of fresh
processes after two warm-up steps, as tests/peak_memory.py measures it, the smallest of
`--memory-runs` runs each way; its difference per parameter.

Sizes: "base" is the model of issue 17 (transformer d 128 with 2 layers, batch 16 × 64
tokens; the CNN and MLP of workloads.py, batch 64 digits); a number widens the model to about
that many parameters at the same batch (by default the CNN stops at 1e6: a step of its 1e7
widening takes seconds). With --noise microbatch both runs split each batch into 2
micro-batches; --against-monitor makes the baseline the default monitor, so the ratio is the
cost of what the chosen mode adds. With --optimizer inertia the monitor books rows from
InertiaSGD's own report. With --floor (SGD) a third run alternates with the two: the
hand-written minimal ledger of `HandWritten`, the least a row in float64 costs from Python,
so the monitor's µs added stand beside the floor under them. One torch thread and the
process's CPU time by default: on a shared machine the time slices other jobs take swamp the
difference in elapsed time, and a second thread's waits for a busy core more so (--threads 2
--clock wall on a quiet machine).

    python benchmarks/monitor_overhead.py --scaling

is `--models params`: a "model" that is only 4 parameter tensors (loss ½‖θ‖²), so that a
step costs little besides the optimizer's and the monitor's passes over the parameters.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from inertia import InertiaMonitor
from inertia.optim import InertiaSGD
from workloads import CharTransformer, char_batches, char_vocabulary, digits_batches, stdlib_text
from workloads import digits_cnn as cnn  # benchmarks/optimizers.py imports it from here

OPTIMIZERS = {
    "sgd": functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=1e-4),
    "adamw": functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01),
    "inertia": functools.partial(InertiaSGD, lr=0.01, momentum=0.9, weight_decay=1e-4),
}
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
TARGETS = {"transformer": 1.05, "cnn": 1.05, "mlp": 1.15}  # issue 17: every=1, base models


@functools.cache
def text_and_vocabulary() -> tuple[str, str]:
    """200 000 characters of the standard library's sources, and their characters."""
    text = stdlib_text(200_000)
    return text, char_vocabulary(text)


def transformer(d_model: int) -> nn.Module:
    """CharTransformer with 2 layers, 4 heads, 64 positions."""
    return CharTransformer(text_and_vocabulary()[1], d_model=d_model, context=64)


def mlp(width: int) -> nn.Module:
    """The digits MLP widened: 64-2w-w-10, ReLU (w = 128 is workloads.digits_mlp)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 2 * width),
        nn.ReLU(),
        nn.Linear(2 * width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )


class ParametersOnly(nn.Module):
    """A "model" that is only 4 parameter tensors of `quarter` elements; its output is the
    loss ½‖θ‖², whatever the input."""

    def __init__(self, quarter: int):
        super().__init__()
        self.parts = nn.ParameterList(nn.Parameter(torch.randn(quarter)) for _ in range(4))

    def forward(self, _: Any) -> Tensor:
        return 0.5 * sum(p.square().sum() for p in self.parts)


def token_stream(batch: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless batches of `batch` windows of 64 characters and their next characters."""
    text, vocab = text_and_vocabulary()
    return char_batches(text, vocab, batch, 64, torch.Generator().manual_seed(0))


def class_losses(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Per-sample cross-entropy: of each image, or of each sequence (mean over its tokens)."""
    x, y = batch
    logits = model(x)
    if logits.dim() == 3:  # (B, T, vocab): tokens
        return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
    return F.cross_entropy(logits, y, reduction="none")


@dataclass(frozen=True)
class Family:
    """Models of one kind by width: `build(width)`, the base width, the step between widths,
    the data stream `batches(batch)` and its default batch, `losses(model, batch)` per
    sample, the sizes measured by default."""

    build: Callable[[int], nn.Module]
    base: int
    granularity: int
    batches: Callable[[int], Iterator[Any]]
    batch: int
    losses: Callable[[nn.Module, Any], Tensor]
    sizes: tuple[str | int, ...]


FAMILIES = {
    "transformer": Family(
        transformer, 128, 8, token_stream, 16, class_losses, ("base", 10**5, 10**6, 10**7)
    ),
    "cnn": Family(cnn, 16, 1, digits_batches, 64, class_losses, ("base", 10**5, 10**6)),
    "mlp": Family(mlp, 128, 1, digits_batches, 64, class_losses, ("base", 10**5, 10**6, 10**7)),
    "params": Family(
        ParametersOnly,
        10,
        1,
        lambda _: itertools.repeat(None),
        1,
        lambda model, batch: model(batch).reshape(1),
        ("base", 50_000, 500_000, 5_000_000),
    ),
}


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def width_for(family: Family, size: str | int) -> int:
    """The base width for "base", else the width (a multiple of the family's granularity)
    whose model has the parameter count nearest `size` (counted on the meta device)."""
    if size == "base":
        return family.base

    @functools.cache
    def count(k: int) -> int:
        with torch.device("meta"):
            return parameters(family.build(k * family.granularity))

    high = 1
    while count(high) < size:
        high *= 2
    low = max(high // 2, 1)
    while low < high:  # the smallest k with count(k) ≥ size
        middle = (low + high) // 2
        low, high = (middle + 1, high) if count(middle) < size else (low, middle)
    best = min((k for k in (high - 1, high) if k >= 1), key=lambda k: abs(count(k) - size))
    return best * family.granularity


class HandWritten:
    """The floor under a per-row float64 ledger written in Python (`--floor`): SGD with
    momentum keeps the step in its buffer b (θ_{k+1} = θ_k − η b), so a row needs only ⟨b, g⟩
    per tensor, ‖b‖² and ‖θ‖² (widened into one reused float64 block) and the loss: one
    stack, one transfer to the host and four books in Python floats. No maps, schedules,
    checks, noise, hooks or sinks: not a monitor, the least a row can cost."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        offsets = list(itertools.accumulate((p.numel() for p in self.params), initial=0))
        self.block = torch.empty(offsets[-1], dtype=torch.float64)
        self.views = [
            self.block[a:b].view_as(p)
            for a, b, p in zip(offsets, offsets[1:], self.params, strict=False)
        ]
        self.books = [0.0] * 4

    @torch.no_grad()
    def observe(self, loss: Tensor, accumulate: bool = False) -> None:
        buffers = [self.optimizer.state[p].get("momentum_buffer") for p in self.params]
        if buffers[0] is None:  # before the first step
            return
        grads = [p.grad.reshape(-1) for p in self.params]
        dots = [torch.dot(b.reshape(-1), g) for b, g in zip(buffers, grads, strict=True)]
        torch._foreach_copy_(self.views, buffers)
        step_sq = torch.dot(self.block, self.block)
        torch._foreach_copy_(self.views, self.params)
        theta_sq = torch.dot(self.block, self.block)
        host = torch.stack([*dots, step_sq, theta_sq, loss.detach()]).to(torch.float64).tolist()
        for i, value in enumerate((sum(host[:-3]), *host[-3:])):
            self.books[i] += value


class Run:
    """A model of `family` at `width`, its optimizer and data stream, and with `monitor` (the
    keywords of an InertiaMonitor; None: none) a monitor, or with `floor` the hand-written
    minimal ledger; each batch of `batch` samples is split into `micro` micro-batches
    (gradient accumulation)."""

    def __init__(
        self,
        family: str,
        width: int,
        batch: int,
        *,
        optimizer: str,
        micro: int = 1,
        monitor: dict[str, Any] | None = None,
        floor: bool = False,
    ):
        torch.manual_seed(0)
        self.family = FAMILIES[family]
        self.model = self.family.build(width)
        self.opt = OPTIMIZERS[optimizer](self.model.parameters())
        self.micro = micro
        self.data = self.family.batches(max(batch // micro, 1))
        self.monitor: Any = HandWritten(self.opt) if floor else None
        if monitor is not None:
            model = {"model": self.model} if monitor.get("by") == "module" else {}
            self.monitor = InertiaMonitor(self.opt, history=1000, **model, **monitor)
        self.per_sample = monitor is not None and monitor.get("noise") == "per_sample"
        self.loss = torch.zeros(())

    def steps(self, n: int, clock: Callable[[], float] = time.perf_counter) -> float:
        """Seconds taken by `n` training steps, on `clock`."""
        start = clock()
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            for _ in range(self.micro):
                per_sample = self.family.losses(self.model, next(self.data))
                loss = per_sample.mean() / self.micro
                if self.per_sample:
                    self.monitor.observe(loss, per_sample=per_sample)
                loss.backward()
                if self.monitor is not None and not self.per_sample:
                    self.monitor.observe(loss * self.micro, accumulate=self.micro > 1)
            self.opt.step()
        self.loss = loss.detach()
        return clock() - start


def side_by_side(runs: list[Callable[[], float]], blocks: int) -> list[list[float]]:
    """Times of `blocks` rounds of calls of each of `runs` in turn (warm them up first): all
    see the same machine state, drifts and all."""
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(blocks):
        for run, kept in zip(runs, times, strict=True):
            kept.append(run())
    return times


def peak_child(spec: dict[str, Any]) -> None:
    """In a fresh process: the peak resident MB over 3 steps of `Run(**spec)` after 2."""
    torch.set_num_threads(1)  # one allocation pattern: the peak does not depend on threads
    run = Run(**spec)
    run.steps(2)  # the optimizer's state and the monitor's buffers exist from here
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM restarts from the resident memory now
    run.steps(3)
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    print(json.dumps({"peak_mb": kb / 1024}))


def peak_mb(spec: dict[str, Any], runs: int) -> float:
    """The smallest peak resident MB of `runs` fresh processes running `peak_child(spec)`
    (now and then a run's peak is higher by the timing of the training's own allocations)."""
    peaks = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, __file__, "--peak-child", json.dumps(spec)],
            capture_output=True,
            text=True,
            env={**os.environ, "MALLOC_ARENA_MAX": "1"},
        )
        if out.returncode:
            raise SystemExit(f"the peak-memory process of {spec} failed:\n{out.stderr}")
        peaks.append(json.loads(out.stdout)["peak_mb"])
    return min(peaks)


def measure(name: str, size: str | int, args: argparse.Namespace) -> dict[str, Any]:
    """One model and size: its parameters, plain and monitored ms/step, their ratio and the
    quartiles of the ratios of paired blocks, µs added a step, extra bytes per parameter."""
    family = FAMILIES[name]
    width = width_for(family, size)
    batch = args.batch or family.batch
    mode = {"every": args.every, "noise": args.noise, "alarm": args.alarm or None, "by": args.by}
    mode = {key: value for key, value in mode.items() if value is not None}  # the keywords set
    common = {
        "family": name,
        "width": width,
        "batch": batch,
        "optimizer": args.optimizer,
        "micro": 2 if args.noise == "microbatch" else 1,
    }
    baseline = {"every": args.every} if args.against_monitor else None
    plain, monitored = Run(**common, monitor=baseline), Run(**common, monitor=mode)
    runs = [plain, monitored] + ([Run(**common, floor=True)] if args.floor else [])
    out = {"params": parameters(plain.model), "batch": batch}
    if args.blocks:
        clock = CLOCKS[args.clock]
        for run in runs:
            run.steps(3)  # warm up (the first steps load data, allocate)
        step = plain.steps(3, clock) / 3
        n = args.block_steps or max(1, round(args.block_seconds / step))
        times = side_by_side([functools.partial(run.steps, n, clock) for run in runs], args.blocks)
        a, b = times[0], times[1]
        plain_s, monitored_s = statistics.median(a) / n, statistics.median(b) / n
        if args.floor:
            floor_s = statistics.median(times[2]) / n
            out |= {"floor_ratio": floor_s / plain_s, "floor_us": 1e6 * (floor_s - plain_s)}
        out |= {"plain_ms": 1e3 * plain_s, "monitored_ms": 1e3 * monitored_s}
        out["ratio"] = monitored_s / plain_s
        out["pairs"] = statistics.quantiles([y / x for x, y in zip(a, b, strict=True)], n=4)
        out |= {"added_us": 1e6 * (monitored_s - plain_s)}
        out["finite"] = math.isfinite(float(plain.loss)) and math.isfinite(float(monitored.loss))
    del plain, monitored, runs
    if args.memory_runs:
        base = peak_mb({**common, "monitor": baseline}, args.memory_runs)
        peak = peak_mb({**common, "monitor": mode}, args.memory_runs)
        out |= {"peak_mb": (base, peak), "bytes": (peak - base) * 2**20 / out["params"]}
    return out


HEADER = (
    f"{'model':11s} {'size':>7s} {'params':>10s} {'batch':>5s} {'ms plain':>9s} "
    f"{'ms monitored':>12s} {'ratio':>6s} {'pairs q1/q2/q3':>17s} {'target':>6s} "
    f"{'µs added':>9s} {'ns/param':>8s} {'B/param':>8s} {'peak MB plain→monitored':>24s}"
)


def size_label(size: str | int) -> str:
    """'base', 1e5 for 100000, else the number."""
    short = "base" if size == "base" else f"{size:.0e}".replace("e+0", "e")
    return short if short == "base" or float(short) == size else str(size)


def table_row(name: str, size: str | int, m: dict[str, Any], targets: bool) -> str:
    """A printed row of `measure`'s results; with `targets`, issue 17's at the base sizes."""
    cells = [f"{name:11s} {size_label(size):>7s} {m['params']:>10,d} {m['batch']:>5d}"]
    if "ratio" in m:
        target = TARGETS.get(name) if targets and size == "base" else None
        cells.append(
            f"{m['plain_ms']:9.3f} {m['monitored_ms']:12.3f} {m['ratio']:6.3f} "
            f"{'/'.join(f'{q:5.3f}' for q in m['pairs'])} "
            f"{f'≤{target}' if target else '':>6s} {m['added_us']:9.1f} "
            f"{1e3 * m['added_us'] / m['params']:8.2f}"
        )
    else:
        cells.append(" " * 73)
    if "bytes" in m:
        cells.append(f"{m['bytes']:8.2f} {m['peak_mb'][0]:11.1f}→{m['peak_mb'][1]:.1f}")
    if "floor_ratio" in m:
        cells.append(f"  floor {m['floor_ratio']:.3f} ({m['floor_us']:.1f} µs)")
    if not m.get("finite", True):
        cells.append("  (loss not finite)")
    return " ".join(cells)


def size_argument(text: str) -> str | int:
    """'base' or a parameter count (1e5, 250000)."""
    if text == "base":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 10):
        raise argparse.ArgumentTypeError(f"'base' or a number of parameters ≥ 10, not {text!r}")
    return int(value)


def positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a positive `kind` (int, float)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"a positive {kind.__name__}, not {text!r}")
        return value

    return parse


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=tuple(FAMILIES), default=None)
    parser.add_argument(
        "--sizes", nargs="+", type=size_argument, help="'base' or parameter counts (1e5 …)"
    )
    parser.add_argument("--scaling", action="store_true", help="same as --models params")
    parser.add_argument(
        "--batch", type=positive(int), help="samples (sequences of 64 tokens) a step"
    )
    parser.add_argument("--every", type=positive(int), default=1)
    parser.add_argument("--noise", choices=("microbatch", "fluctuation", "per_sample"))
    parser.add_argument("--alarm", action="store_true")
    parser.add_argument("--by", choices=("module", "group"), help="per-layer books")
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="sgd")
    parser.add_argument(
        "--against-monitor",
        action="store_true",
        help="the baseline is the default monitor: the cost of what the mode adds",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time the hand-written minimal ledger (SGD): the floor under any monitor",
    )
    parser.add_argument("--threads", type=positive(int), default=1, help="torch threads")
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="cpu",
        help="cpu: this process's CPU time (all threads), blind to other jobs' time slices;\n"
        "wall: elapsed time",
    )
    parser.add_argument("--blocks", type=int, default=15, help="alternating blocks (0: no timing)")
    parser.add_argument("--block-seconds", type=positive(float), default=0.3)
    parser.add_argument("--block-steps", type=positive(int), help="instead of --block-seconds")
    parser.add_argument("--memory-runs", type=int, default=3, help="fresh processes (0: none)")
    parser.add_argument("--peak-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scaling and args.models not in (None, ["params"]):
        parser.error("--scaling is --models params: give one or the other")
    if args.blocks < 0 or args.memory_runs < 0:
        parser.error("--blocks and --memory-runs: 0 or more")
    if args.against_monitor and not (args.noise or args.alarm or args.by):
        parser.error("--against-monitor: give the mode to cost (--noise, --alarm or --by)")
    if args.floor and (args.optimizer != "sgd" or not args.blocks):
        parser.error(
            "--floor reads SGD's momentum buffers and is timed: --optimizer sgd, --blocks ≥ 2"
        )
    if args.blocks == 1:
        parser.error("--blocks: at least 2 (the quartiles of the block ratios need them)")
    if args.memory_runs and not Path("/proc/self/clear_refs").exists():
        parser.error("peak memory needs Linux's /proc/self/clear_refs: pass --memory-runs 0")
    args.models = ["params"] if args.scaling else args.models or ["transformer", "cnn", "mlp"]
    return args


def main() -> None:
    args = arguments()
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="inertia")  # alarms
    if args.peak_child:
        peak_child(json.loads(args.peak_child))
        return
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # a converging `params` model would slow every pass
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), float32, {args.optimizer}, "
        f"every={args.every}, noise={args.noise}, alarm={args.alarm}, by={args.by}, "
        f"{args.clock} time, {args.blocks} alternating blocks of "
        f"~{args.block_steps or args.block_seconds}"
        f"{' steps' if args.block_steps else ' s'} each way, memory: smallest of "
        f"{args.memory_runs} fresh processes"
        + (", baseline: the default monitor" if args.against_monitor else "")
    )
    print(HEADER)
    targets = args.every == 1 and not (args.noise or args.alarm or args.by)
    for name in args.models:
        for size in args.sizes or FAMILIES[name].sizes:
            print(table_row(name, size, measure(name, size, args), targets), flush=True)


if __name__ == "__main__":
    main()
