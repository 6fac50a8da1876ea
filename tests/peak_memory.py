"""Peak resident memory of a few training steps of a 3.2M-parameter float32 MLP, with or without
an InertiaMonitor (tests/test_monitor_scale.py runs it in fresh processes).

    python tests/peak_memory.py CONFIG MICROBATCHES      (CONFIG: JSON monitor keywords or null)

Prints {"params": N, "peak_mb": VmHWM}, the peak over the steps after two warm-up steps
(resident memory then, the monitor's buffers included, and what the steps add to it).

    python tests/peak_memory.py report LEDGER.csv OUT

runs `inertia report LEDGER.csv --out OUT` and prints {"status": exit status, "base_mb": resident
memory with the modules imported, "peak_mb": VmHWM of the whole process, "seconds": wall time
of the report} (tests/test_report.py).
"""

from __future__ import annotations

import json
import sys

import torch

from inertia import InertiaMonitor


def peak_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak() -> float:
    """Restart VmHWM from the resident memory now, and return that (MB)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    with open("/proc/self/status") as status:
        return next(int(s.split()[1]) / 1024 for s in status if s.startswith("VmRSS"))


def report(ledger: str, out: str) -> None:
    import time

    import inertia.report  # noqa: F401  (the modules the report needs, in the base)
    from inertia.cli import main as cli

    base = reset_peak()
    start = time.perf_counter()
    status = cli(["report", ledger, "--out", out])
    seconds = time.perf_counter() - start
    print(json.dumps({"status": status, "base_mb": base, "peak_mb": peak_mb(), "seconds": seconds}))


def main() -> None:
    if sys.argv[1] == "report":
        report(*sys.argv[2:4])
        return
    config, micro = json.loads(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)  # one allocation pattern: the peak does not depend on thread timing
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 2000),
        torch.nn.Tanh(),
        torch.nn.Linear(2000, 1536),
        torch.nn.Tanh(),
        torch.nn.Linear(1536, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    monitor = None if config is None else InertiaMonitor(opt, **config)
    x, y = torch.randn(16, 64), torch.randn(16, 10)
    for step in range(8):
        if step == 2:  # the optimizer's state exists and allocations have settled: from here
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # VmHWM restarts from the resident memory now
        opt.zero_grad()
        for _ in range(micro):
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            if monitor is not None:
                monitor.observe(loss, accumulate=micro > 1)
        opt.step()
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"params": params, "peak_mb": peak_mb()}))


if __name__ == "__main__":
    main()
