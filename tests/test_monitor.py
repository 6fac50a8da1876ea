"""InertiaMonitor against values computed independently from recorded parameters
(docs/theory.md §4; the books of issue 15, and each map's residual against its update rule:
tests/test_maps.py).

The books, per group, for step k (θ_k → θ_{k+1}, booked at row k + 1): K_{k+1} =
½‖Δθ'_k‖²_M/h_k², P_k = ⟨−Δθ'_{k−1}, g_k + wd θ_k⟩, q_k = h_k/h_{k−1};
dissipated += q²[(1 − μ²)K_k + ½(1 − μ)P_k], schedule += (q² − 1)(K_k + ½P_k) (InertiaSGD:
(1 − μ²)K_k + ½(1 − μ)qP_k and schedule ½(q − 1)P_k), decay += ½ηλ(⟨θ_k, g_k⟩ + ⟨θ_k, g_{k+1}⟩)
(AdamW), shadow = inertia + ½P."""

from __future__ import annotations

import csv
import itertools
import json
import math
import warnings

import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from conftest import train_quadratic
from inertia import InertiaMonitor
from inertia.monitor import MONITOR_COLUMNS, CSVSink, JSONLSink, TensorBoardSink
from inertia.monitor.layout import layouts_of
from inertia.optim import InertiaSGD

F64 = torch.float64
A = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]], dtype=F64)
THETA0 = torch.tensor([1.0, -0.5, 0.8], dtype=F64)


def quadratic_loss(theta: torch.Tensor) -> torch.Tensor:
    return 0.5 * theta @ A @ theta


def train(make_optimizer, steps=60, *, schedule=None, loss_fn=quadratic_loss, **monitor_kw):
    """Full-batch training on the quadratic; returns the monitor and θ_k, ∇L(θ_k), L(θ_k)."""
    theta = torch.nn.Parameter(THETA0.clone())
    opt = make_optimizer([theta])
    sched = schedule(opt) if schedule else None
    monitor = InertiaMonitor(opt, **monitor_kw)
    thetas, grads, losses = [], [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(theta)
        loss.backward()
        thetas.append(theta.detach().clone())
        grads.append(theta.grad.detach().clone())
        losses.append(float(loss.detach()))
        monitor.observe(loss)
        opt.step()
        if sched:
            sched.step()
    return monitor, thetas, grads, losses


def powers(thetas, grads, wd=0.0, decoupled=0.0) -> list[float]:
    """P_k = ⟨−Δθ'_{k−1}, g_k + wd θ_k⟩ (P_0 = 0), Δθ'_k = θ_{k+1} − θ_k + ηλθ_k."""
    return [0.0] + [
        -float(
            (thetas[k] - thetas[k - 1] + decoupled * thetas[k - 1]) @ (grads[k] + wd * thetas[k])
        )
        for k in range(1, len(thetas))
    ]


def cumulative(values) -> torch.Tensor:
    return torch.tensor([0.0, *values], dtype=F64).cumsum(0)


@pytest.mark.parametrize(
    ("momentum", "dampening", "wd"), [(0.9, 0.0, 0.0), (0.8, 0.3, 0.05), (0.0, 0.0, 0.1)]
)
def test_sgd_columns_equal_values_from_recorded_parameters(momentum, dampening, wd):
    lr, n = 0.05, 60
    monitor, thetas, grads, losses = train(
        lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum, dampening=dampening, weight_decay=wd)
    )
    led = monitor.ledger
    h2 = lr * (1 - dampening) if momentum > 0 else lr
    kinetic = [0.0] + [
        0.5 * float((thetas[k] - thetas[k - 1]).pow(2).sum()) / h2 for k in range(1, n)
    ]
    potential = [losses[k] + 0.5 * wd * float(thetas[k].pow(2).sum()) for k in range(n)]
    power = powers(thetas, grads, wd)
    friction = [
        (1 - momentum**2) * kinetic[k] + 0.5 * (1 - momentum) * power[k] for k in range(n - 1)
    ]
    shadow = [kinetic[k] + potential[k] + 0.5 * power[k] for k in range(n)]
    for name, expected in [
        ("loss", losses),
        ("kinetic", kinetic),
        ("potential", potential),
        ("dissipated", cumulative(friction)),
        ("shadow", shadow),
        ("schedule", [0.0] * n),
        ("decay", [0.0] * n),
    ]:
        torch.testing.assert_close(
            led[name], torch.as_tensor(expected, dtype=F64), rtol=1e-10, atol=1e-13
        )
    torch.testing.assert_close(led["step"], torch.arange(60, dtype=F64))
    assert float(led["h"][0]) == pytest.approx(math.sqrt(h2))
    assert float(led["gamma"][0]) == pytest.approx((1 - momentum) / math.sqrt(h2))


def test_leapfrog_shadow_energy_is_constant_to_round_off():
    monitor, *_ = train(lambda p: torch.optim.SGD(p, lr=0.1, momentum=1.0), steps=500)
    led = monitor.ledger
    shadow, inertia = led["shadow"], led["inertia"]
    assert float((shadow - shadow[0]).abs().max()) < 1e-13 * float(shadow[0])
    assert float((inertia - inertia[0]).abs().max()) > 1e-3  # the plain inertia oscillates
    assert float(led["dissipated"][-1]) == 0.0


def test_learning_rate_schedule_is_booked_as_schedule_energy():
    """A velocity kept as Δθ/η is rescaled by q = h_k/h_{k−1} when the learning rate changes:
    and so is the shadow term ½P_k: the energy (q² − 1)(K_k + ½P_k) that adds or removes is
    booked as `schedule`, and the friction acts
    on the rescaled velocity, q²[(1 − μ²)K_k + ½(1 − μ)P_k] (docs/theory.md §4)."""
    lr0, gamma_lr, mu, n = 0.05, 0.5, 0.9, 40
    monitor, thetas, grads, _ = train(
        lambda p: torch.optim.SGD(p, lr=lr0, momentum=mu),
        steps=n,
        schedule=lambda o: torch.optim.lr_scheduler.StepLR(o, 10, gamma_lr),
    )
    lrs = [lr0 * gamma_lr ** (k // 10) for k in range(n)]
    kinetic = [0.0] + [
        0.5 * float((thetas[k] - thetas[k - 1]).pow(2).sum()) / lrs[k - 1] for k in range(1, n)
    ]
    power = powers(thetas, grads)
    q2 = [1.0] + [lrs[k] / lrs[k - 1] for k in range(1, n)]
    friction = [
        q2[k] * ((1 - mu**2) * kinetic[k] + 0.5 * (1 - mu) * power[k]) for k in range(n - 1)
    ]
    schedule = [(q2[k] - 1) * (kinetic[k] + 0.5 * power[k]) for k in range(n - 1)]
    led = monitor.ledger
    torch.testing.assert_close(
        led["kinetic"], torch.tensor(kinetic, dtype=F64), rtol=1e-10, atol=1e-14
    )
    torch.testing.assert_close(led["dissipated"], cumulative(friction), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(led["schedule"], cumulative(schedule), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(led["lr"], torch.tensor(lrs, dtype=F64))
    assert float(led["schedule"][-1]) < 0  # a falling learning rate takes energy out


def test_warmup_from_zero_books_the_added_energy_as_schedule():
    """A linear warmup from lr = 0: the learning rate's rise adds energy, booked as `schedule`
    (positive), not as negative friction; row 0, where h = 0, has γ = NaN and warns nothing,
    and the step after it (q = h_1/h_0 with h_0 = 0) is booked with q = 1."""
    mu, n = 0.9, 30

    def warmup(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, k / 10))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monitor, thetas, grads, _ = train(
            lambda p: torch.optim.SGD(p, lr=0.05, momentum=mu), steps=n, schedule=warmup
        )
    led = monitor.ledger
    lrs = [0.05 * min(1.0, k / 10) for k in range(n)]
    assert math.isnan(float(led["gamma"][0])) and float(led["h"][0]) == 0.0
    kinetic = [0.0, 0.0] + [
        0.5 * float((thetas[k] - thetas[k - 1]).pow(2).sum()) / lrs[k - 1] for k in range(2, n)
    ]
    power = powers(thetas, grads)
    q2 = [1.0, 1.0] + [lrs[k] / lrs[k - 1] for k in range(2, n)]
    friction = [
        q2[k] * ((1 - mu**2) * kinetic[k] + 0.5 * (1 - mu) * power[k]) for k in range(n - 1)
    ]
    schedule = [(q2[k] - 1) * (kinetic[k] + 0.5 * power[k]) for k in range(n - 1)]
    torch.testing.assert_close(led["dissipated"], cumulative(friction), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(led["schedule"], cumulative(schedule), rtol=1e-10, atol=1e-14)
    assert float(led["schedule"][-1]) > 0.01  # the warmup added energy
    assert bool((led["schedule"].diff() >= 0).all())


def test_parameter_groups_with_different_learning_rates():
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=F64))
    b = torch.nn.Parameter(torch.tensor([-1.0], dtype=F64))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}], momentum=0.5)
    monitor = InertiaMonitor(opt)
    history = []
    for _ in range(20):
        opt.zero_grad()
        loss = (a**2).sum() + 3 * (b**2).sum()
        loss.backward()
        history.append((a.detach().clone(), b.detach().clone()))
        monitor.observe(loss)
        opt.step()
    k = 7
    expected = (
        0.5 * float((history[k][0] - history[k - 1][0]).pow(2).sum()) / 0.1
        + 0.5 * float((history[k][1] - history[k - 1][1]).pow(2).sum()) / 0.01
    )
    assert float(monitor.ledger["kinetic"][k]) == pytest.approx(expected, rel=1e-12)
    # Each group is its own heavy ball (tests/test_maps.py): on this quadratic, at constant h,
    # the residual is −½ΣP_k, P = ⟨−Δθ, ∇L⟩ per group with ∇L = 2a on a, 6b on b
    power = [0.0] + [
        -float((history[k][0] - history[k - 1][0]) @ (2 * history[k][0]))
        - float((history[k][1] - history[k - 1][1]) @ (6 * history[k][1]))
        for k in range(1, 20)
    ]
    torch.testing.assert_close(
        monitor.ledger["residual"], -0.5 * torch.tensor(power, dtype=F64), rtol=0, atol=1e-14
    )
    assert max(abs(p) for p in power) > 0.1


def test_adam_kinetic_energy_is_in_its_metric():
    lr, (b1, b2), eps = 0.02, (0.9, 0.999), 1e-8
    theta = torch.nn.Parameter(THETA0.clone())
    opt = torch.optim.Adam([theta], lr=lr, betas=(b1, b2), eps=eps)
    monitor = InertiaMonitor(opt)
    before, grads = [], []
    for _ in range(30):
        opt.zero_grad()
        loss = quadratic_loss(theta)
        loss.backward()
        before.append(theta.detach().clone())
        grads.append(theta.grad.detach().clone())
        monitor.observe(loss)
        opt.step()
        if len(before) == 10:  # check row 10 once step 9 ends: metric from the state after it
            v_hat = opt.state[theta]["exp_avg_sq"] / (1 - b2**10)
            delta = theta.detach() - before[-1]
            h2 = lr * (1 - b1) / (1 - b1**10)
            expected_k10 = 0.5 * float(((v_hat.sqrt() + eps) * delta * delta).sum()) / h2
    led = monitor.ledger
    assert float(led["kinetic"][10]) == pytest.approx(expected_k10, rel=1e-10)
    # row 11 books step 10 (the 11th): μ = β₁, q² = h_10²/h_9² (the bias corrections)
    q2 = (1 - b1**10) / (1 - b1**11)
    p10 = -float((before[10] - before[9]) @ grads[10])
    friction = float(led["dissipated"][11] - led["dissipated"][10])
    expected = q2 * ((1 - b1**2) * expected_k10 + 0.5 * (1 - b1) * p10)
    assert friction == pytest.approx(expected, rel=1e-10)
    schedule = float(led["schedule"][11] - led["schedule"][10])
    assert schedule == pytest.approx((q2 - 1) * (expected_k10 + 0.5 * p10), rel=1e-10)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.Adam(p, lr=0.02),
        lambda p: torch.optim.AdamW(p, lr=0.02, weight_decay=0.1),
        lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
    ],
    ids=["adam", "adamw", "rmsprop-centered"],
)
def test_a_parameter_the_step_never_moves_leaves_its_groups_books_alone(make):
    """A frozen or unused parameter in a group with a diagonal metric has no gradient and no
    state, and the step does not move it, nor AdamW's decay: the ledger, micro-batch noise in
    the metric included, is that of the group without it (it had fallen back to the identity
    metric, and AdamW's velocity had held its decay as if the step had taken it)."""

    def ledger(frozen: bool):
        theta = torch.nn.Parameter(THETA0.clone())
        extra = [torch.nn.Parameter(torch.ones(4, dtype=F64), requires_grad=False)]
        opt = make([theta, *extra] if frozen else [theta])
        monitor = InertiaMonitor(opt, noise="microbatch")
        for k in range(12):
            opt.zero_grad()
            for j in range(2):
                loss = quadratic_loss(theta) * (1.0 + 0.1 * math.sin(3 * k + j))
                (loss / 2).backward()
                monitor.observe(loss, accumulate=True)
            opt.step()
        return monitor.ledger

    plain, frozen = ledger(False), ledger(True)
    for column in ("kinetic", "dissipated", "residual", "noise_trace"):
        torch.testing.assert_close(
            frozen[column], plain[column], rtol=1e-12, atol=0.0, equal_nan=True
        )
    assert bool(plain["noise_trace"][2:].isfinite().all())


@pytest.mark.parametrize(
    ("make", "options"),
    [
        (lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9, nesterov=True), {"alarm": True}),
        (lambda g: torch.optim.Adam(g, lr=0.01, amsgrad=True, weight_decay=0.1), {"alarm": True}),
        (lambda g: torch.optim.AdamW(g, lr=0.01), {"noise": "fluctuation", "by": "module"}),
        (lambda g: torch.optim.RMSprop(g, lr=0.01, centered=True), {"every": 3}),
    ],
    ids=["nesterov-alarm", "amsgrad-hessian-alarm", "adamw-fluctuation-by-module", "rmsprop-every"],
)
def test_an_empty_parameter_group_leaves_the_ledger_as_it_was(make, options):
    """An optimizer may hold a group with no parameters (Hugging Face's no-decay group of a
    model without biases): it takes no step, so the ledger is bit for bit the one without it.
    torch's foreach ops refuse [], and the monitor had failed at every step; Adam's map of an
    empty group is a first step's forever (h = sqrt(η)), and had been the row's h."""

    def ledger(empty: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
        groups = [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters())}]
        opt = make([{"params": []}, groups[0], {"params": []}, groups[1]] if empty else groups)
        kwargs = {"noise": "per_sample" if options.get("alarm") else "microbatch", **options}
        if options.get("by") == "module":
            kwargs["model"] = model
        monitor = InertiaMonitor(opt, on_error="raise", **kwargs)
        for _ in range(7):
            opt.zero_grad()
            for _ in range(2):  # micro-batches: the estimates' second passes too
                x = torch.randn(8, 4)
                losses = model(x).squeeze(1) ** 2
                if kwargs["noise"] == "per_sample":
                    monitor.observe(losses.mean(), per_sample=losses, accumulate=True)
                (losses.mean() / 2).backward()
                if kwargs["noise"] != "per_sample":
                    monitor.observe(losses.mean(), batch_size=8, accumulate=True)
            opt.step()
        return dict(monitor.ledger.items())

    plain, empty = ledger(False), ledger(True)
    assert empty.keys() == plain.keys()
    for name, column in plain.items():
        assert torch.equal(empty[name].nan_to_num(-1.0), column.nan_to_num(-1.0)), name
    assert bool(plain["noise_trace"][3:].isfinite().all())


def test_an_empty_groups_buffers_are_on_the_parameters_device():
    """The monitor's device is its first group's: an empty group's layout takes the
    parameters' device, not the CPU (on a GPU the rows had mixed devices). "meta" stands in
    for an accelerator here."""
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    layouts = layouts_of([{"params": []}, {"params": [p]}, {"params": []}])
    assert [layout.device.type for layout in layouts] == ["meta"] * 3
    assert layouts[0].zeros().device.type == "meta"


def test_parameters_given_new_storage_mid_run_are_followed():
    """Evaluating averaged weights by `vector_to_parameters` and putting the weights back gives
    every parameter new `.data`; the optimizer steps the same Parameter objects on, and so
    must the monitor (its cached views had kept reading the old storage: kinetic 0 from then
    on). The ledger equals the run without the swap; a cast to float64 is refused by name."""

    def ledger(swap: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        monitor = InertiaMonitor(opt, on_error="raise")
        x, y = torch.randn(32, 4), torch.randn(32, 1)
        for k in range(12):
            if swap and k == 5:
                now = parameters_to_vector(model.parameters())
                vector_to_parameters(torch.zeros_like(now), model.parameters())
                vector_to_parameters(now, model.parameters())
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            monitor.observe(loss)
            opt.step()
        return dict(monitor.ledger.items())

    plain, swapped = ledger(False), ledger(True)
    for name, column in plain.items():
        assert torch.equal(swapped[name].nan_to_num(-1.0), column.nan_to_num(-1.0)), name
    assert float(plain["kinetic"][-1]) > 0
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = InertiaMonitor(opt, on_error="raise")
    model.double()
    loss = model(torch.randn(4, 3, dtype=torch.float64)).square().mean()
    loss.backward()
    monitor.observe(loss)
    with pytest.raises(RuntimeError, match=r"now torch.float64 .* after moving or casting"):
        opt.step()


def _rmsprop_metric(centered: bool, eps: float = 1e-8):
    def metric(state: dict, k: int) -> torch.Tensor:
        v = state["square_avg"] - (state["grad_avg"] ** 2 if centered else 0.0)
        return v.sqrt() + eps

    return metric


def _adam_metric(beta2: float = 0.999, eps: float = 1e-8, second: str = "exp_avg_sq"):
    def metric(state: dict, k: int) -> torch.Tensor:  # v̂ after step k (the (k + 1)-th)
        return (state[second] / (1 - beta2 ** (k + 1))).sqrt() + eps

    return metric


# name: (optimizer, h of step k, μ, coupled wd, decoupled ηλ, metric after step k (None:
# identity), Nesterov)
OTHER_MAPS = {
    "rmsprop-momentum": (
        lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, weight_decay=0.05),
        lambda k: math.sqrt(0.01),
        0.5,
        0.05,
        0.0,
        _rmsprop_metric(centered=False),
        False,
    ),
    "rmsprop-centered": (
        lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
        lambda k: math.sqrt(0.01),
        0.5,
        0.0,
        0.0,
        _rmsprop_metric(centered=True),
        False,
    ),
    "adamw": (
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
        lambda k: math.sqrt(0.01 * (1 - 0.9) / (1 - 0.9 ** (k + 1))),
        0.9,
        0.0,
        0.01 * 0.1,  # decoupled: θ ← (1 − ηλ)θ, booked as the decay's work
        _adam_metric(),
        False,
    ),
    "amsgrad": (  # β₂ = 0.5: v follows the shrinking gradients, its running maximum does not
        lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.5), amsgrad=True),
        lambda k: math.sqrt(0.01 * (1 - 0.9) / (1 - 0.9 ** (k + 1))),
        0.9,
        0.0,
        0.0,
        _adam_metric(beta2=0.5, second="max_exp_avg_sq"),
        False,
    ),
    "nesterov": (
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
        lambda k: math.sqrt(0.05),
        0.9,
        0.0,
        0.0,
        None,
        True,
    ),
    "adagrad-generic": (  # no map: h = sqrt(lr), μ = 1 (no friction), identity metric
        lambda p: torch.optim.Adagrad(p, lr=0.1),
        lambda k: math.sqrt(0.1),
        1.0,
        0.0,
        0.0,
        None,
        False,
    ),
}


@pytest.mark.filterwarnings("ignore:inertia. no energy map:UserWarning")  # the generic map
@pytest.mark.parametrize("name", list(OTHER_MAPS))
def test_other_maps_columns_equal_values_from_recorded_parameters_and_state(name):
    """Each column from recorded θ_k, ∇L(θ_k), L(θ_k) and the optimizer's state after each step
    (Adam's exp_avg_sq, RMSprop's square_avg and grad_avg), computed here with the map's
    documented h, μ, metric and weight decay: the kinetic energy of the step the momentum
    carries (AdamW: its decay's displacement −ηλθ_k left out) in the metric of the step, read
    after it; the friction and schedule energy with q = h_k/h_{k−1}; Nesterov's look-ahead
    ½μ(1 + μ)⟨Δθ_{k−1}, g_k − g_{k−1}⟩ (−½μ⟨−Δθ_0, g_0⟩ at the first step); AdamW's decay
    work by the trapezoid rule; the potential with the coupled decay only."""
    make, h, mu, wd, rate, metric, nesterov = OTHER_MAPS[name]
    n = 40
    theta = torch.nn.Parameter(THETA0.clone())
    opt = make([theta])
    monitor = InertiaMonitor(opt)
    thetas, grads, losses, metrics = [], [], [], []
    for k in range(n):
        opt.zero_grad()
        loss = quadratic_loss(theta)
        loss.backward()
        thetas.append(theta.detach().clone())
        grads.append(theta.grad.detach().clone())
        losses.append(float(loss.detach()))
        monitor.observe(loss)
        opt.step()
        state = {key: v.clone() for key, v in opt.state[theta].items() if torch.is_tensor(v)}
        metrics.append(metric(state, k) if metric else torch.ones_like(theta))
    led = monitor.ledger
    steps = [thetas[k + 1] - thetas[k] + rate * thetas[k] for k in range(n - 1)]  # Δθ'_k
    kinetic = [0.0] + [
        0.5 * float((metrics[k - 1] * steps[k - 1] ** 2).sum()) / h(k - 1) ** 2 for k in range(1, n)
    ]
    potential = [losses[k] + 0.5 * wd * float(thetas[k] @ thetas[k]) for k in range(n)]
    power = powers(thetas, grads, wd, rate)
    q2 = [1.0] + [(h(k) / h(k - 1)) ** 2 for k in range(1, n)]
    friction = [
        q2[k] * ((1 - mu**2) * kinetic[k] + 0.5 * (1 - mu) * power[k]) for k in range(n - 1)
    ]
    if nesterov:
        friction[0] += 0.5 * mu * float(steps[0] @ grads[0])
        for k in range(1, n - 1):
            friction[k] += 0.5 * mu * (1 + mu) * float(steps[k - 1] @ (grads[k] - grads[k - 1]))
    decay = [
        0.5 * rate * float(thetas[k] @ grads[k] + thetas[k] @ grads[k + 1]) for k in range(n - 1)
    ]
    for column, expected in [
        ("kinetic", kinetic),
        ("loss", losses),
        ("potential", potential),
        ("dissipated", cumulative(friction)),
        (
            "schedule",
            cumulative([(q2[k] - 1) * (kinetic[k] + 0.5 * power[k]) for k in range(n - 1)]),
        ),
        ("decay", cumulative(decay)),
        ("shadow", [kinetic[k] + potential[k] + 0.5 * power[k] for k in range(n)]),
        ("h", [h(k) for k in range(n)]),
        ("gamma", [(1 - mu) / h(k) for k in range(n)]),
    ]:
        torch.testing.assert_close(
            led[column], torch.as_tensor(expected, dtype=F64), rtol=1e-10, atol=1e-13
        )
    assert float(led["kinetic"][1:].min()) > 0 and (float(led["dissipated"][-1]) > 0) == (mu < 1)
    assert (float(led["decay"][-1]) != 0) == (rate > 0)


def test_float32_model_is_booked_to_float32_round_off_in_float64():
    """The monitor keeps θ_k − θ_{k+1} in float32 (4 bytes a parameter): each component is the
    exact difference correctly rounded, relative error ≤ 2⁻²⁴, so ‖Δθ‖² is within 2·2⁻²⁴ of
    the exact float64 value (up to float64 round-off in the sum, accumulated in float64)."""
    theta = torch.nn.Parameter(THETA0.float())
    opt = torch.optim.SGD([theta], lr=0.05, momentum=0.9)
    monitor = InertiaMonitor(opt)
    deltas = []
    for _ in range(10):
        opt.zero_grad()
        loss = 0.5 * theta @ A.float() @ theta
        loss.backward()
        monitor.observe(loss)
        before = theta.detach().double()
        opt.step()
        deltas.append(theta.detach().double() - before)  # exact: float32 values differ in float64
    led = monitor.ledger
    assert led["kinetic"].dtype == F64
    expected = torch.tensor([0.0] + [0.5 * float(d @ d) / 0.05 for d in deltas[:-1]], dtype=F64)
    torch.testing.assert_close(led["kinetic"], expected, rtol=2 * 2.0**-24 + 1e-15, atol=0)


def test_non_finite_loss_is_flagged_and_training_goes_on():
    losses = iter([1.0, 2.0, float("nan"), 1.5, float("inf"), 1.2])
    theta = torch.nn.Parameter(THETA0.clone())
    opt = torch.optim.SGD([theta], lr=0.05, momentum=0.9)
    monitor = InertiaMonitor(opt)
    thetas = []
    for _ in range(6):
        opt.zero_grad()
        quadratic_loss(theta).backward()
        thetas.append(theta.detach().clone())
        with pytest.warns(RuntimeWarning) if _ in (2, 4) else _nullcontext():
            monitor.observe(next(losses))
            opt.step()
    led = monitor.ledger
    assert led["flag"].tolist() == [0, 0, 1, 0, 1, 0]
    assert bool(torch.isfinite(led["residual"]).all())
    # the steps go on being measured through the flagged rows
    kinetic = [0.0] + [
        0.5 * float((thetas[k] - thetas[k - 1]).pow(2).sum()) / 0.05 for k in (1, 3, 5)
    ]
    finite = led["flag"] == 0
    torch.testing.assert_close(
        led["kinetic"][finite], torch.tensor(kinetic, dtype=F64), rtol=1e-12, atol=0
    )


def test_a_run_of_non_finite_losses_warns_once_and_flags_every_row():
    theta = torch.nn.Parameter(THETA0.clone())
    opt = torch.optim.SGD([theta], lr=0.05, momentum=0.9)
    monitor = InertiaMonitor(opt)
    losses = [1.0, *[float("nan")] * 5, 1.0, float("inf")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for value in losses:
            opt.zero_grad()
            quadratic_loss(theta).backward()
            monitor.observe(value)
            opt.step()
    steps = [str(w.message).split(" at step ")[1].split(";")[0] for w in caught]
    assert steps == ["1", "7"]  # the first of each run of non-finite rows
    assert monitor.ledger["flag"].tolist() == [0, 1, 1, 1, 1, 1, 0, 1]


def test_on_nan_raise_stops_before_the_step():
    theta = torch.nn.Parameter(THETA0.clone())
    opt = torch.optim.SGD([theta], lr=0.05)
    monitor = InertiaMonitor(opt, on_nan="raise")
    quadratic_loss(theta).backward()
    monitor.observe(float("nan"))
    with pytest.raises(FloatingPointError, match="step 0"):
        opt.step()
    assert torch.equal(theta.detach(), THETA0)


def test_step_skipped_by_grad_scaler_is_recorded_as_skipped():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    monitor = InertiaMonitor(opt)
    x = torch.tensor([[1.0, 2.0]])
    for i in range(4):
        opt.zero_grad()
        # iteration 1: a finite loss whose weight gradient x·1e37, scaled by 2¹⁶, overflows
        loss = model(x).sum() * 1e37 if i == 1 else model(x).pow(2).mean()
        scaler.scale(loss).backward()
        monitor.observe(loss)
        scaler.step(opt)
        scaler.update()
    monitor.observe(model(x).pow(2).mean())
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    flags = monitor.ledger["flag"].tolist()
    assert flags.count(2) == 1 and flags[1] == 2
    assert monitor.ledger["step"].tolist() == [0, 1, 1, 2, 3]


@pytest.mark.parametrize("optimizer", ["sgd", "inertia"])
def test_a_skipped_step_books_no_friction_and_keeps_its_velocity(optimizer):
    """Iteration 3's step is skipped (observe twice with no step between, as GradScaler does
    on overflow): its row, at θ_3, books the friction of step 2 that led there,
    (1 − μ²)K_2 + ½(1 − μ)P_2 from the recorded θ and gradients; the next row, at the same θ_3
    with no step between, books none (no friction, no schedule, no residual: its inertia is
    the same) and has the same kinetic energy (for InertiaSGD, ½‖p‖² of the velocity it holds,
    then its report of the same)."""
    theta = torch.nn.Parameter(THETA0.clone())
    opt = (
        torch.optim.SGD([theta], lr=0.05, momentum=0.9)
        if optimizer == "sgd"
        else InertiaSGD([theta], lr=0.05, momentum=0.9)
    )
    monitor = InertiaMonitor(opt)
    thetas, grads = [], []
    for i in range(5):
        opt.zero_grad()
        loss = quadratic_loss(theta)
        loss.backward()
        if i != 4:  # θ_0 … θ_3 (iteration 4 retries from θ_3)
            thetas.append(theta.detach().clone())
            grads.append(theta.grad.detach().clone())
        monitor.observe(loss)
        if i != 3:
            opt.step()
    led = monitor.ledger
    assert led["flag"].tolist() == [0, 0, 0, 2, 0]
    assert led["step"].tolist() == [0, 1, 2, 3, 3]
    kinetic, dissipated = led["kinetic"].tolist(), led["dissipated"].tolist()
    k2 = 0.5 * float((thetas[2] - thetas[1]).pow(2).sum()) / 0.05
    p2 = powers(thetas, grads)[2]
    assert kinetic[2] == pytest.approx(k2, rel=1e-12)
    expected = (1 - 0.9**2) * k2 + 0.5 * (1 - 0.9) * p2
    assert dissipated[3] - dissipated[2] == pytest.approx(expected, rel=1e-12)
    for book in ("dissipated", "schedule", "residual", "decay"):
        assert float(led[book][4]) == float(led[book][3]), book
    assert kinetic[4] == pytest.approx(kinetic[3], rel=1e-15) and kinetic[3] > 0


@pytest.mark.parametrize("alarm, noise", [(False, None), (True, None), (True, "per_sample")])
def test_state_dict_resumes_the_same_ledger(alarm, noise):
    """Bit-identical, also with the alarm's state: the two-step secant's (no noise) and the
    tracked Hessian directions (per-sample losses)."""
    rows = math.sqrt(3.0) * torch.linalg.cholesky(A).T  # mean of ½(rowᵢ·θ)² = ½θᵀAθ

    def make():
        theta = torch.nn.Parameter(THETA0.clone())
        opt = torch.optim.SGD([theta], lr=0.05, momentum=0.9, weight_decay=0.01)
        return theta, opt, InertiaMonitor(opt, alarm=alarm, noise=noise)

    def run(theta, opt, monitor, n):
        for _ in range(n):
            opt.zero_grad()
            per_sample = 0.5 * (rows @ theta) ** 2
            loss = per_sample.mean()
            monitor.observe(loss, per_sample=per_sample if noise else None)
            loss.backward()
            opt.step()

    theta, opt, monitor = make()
    run(theta, opt, monitor, 40)
    reference = monitor.ledger
    theta, opt, monitor = make()
    run(theta, opt, monitor, 25)
    saved = (theta.detach().clone(), opt.state_dict(), monitor.state_dict())
    theta2, opt2, monitor2 = make()
    theta2.data.copy_(saved[0])
    opt2.load_state_dict(saved[1])
    monitor2.load_state_dict(saved[2])
    run(theta2, opt2, monitor2, 15)
    resumed = monitor2.ledger
    for name in MONITOR_COLUMNS:
        torch.testing.assert_close(
            resumed[name], reference[name][25:], rtol=0, atol=0, equal_nan=True
        )


def test_file_sinks_stream_every_row_and_tensorboard_gets_scalars(tmp_path):
    tb = pytest.importorskip("torch.utils.tensorboard")
    writer = tb.SummaryWriter(log_dir=str(tmp_path / "tb"))
    monitor, *_ = train(
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        steps=12,
        log_dir=tmp_path,
        sinks=[JSONLSink(tmp_path / "ledger.jsonl"), TensorBoardSink(writer)],
    )
    with (tmp_path / "ledger.csv").open() as f:
        rows = list(csv.DictReader(f))
    lines = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert len(rows) == len(lines) == 12 and list(rows[0]) == list(MONITOR_COLUMNS)
    assert [float(r["inertia"]) for r in rows] == monitor.ledger["inertia"].tolist()
    assert [line["shadow"] for line in lines] == monitor.ledger["shadow"].tolist()
    monitor.detach()
    assert any((tmp_path / "tb").iterdir())


def test_memory_is_bounded_when_rows_stream_to_disk(tmp_path):
    monitor, *_ = train(
        lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
        steps=300,
        sinks=[CSVSink(tmp_path / "l.csv", flush_every=50)],
        history=100,
    )
    assert len(monitor.ledger["step"]) == 100 and float(monitor.ledger["step"][-1]) == 299
    monitor.detach()
    assert sum(1 for _ in (tmp_path / "l.csv").open()) == 301


def test_every_k_steps_books_rows_at_multiples():
    monitor, thetas, grads, _ = train(
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), steps=60, every=5
    )
    led = monitor.ledger
    assert led["step"].tolist() == list(range(0, 60, 5))
    # each row measures the velocity over the step just before it, and its power
    rows = range(5, 60, 5)
    kinetic = [0.0] + [0.5 * float((thetas[k] - thetas[k - 1]).pow(2).sum()) / 0.05 for k in rows]
    power = [0.0] + [-float((thetas[k] - thetas[k - 1]) @ grads[k]) for k in rows]
    torch.testing.assert_close(led["kinetic"], torch.tensor(kinetic, dtype=F64), rtol=1e-12, atol=0)
    shadow = [float(led["inertia"][j]) + 0.5 * power[j] for j in range(len(power))]
    torch.testing.assert_close(led["shadow"], torch.tensor(shadow, dtype=F64), rtol=1e-12, atol=0)
    # between rows 5 steps apart, the friction per step (1 − μ²)K + ½(1 − μ)P of the two rows
    # by the trapezoid rule; no schedule
    per_step = [(1 - 0.9**2) * k + 0.5 * (1 - 0.9) * p for k, p in zip(kinetic, power, strict=True)]
    trapezoid = [5 * 0.5 * (a + b) for a, b in itertools.pairwise(per_step)]
    torch.testing.assert_close(led["dissipated"], cumulative(trapezoid), rtol=1e-12, atol=1e-15)
    assert float(led["schedule"].abs().max()) == 0.0
    full, *_ = train(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), steps=60)
    # the trapezoid estimate of friction tracks the exact per-step booking within 10%
    assert float(led["dissipated"][-1]) == pytest.approx(
        float(full.ledger["dissipated"][55]), rel=0.1
    )


def test_detach_removes_the_hooks():
    monitor, *_ = train(lambda p: torch.optim.SGD(p, lr=0.05), steps=5)
    monitor.detach()
    monitor.optimizer.step()
    assert len(monitor.ledger["step"]) == 5


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"every": 0}, "every"),
        ({"on_nan": "ignore"}, "on_nan"),
        ({"sinks": ["file.csv"]}, "sinks"),
        ({"history": 0}, "history"),
        ({"alarm": "no"}, "alarm"),  # a string is true: it had switched the alarm on
        ({"log_dir": 123}, "log_dir"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, name):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=rf"^{name}"):
        InertiaMonitor(opt, **kwargs)
    with pytest.raises(ValueError, match="^optimizer"):
        InertiaMonitor("sgd")


def test_an_optimizer_that_maximises_is_refused():
    """maximize=True ascends the loss the ledger books as a potential to descend: its books
    had come out wrong without a word (residual +4.35 for −0.003 on a run minimising the same
    objective)."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.1, maximize=True)
    with pytest.raises(ValueError, match="^optimizer: maximize=True"):
        InertiaMonitor(opt)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.filterwarnings("ignore:inertia. no energy map:UserWarning")  # the generic map
def test_closures_are_booked_after_they_evaluate_the_loss():
    """optimizer.step(closure): the loss and gradients at θ_k exist only inside the step."""
    theta = torch.nn.Parameter(THETA0.clone())
    opt = torch.optim.SGD([theta], lr=0.05, momentum=0.9)
    monitor = InertiaMonitor(opt)
    losses = []

    def closure():
        opt.zero_grad()
        loss = quadratic_loss(theta)
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    for _ in range(10):
        opt.step(closure)
    torch.testing.assert_close(monitor.ledger["potential"], torch.tensor(losses, dtype=F64))
    lbfgs = torch.optim.LBFGS([theta], lr=0.5, max_iter=5)
    monitor2 = InertiaMonitor(lbfgs)
    for _ in range(3):
        lbfgs.step(closure)
    assert monitor2.ledger["step"].tolist() == [0, 1, 2]


@pytest.mark.filterwarnings("ignore:inertia. no energy map:UserWarning")  # the generic map
@pytest.mark.parametrize("observe", ["plain", "accumulate"])
def test_observing_inside_an_lbfgs_closure_books_the_first_evaluation(observe):
    """LBFGS evaluates its closure again at other points within one step; a loop (or
    Lightning's on_after_backward) that observes inside the closure must book only the first
    evaluation, at θ_k, as the closure alone does (the later ones had been booked as skipped
    steps, or averaged into the row's loss)."""

    def ledger(inside: bool) -> dict[str, torch.Tensor]:
        theta = torch.nn.Parameter(THETA0.clone())
        opt = torch.optim.LBFGS([theta], lr=0.5, max_iter=4)
        monitor = InertiaMonitor(opt, on_error="raise")

        def closure():
            opt.zero_grad()
            loss = quadratic_loss(theta) + 0.1 * theta.pow(4).sum()
            loss.backward()
            if inside:
                monitor.observe(loss.detach(), accumulate=observe == "accumulate")
            return loss

        for _ in range(6):
            opt.step(closure)
        return dict(monitor.ledger.items())

    alone, inside = ledger(False), ledger(True)
    for name, column in alone.items():
        assert torch.equal(inside[name].nan_to_num(-1.0), column.nan_to_num(-1.0)), name


def test_ledger_exports_round_trip_to_jsonl_and_dataframe(tmp_path):
    pd = pytest.importorskip("pandas")
    monitor, *_ = train(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), steps=8)
    led = monitor.ledger
    lines = [
        json.loads(line) for line in led.to_jsonl(tmp_path / "l.jsonl").read_text().splitlines()
    ]
    assert [row["step"] for row in lines] == list(range(8))
    assert [row["kinetic"] for row in lines] == led["kinetic"].tolist()
    frame = led.to_dataframe()
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == list(MONITOR_COLUMNS)
    assert frame["inertia"].tolist() == led["inertia"].tolist()


@pytest.mark.filterwarnings("ignore:inertia. no energy map:UserWarning")  # the generic map
@pytest.mark.parametrize(
    ("make", "metric"),
    [
        (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), 0),
        (lambda p: torch.optim.AdamW(p, lr=0.01), 1),
        (lambda p: torch.optim.RMSprop(p, lr=0.01), 1),
        (lambda p: torch.optim.Adagrad(p, lr=0.1), 0),
    ],
    ids=["sgd", "adamw", "rmsprop", "adagrad"],
)
def test_the_metric_column_says_whether_kinetic_energy_is_in_a_diagonal_metric(make, metric):
    """`inertia report` draws the Euclidean noise floor h²tr(C)/(2B(1 − μ²)) only where the
    kinetic energy is Euclidean (metric 0)."""
    monitor, *_ = train(make, steps=3)
    assert monitor.ledger["metric"].tolist() == [metric] * 3


@pytest.mark.parametrize("streamed", [False, True])
def test_the_rows_kept_in_memory_are_bounded_by_default(tmp_path, monkeypatch, streamed):
    """history=None keeps the last MEMORY_HISTORY rows, or STREAMED_HISTORY with a file sink:
    never every row of a long run (each bound shrunk here to keep the run short)."""
    from inertia.monitor import options

    monkeypatch.setattr(options, "MEMORY_HISTORY", 5)
    monkeypatch.setattr(options, "STREAMED_HISTORY", 3)
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    monitor = InertiaMonitor(opt, log_dir=tmp_path if streamed else None)
    train_quadratic(monitor, 9)
    kept = 3 if streamed else 5
    assert monitor.ledger["step"].tolist() == list(range(9 - kept, 9))
    monitor.detach()


def test_a_non_finite_potential_is_flagged_like_a_non_finite_loss():
    """The potential is the loss plus a coupled decay's penalty (wd/2)‖θ‖²: a row whose
    penalty overflows books nothing, so it is flagged NONFINITE, and on_nan="raise" stops."""
    used = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    huge = torch.nn.Parameter(torch.full((2,), 1e200, dtype=torch.float64))  # ‖θ‖² = inf

    def run(on_nan: str) -> InertiaMonitor:
        opt = torch.optim.SGD([used, huge], lr=0.1, weight_decay=0.1)
        monitor = InertiaMonitor(opt, on_nan=on_nan)
        for _ in range(3):
            loss = used.square().sum()
            opt.zero_grad()
            loss.backward()
            monitor.observe(loss)
            opt.step()
        return monitor

    with pytest.warns(RuntimeWarning, match="non-finite potential"):
        led = run("flag").ledger
    assert led["flag"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(FloatingPointError, match="non-finite potential inf at step 0"):
        run("raise")


def test_zero_gradients_leave_the_clip_factor_unknown_and_training_alone():
    """c = ‖g‖/‖g_B‖ has no value where g_B = 0: a group with no gradient (frozen) does not
    spoil the others' c, and a run at an exact minimum books NaN, with no failure."""
    free = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    frozen = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = torch.optim.SGD([{"params": [free]}, {"params": [frozen]}], lr=0.1)
    monitor = InertiaMonitor(opt, noise="microbatch", on_error="raise")
    for k in range(4):
        opt.zero_grad()
        for _ in range(2):
            loss = (free.square().sum() if k < 2 else 0.0 * free.sum()) + 0.0 * frozen.sum()
            loss.backward()
            monitor.observe(loss, accumulate=True, batch_size=4)
        if k == 1:
            torch.nn.utils.clip_grad_norm_([free, frozen], 0.5)
        opt.step()
    clip = monitor.ledger["clip"].tolist()
    assert clip[0] == pytest.approx(1.0, abs=1e-15)
    # two micro-batches of ‖θ‖²: g = 4θ, with θ = 1 − 0.1·4 = 0.6 after the first step
    assert clip[1] == pytest.approx(0.5 / (4 * 0.6 * math.sqrt(3)), rel=1e-6)
    assert math.isnan(clip[2]) and math.isnan(clip[3])
