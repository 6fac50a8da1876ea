"""Schedules against the books (docs/theory.md §4, (4.4s)): a β₁ schedule on Adam and AdamW
(OneCycleLR and CyclicLR cycle β₁ with the learning rate), and between rows `every` > 1 steps
apart a momentum changed every step and the heat of a warmup.

Adam's step is Δθ'_k = −η_k m_k/((1 − β₁,kᵗ)M_k) with m_k = β₁,k m_{k−1} + (1 − β₁,k)g_k (torch
takes the bias correction with the step's own β₁; Δθ' = θ_{k+1} − θ_k + ηλθ_k for AdamW), so
with h_k² = η_k(1 − β₁,k)/(1 − β₁,kᵗ) the velocity u_k = Δθ'_k/h_k = −(h_k/(1 − β₁,k))M_k⁻¹m_k
obeys

    u_k = μ_k r_k M_k⁻¹M_{k−1}u_{k−1} − h_k M_k⁻¹g_k,   r_k = q_k b_k,
    q_k = h_k/h_{k−1},   b_k = (1 − β₁,k−1)/(1 − β₁,k):

a changed β₁ rescales u by b besides q. SGD's buffer takes g whole (buf ← μ buf + g): a cycled
momentum rescales nothing, b = 1. Expanding K_{k+1} = ½u_kᵀM_ku_k and the potential through
the map on a quadratic, the shadow energy H̃ = I + ½P, P_k = ⟨−Δθ'_{k−1}, g_k⟩, changes by

    −(1 − μ²r²)K_k − ½(1 − μqr)P_k − ½μr⟨u_{k−1}, (M_k − M_{k−1})u_k⟩,

and the books take schedule (r² − 1)K_k + ½(qr − 1)P_k and friction (1 − μ²)r²K_k +
½(1 − μ)qrP_k: the residual per step beyond the change of the shadow term is the moving
metric's −½μr⟨u_{k−1}, ΔM_k u_k⟩ alone (0 for SGD). Every expectation is computed from the
recorded θ_k, g_k, the step's η and β₁ (μ) and Adam's state after the step, with the update
rule written out here, never from the monitor's columns beyond the one compared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR

from conftest import train_quadratic
from inertia import InertiaMonitor

F64 = torch.float64
A = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]], dtype=F64)
TARGET = torch.tensor([1.0, -1.0, 0.5], dtype=F64)  # away from 0: AdamW's decay does work
DECAY, BETA2 = 0.1, 0.999
STEPS = 60


@dataclass
class Run:
    """A monitored full-batch run on L = ½(θ − c)ᵀA(θ − c): its ledger, θ_0 … θ_n, and per
    step k the gradient g_k, the step's η, β₁ (SGD: μ) and the state it left (Adam's
    exp_avg_sq and step; ones and 0 for SGD)."""

    ledger: object
    theta: Tensor  # (n + 1, d)
    grad: Tensor  # (n, d)
    lr: Tensor  # (n,)
    beta: Tensor  # (n,)
    second: Tensor  # (n, d)
    count: Tensor  # (n,)


def train(make, schedule=None, *, steps=STEPS, every=1, beta_of=None) -> Run:
    """`steps` monitored steps of `make([θ])` from θ = 0, `schedule(opt)` stepped after each;
    `beta_of(k)`, if given, sets β₁ of step k."""
    theta = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    opt = make([theta])
    group, sched = opt.param_groups[0], schedule(opt) if schedule else None
    monitor = InertiaMonitor(opt, every=every)
    thetas, grads, lrs, betas, seconds, counts = [theta.detach().clone()], [], [], [], [], []

    def set_beta(k: int) -> None:
        if beta_of is not None:
            group["betas"] = (beta_of(k), group["betas"][1])

    def after() -> None:
        state = opt.state[theta]
        thetas.append(theta.detach().clone())
        grads.append(theta.grad.detach().clone())
        lrs.append(group["lr"])
        betas.append(group["betas"][0] if "betas" in group else group["momentum"])
        seconds.append(state["exp_avg_sq"].clone() if "exp_avg_sq" in state else torch.ones(3))
        counts.append(float(state.get("step", 0.0)))
        if sched is not None:
            sched.step()
        set_beta(len(lrs))

    set_beta(0)
    train_quadratic(monitor, steps, lambda: 0.5 * (theta - TARGET) @ A @ (theta - TARGET), after)
    floats = [torch.tensor(x, dtype=F64) for x in (lrs, betas, counts)]
    stacked = [torch.stack(x).to(F64) for x in (thetas, grads, seconds)]
    return Run(monitor.ledger, stacked[0], stacked[1], floats[0], floats[1], stacked[2], floats[2])


@dataclass
class Rule:
    """The update rule as a kick–drift map, per step k (module docstring); the energies per
    row k, K_0 = P_0 = 0."""

    metric: Tensor  # M_k after step k
    velocity: Tensor  # u_k
    kinetic: Tensor
    power: Tensor
    q: Tensor  # q_k, 1 at k = 0
    b: Tensor  # b_k, 1 at k = 0
    mu: Tensor

    @property
    def r(self) -> Tensor:
        return self.q * self.b

    @property
    def w(self) -> Tensor:
        return self.q * self.r


def rule(run: Run, adam: bool, eps: float = 1e-8) -> Rule:
    """AdamW's map (decay `DECAY`, β₂ `BETA2`, `eps`) or SGD's, from the recorded run."""
    lr, beta, n = run.lr, run.beta, len(run.lr)
    if adam:  # AdamW: h² = η(1 − β₁)/(1 − β₁ᵗ), M = sqrt(v/(1 − β₂ᵗ)) + ε, m takes (1 − β₁)g
        h = (lr * (1 - beta) / (1 - beta**run.count)).sqrt()
        metric = (run.second / (1 - BETA2**run.count)[:, None]).sqrt() + eps
        gain = 1 - beta
    else:  # SGD: h² = η, M = Id, buf takes g
        h, metric, gain = lr.sqrt(), torch.ones_like(run.grad), torch.ones_like(lr)
    carried = run.theta[1:] - run.theta[:-1]
    if adam:
        carried = carried + (lr * DECAY)[:, None] * run.theta[:-1]
    u = carried / h[:, None]
    kinetic, power = torch.zeros(n, dtype=F64), torch.zeros(n, dtype=F64)
    kinetic[1:] = 0.5 * (metric[:-1] * u[:-1] ** 2).sum(1)
    power[1:] = -(carried[:-1] * run.grad[1:]).sum(1)
    q, b = torch.ones(n, dtype=F64), torch.ones(n, dtype=F64)
    q[1:], b[1:] = h[1:] / h[:-1], gain[:-1] / gain[1:]
    return Rule(metric, u, kinetic, power, q, b, beta)


def cumulative(per_step: Tensor) -> Tensor:
    """The books at rows 0 … n − 1 of what steps 0 … n − 2 add (step k at row k + 1)."""
    return torch.cat([torch.zeros(1, dtype=F64), per_step[:-1].cumsum(0)])


def schedule_steps(m: Rule) -> Tensor:
    return (m.r**2 - 1) * m.kinetic + 0.5 * (m.w - 1) * m.power


def adamw(lr: float = 0.05, eps: float = 1e-8) -> Callable[[list[Tensor]], torch.optim.Optimizer]:
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=DECAY, eps=eps)


def one_cycle(max_lr: float, cycle: bool = True, steps: int = STEPS):
    return lambda opt: OneCycleLR(opt, max_lr=max_lr, total_steps=steps, cycle_momentum=cycle)


CYCLED = {  # β₁ (SGD: μ) between 0.85 and 0.95 with the learning rate
    "adamw-onecycle": (adamw(), one_cycle(0.05)),
    "adamw-cyclic": (adamw(), lambda opt: CyclicLR(opt, 0.01, 0.05, step_size_up=10)),
    "sgd-onecycle": (
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        one_cycle(0.05),
    ),
}


@pytest.mark.parametrize("name", list(CYCLED))
def test_books_equal_the_rescaling_from_recorded_steps_and_state(name):
    """K_k from θ_k and Adam's state, and the schedule and friction books with r = qb (b = 1
    for SGD), equal the monitor's to 1e-12 over 60 steps of a cycling schedule. For AdamW the
    part β₁'s factor b adds to the schedule book, (r² − q²)K + ½(qr − q²)P summed, is above
    1e-2, ten orders above the tolerance: books that leave b out fail."""
    make, schedule = CYCLED[name]
    run = train(make, schedule)
    m = rule(run, adam=name.startswith("adam"))
    assert float(m.mu.max() - m.mu.min()) > 0.09  # β₁ (μ) cycles over most of [0.85, 0.95]
    friction = (1 - m.mu**2) * m.r**2 * m.kinetic + 0.5 * (1 - m.mu) * m.w * m.power
    expected = {
        "kinetic": m.kinetic,
        "schedule": cumulative(schedule_steps(m)),
        "dissipated": cumulative(friction),
    }
    for column, want in expected.items():
        scale = max(1.0, float(want.abs().max()))
        got = run.ledger[column]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * scale, msg=column)
    beta_part = (m.r**2 - m.q**2) * m.kinetic + 0.5 * (m.w - m.q**2) * m.power
    if name.startswith("adam"):
        assert abs(float(beta_part[:-1].sum())) > 1e-2
    else:
        assert float(beta_part.abs().max()) == 0.0


@pytest.mark.parametrize("name", list(CYCLED))
def test_on_a_quadratic_the_residual_beyond_the_shadow_term_is_the_moving_metric(name):
    """E_k = ΔR_k + ½ΔP_k, the residual per step beyond the change of the shadow term, equals
    −½μ_k r_k⟨u_{k−1}, (M_k − M_{k−1})u_k⟩ (module docstring) to round-off with β₁ cycling:
    0 for SGD, Adam's moving metric alone for AdamW, where the β₁ energy the books would
    miss without b, −Σ[μ²q²(b² − 1)K + ½μq²(b − 1)P], is 1e-2 and more."""
    make, schedule = CYCLED[name]
    run = train(make, schedule)
    adam = name.startswith("adam")
    m = rule(run, adam)
    measured = run.ledger["residual"].diff() + 0.5 * m.power.diff()
    predicted = torch.zeros(STEPS - 1, dtype=F64)
    change = m.metric[1:-1] - m.metric[:-2]  # M_k − M_{k−1}, k = 1 … n − 2
    moving = (m.velocity[:-2] * change * m.velocity[1:-1]).sum(1)
    predicted[1:] = -0.5 * m.mu[1:-1] * m.r[1:-1] * moving
    scale = float(run.ledger["inertia"].abs().max())
    torch.testing.assert_close(measured, predicted, rtol=0, atol=1e-12 * scale)
    missing = m.mu**2 * m.q**2 * (m.b**2 - 1) * m.kinetic
    missing = missing + 0.5 * m.mu * m.q**2 * (m.b - 1) * m.power
    if adam:
        assert float(predicted.abs().max()) > 1e-4  # the metric moves: something to predict
        assert abs(float(missing[:-1].sum())) > 1e-2
    else:
        assert float(predicted.abs().max()) == 0.0 and float(missing.abs().max()) == 0.0


def test_with_a_nearly_fixed_metric_cycling_leaves_the_residual_as_small_as_without():
    """With ε = 100 Adam's metric M = sqrt(v̂) + ε barely moves, and on a quadratic the residual
    is then the shadow term −½P_k = inertia − shadow plus the moving metric's share, by
    Cauchy–Schwarz in the metrics |R_k − (I_k − H̃_k)| ≤ B_k = Σ_{j<k} μ_j r_j δ_j
    sqrt(K_j K_{j+1}), δ_j = max_i |ΔM_{j,i}|/sqrt(M_{j−1,i}M_{j,i}): with β₁ cycling as without,
    and B below 1% of the β₁ energy books without b would leave in the residual (measured:
    |R − (I − H̃)| ≤ 6.9e-4 cycling, 1.1e-3 not; B ≤ 8.4e-4 and 1.3e-3; that energy 0.22)."""
    eps, largest, missing = 100.0, 0.0, {}
    for cycle in (False, True):
        run = train(adamw(5.0, eps), one_cycle(5.0, cycle))
        m = rule(run, adam=True, eps=eps)
        ledger = run.ledger
        off = (ledger["residual"] - (ledger["inertia"] - ledger["shadow"])).abs()
        delta = torch.zeros(STEPS, dtype=F64)  # δ_k, k = 1 … n − 2
        change = m.metric[1:-1] - m.metric[:-2]
        delta[1:-1] = (change.abs() / (m.metric[1:-1] * m.metric[:-2]).sqrt()).amax(1)
        bound = cumulative(m.mu * m.r * delta * (m.kinetic * m.kinetic.roll(-1)).sqrt())
        scale = float(ledger["inertia"].abs().max())
        assert bool((off <= bound + 1e-13 * scale).all()), (cycle, float((off - bound).max()))
        largest = max(largest, float(bound.max()))
        unbooked = m.mu**2 * m.q**2 * (m.b**2 - 1) * m.kinetic
        unbooked = unbooked + 0.5 * m.mu * m.q**2 * (m.b - 1) * m.power
        missing[cycle] = abs(float(unbooked[:-1].sum()))
    assert missing[False] == 0.0 and missing[True] > 100 * largest


EVERY = 5


def ramp(k: int) -> float:
    """β₁ of step k: 1 − β₁ grows geometrically from 0.02 to 0.2 over 40 steps, so that
    b_k = 10^(−1/40) is the same at every step, the row's own included."""
    return 1.0 - 0.02 * 10.0 ** (k / 40)


def spread_bound(x: Tensor, factors: Tensor) -> float:
    """What two rows leave unknown of Σ_j (f_j − 1)X_j over steps k₀ … k₁ − 1 (`factors` f_j,
    `x` X_{k₀} … X_{k₁}), X_j = A_jX̂_j, A_j = Π_{k₀ ≤ i < j} f_i: the rows know f_{k₀}, the
    product A_{k₁} and X̂ at both ends; their interior jumps, equal factors, are monotone and
    add up to A_{k₁} − f_{k₀}, as the true ones do. Both interior sums are Σ jumps × X̂ with X̂
    within [min, max] of X̂_j, so they differ by at most ½(max − min)(V + |A_{k₁} − f_{k₀}|),
    V = Σ_j |A_{j+1} − A_j| over the interior."""
    scale = torch.cat([torch.ones(1, dtype=F64), factors.cumprod(0)])
    hat = x / scale
    variation = (scale[2:] - scale[1:-1]).abs().sum() + (scale[-1] - scale[1]).abs()
    return float(0.5 * (hat.max() - hat.min()) * variation)


def test_rows_apart_book_the_beta1_schedule_within_what_they_leave_unknown():
    """Rows every 5 steps, OneCycleLR's learning rate and a β₁ whose factor b is the same at
    every step (`ramp`): the rows know r = qb of their own step and the products of the
    interior q and b exactly, and with b the same at every step the shadow term's factor
    qr of the row's step too. Between each pair of rows the schedule book is within
    `spread_bound` (K's, plus half P's) of Σ_j (r_j² − 1)K_j + ½(q_j r_j − 1)P_j from the
    recorded θ, g and state; somewhere b's share of it exceeds twice that bound and 1e-2:
    books that leave b out between rows fail there."""
    make, schedule = adamw(), one_cycle(0.05, cycle=False, steps=41)
    run = train(make, schedule, steps=41, every=EVERY, beta_of=ramp)
    m = rule(run, adam=True)
    booked, exact = run.ledger["schedule"], schedule_steps(m)
    tolerance = 1e-12 * float(run.ledger["inertia"].abs().max())
    assert run.ledger["step"].tolist() == list(range(0, 41, EVERY))
    without_b = (m.q**2 - 1) * (m.kinetic + 0.5 * m.power)
    discriminating = False
    for i, k0 in enumerate(range(0, 40, EVERY)):
        k1 = k0 + EVERY
        want, got = float(exact[k0:k1].sum()), float(booked[i + 1] - booked[i])
        bound = spread_bound(m.kinetic[k0 : k1 + 1], m.r[k0:k1] ** 2)
        bound += 0.5 * spread_bound(m.power[k0 : k1 + 1], m.w[k0:k1])
        assert abs(got - want) <= bound + tolerance, (k0, got, want, bound)
        share = abs(want - float(without_b[k0:k1].sum()))
        discriminating |= share > max(2 * bound, 1e-2)
    assert discriminating


def momentum_ramp(k: int) -> float:
    """SGD's μ of step k: from 0.3 to 0.9 over 40 steps, 0.075 between rows 5 steps apart."""
    return 0.3 + 0.6 * k / 40


def sgd_ramp_ledger(every: int):
    """41 steps of SGD (lr 0.002) on L = ½(θ − c)ᵀA(θ − c) with μ of step k `momentum_ramp(k)`,
    rows `every` steps apart."""
    theta = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    opt = torch.optim.SGD([theta], lr=0.002, momentum=momentum_ramp(0))
    monitor = InertiaMonitor(opt, every=every)
    group, taken = opt.param_groups[0], [0]

    def after() -> None:
        taken[0] += 1
        group["momentum"] = momentum_ramp(taken[0])

    train_quadratic(monitor, 41, lambda: 0.5 * (theta - TARGET) @ A @ (theta - TARGET), after)
    return monitor.ledger


def test_rows_apart_take_each_steps_momentum_for_the_friction():
    """A momentum changed every step (OneCycleLR and CyclicLR cycle SGD's): rows 5 steps apart
    know μ at both ends of the stretch, and the friction of step j is (1 − μ_j²)K_j +
    ½(1 − μ_j)P_j (q = 1). Against the friction of the same steps booked row by row (every=1,
    exact per step), the books between rows differ only by K and P taken linear between the
    rows: by at most Σ_j c_j|X̂_j − X_j|, c_j the rate of step j, X̂_j the mean of the line at
    t_j and t_{j+1}. Somewhere the last map's μ for every step would miss by more than twice
    that: books that take one μ for the stretch fail there."""
    one, five = sgd_ramp_ledger(1), sgd_ramp_ledger(EVERY)
    kinetic, power = one["kinetic"], 2.0 * (one["shadow"] - one["inertia"])  # H̃ = I + ½P
    exact = one["dissipated"].diff()  # step k's friction, booked at row k + 1
    mu = torch.tensor([momentum_ramp(k) for k in range(41)], dtype=F64)
    rates = {"K": (1 - mu**2, kinetic), "P": (0.5 * (1 - mu), power)}
    tolerance = 1e-12 * float(one["inertia"].abs().max())
    discriminating = False
    for i, k0 in enumerate(range(0, 40, EVERY)):
        k1, t = k0 + EVERY, torch.arange(EVERY, dtype=F64)
        got, want = (
            float(five["dissipated"][i + 1] - five["dissipated"][i]),
            float(exact[k0:k1].sum()),
        )
        bound, one_mu = 0.0, 0.0
        for c, x in rates.values():
            line = x[k0] + (x[k1] - x[k0]) * (t + 0.5) / EVERY  # mean over [t_j, t_{j+1}]
            bound += float((c[k0:k1] * (line - x[k0:k1]).abs()).sum())
            one_mu += float(((c[k0:k1] - c[k1 - 1]) * line).sum())
        assert abs(got - want) <= bound + tolerance, (k0, got, want, bound)
        discriminating |= abs(one_mu) > 2 * bound
    assert discriminating


def warmup_heat_ledger(every: int):
    """40 steps of SGD on least squares over two fixed micro-batches of 8 (`noise="microbatch"`),
    the learning rate linear from 0 (step 0) to 0.05 (step 40): h² = η linear in the step."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, generator=gen, dtype=F64), torch.randn(16, generator=gen, dtype=F64)
    theta = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    opt = torch.optim.SGD([theta], lr=0.0)
    monitor = InertiaMonitor(opt, every=every, noise="microbatch")
    for k in range(40):
        opt.param_groups[0]["lr"] = 0.05 * k / 40
        opt.zero_grad()
        for part in (slice(0, 8), slice(8, 16)):
            loss = 0.25 * ((x[part] @ theta - y[part]) ** 2).mean()  # half of each batch's mean
            loss.backward()
            monitor.observe(loss, accumulate=True, batch_size=8)
        opt.step()
    return monitor.ledger


def test_rows_apart_book_a_warmups_heat_at_each_steps_learning_rate():
    """A warmup from η = 0, rows 5 steps apart: the heat of the steps between rows is
    ½h_j²·tr(M⁻¹C)/B with h_j² = η_j linear in j, the noise estimate the row's. Against the
    heat of every step booked with its own estimate (every=1), the books between rows differ
    only by the estimate's change over the stretch: by at most Σ_j ½h_j²|N_{k₀} − N_j|,
    N = tr(M⁻¹C)/B. The last step's h² for every step, as before, books the first stretch's
    heat twice over (5 × 4 against 0 + 1 + 2 + 3 + 4), and misses that bound somewhere by
    more than twice."""
    one, five = warmup_heat_ledger(1), warmup_heat_ledger(EVERY)
    heat, noise, h2 = one["injected"].diff(), one["noise_trace"], one["h"] ** 2
    assert bool(noise[1:].isfinite().all()) and float(h2[0]) == 0.0
    tolerance = 1e-12 * float(one["injected"].abs().max())
    discriminating = False
    for i, k0 in enumerate(range(0, 35, EVERY)):
        k1 = k0 + EVERY
        got, want = float(five["injected"][i + 1] - five["injected"][i]), float(heat[k0:k1].sum())
        bound = float((0.5 * h2[k0:k1] * (noise[k0] - noise[k0:k1]).abs()).sum())
        assert abs(got - want) <= bound + tolerance, (k0, got, want, bound)
        last_h = float(0.5 * h2[k1 - 1] * noise[k0]) * EVERY
        discriminating |= abs(last_h - want) > 2 * bound
    assert discriminating


def test_rows_apart_book_a_warmups_decay_work_at_each_steps_rate():
    """AdamW's decoupled decay under a warmup from η = 0, rows 5 steps apart: step j's work is
    ½η_jλ(⟨θ_j, g_j⟩ + ⟨θ_j, g_{j+1}⟩) from the recorded θ and g (every=1 books it so), and
    between rows the books take η_jλ linear between the stretch's first and last maps (exact:
    η is linear in j) and the bracket's mean from the two rows, ½(⟨θ_{k₀}, g_{k₀}⟩ +
    ⟨θ_{k₁}, g_{k₁}⟩): they differ by at most Σ_j η_jλ·|that mean − the step's bracket/2|.
    The last map's ηλ for every step misses that bound somewhere by more than twice."""
    warmup = (adamw(0.05), lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: k / 40))
    one, five = train(*warmup, steps=41), train(*warmup, steps=41, every=EVERY)
    assert torch.equal(one.theta, five.theta)  # the monitor does not touch the run
    rate = one.lr[:-1] * DECAY  # steps 0 … 39
    bracket = (one.theta[:-2] * one.grad[:-1]).sum(1) + (one.theta[:-2] * one.grad[1:]).sum(1)
    exact = 0.5 * rate * bracket
    scale = float(one.ledger["inertia"].abs().max())
    torch.testing.assert_close(one.ledger["decay"].diff(), exact, rtol=0, atol=1e-12 * scale)
    discriminating = False
    for i, k0 in enumerate(range(0, 40, EVERY)):
        k1 = k0 + EVERY
        ends = (one.theta[k0] * one.grad[k0]).sum() + (one.theta[k1] * one.grad[k1]).sum()
        mean = 0.5 * float(ends)
        got = float(five.ledger["decay"][i + 1] - five.ledger["decay"][i])
        want = float(exact[k0:k1].sum())
        bound = float((rate[k0:k1] * (mean - 0.5 * bracket[k0:k1]).abs()).sum())
        assert abs(got - want) <= bound + 1e-12 * scale, (k0, got, want, bound)
        discriminating |= abs(float(rate[k1 - 1]) * EVERY * mean - want) > 2 * bound
    assert discriminating
