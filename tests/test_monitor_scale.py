"""The monitor at scale (docs/monitor.md, "Memory, host synchronisation, devices"): at most one
host synchronisation per booked row and none between rows, a few bytes per parameter, the
same ledger on every device, and per-layer books checked against values recomputed from
recorded parameters and per-sample gradients."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from inertia import InertiaMonitor, Ledger
from inertia.report import ledger_report

F64 = torch.float64
SYNCS = ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine"))]  # fmt: skip


@contextmanager
def counting_syncs(exempt: set[int]):
    """Count calls of the host-synchronising Tensor methods, except on tensors in `exempt`."""
    calls = {"n": 0}
    originals = {name: getattr(torch.Tensor, name) for name in SYNCS}

    def counted(name):
        original = originals[name]

        def method(self, *args, **kwargs):
            if id(self) not in exempt:
                calls["n"] += 1
            return original(self, *args, **kwargs)

        return method

    for name in SYNCS:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def count_syncs(monitor_kwargs: dict | None, optimizer: str, steps: int, micro: int) -> int:
    """Host synchronisations over `steps` training steps (with `micro` micro-batches each) of a
    small MLP, with a monitor of `monitor_kwargs` (None: without one). Adam's step counters
    are CPU scalars by PyTorch's design (not capturable): reading one waits for no device, so
    it is exempt."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    monitor = None if monitor_kwargs is None else InertiaMonitor(opt, **monitor_kwargs)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    per_sample = monitor_kwargs is not None and monitor_kwargs.get("noise") == "per_sample"

    def step() -> None:
        opt.zero_grad()
        for _ in range(micro):
            losses = ((model(x) - y) ** 2).squeeze(1)
            loss = losses.mean()
            if per_sample:
                monitor.observe(loss, accumulate=micro > 1, per_sample=losses)
            loss.backward()
            if monitor is not None and not per_sample:
                monitor.observe(loss, accumulate=micro > 1)
        opt.step()

    step()  # the optimizer's state exists from here on
    exempt = {id(s["step"]) for s in opt.state.values() if "step" in s}
    with counting_syncs(exempt) as calls:
        for _ in range(steps):
            step()
    return calls["n"]


@pytest.mark.parametrize(
    ("kwargs", "optimizer", "micro"),
    [
        ({}, "sgd", 1),
        ({"every": 5}, "sgd", 1),
        ({"alarm": True}, "sgd", 1),
        ({"noise": "microbatch", "alarm": True}, "sgd", 2),
        ({"noise": "fluctuation"}, "sgd", 1),
        ({"noise": "per_sample"}, "sgd", 1),
        ({"every": 5, "noise": "microbatch"}, "sgd", 2),
        ({}, "adamw", 1),
        ({"by": "group", "noise": "fluctuation"}, "sgd", 1),
    ],
    ids=str,
)
def test_at_most_one_host_synchronisation_per_booked_row(kwargs, optimizer, micro):
    """Counted on CPU as calls of item, tolist, __float__, __int__, __bool__, cpu and numpy on
    tensors, net of the same loop without the monitor: one per booked row (the row's values
    come to the host together), none on the steps between rows."""
    steps = 20
    extra = count_syncs(kwargs, optimizer, steps, micro) - count_syncs(
        None, optimizer, steps, micro
    )
    rows = math.ceil(steps / kwargs.get("every", 1))
    assert extra <= rows


def test_the_counter_sees_a_synchronisation():
    """The count above is not vacuous: a float() of a tensor is counted."""
    with counting_syncs(set()) as calls:
        float(torch.ones(()))
    assert calls["n"] == 1


SCRIPT = Path(__file__).with_name("peak_memory.py")


def peak(config: dict | None, micro: int) -> tuple[int, float]:
    """(parameters, peak resident MB) of a fresh training process; the smallest of five runs,
    as now and then a run's peak is ~10 MB higher, with or without a monitor (the timing of
    the training's own allocations; under the parallel suite's load all three of three runs
    once were)."""
    results = []
    for _ in range(5):
        out = subprocess.run(
            [sys.executable, str(SCRIPT), json.dumps(config), str(micro)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "MALLOC_ARENA_MAX": "1"},
        )
        results.append(json.loads(out.stdout))
    return results[0]["params"], min(r["peak_mb"] for r in results)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize(
    ("config", "micro", "budget"),
    [({}, 1, 6), ({"alarm": True}, 1, 10), ({"noise": "microbatch"}, 2, 14)],
    ids=["default", "alarm", "microbatch"],
)
def test_extra_peak_memory_per_float32_parameter(config, micro, budget):
    """Fresh processes, a 3.2M-parameter float32 MLP: the peak resident memory the monitor adds,
    divided by the parameters. Its buffers hold 4 bytes a parameter (θ, then −Δθ, in float32),
    8 with the alarm's previous step or the micro-batch increment; reductions widen to float64
    a block at a time."""
    params, base = peak(None, micro)
    _, monitored = peak(config, micro)
    per_parameter = (monitored - base) * 2**20 / params
    assert per_parameter <= budget, f"{per_parameter:.2f} bytes ({base:.1f} → {monitored:.1f} MB)"


def mlp_run(device: str, steps: int = 12, empty_group: bool = False, **monitor_kwargs):
    """A 4-8-3 tanh MLP on `device`, trained by SGD with momentum and weight decay (after an
    empty parameter group if `empty_group`); returns the monitor, the recorded parameters and
    the per-sample losses of each step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model = model.double().to(device)
    groups = [{"params": []}] if empty_group else []
    groups.append({"params": list(model.parameters())})
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=0.01)
    monitor = InertiaMonitor(opt, model=model, **monitor_kwargs)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=gen, dtype=F64).to(device)
    y = torch.randn(32, 3, generator=gen, dtype=F64).to(device)
    history = []
    for _ in range(steps):
        history.append([p.detach().clone() for p in model.parameters()])
        opt.zero_grad()
        losses = ((model(x) - y) ** 2).sum(1)
        monitor.observe(losses.mean(), per_sample=losses)
        losses.mean().backward()
        opt.step()
    return monitor, history, model, x, y


@pytest.mark.parametrize("device", DEVICES)
def test_the_ledger_is_the_same_on_every_device(device):
    """A run on `device` books the ledger a CPU run books, to float64 round-off, also with an
    empty parameter group first (the monitor's device is its first group's)."""
    on_device = mlp_run(device, empty_group=True, noise="per_sample", alarm=True)[0].ledger
    on_cpu = mlp_run("cpu", noise="per_sample", alarm=True)[0].ledger
    for name in ("kinetic", "potential", "dissipated", "injected", "residual", "noise_trace"):
        torch.testing.assert_close(on_device[name].cpu(), on_cpu[name], rtol=1e-12, atol=1e-15)


def test_per_module_books_equal_values_from_recorded_parameters():
    """by="module": `kinetic/<module>` = ½‖Δθ_module‖²/h², `step_size/<module>` = ‖Δθ_module‖
    from the recorded parameters, and `noise_trace/<module>` = tr(C)/B of the module's
    per-sample gradients, computed here with torch.func; the modules' kinetic energies add
    up to the `kinetic` column."""
    monitor, history, model, x, y = mlp_run("cpu", noise="per_sample", by="module")
    led, h2 = monitor.ledger, 0.1
    names = {"0": [0, 1], "2": [2, 3]}  # the two Linear layers: weight, bias
    for k in range(1, len(history)):
        for module, indices in names.items():
            step = torch.cat([(history[k][i] - history[k - 1][i]).reshape(-1) for i in indices])
            assert float(led[f"kinetic/{module}"][k]) == pytest.approx(
                0.5 * float(step @ step) / h2, rel=1e-12
            )
            assert float(led[f"step_size/{module}"][k]) == pytest.approx(
                float(step.norm()), rel=1e-12
            )
    total = led["kinetic/0"] + led["kinetic/2"]
    torch.testing.assert_close(total, led["kinetic"], rtol=1e-12, atol=0)
    # the noise of the last step, per module, from per-sample gradients
    params = {n: p.detach() for n, p in model.named_parameters()}
    sample_grads = torch.func.vmap(
        torch.func.grad(
            lambda p, xi, yi: ((torch.func.functional_call(model, p, (xi,)) - yi) ** 2).sum()
        ),
        in_dims=(None, 0, 0),
    )({n: history[-1][i] for i, n in enumerate(params)}, x, y)
    for module in names:
        grads = torch.cat([g.reshape(32, -1) for n, g in sample_grads.items() if n[0] == module], 1)
        trace = float(grads.var(0).sum()) / 32
        assert float(led[f"noise_trace/{module}"][-1]) == pytest.approx(trace, rel=1e-10)


def test_a_step_of_one_micro_batch_gives_its_layers_no_noise_and_keeps_the_columns(tmp_path):
    """noise="microbatch" needs two micro-batches: a step with one (the short last step of an
    epoch under accumulation) has no estimate, per layer as in total (NaN), and the ledger,
    the CSV and `inertia report` keep every column (a missing one had broken all three)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = InertiaMonitor(opt, noise="microbatch", by="module", model=model, log_dir=tmp_path)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for micro in (2, 2, 1, 2):
        opt.zero_grad()
        for j in range(micro):
            loss = torch.nn.functional.mse_loss(model(x[8 * j : 8 * j + 8]), y[8 * j : 8 * j + 8])
            (loss / micro).backward()
            monitor.observe(loss, accumulate=True, batch_size=8)
        opt.step()
    monitor.detach()
    for led in (monitor.ledger, Ledger.read_csv(tmp_path / "ledger.csv")):
        for name in ("noise_trace", "noise_trace/0", "noise_trace/2"):
            assert [math.isnan(float(v)) for v in led[name]] == [False, False, True, False], name
    assert ledger_report(tmp_path / "ledger.csv", tmp_path / "report").exists()


def test_per_group_books_and_a_watched_subset():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, dtype=F64))
    b = torch.nn.Parameter(torch.randn(3, dtype=F64))
    opt = torch.optim.SGD(
        [{"params": [a], "lr": 0.1, "name": "first"}, {"params": [b], "lr": 0.05}], momentum=0.5
    )
    by_group = InertiaMonitor(opt, by="group")
    only_b = InertiaMonitor(opt, by="group", params=[b, torch.zeros(3)])  # one not stepped
    for _ in range(5):
        opt.zero_grad()
        loss = (a**2).sum() + (b**4).sum()
        loss.backward()
        by_group.observe(loss)
        only_b.observe(loss)
        opt.step()
    led = by_group.ledger
    assert {"kinetic/first", "kinetic/group1", "step_size/first"} <= set(led)
    torch.testing.assert_close(led["kinetic/first"] + led["kinetic/group1"], led["kinetic"])
    assert "kinetic/first" not in only_b.ledger
    torch.testing.assert_close(only_b.ledger["kinetic/group1"], led["kinetic/group1"])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"by": "layer"}, "by"),
        ({"by": "module"}, "model"),
        ({"by": "module", "model": 3}, "model"),
        ({"by": "module", "model": torch.nn.Linear(2, 2)}, "model"),  # not the trained one
        ({"by": "group", "params": [torch.zeros(2)]}, "params"),  # not the optimizer's
    ],
)
def test_bad_per_layer_arguments_are_named(kwargs, name):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match=f"^{name} must be"):
        InertiaMonitor(opt, **kwargs)
