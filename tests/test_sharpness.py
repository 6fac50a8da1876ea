"""The sharpness in the optimizer's metric (`InertiaMonitor(..., sharpness=closure)`,
`inertia.monitor.sharpness`) against the top eigenvalue of the whole Hessian computed here
(`torch.func`, then `eigvalsh`), and the alarm's regime on rows without margin information
(docs/monitor.md, "Stability margin and alarm")."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.func import functional_call, jacrev

from conftest import train_quadratic
from inertia import InertiaMonitor

F64 = torch.float64


def tanh_mlp(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    model = model.double()
    x = torch.randn(64, 3, generator=gen, dtype=F64)
    y = torch.randn(64, 2, generator=gen, dtype=F64)
    return model, x, y


def whole_hessian(model, x, y) -> torch.Tensor:
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def loss(theta):
        parts = torch.split(theta, [math.prod(s) for s in shapes])
        params = {k: t.view(s) for k, t, s in zip(names, parts, shapes, strict=True)}
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return jacrev(jacrev(loss))(theta)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_sharpness_is_the_top_eigenvalue_in_the_optimizers_metric(kind):
    """Every 3 steps: λ_max(H) for SGD with momentum and weight decay (H + wd), and
    λ_max(P^{−1/2}HP^{−1/2}) with P = sqrt(v̂) + ε from Adam's state at the row, within 1%
    (the power iteration's own error, stopped at a relative change of 1e-3; the issue asks
    10%); the margin is at least h²λ/(2(1 + μ)) with the step's h and μ."""
    model, x, y = tanh_mlp()
    params = list(model.parameters())
    if kind == "sgd":
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.01)
    else:
        opt = torch.optim.Adam(params, lr=0.01, betas=(0.9, 0.999))

    def probe():
        return ((model(x) - y) ** 2).mean()

    monitor = InertiaMonitor(opt, alarm=True, sharpness=probe, sharpness_every=3)
    expected = {}
    for k in range(16):
        opt.zero_grad()
        loss = probe()
        loss.backward()
        monitor.observe(loss)
        if k % 3 == 0 and k > 0:
            h = whole_hessian(model, x, y)
            if kind == "sgd":
                h = h + 0.01 * torch.eye(len(h), dtype=F64)
            else:
                b2, t = 0.999, opt.state[params[0]]["step"]
                v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in params])
                scale = (v / (1 - b2 ** float(t))).sqrt() + 1e-8
                h = h / scale.sqrt()[:, None] / scale.sqrt()[None, :]
            expected[k] = float(torch.linalg.eigvalsh(h)[-1])
        opt.step()
    led = monitor.ledger
    for k, value in expected.items():
        assert float(led["sharpness"][k]) == pytest.approx(value, rel=0.01), k
    if kind == "sgd":
        margin = 0.05 * expected[15] / (2 * 1.9)
    else:  # h² = η(1 − β₁)/(1 − β₁ᵗ) of step 16 (t = 16)
        margin = 0.01 * 0.1 / (1 - 0.9**16) * expected[15] / (2 * 1.9)
    # without a noise estimate the margin is the larger of the probe's and the motion's
    assert float(led["margin"][15]) >= margin * (1 - 0.01)


def test_sharpness_needs_a_callable_and_the_alarm():
    theta = torch.nn.Parameter(torch.zeros(2, dtype=F64))
    opt = torch.optim.SGD([theta], lr=0.1)
    with pytest.raises(ValueError, match="^sharpness must be a callable"):
        InertiaMonitor(opt, sharpness=lambda: theta.sum())
    with pytest.raises(ValueError, match="^sharpness must be a callable"):
        InertiaMonitor(opt, alarm=True, sharpness=3)
    with pytest.raises(ValueError, match="^sharpness_every must"):
        InertiaMonitor(opt, alarm=True, sharpness=lambda: theta.sum(), sharpness_every=0)


def test_a_float32_quadratic_converged_to_round_off_never_alarms():
    """Heavy ball μ = 0.9 at 0.8× its threshold on a float32 quadratic, run until the iterates
    are subnormal and the loss 0: rows whose loss, iterates or step have lost their precision
    carry no margin, and the alarm stays silent (issue 16 found one at step ~2130)."""
    a = torch.tensor([1.0, 0.3, 0.05])
    theta = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.5]))
    mu = 0.9
    opt = torch.optim.SGD([theta], lr=0.8 * 2 * (1 + mu) / 1.0, momentum=mu)
    monitor = InertiaMonitor(opt, alarm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(4000):
            opt.zero_grad()
            loss = 0.5 * (a * theta * theta).sum()
            loss.backward()
            monitor.observe(loss)
            opt.step()
    led = monitor.ledger
    assert float(led["loss"][-1]) == 0.0  # converged to round-off
    assert int(led["alarm"].sum()) == 0 and int((led["regime"] == 2).sum()) == 0
    late = led["margin"][-500:]
    assert bool(late.isnan().all())  # no information once the precision is gone


def test_a_learning_rate_jump_between_measurements_is_seen_at_once():
    """The probe's margin uses each row's own step: a ×30 learning-rate jump two steps after a
    measurement (every 10) reads the probe's sharpness at the new rate at once, and a margin
    ≥ 3 (`FAST`) with the evidence above 1 is divergence at that very row (issue 16's spike
    study missed every ×30 jump while the margin waited for the next measurement)."""
    model, x, y = tanh_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.15)

    def probe():
        return ((model(x) - y) ** 2).mean()

    monitor = InertiaMonitor(opt, alarm=True, sharpness=probe, sharpness_every=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in range(13):
            if k == 12:
                opt.param_groups[0]["lr"] = 0.15 * 30
            opt.zero_grad()
            loss = probe()
            loss.backward()
            monitor.observe(loss)
            opt.step()
    led = monitor.ledger
    sharpness = float(led["sharpness"][12])
    assert sharpness == float(led["sharpness"][10])  # no measurement since step 10
    assert int(led["regime"][11]) < 2 and int(led["alarm"][:12].sum()) == 0
    assert float(led["margin"][12]) >= 4.5 * sharpness / 2 * (1 - 1e-9) >= 3
    assert int(led["regime"][12]) == 2 and int(led["alarm"][12]) == 1


@pytest.mark.parametrize("frozen", [False, True])
def test_a_parameter_the_step_does_not_move_leaves_the_sharpness_alone(frozen):
    """Adam with coupled weight decay and a spare parameter that gets no gradient (unused, or
    frozen with requires_grad=False): the step does not move it, so it weighs 0, and every row
    is booked with the sharpness and margin of the run without it (it had weighed 1/ε: a
    sharpness of wd/ε = 1e5 and a false divergence, or, frozen, no row booked at all)."""
    a = torch.tensor([[3.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.3]], dtype=F64)

    def ledger(spare: bool):
        theta = torch.nn.Parameter(torch.tensor([1.0, -0.5, 0.8], dtype=F64))
        extra = torch.nn.Parameter(torch.ones(4, dtype=F64), requires_grad=not frozen)
        opt = torch.optim.Adam([theta, extra] if spare else [theta], lr=0.01, weight_decay=1e-3)
        monitor = InertiaMonitor(
            opt, alarm=True, sharpness=lambda: 0.5 * theta @ a @ theta, sharpness_every=1
        )
        train_quadratic(monitor, 12, lambda: 0.5 * theta @ a @ theta)
        return monitor.ledger

    plain, spare = ledger(False), ledger(True)
    assert spare["step"].tolist() == list(range(12))
    for column in ("sharpness", "margin", "regime"):
        torch.testing.assert_close(spare[column], plain[column], rtol=1e-12, atol=0, equal_nan=True)
    assert bool(plain["sharpness"][1:].isfinite().all())
