"""InertiaMonitor under 2-process gloo DDP and FSDP2: the ledger equals a single-process run on
the same global batch (norms are global, the potential is the mean loss over ranks)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from inertia import InertiaMonitor
from inertia.monitor import MONITOR_COLUMNS
from inertia.optim import InertiaSGD

STEPS, WORLD = 12, 2


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    ).double()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return x, torch.sin(x).sum(1, keepdim=True)


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    # lr high enough that the brake fires: its decisions read global norms on every rank
    "inertia": lambda ps: InertiaSGD(ps, lr=2.0, momentum=0.9, weight_decay=0.01),
}


def train(model, x, y, optimizer) -> dict[str, list[float]]:
    opt = OPTIMIZERS[optimizer](model.parameters())
    # SGD with the alarm: the margin's dot products must be global too; InertiaSGD without it,
    # so that its rows are booked from its report
    monitor = InertiaMonitor(opt, alarm=optimizer == "sgd")
    for _ in range(STEPS):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        monitor.observe(loss)
        opt.step()
    ledger = {name: monitor.ledger[name].tolist() for name in MONITOR_COLUMNS}
    ledger["brakes"] = [float(sum(g.get("brakes", 0) for g in opt.param_groups))]
    return ledger


def _worker(rank: int, mode: str, optimizer: str, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    model = make_model()
    if mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)
    x, y = batch()
    shard = slice(rank * 4, (rank + 1) * 4)
    ledger = train(model, x[shard], y[shard], optimizer)
    if rank == 0:
        torch.save(ledger, out_file)
    dist.destroy_process_group()


@pytest.mark.parametrize("optimizer", ["sgd", "inertia"])
@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_distributed_ledger_equals_single_process_on_the_global_batch(mode, optimizer, tmp_path):
    """For InertiaSGD this also checks its brake: same decisions as one process."""
    if mode == "fsdp2":
        pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch ≥ 2.6")
        from torch.distributed import fsdp

        if not hasattr(fsdp, "fully_shard"):
            pytest.skip("this torch has no FSDP2 fully_shard")
    out = tmp_path / "ledger.pt"
    mp.spawn(
        _worker, args=(mode, optimizer, str(tmp_path / "init"), str(out)), nprocs=WORLD, join=True
    )
    distributed = torch.load(out)
    single = train(make_model(), *batch(), optimizer)
    assert optimizer == "sgd" or single["brakes"][0] > 0
    for name in [*MONITOR_COLUMNS, "brakes"]:
        torch.testing.assert_close(
            torch.tensor(distributed[name]),
            torch.tensor(single[name]),
            rtol=1e-10,
            atol=1e-12,
            equal_nan=True,
            msg=name,
        )
    assert max(single["kinetic"]) > 0
    assert optimizer != "sgd" or all(m == m for m in single["margin"][2:])  # margins compared
