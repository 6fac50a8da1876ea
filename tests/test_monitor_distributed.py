"""InertiaMonitor under 2-process gloo DDP and FSDP2: the ledger equals a single-process run on
the same global batch (norms are global, the potential is the mean loss over ranks)."""

from __future__ import annotations

import gc
import warnings

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
    del model  # FSDP2's state goes while the group is alive (gloo may abort at exit otherwise)
    gc.collect()
    dist.barrier()
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


# ---------------------------------------------------------------- the two-batch noise estimate

TWO_BATCH_STEPS, LOCAL_BATCH, N, D = 400, 16, 4000, 5


def regression_data() -> tuple[torch.Tensor, torch.Tensor]:
    """y = x·w* + 1 + 0.5·ε on N points, the same on every rank."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(N, D, dtype=torch.float64, generator=gen)
    w = torch.linspace(-2.0, 2.0, D, dtype=torch.float64)
    return x, x @ w + 1.0 + 0.5 * torch.randn(N, dtype=torch.float64, generator=gen)


def exact_noise(weight: torch.Tensor, bias: torch.Tensor, x, y) -> tuple[float, float]:
    """(tr C, ‖∇L‖²) over the data at (weight, bias): ℓᵢ = (xᵢ·w + b − yᵢ)², a batch drawn
    with replacement has Cov = C/B, C the covariance of ∇ℓᵢ."""
    r = x @ weight + bias - y
    grads = 2 * r[:, None] * torch.cat([x, torch.ones(N, 1, dtype=torch.float64)], 1)
    mean = grads.mean(0)
    return float((grads - mean).square().sum(1).mean()), float(mean @ mean)


def _two_batch_worker(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model = torch.nn.Linear(D, 1).double()
    torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
    ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=1e-6)  # a bucket each
    opt = torch.optim.SGD(ddp.parameters(), lr=0.002)
    monitor = InertiaMonitor(opt, noise="ranks", model=ddp)
    x, y = regression_data()
    gen = torch.Generator().manual_seed(100 + rank)
    expected, exact = [], []
    for _ in range(TWO_BATCH_STEPS):
        idx = torch.randint(0, N, (LOCAL_BATCH,), generator=gen)
        opt.zero_grad()
        out = ddp(x[idx]).squeeze(1)
        loss = ((out - y[idx]) ** 2).mean()
        # this rank's gradient, independently: 2/b Σ rᵢ (xᵢ, 1)
        r = (out - y[idx]).detach()
        local = 2 * (r[:, None] * torch.cat([x[idx], torch.ones(LOCAL_BATCH, 1)], 1)).mean(0)
        loss.backward()
        locals_ = [torch.empty_like(local) for _ in range(WORLD)]
        dist.all_gather(locals_, local)
        mean = torch.stack(locals_).mean(0)
        squares = torch.stack([g @ g for g in locals_])
        expected.append(float((squares.mean() - mean @ mean) / (WORLD - 1)))
        exact.append(exact_noise(model.weight[0].detach(), model.bias.detach(), x, y))
        monitor.observe(loss, batch_size=LOCAL_BATCH)
        opt.step()
    if rank == 0:
        ledger = {name: monitor.ledger[name] for name in ("noise_trace", "noise_scale")}
        torch.save({"ledger": ledger, "expected": expected, "exact": exact}, out_file)
    monitor.detach()  # the communication hook and DDP's reducer go before the process group
    del monitor, ddp
    dist.barrier()
    dist.destroy_process_group()


def test_ranks_two_batch_noise_is_mcCandlish_estimator_and_unbiased(tmp_path):
    """noise="ranks" on 2-process DDP linear regression (b = 16 per rank, B = 32), far from
    the optimum: the row's noise trace is the two-batch estimate (mean_r‖g_r‖² − ‖ḡ‖²)/(W − 1)
    from the ranks' own gradients, computed here independently, to round-off (one bucket per
    parameter: the hook's per-backward reset); its mean over 400 steps is the exact
    tr(C)/B within 4 standard errors; the noise scale tracks B_simple = tr(C)/‖∇L‖²."""
    out = tmp_path / "two_batch.pt"
    mp.spawn(_two_batch_worker, args=(str(tmp_path / "init"), str(out)), nprocs=WORLD, join=True)
    saved = torch.load(out)
    trace = saved["ledger"]["noise_trace"]
    expected = torch.tensor(saved["expected"], dtype=torch.float64)
    torch.testing.assert_close(trace, expected, rtol=1e-10, atol=1e-12)
    exact = torch.tensor(saved["exact"], dtype=torch.float64)
    ratio = trace / (exact[:, 0] / (WORLD * LOCAL_BATCH))
    stderr = float(ratio.std()) / len(ratio) ** 0.5
    assert abs(float(ratio.mean()) - 1) < 4 * stderr, (float(ratio.mean()), stderr)
    assert stderr < 0.1
    # the column is the ratio of EMAs (β = 0.99) of S = B·T and |G|² = ‖ḡ‖² − T: against the
    # same EMAs of the exact tr C and ‖∇L‖², within 4 standard errors of an EMA of S, whose
    # variance is (1 − β)/(1 + β) of one row's
    beta, noise, signal = 0.99, 0.0, 0.0
    for trace_c, gradient in saved["exact"]:
        noise, signal = beta * noise + (1 - beta) * trace_c, beta * signal + (1 - beta) * gradient
    scale = float(saved["ledger"]["noise_scale"][-1])
    stderr = ((1 - beta) / (1 + beta)) ** 0.5 * float(ratio.std())
    assert abs(scale / (noise / signal) - 1) < 4 * stderr, (scale, noise / signal, stderr)
    assert float(exact[-1, 1]) > 2 * float(exact[-1, 0]) / (WORLD * LOCAL_BATCH)  # far from θ*


# ------------------------------------------------------------- a loss observed on some ranks

NO_LOSS = "no loss was observed for step 0 on 1 of 2 ranks"


def _no_loss_worker(rank: int, init_file: str, out_file: str) -> None:
    """Rank 0 observes every step's loss, rank 1 none for steps 0 and 1: with on_nan="flag"
    four steps, then with on_nan="raise" one."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = (t[rank * 4 : (rank + 1) * 4] for t in batch())
    out: dict[str, object] = {}
    for on_nan, steps in (("flag", 4), ("raise", 1)):
        monitor = InertiaMonitor(opt, on_nan=on_nan)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                for k in range(steps):
                    opt.zero_grad()
                    loss = ((model(x) - y) ** 2).mean()
                    loss.backward()
                    if rank == 0 or k >= 2:
                        monitor.observe(loss)
                    opt.step()
            except FloatingPointError as error:
                out["raised"] = str(error)
        out[on_nan] = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        out[f"{on_nan} ledger"] = {name: monitor.ledger[name].tolist() for name in ("loss", "flag")}
        monitor.detach()
    torch.save(out, f"{out_file}.{rank}")
    del model
    dist.barrier()
    dist.destroy_process_group()


def test_a_step_with_no_loss_on_one_rank_says_so_on_every_rank(tmp_path):
    """DDP: rank 0, which writes the sinks, observed its loss; rank 1 did not. Both ranks say
    that no loss was observed on 1 of the 2 ranks (not "non-finite loss nan"), in the warning
    and with on_nan="raise" in the error, from the row's one all-reduce."""
    out = tmp_path / "no_loss"
    mp.spawn(_no_loss_worker, args=(str(tmp_path / "init"), str(out)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        saved = torch.load(f"{out}.{rank}")
        (warned,) = saved["flag"]  # one warning for the run of two rows
        assert warned.startswith(f"inertia: {NO_LOSS}, so its row is recorded"), (rank, warned)
        assert "on every rank, call monitor.observe(loss)" in warned
        assert "non-finite" not in warned
        ledger = saved["flag ledger"]
        assert ledger["flag"] == [1, 1, 0, 0], rank
        assert all(v != v for v in ledger["loss"][:2]) and all(v == v for v in ledger["loss"][2:])
        assert saved["raised"].startswith(f"{NO_LOSS}: on every rank, call monitor.observe")
        assert saved["raise"] == [] and saved["raise ledger"]["flag"] == []
