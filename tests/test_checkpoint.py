"""Monitor checkpoints across layouts: a checkpoint written by the single-class monitor of
earlier releases (layout 1, `tests/data/monitor_state_v1.pt`, written at commit bb8e13e)
loads into today's monitor and continues the same ledger (to round-off: today's monitor sums
per parameter tensor on the device, the old one over a flat float64 copy; its friction is
today's); the current layout
resumes bit for bit through torch.save with weights_only; what cannot be read is refused by
name."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from inertia import InertiaMonitor

F64 = torch.float64
DATA = Path(__file__).parent / "data" / "monitor_state_v1.pt"
CONFIGS = {
    "per_sample_alarm": {"noise": "per_sample", "alarm": True},
    "two_step_alarm": {"alarm": True},
    "microbatch": {"noise": "microbatch"},
}


def resume(saved: dict, config: dict, checkpoint: dict, batches: torch.Tensor) -> InertiaMonitor:
    """The saved run's model and optimizer from `checkpoint`, a fresh monitor loaded from its
    state, and the batches of the steps after it (the checkpoint itself is left untouched: an
    optimizer loads its tensors without copying them)."""
    checkpoint = copy.deepcopy(checkpoint)
    x, y = saved["x"], saved["y"]
    params = [torch.nn.Parameter(t.clone()) for t in checkpoint["params"]]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.01)
    opt.load_state_dict(checkpoint["optimizer"])
    monitor = InertiaMonitor(opt, **config)
    monitor.load_state_dict(checkpoint["monitor"])

    def losses_of(idx: torch.Tensor) -> torch.Tensor:
        return ((torch.tanh(x[idx] @ params[0]) @ params[1] - y[idx]) ** 2).sum(1)

    for idx in batches:
        opt.zero_grad()
        if config.get("noise") == "microbatch":
            for part in (idx[:8], idx[8:]):
                loss = losses_of(part).mean()
                (loss / 2).backward()
                monitor.observe(loss, accumulate=True)
        else:
            losses = losses_of(idx)
            loss = losses.mean()
            if config.get("noise"):
                monitor.observe(loss, per_sample=losses)
                loss.backward()
            else:
                loss.backward()
                monitor.observe(loss)
        opt.step()
    return monitor


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_layout_1_checkpoint_continues_the_same_ledger(name):
    """Every column layout 1 wrote continues; the friction is today's (docs/theory.md §4): each
    step adds ½(1 − μ)P_k = (1 − μ)(shadow − inertia) of the row before to layout 1's
    (1 − μ²)K_k, and the residual moves with it, except on the first step after the resume,
    whose P_k layout 1 did not keep (booked without it)."""
    saved = torch.load(DATA, weights_only=True)
    run = saved[name]
    monitor = resume(saved, CONFIGS[name], run["checkpoint"], run["batches"])
    ledger, rows = monitor.ledger, run["rows"]
    for column, expected in rows.items():
        if column in ("dissipated", "residual"):
            continue
        assert torch.equal(ledger[column].isnan(), expected.isnan()), column
        scale = float(expected.nan_to_num().abs().max()) or 1.0
        torch.testing.assert_close(
            ledger[column].nan_to_num(), expected.nan_to_num(), rtol=0, atol=1e-12 * scale
        )
    mu = run["checkpoint"]["optimizer"]["param_groups"][0]["momentum"]
    power_term = (1 - mu) * (rows["shadow"] - rows["inertia"])[:-1]
    added = torch.cat([torch.zeros(1, dtype=F64), power_term]).cumsum(0)
    scale = float(rows["inertia"].abs().max())
    for column in ("dissipated", "residual"):
        torch.testing.assert_close(
            ledger[column] - rows[column], added, rtol=0, atol=1e-12 * scale, msg=column
        )
    assert float(power_term.abs().max()) > 1e-3


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_current_layout_resumes_bit_for_bit_through_torch_save(name, tmp_path):
    """Resume the layout-1 run once, checkpoint it in today's layout halfway, and resume again:
    the second resume books the rows an uninterrupted resume books, bit for bit."""
    saved = torch.load(DATA, weights_only=True)
    run, config = saved[name], CONFIGS[name]
    whole = resume(saved, config, run["checkpoint"], run["batches"]).ledger
    first = resume(saved, config, run["checkpoint"], run["batches"][:6])
    opt = first.optimizer
    torch.save(
        {
            "params": [p.detach().clone() for p in opt.param_groups[0]["params"]],
            "optimizer": opt.state_dict(),
            "monitor": first.state_dict(),
        },
        tmp_path / "ckpt.pt",
    )
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert checkpoint["monitor"]["version"] == 4
    second = resume(saved, config, checkpoint, run["batches"][6:])
    for column in run["rows"]:
        got, expected = second.ledger[column], whole[column][6:]
        assert torch.equal(got.isnan(), expected.isnan()), column
        assert torch.equal(got.nan_to_num(), expected.nan_to_num()), column


def test_a_checkpoint_that_cannot_be_read_is_refused_by_name():
    saved = torch.load(DATA, weights_only=True)
    state = saved["two_step_alarm"]["checkpoint"]["monitor"]
    theta = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    monitor = InertiaMonitor(torch.optim.SGD([theta], lr=0.1), alarm=True)
    with pytest.raises(ValueError, match="parameter sizes"):
        monitor.load_state_dict(state)  # another model
    with pytest.raises(ValueError, match="layout version 7"):
        monitor.load_state_dict({**monitor.state_dict(), "version": 7})
    with pytest.raises(ValueError, match="not a monitor checkpoint"):
        monitor.load_state_dict({"step": 3})
    assert monitor.step == 0


def test_a_failed_load_leaves_the_monitor_as_it_was():
    """Everything is read before anything is applied: a state whose books are damaged, or a
    state saved without the alarm loaded into a monitor with one, changes nothing or loads."""
    theta = torch.nn.Parameter(torch.ones(3, dtype=F64))
    opt = torch.optim.SGD([theta], lr=0.1, momentum=0.9)
    monitor = InertiaMonitor(opt, alarm=True)
    for _ in range(3):
        opt.zero_grad()
        loss = (theta**2).sum()
        loss.backward()
        monitor.observe(loss)
        opt.step()
    state = monitor.state_dict()
    damaged = {**state, "books": {**state["books"], "last_kinetic": "x"}}
    fresh = InertiaMonitor(opt, alarm=True)
    with pytest.raises(ValueError, match="not a checkpoint of this monitor"):
        fresh.load_state_dict(damaged)
    assert fresh.step == 0 and fresh.state_dict()["books"]["last_inertia"] is None
    no_alarm = InertiaMonitor(opt).state_dict()  # saved without the alarm: a fresh alarm
    fresh.load_state_dict({**state, "alarm": no_alarm["alarm"]})
    assert fresh.step == monitor.step
    for name in ("books", "probe"):
        with pytest.raises(ValueError, match="missing"):
            fresh.load_state_dict({k: v for k, v in state.items() if k != name})


def test_a_report_checkpoint_into_a_monitor_with_buffers_says_so():
    from inertia.optim import InertiaSGD

    theta = torch.nn.Parameter(torch.ones(3, dtype=F64))
    opt = InertiaSGD([theta], lr=0.1)
    reported = InertiaMonitor(opt)
    with pytest.raises(ValueError, match="report"):
        InertiaMonitor(opt, alarm=True).load_state_dict(reported.state_dict())
