"""InertiaSGD: the documented update, the shadow-energy identity its brake reads, the brake's
criterion, convergence above the heavy-ball threshold, resume, schedulers, skipped parameters."""

from __future__ import annotations

import io
import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from inertia import InertiaMonitor
from inertia.optim import InertiaSGD

F64 = torch.float64
LAM = torch.logspace(-2, 0, 20, dtype=F64)  # a quadratic with λ_max = 1, condition 100


def threshold(mu: float) -> float:
    """The heavy-ball stability threshold on lr, 2(1 + μ)/λ_max (docs/theory.md §4)."""
    return 2 * (1 + mu) / float(LAM.max())


def quadratic(theta: torch.Tensor) -> torch.Tensor:
    return 0.5 * (LAM * theta * theta).sum()


def run(opt, theta, steps, noise=0.0, record=False):
    """Full-batch (or noisy) steps on the quadratic; returns the losses and, with `record`,
    the state before each step: θ_k, p_k, g_k and the group's h and brake state."""
    gen = torch.Generator().manual_seed(7)
    losses, records = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = quadratic(theta)
        loss.backward()
        if noise:
            theta.grad.add_(noise * torch.randn(theta.shape, generator=gen, dtype=F64))
        losses.append(float(loss.detach()))
        if record:
            group = opt.param_groups[0]
            velocity = opt.state[theta].get("velocity", torch.zeros_like(theta))
            records.append((theta.detach().clone(), velocity.clone(), theta.grad.clone(), group))
        opt.step()
        if record:
            records[-1] = (*records[-1][:3], dict(records[-1][3]))
    return losses, records


def test_update_equals_the_documented_formula_and_torch_sgd_at_constant_lr():
    torch.manual_seed(0)
    a, b = torch.randn(5, dtype=F64), torch.randn(3, 2, dtype=F64)
    mine = [torch.nn.Parameter(a.clone()), torch.nn.Parameter(b.clone())]
    theirs = [torch.nn.Parameter(a.clone()), torch.nn.Parameter(b.clone())]
    groups = lambda ps: [  # noqa: E731
        {"params": [ps[0]], "lr": 0.05, "momentum": 0.8, "weight_decay": 0.1},
        {"params": [ps[1]], "lr": 0.2},
    ]
    opt = InertiaSGD(groups(mine), momentum=0.5, restart=False)
    sgd = torch.optim.SGD(groups(theirs), momentum=0.5)
    velocity = [torch.zeros_like(a), torch.zeros_like(b)]
    reference = [a.clone(), b.clone()]
    for _ in range(25):
        for ps in (mine, theirs):
            for p in ps:
                p.grad = torch.sin(3 * p.detach()) + p.detach() ** 3
        for i, group in enumerate(opt.param_groups):  # p ← μp − h(g + wd θ), θ ← θ + hp
            h = math.sqrt(group["lr"])
            g = torch.sin(3 * reference[i]) + reference[i] ** 3
            g = g + group["weight_decay"] * reference[i]
            velocity[i] = group["momentum"] * velocity[i] - h * g
            reference[i] = reference[i] + h * velocity[i]
        opt.step()
        sgd.step()
    for p, ref, q in zip(mine, reference, theirs, strict=True):
        torch.testing.assert_close(p.detach(), ref, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-12)


def test_shadow_energy_changes_by_the_documented_rise_exactly_on_a_quadratic():
    """H̃_k = ½‖p_k‖² + L(θ_k) − ½h⟨p_k, g_k⟩ changes by −½(1 − μ)⟨p_k, p_k + p_{k+1}⟩."""
    mu, theta = 0.7, torch.nn.Parameter(torch.ones(20, dtype=F64))
    opt = InertiaSGD([theta], lr=0.9 * threshold(mu), momentum=mu, restart=False)
    _, records = run(opt, theta, 40, record=True)
    h = math.sqrt(opt.param_groups[0]["lr"])

    def shadow(theta_k, p_k, g_k):
        return 0.5 * float(p_k @ p_k) + float(quadratic(theta_k)) - 0.5 * h * float(p_k @ g_k)

    for (t0, p0, g0, group), (t1, p1, g1, _) in itertools.pairwise(records):
        change = shadow(t1, p1, g1) - shadow(t0, p0, g0)
        scale = 0.5 * float(p0 @ p0) + float(quadratic(t0))
        assert abs(change - group["rise"]) <= 1e-12 * scale
    assert any(r[3]["rise"] < 0 for r in records[1:])


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_restart_fires_when_and_only_when_the_criterion_holds(noise):
    """The brake, recomputed here from recorded velocities and gradients: it fires iff the
    step's rise would lift Σ ΔH̃ above its lowest point since the last brake by more than
    tolerance·(1 − μ)·½‖p_k‖²."""
    mu, tol, theta = 0.9, 0.25, torch.nn.Parameter(torch.ones(20, dtype=F64))
    opt = InertiaSGD([theta], lr=1.05 * threshold(mu), momentum=mu, tolerance=tol)
    _, records = run(opt, theta, 400, noise=noise, record=True)
    energy = lowest = 0.0
    scale, calm, fired = 1.0, 0, []
    for _, p, g, group in records:
        h = math.sqrt(group["lr"] * scale)
        assert group["h"] == pytest.approx(
            math.sqrt(group["lr"] * (scale * 0.5 if group["braked"] else scale)), rel=1e-15
        )
        pp, pg = float(p @ p), float(p @ g)
        rise = -0.5 * (1 - mu) * ((1 + mu) * pp - h * pg)
        criterion = pp > 0 and energy + rise - lowest > tol * (1 - mu) * 0.5 * pp
        assert group["braked"] == criterion
        fired.append(criterion)
        if criterion:
            energy = lowest = 0.0
            scale, calm = scale * 0.5, 0
        else:
            energy += rise
            lowest = min(lowest, energy)
            calm += 1
            if calm > 5:
                scale = min(1.0, scale * 1.1)
    assert 0 < sum(fired) < len(fired)


@pytest.mark.parametrize("mu", [0.0, 0.5, 0.9])
def test_converges_at_three_times_the_threshold_where_sgd_diverges(mu):
    lr = 3 * threshold(mu)
    theta = torch.nn.Parameter(torch.ones(20, dtype=F64))
    losses, _ = run(InertiaSGD([theta], lr=lr, momentum=mu), theta, 3000)
    theta_sgd = torch.nn.Parameter(torch.ones(20, dtype=F64))
    sgd_losses, _ = run(torch.optim.SGD([theta_sgd], lr=lr, momentum=mu), theta_sgd, 200)
    assert losses[-1] < 1e-8 * losses[0]
    assert not all(math.isfinite(x) and x < 1e10 for x in sgd_losses)


@pytest.mark.parametrize(("mu", "factor"), [(0.0, 0.8), (0.9, 0.8), (0.9, 0.5)])
def test_brake_stays_off_below_the_threshold_and_the_run_is_plain_heavy_ball(mu, factor):
    lr = factor * threshold(mu)
    theta = torch.nn.Parameter(torch.ones(20, dtype=F64))
    opt = InertiaSGD([theta], lr=lr, momentum=mu)
    losses, _ = run(opt, theta, 500)
    reference = torch.nn.Parameter(torch.ones(20, dtype=F64))
    sgd_losses, _ = run(torch.optim.SGD([reference], lr=lr, momentum=mu), reference, 500)
    assert opt.param_groups[0]["brakes"] == 0
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(sgd_losses), rtol=1e-9, atol=0)


def test_state_dict_round_trip_resumes_bit_identically():
    mu, lr = 0.9, 3 * threshold(0.9)

    def fresh():
        theta = torch.nn.Parameter(torch.ones(20, dtype=F64))
        return theta, InertiaSGD([theta], lr=lr, momentum=mu)

    theta, opt = fresh()
    run(opt, theta, 120)
    straight, _ = run(opt, theta, 80)
    theta, opt = fresh()
    run(opt, theta, 120)
    assert opt.param_groups[0]["brakes"] > 0 and opt.param_groups[0]["scale"] < 1
    buffer = io.BytesIO()
    torch.save({"theta": theta.detach(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    theta2, opt2 = fresh()
    with torch.no_grad():
        theta2.copy_(saved["theta"])
    opt2.load_state_dict(saved["opt"])
    resumed, _ = run(opt2, theta2, 80)
    assert resumed == straight


def test_scheduler_changes_take_effect_and_the_velocity_carries_over():
    theta = torch.nn.Parameter(torch.ones(4, dtype=F64))
    opt = InertiaSGD([theta], lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.1)
    for k in range(10):
        opt.zero_grad()
        quadratic_small = 0.5 * (theta * theta).sum()
        quadratic_small.backward()
        before = opt.state[theta].get("velocity", torch.zeros_like(theta)).clone()
        start = theta.detach().clone()
        opt.step()
        h = math.sqrt(0.1 if k < 5 else 0.01)
        assert opt.param_groups[0]["h"] == pytest.approx(h, rel=1e-15)
        velocity = opt.state[theta]["velocity"]
        torch.testing.assert_close(velocity, 0.9 * before - h * start)  # p ← μp − hθ
        torch.testing.assert_close(theta.detach() - start, h * velocity)
        sched.step()


def test_parameters_without_gradients_are_skipped_and_keep_their_velocity():
    a = torch.nn.Parameter(torch.ones(3, dtype=F64))
    b = torch.nn.Parameter(torch.ones(2, dtype=F64))
    frozen = torch.nn.Parameter(torch.ones(2, dtype=F64), requires_grad=False)
    opt = InertiaSGD([a, b, frozen], lr=0.1)
    (a.sum() + b.sum()).backward()
    opt.step()
    assert frozen not in opt.state and torch.equal(frozen, torch.ones(2, dtype=F64))
    kept = opt.state[b]["velocity"].clone()
    b_before = b.detach().clone()
    opt.zero_grad(set_to_none=True)
    a.sum().backward()  # b has no gradient this step
    opt.step()
    assert torch.equal(opt.state[b]["velocity"], kept) and torch.equal(b.detach(), b_before)
    opt.zero_grad(set_to_none=True)
    (a.sum() + b.sum()).backward()  # b is back, with its velocity
    opt.step()
    torch.testing.assert_close(opt.state[b]["velocity"], 0.9 * kept - math.sqrt(0.1))


def test_monitor_reads_its_ledger_through_brakes_and_a_schedule():
    """Kinetic ½‖p_k‖² from the optimizer's own velocity; friction (1 − μ²)K_k + ½(1 − μ)q_kP_k
    per step (docs/theory.md §4), all of K at a restart (μ = 0), with P_k = ⟨θ_{k−1} − θ_k, g_k⟩
    and q_k = h_k/h_{k−1}: the velocity is physical, so a changed h rescales only the power."""
    mu, theta = 0.9, torch.nn.Parameter(torch.ones(20, dtype=F64))
    opt = InertiaSGD([theta], lr=1.5 * threshold(mu), momentum=mu)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)
    monitor = InertiaMonitor(opt)
    kinetic, friction, previous, h_before, rates = [], [], None, None, []
    for _ in range(150):
        opt.zero_grad()
        loss = quadratic(theta)
        loss.backward()
        monitor.observe(loss)
        rates.append(opt.param_groups[0]["lr"] * opt.param_groups[0]["scale"])
        velocity = opt.state[theta].get("velocity", torch.zeros_like(theta))
        kinetic.append(0.5 * float(velocity @ velocity))
        now = theta.detach().clone()
        power = 0.0 if previous is None else float((previous - now) @ theta.grad)
        opt.step()
        group = opt.param_groups[0]
        kept = 0.0 if group["braked"] else mu
        q = 1.0 if h_before is None else group["h"] / h_before
        friction.append((1 - kept**2) * kinetic[-1] + 0.5 * (1 - kept) * q * power)
        previous, h_before = now, group["h"]
        sched.step()
    led = monitor.ledger
    assert opt.param_groups[0]["brakes"] > 0
    scale = float(led["inertia"].abs().max())
    torch.testing.assert_close(led["kinetic"], torch.tensor(kinetic, dtype=F64), rtol=1e-10, atol=0)
    dissipated = torch.tensor([0.0, *friction[:-1]], dtype=F64).cumsum(0)
    torch.testing.assert_close(led["dissipated"], dissipated, rtol=1e-10, atol=1e-12 * scale)
    # the lr column is the rate of the step each row opens, lr × scale as the optimizer holds
    # them (not h² rebuilt from h, which read 0.29999999999999993 for 0.3); a braked step's
    # scale shrinks within the step, and its row reads the shrunk rate
    braked = [i for i, r in enumerate(rates) if led["lr"][i] != r]
    assert len(braked) == opt.param_groups[0]["brakes"]


def test_monitor_books_from_the_report_what_it_measures_from_the_parameters():
    """The monitor reads InertiaSGD's report (no pass over the parameters); with the alarm on
    it measures Δθ from its own buffers instead. Both ledgers agree, brakes, weight decay,
    parameter groups and a schedule included."""
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.ones(20, dtype=F64))
    b = torch.nn.Parameter(0.5 * torch.randn(3, dtype=F64))
    opt = InertiaSGD(
        [{"params": [a], "weight_decay": 0.05}, {"params": [b], "lr": 0.3}],
        lr=1.5 * threshold(0.9),
        momentum=0.9,
    )
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)
    reported, measured = InertiaMonitor(opt), InertiaMonitor(opt, alarm=True)
    assert reported.reads_report and not measured.reads_report
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(120):
            opt.zero_grad()
            loss = quadratic(a) + (b**2).sum() + 0.1 * (b**4).sum()
            loss.backward()
            reported.observe(loss)
            measured.observe(loss)
            opt.step()
            sched.step()
    assert opt.param_groups[0]["brakes"] > 0
    one, two = reported.ledger, measured.ledger
    scale = float(two["inertia"].abs().max())
    for name in ("kinetic", "potential", "inertia", "dissipated", "residual", "shadow"):
        torch.testing.assert_close(one[name], two[name], rtol=1e-10, atol=1e-12 * scale, msg=name)


def test_a_group_added_later_gets_its_checks_and_its_brake_state():
    a = torch.nn.Parameter(torch.ones(3, dtype=F64))
    b = torch.nn.Parameter(torch.ones(2, dtype=F64))
    opt = InertiaSGD([a], lr=0.1)
    opt.add_param_group({"params": [b], "lr": 0.2})
    (a.sum() + b.sum()).backward()
    opt.step()
    assert opt.param_groups[1]["h"] == pytest.approx(math.sqrt(0.2))
    assert opt.param_groups[1]["scale"] == 1.0
    with pytest.raises(ValueError, match="momentum"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "momentum": 1.5})
    assert len(opt.param_groups) == 2  # the bad group was not added


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"tolerance": -0.1}, "tolerance"),
        ({"decrease": 1.5}, "decrease"),
        ({"increase": 0.5}, "increase"),
        ({"patience": -1}, "patience"),
        ({"weight_decay": math.nan}, "weight_decay"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        InertiaSGD([torch.nn.Parameter(torch.ones(2))], **kwargs)


def _leaf():
    return torch.nn.Parameter(torch.ones(2))


def _non_leaf():
    return torch.ones(2, requires_grad=True) * 2


_SHARED = torch.nn.Parameter(torch.ones(2))
BAD_CONSTRUCTIONS = [
    ({"params": None}, "params"),  # torch: TypeError
    ({"params": torch.nn.Parameter(torch.ones(2))}, "params"),  # a bare tensor: TypeError
    ({"params": []}, "params"),
    ({"params": "ab"}, "params"),
    ({"params": [1.0, 2.0]}, "params"),
    ({"params": [{"lr": 0.1}]}, "param_group"),  # no 'params': KeyError
    ({"params": [{"params": {_leaf()}}]}, "params"),  # a set: TypeError
    ({"params": [torch.ones(2, dtype=torch.int64)]}, "params"),
    ({"params": [_non_leaf()]}, "params"),
    ({"params": [{"params": [_SHARED]}, {"params": [_SHARED]}]}, "params"),
    ({"restart": "yes"}, "restart"),
    ({"lr": "x"}, "lr"),
    ({"lr": 10**400}, "lr"),  # OverflowError
    ({"patience": 2.5}, "patience"),
    ({"min_scale": 0.0}, "min_scale"),
    ({"params": [{"params": [_leaf()], "momentum": math.inf}]}, "momentum"),
]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    BAD_CONSTRUCTIONS,
    ids=[f"{name}-{i}" for i, (_, name) in enumerate(BAD_CONSTRUCTIONS)],
)
def test_bad_constructor_arguments_raise_value_error_naming_them(kwargs, name):
    """Issue 18: torch's own TypeError/KeyError for bad params become ValueErrors naming them."""
    kwargs = {"params": [_leaf()], **kwargs}
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        InertiaSGD(**kwargs)


def test_checked_group_numbers_are_stored_as_plain_floats():
    opt = InertiaSGD([_leaf()], lr=torch.tensor(0.01), momentum=np.float32(0.5))
    group = opt.param_groups[0]
    assert type(group["lr"]) is float and type(group["momentum"]) is float
    assert group["lr"] == pytest.approx(0.01)
