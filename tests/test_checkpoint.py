"""Monitor checkpoints across layouts: a checkpoint written by the single-class monitor of
earlier releases (layout 1, `tests/data/monitor_state_v1.pt`, written at commit bb8e13e)
loads into today's monitor and continues the same ledger (to round-off: today's monitor sums
per parameter tensor on the device, the old one over a flat float64 copy; its friction is
today's); the current layout
resumes bit for bit through torch.save with weights_only; what cannot be read is refused by
name."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import train_quadratic
from inertia import InertiaMonitor
from inertia.monitor.checkpoint import VERSION

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
            backward_and_observe(monitor, losses_of(idx), per_sample=bool(config.get("noise")))
        opt.step()
    return monitor


def backward_and_observe(monitor: InertiaMonitor, losses: torch.Tensor, per_sample: bool) -> None:
    """The mean of `losses` backward, observed: with the per-sample losses before backward
    (where the estimate takes their gradients), else after."""
    loss = losses.mean()
    if per_sample:
        monitor.observe(loss, per_sample=losses)
        loss.backward()
    else:
        loss.backward()
        monitor.observe(loss)


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
    assert checkpoint["monitor"]["version"] == VERSION
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
    with pytest.raises(ValueError, match=r"books\.last_kinetic must be a list"):
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


# ------------------------------------------ what the first row after a resume reads from before it


def layered(every: int):
    """Full-batch SGD with momentum on a two-layer model, per-layer books by module, the rate
    halved for step 6 (StepLR); returns the model, optimizer, scheduler, monitor and a loop."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    model = model.double()
    x, y = torch.randn(16, 3, dtype=F64), torch.randn(16, 1, dtype=F64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 6, 0.5)
    monitor = InertiaMonitor(opt, every=every, by="module", model=model)

    def steps(n: int) -> None:
        train_quadratic(monitor, n, lambda: ((model(x) - y) ** 2).mean(), sched.step)

    return model, opt, sched, monitor, steps


def resumed(every: int, saved_at: int, total: int, tmp_path: Path, layout=None) -> InertiaMonitor:
    """A run of `total` steps checkpointed after `saved_at` (through torch.save, loaded with
    weights_only) and resumed by fresh objects; `layout` rewrites the monitor's state first."""
    model, opt, sched, monitor, steps = layered(every)
    steps(saved_at)
    state = monitor.state_dict()
    parts = {"model": model, "optimizer": opt, "scheduler": sched}
    saved = {name: part.state_dict() for name, part in parts.items()}
    torch.save({**saved, "monitor": layout(state) if layout else state}, tmp_path / "ckpt.pt")
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model, opt, sched, monitor, steps = layered(every)
    for name, part in {"model": model, "optimizer": opt, "scheduler": sched}.items():
        part.load_state_dict(checkpoint[name])
    monitor.load_state_dict(checkpoint["monitor"])
    steps(total - saved_at)
    return monitor


@pytest.mark.parametrize(("every", "saved_at"), [(1, 6), (3, 6), (3, 7)])
def test_the_first_row_after_a_resume_is_the_uninterrupted_runs(every, saved_at, tmp_path):
    """The first row after a resume reads what the monitor measured before the checkpoint:
    after 6 steps (every=1, every=3), the per-layer K and ‖Δθ‖² of step 5, which its
    `kinetic/<layer>` and `step_size/<layer>` are; after 7 steps with every=3, the h and
    q = h_6/h_5 of row 6's step (the rate halves there), from which the books take the
    schedule energy and friction of steps 6–8. Every column of every row is the uninterrupted
    run's, bit for bit."""
    whole = layered(every)
    whole[4](15)
    expected, got = whole[3].ledger, resumed(every, saved_at, 15, tmp_path).ledger
    first = len(expected["step"]) - len(got["step"])
    assert got["step"].tolist() == expected["step"][first:].tolist()
    for column in expected:
        assert torch.equal(got[column].isnan(), expected[column][first:].isnan()), column
        assert torch.equal(got[column].nan_to_num(), expected[column][first:].nan_to_num()), column
    assert all(
        float(got[f"{q}/{layer}"][0]) > 0 for q in ("kinetic", "step_size") for layer in "02"
    )
    schedule = expected["schedule"][first] - expected["schedule"][first - 1]
    assert float(schedule) < -1e-3 if saved_at == 7 else float(schedule) == 0.0


def test_a_checkpoint_without_per_layer_books_resumes_with_them_unknown(tmp_path):
    """Layout 5 kept neither the probe's per-layer books of the last measured step nor the
    books' h and q of the last row's step: it loads, the first row's per-layer K and step size
    are NaN (unknown, where they had been a wrong 0) while its total K is right, and every
    other value is the uninterrupted run's."""

    def layout_5(state: dict) -> dict:
        books = {k: v for k, v in state["books"].items() if k not in ("last_h", "last_q")}
        probe = {k: v for k, v in state["probe"].items() if k != "segments"}
        return {**state, "version": 5, "books": books, "probe": probe}

    whole = layered(1)
    whole[4](12)
    expected, got = whole[3].ledger, resumed(1, 6, 12, tmp_path, layout_5).ledger
    layered_columns = [c for c in expected if "/" in c and not c.startswith("noise_trace")]
    assert sorted(layered_columns) == ["kinetic/0", "kinetic/2", "step_size/0", "step_size/2"]
    for column in expected:
        want = expected[column][6:].clone()
        if column in layered_columns:
            want[0] = math.nan
        assert torch.equal(got[column].isnan(), want.isnan()), column
        assert torch.equal(got[column].nan_to_num(), want.nan_to_num()), column
    assert float(got["kinetic"][0]) > 0


def test_per_layer_books_of_other_layers_load_as_unknown():
    """A checkpoint of a monitor booking other layers (by module, into one by group) loads:
    the layers' values of the last measured step are unknown, NaN in the first row."""
    model, opt, _, monitor, steps = layered(1)
    steps(4)
    by_group = InertiaMonitor(opt, by="group")
    by_group.load_state_dict(monitor.state_dict())
    monitor.detach()
    loss = model(torch.ones(1, 3, dtype=F64)).pow(2).sum()
    loss.backward()
    by_group.observe(loss)
    opt.step()
    row = by_group.ledger
    assert math.isnan(float(row["kinetic/group0"][0])) and float(row["kinetic"][0]) > 0


# ------------------------------------------------- every field checked before anything is applied

NULLABLE = re.compile(
    r"^(layout|alarm|noise_scale|books\.last_inertia|maps\.(last|before)|probe\.previous\[\d+\]"
    r"|probe\.segments"
    r"|alarm\.(last_secant\[\d+\]|last_energy|vector|tracked))$"
)
"""Fields where None is a value a healthy run saves (nothing yet, or not kept)."""
NAN_ALLOWED = re.compile(
    r"^(books\.last_inertia|books\.last_\w+\[\d+\]"
    r"|maps\.\w+\[\d+\]\.(lr|h|momentum|weight_decay|decoupled)"
    r"|probe\.(kinetic|grad_dot_before|cross_before)\[\d+\]|probe\.norms\[\d+\]\[\d+\]"
    r"|probe\.segments\.(kinetic|step_sq)\[\d+\]"
    r"|alarm\.(ema\[\d+\]\[\d+\]|last_secant\[\d+\]\[\d+\]|floor|last_energy\[\d+\]|sharp\[\d+\]))$"
)
"""Numbers that are NaN in a healthy run (a noise estimate not yet taken, an overflowed
gradient's power); tensors and counts never are."""
VARIABLE_LENGTH = ("alarm.tracked",)  # up to two directions: one fewer is a valid state
LAYER_NAME = re.compile(r"^probe\.segments\.layers\[\d+\]$")
"""Any string names a layer (one of no layer of the monitor loads as unknown values); one
name fewer leaves the per-layer values longer than the names: those are named."""


def make_run(config: str, seed: int = 0):
    """A small model in two parameter groups (weights with decay, biases without), its
    optimizer and a monitor with every part holding state: AdamW with per-sample losses, the
    Hessian alarm and the sharpness probe, or SGD with Nesterov, the two-step alarm and
    per-layer books."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    groups = [{"params": weights, "weight_decay": 0.01}, {"params": biases, "weight_decay": 0.0}]

    def probe_loss() -> torch.Tensor:
        return ((model(x) - y) ** 2).mean()

    if config == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=0.01)
        extra = {"noise": "per_sample", "sharpness": probe_loss, "sharpness_every": 2}
        monitor = InertiaMonitor(opt, alarm=True, **extra)
    else:
        opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True)
        monitor = InertiaMonitor(opt, alarm=True, by="module", model=model)

    def steps(n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            losses = ((model(x) - y) ** 2).squeeze(1)
            backward_and_observe(monitor, losses, per_sample=config == "adamw")
            opt.step()

    steps(4)
    return monitor, steps


def paths(value, path: str = ""):
    """(path, value) of every field of a state, containers before what they hold."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            yield where, item
            yield from paths(item, where)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield f"{path}[{i}]", item
            yield from paths(item, f"{path}[{i}]")


def parent_and_key(state, path: str):
    """The container holding the field `path`, and its key or index there."""
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    node = state
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    last = parts[-1]
    return node, int(last[1:-1]) if last.startswith("[") else last


def mutated(state, path: str, change):
    """A deep copy of `state` with the field at `path` replaced (`change(old)`), or deleted
    (`change` None); tuples on the way become lists."""
    copy_ = copy.deepcopy(state)
    copy_ = _lists(copy_)
    node, key = parent_and_key(copy_, path)
    if change is None:
        del node[key]
    else:
        node[key] = change(node[key])
    return copy_


def _lists(value):
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


def nan_like(old):
    return torch.full_like(old, math.nan) if isinstance(old, torch.Tensor) else math.nan


MUTATIONS = {
    "none": lambda old: None,
    "string": lambda old: "x",
    "wrong_shape_tensor": lambda old: torch.zeros(7),
    "nan": nan_like,
    "negative": lambda old: -5,
    "wrong_dtype": lambda old: old.to(torch.float16),
    "list_of_floats": lambda old: [0.0] * old.numel(),
}


def cases(config: str):
    """(path, mutation, the field the error names) for every field of the config's state."""
    monitor, _ = make_run(config)
    state = monitor.state_dict()
    monitor.detach()
    out = []
    for path, value in paths(state):
        parent = re.sub(r"\[\d+\]$", "", path)
        if LAYER_NAME.match(path):
            out.append((path, "delete", "probe.segments.kinetic"))
        elif path.endswith("]"):  # one entry fewer: the list's length is wrong
            if parent not in VARIABLE_LENGTH:
                out.append((path, "delete", parent))
        else:
            out.append((path, "delete", path))
        for name in ("none", "string", "wrong_shape_tensor"):
            if not (name == "none" and NULLABLE.match(path)) and not (
                name == "string" and LAYER_NAME.match(path)
            ):
                out.append((path, name, path))
        if not NAN_ALLOWED.match(path):
            out.append((path, "nan", path))
        if isinstance(value, int) and not isinstance(value, bool):
            out.append((path, "negative", path))
        if isinstance(value, torch.Tensor):
            out.extend([(path, "wrong_dtype", path), (path, "list_of_floats", path)])
    return out


CASES = [(config, *case) for config in ("adamw", "sgd") for case in cases(config)]


@pytest.fixture(scope="module")
def runs():
    """One monitor per config: a failed load changes nothing, so the cases share it."""
    made = {config: make_run(config)[0] for config in ("adamw", "sgd")}
    yield made
    for monitor in made.values():
        monitor.detach()


def assert_same(a, b, path: str = "") -> None:
    """Equal states: every tensor torch.equal (dtype and shape too), NaN equal to NaN."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path


def test_every_part_of_the_state_holds_something(runs):
    """The cases below mutate states in which every part has left its initial values."""
    adamw, sgd = runs["adamw"].state_dict(), runs["sgd"].state_dict()
    for state in (adamw, sgd):
        assert state["books"]["last_inertia"] is not None
        assert state["maps"]["last"] is not None and state["maps"]["before"] is not None
        assert float(state["books"]["sums"]["total"].abs().sum()) > 0
        assert len(state["layout"]) == 2 and state["probe"]["has_delta"]
    assert len(adamw["alarm"]["tracked"]) == 2 and adamw["alarm"]["vector"] is not None
    assert adamw["noise_scale"]["rows"] > 0 and adamw["maps"]["last"][0]["decoupled"] > 0
    assert all(t is not None for t in sgd["probe"]["previous"])
    assert sgd["probe"]["segments"]["layers"] == ["0", "2"]
    assert min(sgd["probe"]["segments"]["kinetic"]) > 0
    assert all(s is not None for s in sgd["alarm"]["last_secant"])


@pytest.mark.parametrize(("config", "path", "mutation", "named"), CASES)
def test_a_damaged_field_is_named_and_changes_nothing(runs, config, path, mutation, named):
    monitor = runs[config]
    before = monitor.state_dict()
    change = None if mutation == "delete" else MUTATIONS[mutation]
    damaged = mutated(before, path, change)
    with pytest.raises(ValueError, match=rf"^state: {re.escape(named)}( |$)"):
        monitor.load_state_dict(damaged)
    assert_same(monitor.state_dict(), before)
    assert monitor.step == 4


@pytest.mark.parametrize("config", ["adamw", "sgd"])
def test_after_every_failed_load_the_ledger_continues_as_without_it(config):
    """Every damaged state of the cases above is refused by a monitor in mid-run, which then
    books the rows an undisturbed monitor books, bit for bit."""
    reference, more = make_run(config)
    more(3)
    monitor, steps = make_run(config)
    state = monitor.state_dict()
    for _, path, mutation, _ in [c for c in CASES if c[0] == config]:
        damaged = mutated(state, path, None if mutation == "delete" else MUTATIONS[mutation])
        with pytest.raises(ValueError):
            monitor.load_state_dict(damaged)
    steps(3)
    got, expected = monitor.ledger, reference.ledger
    assert len(got["step"]) == 7
    for column in expected:
        assert torch.equal(got[column].nan_to_num(), expected[column].nan_to_num()), column
        assert torch.equal(got[column].isnan(), expected[column].isnan()), column
    monitor.detach()
    reference.detach()


def test_the_cases_the_issue_lists(runs):
    """`every=0`, `step=-5`, a NaN buffer, a wrong dtype, a list for a tensor, a missing key of
    each part, and states whose last row is past their step."""
    monitor = runs["adamw"]
    state = monitor.state_dict()
    bad = {
        "every": {**state, "every": 0},
        "step": {**state, "step": -5},
        "last_row": {**state, "step": 2},
        "probe.steps[1]": mutated(state, "probe.steps[1]", nan_like),
        "probe.steps[0]": mutated(state, "probe.steps[0]", lambda t: t.double()),
        "alarm.vector[2]": mutated(state, "alarm.vector[2]", lambda t: t.tolist()),
    }
    for key in ("books", "maps", "probe", "alarm", "noise_scale"):
        name = next(iter(state[key]))
        bad[f"{key}.{name}"] = mutated(state, f"{key}.{name}", None)
    for field, damaged in bad.items():
        with pytest.raises(ValueError, match=rf"^state: {re.escape(field)} "):
            monitor.load_state_dict(damaged)
    assert_same(monitor.state_dict(), state)


def _monitor_of(shapes: list[list[tuple[int, ...]]]) -> InertiaMonitor:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(s)) for s in g]} for g in shapes]
    return InertiaMonitor(torch.optim.AdamW(groups, lr=0.01), noise="per_sample", alarm=True)


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ([[(3, 4), (4, 1)], [(4,), (1,)]], r"layout\[0\]\[0\] is a parameter of shape \[4, 3\]"),
        ([[(16,)], [(4,), (1,)]], r"layout\[0\] holds 2 parameters"),
        ([[(4, 3), (1, 4), (4,), (1,)]], "layout holds 2 parameter groups"),
    ],
)
def test_a_state_of_another_model_with_the_same_sizes_is_refused(runs, shapes, message):
    """Same parameter count (and per group the same sizes), another layout: the shapes per
    tensor, the tensors per group, the groups."""
    other = _monitor_of(shapes)
    before = other.state_dict()
    with pytest.raises(ValueError, match=rf"^state: {message}"):
        other.load_state_dict(runs["adamw"].state_dict())
    assert_same(other.state_dict(), before)


def test_older_layouts_are_read_and_checked(runs):
    """Layout 4 (no shapes) loads and continues; damaged states of layouts 1 and 2 name the
    field, where they used to fail on a KeyError or divide by zero."""
    monitor = runs["sgd"]
    state = monitor.state_dict()
    fresh, _ = make_run("sgd", seed=1)
    layout_4 = {k: v for k, v in state.items() if k != "layout"} | {"version": 4}
    fresh.load_state_dict(layout_4)
    assert_same(fresh.state_dict(), state)
    with pytest.raises(ValueError, match="^state: every must be an integer ≥ 1"):
        fresh.load_state_dict({**state, "version": 2, "every": 0})
    saved = torch.load(DATA, weights_only=True)["two_step_alarm"]["checkpoint"]["monitor"]
    for key in ("buffers", "step", "maps_before"):
        with pytest.raises(ValueError, match=f"^state: {key} is missing"):
            fresh.load_state_dict({k: v for k, v in saved.items() if k != key})
    with pytest.raises(ValueError, match="^state: version is missing"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "version"})
    assert_same(fresh.state_dict(), state)
    fresh.detach()


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.lists(st.floats(allow_nan=True), max_size=4),
    st.builds(
        lambda shape, fill, dtype: torch.full(shape, fill, dtype=dtype),
        st.lists(st.integers(0, 5), max_size=2).map(tuple),
        st.sampled_from([0.0, 1.0, math.nan, math.inf]),
        st.sampled_from([torch.float32, torch.float64, torch.float16]),
    ),
    st.builds(torch.ones, st.integers(0, 30), dtype=st.just(torch.int64)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_damage_is_a_value_error_or_loads(data):
    """A field replaced by anything, or deleted: the load either works or raises a ValueError
    naming a field, and a refused state changes nothing."""
    monitor = _SHARED.setdefault("sgd", make_run("sgd")[0])
    state = _SHARED.setdefault("state", monitor.state_dict())
    path, _ = data.draw(st.sampled_from(list(paths(state))))
    value = data.draw(st.one_of(st.just(None), VALUES.map(lambda v: (v,))))
    damaged = mutated(state, path, None if value is None else (lambda old: value[0]))
    try:
        monitor.load_state_dict(damaged)
    except ValueError as error:
        assert str(error).startswith("state: ")
        assert_same(monitor.state_dict(), state)
    else:
        monitor.load_state_dict(state)  # back to the state the other examples damage
        assert_same(monitor.state_dict(), state)


_SHARED: dict = {}


def test_an_alarm_that_counts_no_heat_ignores_a_checkpoints_heat():
    """With noise="fluctuation" the alarm takes the gradients as exact and counts no heat; a
    checkpoint from when it counted the fluctuation as heat holds the injected energy of its
    last row, which read as a jump of the energy's growth (0 → 2.6, past log 4) at the first
    row after the resume. Loaded, that heat is ignored: the run goes on as from a state
    without it."""
    torch.manual_seed(0)
    x = torch.randn(256, 3, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.5 * torch.randn(256)

    def reloaded(heat: float | None) -> tuple[list[float], float]:
        theta = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        opt = torch.optim.SGD([theta], lr=0.05, momentum=0.9)
        monitor = InertiaMonitor(opt, alarm=True, noise="fluctuation")
        gen = torch.Generator().manual_seed(1)

        def batch_loss() -> torch.Tensor:
            idx = torch.randint(0, 256, (8,), generator=gen)
            return ((x[idx] @ theta - y[idx]) ** 2).mean()

        train_quadratic(monitor, 50, batch_loss)
        state = copy.deepcopy(monitor.state_dict())
        if heat is not None:
            state["alarm"]["last_energy"][1] = heat
        monitor.load_state_dict(state)
        train_quadratic(monitor, 10, batch_loss)
        return monitor.ledger["regime"].tolist(), monitor.state_dict()["alarm"]["growth"]

    assert reloaded(10.06) == reloaded(None)
