"""Peak memory stays flat on long runs: `simulate` for 10⁶ steps with record_every=1000, and the
monitor for 10⁵ training steps streaming to CSV and JSONL. Prints the resident set size (RSS)
at 10%, 50% and 100% of each run and its growth after the first 10%.

    python benchmarks/memory.py [--sim-steps 1000000] [--monitor-steps 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

import inertia
from inertia.monitor import JSONLSink

MB = 2**20


class RSSSampler(threading.Thread):
    """Samples this process's RSS every `period` seconds while a run goes on."""

    def __init__(self, period: float = 0.05):
        super().__init__(daemon=True)
        self.period, self.samples, self._done = period, [], threading.Event()
        self._process = psutil.Process()

    def run(self) -> None:
        start = time.perf_counter()
        while not self._done.is_set():
            self.samples.append((time.perf_counter() - start, self._process.memory_info().rss))
            time.sleep(self.period)

    def stop(self) -> list[tuple[float, int]]:
        self._done.set()
        self.join()
        return self.samples


def report(name: str, marks: dict[str, int]) -> None:
    first = marks["10%"]
    cells = "  ".join(f"{k}: {v / MB:7.1f} MB" for k, v in marks.items())
    print(f"{name:44s} {cells}  growth after 10%: {(max(marks.values()) - first) / MB:+.1f} MB")


def simulate_run(steps: int) -> None:
    dyn = inertia.Dynamics(inertia.systems.DoubleWell(4), gamma=0.5, sigma=0.3)
    sampler = RSSSampler()
    sampler.start()
    inertia.simulate(dyn, torch.ones(4), dt=0.01, steps=steps, paths=16, seed=0, record_every=1000)
    samples = sampler.stop()
    end = samples[-1][0]

    def peak_until(fraction: float) -> int:
        return max(rss for t, rss in samples if t <= fraction * end)

    report(
        f"simulate, {steps} steps, record_every=1000",
        {"10%": peak_until(0.1), "50%": peak_until(0.5), "100%": peak_until(1.0)},
    )


def monitor_run(steps: int) -> None:
    process = psutil.Process()
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        monitor = inertia.InertiaMonitor(
            opt, log_dir=folder, sinks=[JSONLSink(Path(folder) / "l.jsonl")]
        )
        x, y = torch.randn(32, 16), torch.randn(32, 1)
        marks, peak = {}, 0
        for step in range(1, steps + 1):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            monitor.observe(loss)
            opt.step()
            if step % 1000 == 0:
                peak = max(peak, process.memory_info().rss)
            for label, fraction in (("10%", 0.1), ("50%", 0.5), ("100%", 1.0)):
                if step == int(fraction * steps):
                    marks[label] = peak
        monitor.detach()
        rows = sum(1 for _ in (Path(folder) / "ledger.csv").open()) - 1
    report(f"monitor, {steps} steps, CSV + JSONL ({rows} rows)", marks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim-steps", type=int, default=1_000_000)
    parser.add_argument("--monitor-steps", type=int, default=100_000)
    args = parser.parse_args()
    print(f"torch {torch.__version__}; peak RSS up to each point of the run")
    simulate_run(args.sim_steps)
    monitor_run(args.monitor_steps)


if __name__ == "__main__":
    main()
