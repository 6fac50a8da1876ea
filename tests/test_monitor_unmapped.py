"""What the monitor tells a user about two easy mistakes, through the public API only: an
optimizer with no energy map of its own (one UserWarning at attach, saying what the generic map
books and which optimizers are mapped), and a step for which no loss was observed (a message
saying so and what to call, told apart from an observed non-finite loss)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from inertia import InertiaMonitor
from inertia.monitor import NONFINITE, Sink, group_maps
from inertia.optim import InertiaSGD

UNMAPPED = "inertia: no energy map for "  # the documented prefix a warnings filter matches
NO_LOSS = "no loss was observed for step"
F64 = torch.float64


def theta() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor([1.0, -0.5, 0.8], dtype=F64))


def train(monitor: InertiaMonitor, steps: int, *, observe: bool = True, loss=None) -> None:
    """`steps` iterations on L = Σθ², observing `loss` (default L) unless `observe` is false."""
    opt = monitor.optimizer
    for _ in range(steps):
        opt.zero_grad()
        value = sum((p**2).sum() for g in opt.param_groups for p in g["params"])
        value.backward()
        if observe:
            monitor.observe(value if loss is None else loss)
        opt.step()


def unmapped_warnings(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if str(w.message).startswith(UNMAPPED)]


class ThirdParty(torch.optim.Optimizer):
    """An optimizer from outside torch.optim: plain gradient descent."""

    def __init__(self, params, lr: float = 0.1):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(group["lr"] * p.grad)


class MyAdam(torch.optim.Adam):
    """A subclass of a mapped optimizer: it takes Adam's map."""


class MySGD(torch.optim.SGD):
    pass


UNMAPPED_OPTIMIZERS = {
    "Rprop": (lambda p: torch.optim.Rprop(p, lr=0.01), "torch.optim.rprop.Rprop"),
    "NAdam": (lambda p: torch.optim.NAdam(p, lr=0.01), "torch.optim.nadam.NAdam"),
    "Adagrad": (lambda p: torch.optim.Adagrad(p, lr=0.1), "torch.optim.adagrad.Adagrad"),
    "ASGD": (lambda p: torch.optim.ASGD(p, lr=0.01), "torch.optim.asgd.ASGD"),
    "third-party": (lambda p: ThirdParty(p), f"{__name__}.ThirdParty"),
}
if hasattr(torch.optim, "Adafactor"):  # in recent torch releases
    UNMAPPED_OPTIMIZERS["Adafactor"] = (
        lambda p: torch.optim.Adafactor(p, lr=0.01),
        "torch.optim.Adafactor",
    )
if hasattr(torch.optim, "Muon"):  # likewise; 2-D parameters only: a matrix of its own
    UNMAPPED_OPTIMIZERS["Muon"] = (
        lambda p: torch.optim.Muon([torch.nn.Parameter(torch.eye(2, dtype=F64))], lr=0.01),
        "torch.optim.Muon",
    )


@pytest.mark.parametrize("name", list(UNMAPPED_OPTIMIZERS))
def test_an_unmapped_optimizer_warns_once_at_attach_saying_what_is_booked(name):
    make, qualified = UNMAPPED_OPTIMIZERS[name]
    opt = make([theta()])
    with pytest.warns(UserWarning, match=UNMAPPED) as caught:
        monitor = InertiaMonitor(opt)
    (warning,) = unmapped_warnings(caught.list)
    text = str(warning.message)
    assert text.startswith(f"{UNMAPPED}{qualified}:"), text  # names the optimizer's class
    assert warning.category is UserWarning or issubclass(warning.category, UserWarning)
    assert warning.filename == __file__  # points at the line that made the monitor
    for said in ("identity metric", "h = sqrt(lr)", "no friction", "`dissipated` stays 0"):
        assert said in text, said
    assert "lands in `residual`" in text
    for mapped in ("SGD", "Adam", "AdamW", "RMSprop", "subclasses", "InertiaSGD"):
        assert mapped in text, mapped
    # exactly once per monitor: the steps (and the rows they book) add no other
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        train(monitor, 4)
    assert unmapped_warnings(later) == []
    ledger = monitor.ledger
    assert ledger["step"].tolist() == [0, 1, 2, 3] and ledger["flag"].eq(0).all()
    assert ledger["dissipated"].eq(0).all()  # what the warning says


def test_each_monitor_of_an_unmapped_optimizer_warns_once():
    opt = torch.optim.Rprop([theta()], lr=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = InertiaMonitor(opt)
        train(first, 3)
        first.detach()
        second = InertiaMonitor(opt)
        train(second, 3)
    assert len(unmapped_warnings(caught)) == 2


def test_an_lbfgs_driven_by_a_closure_warns_once():
    """LBFGS evaluates its closure several times a step: still one warning, at attach."""
    param = theta()
    opt = torch.optim.LBFGS([param], lr=0.5, max_iter=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = InertiaMonitor(opt)

        def closure():
            opt.zero_grad()
            loss = (param**2).sum() + 0.1 * param.pow(4).sum()
            loss.backward()
            return loss

        for _ in range(3):
            opt.step(closure)
    assert len(unmapped_warnings(caught)) == 1
    assert monitor.ledger["flag"].eq(0).all()


MAPPED_OPTIMIZERS = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "Adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=0.01),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=0.01),
    "subclass of Adam": lambda p: MyAdam(p, lr=0.01),
    "subclass of SGD": lambda p: MySGD(p, lr=0.05),
    "InertiaSGD": lambda p: InertiaSGD(p, lr=0.05),
}


@pytest.mark.parametrize("name", list(MAPPED_OPTIMIZERS))
def test_mapped_optimizers_and_their_subclasses_do_not_warn(name):
    opt = MAPPED_OPTIMIZERS[name]([theta()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning at all fails the test
        monitor = InertiaMonitor(opt)
        train(monitor, 3)
    assert monitor.ledger["flag"].eq(0).all()


def test_a_subclass_of_adam_books_adams_map():
    """What "subclasses use their base's map" means: MyAdam's rows equal Adam's."""
    ledgers = []
    for make in (torch.optim.Adam, MyAdam):
        monitor = InertiaMonitor(make([theta()], lr=0.01))
        train(monitor, 5)
        ledgers.append(dict(monitor.ledger.items()))
    for name, column in ledgers[0].items():
        assert torch.equal(ledgers[1][name].nan_to_num(-1.0), column.nan_to_num(-1.0)), name


def test_the_warning_is_silenced_by_a_standard_filter_and_group_maps_never_warns():
    opt = torch.optim.Rprop([theta()], lr=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=UNMAPPED, category=UserWarning)
        monitor = InertiaMonitor(opt)
        train(monitor, 2)
    assert caught == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [m.kind for m in group_maps(opt)] == ["generic"]


def test_docs_monitor_names_every_unmapped_torch_optimizer():
    """docs/monitor.md's list of torch's optimizers on the generic map is complete."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "monitor.md").read_text()
    start = text.index("An optimizer on the last line (")
    listed = text[start : text.index(")", start)].replace("\n", " ")
    generic = []
    for name, kind in vars(torch.optim).items():
        if isinstance(kind, type) and issubclass(kind, torch.optim.Optimizer):
            if kind is not torch.optim.Optimizer:
                opt = kind([torch.nn.Parameter(torch.eye(2, dtype=F64))])  # Muon: 2-D only
                if group_maps(opt)[0].kind == "generic":
                    generic.append(name)
    assert {"Rprop", "LBFGS"} <= set(generic)
    assert [name for name in generic if f" {name}," not in listed] == []


# A step with no loss observed.


class Records(Sink):
    def __init__(self):
        self.rows = []

    def write(self, row):
        self.rows.append(row)


def test_a_step_with_no_loss_observed_says_so_and_what_to_call():
    opt = torch.optim.SGD([theta()], lr=0.05, momentum=0.9)
    sink = Records()
    monitor = InertiaMonitor(opt, sinks=[sink])
    with pytest.warns(RuntimeWarning, match=f"{NO_LOSS} 0") as caught:
        train(monitor, 4, observe=False)
    (warning,) = [w for w in caught.list if NO_LOSS in str(w.message)]  # once for the run
    text = str(warning.message)
    assert "monitor.observe(loss)" in text and "loss.backward()" in text
    assert "closure" in text and "non-finite" not in text
    assert " ranks" not in text and "every rank" not in text  # one process: no ranks named
    assert "a batch skipped on purpose" in text and "training_step returning None" in text
    # the rows are as before: recorded, the loss NaN, flagged
    ledger = monitor.ledger
    assert ledger["step"].tolist() == [0, 1, 2, 3]
    assert ledger["loss"].isnan().all() and ledger["flag"].eq(NONFINITE).all()
    assert all(type(row["loss"]) is float for row in sink.rows)  # sinks get a plain NaN


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_an_observed_non_finite_loss_keeps_its_own_message(value):
    opt = torch.optim.SGD([theta()], lr=0.05, momentum=0.9)
    monitor = InertiaMonitor(opt)
    with pytest.warns(RuntimeWarning, match=f"non-finite loss {value} at step 0") as caught:
        train(monitor, 2, loss=value)
    assert not [w for w in caught.list if NO_LOSS in str(w.message)]
    assert monitor.ledger["flag"].eq(NONFINITE).all()


def test_on_nan_raise_names_the_missing_observation():
    opt = torch.optim.SGD([theta()], lr=0.05)
    monitor = InertiaMonitor(opt, on_nan="raise")
    with pytest.raises(FloatingPointError, match=f"{NO_LOSS} 0: call monitor.observe"):
        train(monitor, 1, observe=False)
    monitor = InertiaMonitor(torch.optim.SGD([theta()], lr=0.05), on_nan="raise")
    with pytest.raises(FloatingPointError, match="non-finite loss nan at step 0$"):
        train(monitor, 1, loss=math.nan)


def test_a_closure_that_returns_no_loss_is_a_step_with_no_loss_observed():
    param = theta()
    opt = torch.optim.SGD([param], lr=0.05, momentum=0.9)
    monitor = InertiaMonitor(opt)

    def closure():
        opt.zero_grad()
        (param**2).sum().backward()  # the loss is not returned

    with pytest.warns(RuntimeWarning, match=f"{NO_LOSS} 0"):
        for _ in range(2):
            opt.step(closure)
    assert monitor.ledger["flag"].eq(NONFINITE).all()


def test_each_kind_of_missing_loss_starts_its_own_run_of_rows():
    """Unobserved steps, then observed NaN losses, then a finite one, then unobserved again:
    one warning at the first row of each run, each with its own message."""
    opt = torch.optim.SGD([theta()], lr=0.05)
    monitor = InertiaMonitor(opt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(monitor, 2, observe=False)
        train(monitor, 2, loss=math.nan)
        train(monitor, 1)
        train(monitor, 2, observe=False)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3, messages
    assert f"{NO_LOSS} 0," in messages[0]
    assert "non-finite loss nan at step 2;" in messages[1]
    assert f"{NO_LOSS} 5," in messages[2]
    assert monitor.ledger["flag"].tolist() == [1, 1, 1, 1, 0, 1, 1]
