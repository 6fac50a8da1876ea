"""`InertiaMonitor(optimizer, scaler=...)` under a `torch.amp.GradScaler`: the noise it reads
from scaled gradients is unscaled, and an iteration whose step the scaler skips is flagged, with
or without gradient accumulation, its losses kept apart from the next iteration's."""

from __future__ import annotations

import pytest
import torch

from inertia import InertiaMonitor
from inertia.monitor import SKIPPED
from workloads import digits_batches, digits_mlp

NOISE_COLUMNS = ("noise_trace", "noise_scale")


def train(noise: str, scaled: bool, micro: int, steps: int = 12):
    """AdamW on the digits MLP, `micro` micro-batches of 16 per step; with `scaled`, every
    backward through a GradScaler (S = 2¹⁰, growing ×2 every 4 iterations)."""
    torch.manual_seed(0)
    model = digits_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=4) if scaled else None
    monitor = InertiaMonitor(opt, noise=noise, scaler=scaler)
    batches = digits_batches(16)
    for _ in range(steps):
        opt.zero_grad()
        for _ in range(micro):
            x, y = next(batches)
            per_sample = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
            loss = per_sample.mean()
            if noise == "per_sample":
                monitor.observe(loss, accumulate=micro > 1, per_sample=per_sample)
            (loss / micro if scaler is None else scaler.scale(loss / micro)).backward()
            if noise != "per_sample":
                monitor.observe(loss, accumulate=micro > 1, batch_size=16)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
    return monitor.ledger


@pytest.mark.parametrize(
    ("noise", "micro"), [("microbatch", 4), ("per_sample", 2), ("fluctuation", 1)]
)
def test_a_scaled_run_has_the_noise_and_energies_of_the_unscaled_run(noise, micro):
    plain, scaled = train(noise, False, micro), train(noise, True, micro)
    assert plain["noise_trace"][1:].isfinite().all()
    for name in (*NOISE_COLUMNS, "kinetic", "loss", "inertia", "injected"):
        torch.testing.assert_close(scaled[name], plain[name], rtol=1e-6, atol=0, equal_nan=True)


@pytest.mark.parametrize("micro", [1, 2])
def test_a_skipped_step_is_flagged_and_its_losses_stay_in_its_row(micro):
    """Iteration 1 overflows in its first micro-batch (a finite loss whose gradient, scaled by
    2¹⁶, is infinite): the scaler skips its step. Its row, SKIPPED at θ_1, has the mean of its
    own micro-batch losses; the next row, at the same θ_1, only those of iteration 2."""
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    monitor = InertiaMonitor(opt, scaler=scaler)
    x = torch.tensor([[1.0, 2.0]])
    losses: list[list[float]] = []
    for i in range(4):
        opt.zero_grad()
        losses.append([])
        for j in range(micro):
            overflow = i == 1 and j == 0
            loss = model(x).sum() * 1e37 if overflow else model(x * (j + 1)).pow(2).mean()
            scaler.scale(loss / micro).backward()
            monitor.observe(loss, accumulate=micro > 1)
            losses[-1].append(loss.item())
        scaler.step(opt)
        scaler.update()
    ledger = monitor.ledger
    assert ledger["step"].tolist() == [0, 1, 1, 2]
    assert ledger["flag"].tolist() == [0, SKIPPED, 0, 0]
    expected = [sum(x) / micro for x in losses]
    torch.testing.assert_close(ledger["loss"], torch.tensor(expected, dtype=torch.float64))


def test_scaler_must_be_a_grad_scaler():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(ValueError, match="scaler"):
        InertiaMonitor(opt, scaler=2.0**16)
