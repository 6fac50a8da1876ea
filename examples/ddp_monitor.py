"""Distributed training with `InertiaMonitor`: 2-process DDP (or FSDP2) on the CPU, gloo.

Each rank trains on its own shard of the data (DistributedSampler). Under DDP the monitor's
norms are global and the potential is the mean loss over ranks; `noise="ranks"` estimates the
gradient noise from the ranks' local gradients (read by a communication hook before DDP's
all-reduce, McCandlish et al.'s two-batch estimator). Under FSDP2 (`--fsdp`, `fully_shard`)
each rank books its shard and the norms are summed; the noise estimate there is
"fluctuation". Only rank 0 writes DIR/ledger.csv.

    torchrun --nproc_per_node 2 examples/ddp_monitor.py [--quick] [--fsdp] [--out DIR]

(`python -m torch.distributed.run --standalone --nproc_per_node 2 …` is the same launcher.)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from inertia import InertiaMonitor


def regression(samples: int) -> torch.utils.data.TensorDataset:
    """y = tanh(x·w) + label noise, the same on every rank (seeded)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 16, generator=generator)
    w = torch.randn(16, 1, generator=generator) / 4
    y = torch.tanh(x @ w) + 0.1 * torch.randn(samples, 1, generator=generator)
    return torch.utils.data.TensorDataset(x, y)


def main(argv: list[str] | None = None) -> dict[str, float] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard) instead of DDP")
    parser.add_argument("--out", type=Path, default=Path("example-output/ddp"))
    args = parser.parse_args(argv)
    if "RANK" not in os.environ:
        raise SystemExit("launch with: torchrun --nproc_per_node 2 examples/ddp_monitor.py")
    epochs, samples = (2, 512) if args.quick else (20, 8192)

    # --8<-- [start:distributed]
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank
    model: nn.Module = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1))
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        noise = {"noise": "fluctuation"}
    else:
        model = nn.parallel.DistributedDataParallel(model)
        noise = {"noise": "ranks", "model": model}  # the DDP module: its communication hook
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = InertiaMonitor(optimizer, log_dir=args.out if rank == 0 else None, **noise)

    data = regression(samples)
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=world, rank=rank, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=16, sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            monitor.observe(loss, batch_size=len(x))  # this rank's batch: the global one is the sum
            optimizer.step()
    monitor.detach()
    # --8<-- [end:distributed]

    ledger = monitor.ledger  # the same rows on every rank: global norms, the mean loss
    result = {
        "world": world,
        "rows": len(ledger["step"]),
        "first_loss": float(ledger["loss"][0]),
        "last_loss": float(ledger["loss"][-1]),
        "dissipated": float(ledger["dissipated"][-1]),
        "injected": float(ledger["injected"][-1]),
        "noise_scale": float(ledger["noise_scale"][-1]),
    }
    if rank == 0:
        print(
            f"{'FSDP2' if args.fsdp else 'DDP'} × {world}: {result['rows']} rows; loss "
            f"{result['first_loss']:.4f} → {result['last_loss']:.4f}; dissipated "
            f"{result['dissipated']:.4f}; injected {result['injected']:.4f}; "
            f"noise scale {result['noise_scale']:.1f}"
        )
        (args.out / "summary.json").write_text(json.dumps(result, indent=2))
    # Drop this function's references to the model and its last graph and collect, before
    # the group goes: without this, FSDP2 on gloo aborted at the interpreter's exit in about
    # 1 run in 8 ("terminate called without an active exception", with or without the
    # monitor); with it, none in 52 runs.
    del model, optimizer, monitor, ledger, loss, x, y
    gc.collect()
    dist.barrier()  # both ranks done before the group goes
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
