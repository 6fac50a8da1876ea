"""Gradient-noise estimates, the injected heat and the predicted noise floor (docs/theory.md §4)."""

from __future__ import annotations

import pytest
import torch

from inertia import InertiaMonitor
from inertia.monitor import GroupLayout, MicroBatch
from workloads import full_loss, regression

F64 = torch.float64


def train_regression(lr, mu, batch, noise, steps=4000, micro=1, every=1):
    x, y, best = regression()
    theta = torch.nn.Parameter(best.clone())
    opt = torch.optim.SGD([theta], lr=lr, momentum=mu)
    monitor = InertiaMonitor(opt, noise=noise, every=every)
    gen = torch.Generator().manual_seed(1)
    excess = []
    for k in range(steps):
        opt.zero_grad()
        for _ in range(micro):
            idx = torch.randint(0, len(y), (batch // micro,), generator=gen)
            per_sample = 0.5 * (x[idx] @ theta - y[idx]) ** 2
            loss = per_sample.mean() / micro
            if noise == "per_sample":
                monitor.observe(loss * micro, accumulate=micro > 1, per_sample=per_sample)
            loss.backward()
            if noise != "per_sample":
                monitor.observe(loss * micro, accumulate=micro > 1)
        opt.step()
        if k >= steps // 2:
            excess.append(full_loss(x, y, theta.detach()) - full_loss(x, y, best))
    return monitor, sum(excess) / len(excess)


@pytest.mark.parametrize(
    ("lr", "mu", "batch", "noise", "micro"),
    [
        (0.01, 0.9, 16, "per_sample", 1),
        (0.05, 0.0, 8, "per_sample", 1),
        (0.005, 0.95, 32, "per_sample", 1),
        (0.01, 0.9, 16, "fluctuation", 1),
        (0.01, 0.9, 32, "microbatch", 4),
        (0.01, 0.9, 32, "per_sample", 4),
    ],
)
def test_predicted_floor_matches_the_measured_plateau_of_linear_regression(
    lr, mu, batch, noise, micro
):
    monitor, measured = train_regression(lr, mu, batch, noise, micro=micro)
    floor = monitor.noise_floor()
    assert floor["excess_loss"] == pytest.approx(measured, rel=0.25), (floor, measured)
    assert floor["kinetic"] == pytest.approx(floor["measured_kinetic"], rel=0.25)


@pytest.mark.parametrize("noise", ["per_sample", "microbatch"])
def test_a_row_every_5_steps_estimates_the_noise_of_its_own_step(noise):
    """The monitor does not change training: a row booked every 5 steps has the estimate of
    the every-step row at that step, from that step's 4 micro-batches alone."""
    trace = {
        every: train_regression(0.01, 0.9, 32, noise, steps=40, micro=4, every=every)[0].ledger[
            "noise_trace"
        ]
        for every in (1, 5)
    }
    torch.testing.assert_close(trace[5], trace[1][::5], rtol=1e-12, atol=0)


def test_predicted_floor_for_softmax_regression_on_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    x = torch.tensor(data.data, dtype=F64) / 16.0
    labels = torch.tensor(data.target)
    wd = 1e-2
    model = torch.nn.Linear(64, 10).double()
    params = list(model.parameters())

    def full(with_grad: bool = False) -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        return loss + 0.5 * wd * sum((p**2).sum() for p in params)

    lbfgs = torch.optim.LBFGS(
        params,
        lr=1,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure():
        lbfgs.zero_grad()
        loss = full()
        loss.backward()
        return loss

    lbfgs.step(closure)
    best = float(full().detach())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=wd)
    monitor = InertiaMonitor(opt, noise="per_sample")
    gen = torch.Generator().manual_seed(0)
    excess = []
    for k in range(3000):
        idx = torch.randint(0, len(labels), (32,), generator=gen)
        opt.zero_grad()
        per_sample = torch.nn.functional.cross_entropy(model(x[idx]), labels[idx], reduction="none")
        loss = per_sample.mean()
        monitor.observe(loss, per_sample=per_sample)
        loss.backward()
        opt.step()
        if k >= 1500:
            with torch.no_grad():
                excess.append(float(full()) - best)
    measured = sum(excess) / len(excess)
    assert monitor.noise_floor()["excess_loss"] == pytest.approx(measured, rel=0.25)


def test_per_sample_trace_is_the_covariance_of_per_sample_gradients_over_the_batch():
    x, y, best = regression(n=64)
    theta = torch.nn.Parameter(best + 0.3)
    opt = torch.optim.SGD([theta], lr=0.01)
    monitor = InertiaMonitor(opt, noise="per_sample")
    grads = torch.stack(
        [torch.autograd.grad(0.5 * (x[i] @ theta - y[i]) ** 2, theta)[0] for i in range(64)]
    )
    expected = float(grads.var(0).sum()) / 64  # tr(C)/B at θ, before the step moves it
    per_sample = 0.5 * (x @ theta - y) ** 2
    monitor.observe(per_sample.mean(), per_sample=per_sample)
    per_sample.mean().backward()
    opt.step()
    assert float(monitor.ledger["noise_trace"][0]) == pytest.approx(expected, rel=1e-12)


def test_micro_batch_noise_along_a_step_is_the_variance_of_projected_gradients():
    """Δθᵀ(C/B)Δθ, the secant margin's noise (docs/monitor.md): the spread of 4 micro-batch
    gradients, projected on a step (its sign does not matter), as `MicroBatch` estimates it
    from the accumulated gradient after each micro-batch's backward."""
    x, y, best = regression(n=64)
    theta = torch.nn.Parameter(best + 0.3)
    estimate = MicroBatch([GroupLayout([theta])])
    step = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    per_sample = 0.5 * (x @ theta - y) ** 2
    chunks = [per_sample[i : i + 16].mean() / 4 for i in range(0, 64, 16)]
    increments = []
    for chunk in chunks:
        increments.append(torch.autograd.grad(chunk, theta, retain_graph=True)[0])
        chunk.backward(retain_graph=True)
        estimate.observe(None, [-step])
    result = estimate.take()
    along = 4 * float((torch.stack(increments) @ step).var())
    assert float(result.along[0]) == pytest.approx(along, rel=1e-10)
    trace = 4 * float(torch.stack(increments).var(0).sum())
    assert float(result.trace[0]) == pytest.approx(trace, rel=1e-10)


def test_injected_heat_is_half_h_squared_noise_trace_per_step():
    monitor, _ = train_regression(0.01, 0.9, 16, "per_sample", steps=50)
    led = monitor.ledger
    heat = 0.5 * led["h"][:-1] ** 2 * led["noise_trace"][:-1]
    expected = torch.cat([torch.zeros(1, dtype=F64), heat.cumsum(0)])
    torch.testing.assert_close(led["injected"], expected, rtol=1e-12, atol=1e-15)


def test_rows_every_3_steps_inject_3_steps_of_heat():
    """Between rows 3 steps apart the books take 3 steps of heat, ½h²·tr(C)/B each, at the
    last row's estimate."""
    monitor, _ = train_regression(0.01, 0.9, 16, "per_sample", steps=30, every=3)
    led = monitor.ledger
    heat = 3 * 0.5 * led["h"][:-1] ** 2 * led["noise_trace"][:-1]
    expected = torch.cat([torch.zeros(1, dtype=F64), heat.cumsum(0)])
    torch.testing.assert_close(led["injected"], expected, rtol=1e-12, atol=1e-15)


def test_noise_floor_needs_an_estimate_and_rows():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(ValueError, match="noise estimate"):
        InertiaMonitor(opt).noise_floor()
    with pytest.raises(ValueError, match="^noise must be"):
        InertiaMonitor(opt, noise="magic")
    with pytest.raises(ValueError, match="at least 4 rows"):
        InertiaMonitor(opt, noise="fluctuation").noise_floor()
