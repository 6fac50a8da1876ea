"""Gradient-noise estimates, the injected heat and the predicted noise floor (docs/theory.md §4).

The floor tests run `chains` independent copies of one problem as the rows of one parameter:
SGD acts linearly and Adam and RMSprop elementwise, so the rows do not interact, the monitor's
books and the law add up over them, and the spread of the rows' time averages gives the
Monte-Carlo standard error of the measured plateau. A law is asserted within three standard
errors plus 5% for its first-order truncation (h²λ/(1 − μ) ≤ 0.05 in these runs)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from inertia import InertiaMonitor
from inertia.monitor import GroupLayout, MicroBatch
from inertia.monitor.estimate import EUCLIDEAN
from workloads import regression

F64 = torch.float64
LAW_TRUNCATION = 0.05

MakeOptimizer = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


def sgd(lr: float, mu: float = 0.0, **kw: float) -> MakeOptimizer:
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=mu, **kw)


def adam(
    beta1: float, cls: type[torch.optim.Optimizer] = torch.optim.Adam, **kw: float
) -> MakeOptimizer:
    return lambda params: cls(params, lr=1e-3, betas=(beta1, 0.999), **kw)


def assert_floor(monitor: InertiaMonitor, measured: float, stderr: float) -> None:
    floor = monitor.noise_floor()
    assert stderr < 0.05 * measured, "too few chains or steps for a meaningful test"
    rel = 3 * stderr / measured + LAW_TRUNCATION
    assert floor["excess_loss"] == pytest.approx(measured, rel=rel), (floor, measured, stderr)
    kinetic_rel = 3 * floor["measured_kinetic_stderr"] / floor["measured_kinetic"] + LAW_TRUNCATION
    assert floor["kinetic"] == pytest.approx(floor["measured_kinetic"], rel=max(kinetic_rel, rel))


def train_regression(
    make_opt, batch, noise, *, steps=1200, chains=64, micro=1, every=1, clip=None, norms=None
):
    """Minibatch linear regression with label noise, `chains` copies from the least-squares
    solution; returns the monitor and the excess loss ½δᵀHδ over the later half of the run,
    summed over chains, with its standard error. With `clip`, the gradient's norm is clipped
    to it before each step (`torch.nn.utils.clip_grad_norm_`; its norms appended to `norms`)."""
    x, y, best = regression()
    hessian = x.T @ x / len(y)
    theta = torch.nn.Parameter(best.repeat(chains, 1))
    monitor = InertiaMonitor(make_opt([theta]), noise=noise, every=every)
    gen = torch.Generator().manual_seed(1)
    excess = torch.zeros(chains, dtype=F64)
    for k in range(steps):
        monitor.optimizer.zero_grad()
        for _ in range(micro):
            idx = torch.randint(0, len(y), (chains, batch // micro), generator=gen)
            residual = torch.einsum("cbd,cd->cb", x[idx], theta) - y[idx]
            per_sample = (0.5 * residual**2).sum(0)
            loss = per_sample.mean() / micro
            if noise == "per_sample":
                monitor.observe(loss * micro, accumulate=micro > 1, per_sample=per_sample)
            loss.backward()
            if noise != "per_sample":
                monitor.observe(loss * micro, accumulate=micro > 1)
        if clip is not None:
            norm = torch.nn.utils.clip_grad_norm_([theta], clip)
            if norms is not None:
                norms.append(float(norm))
        monitor.optimizer.step()
        if k >= steps // 2:
            delta = theta.detach() - best
            excess += 0.5 * ((delta @ hessian) * delta).sum(1)
    excess /= steps - steps // 2
    stderr = float(excess.std() * math.sqrt(chains)) if chains > 1 else math.nan
    return monitor, float(excess.sum()), stderr


@pytest.mark.parametrize(
    ("make_opt", "batch", "noise", "micro"),
    [
        (sgd(0.01, 0.9), 16, "per_sample", 1),
        (sgd(0.05), 8, "per_sample", 1),
        (sgd(0.01, 0.9), 16, "fluctuation", 1),
        (sgd(0.01, 0.9), 32, "microbatch", 4),
        (adam(0.0), 16, "per_sample", 1),
        (adam(0.9, torch.optim.AdamW, weight_decay=0.0), 16, "per_sample", 1),
        (adam(0.9), 32, "microbatch", 4),
    ],
    ids=["sgd-momentum", "sgd", "fluctuation", "microbatch", "adam-b0", "adamw-b0.9", "adam-micro"],
)
def test_predicted_floor_matches_the_measured_plateau_of_linear_regression(
    make_opt, batch, noise, micro
):
    """E[L − L*] ≈ h²tr(M⁻¹C)/(4B(1 − μ)) in each map's metric M (identity for SGD,
    diag(sqrt(v̂) + ε) for Adam)."""
    monitor, measured, stderr = train_regression(make_opt, batch, noise, micro=micro)
    assert_floor(monitor, measured, stderr)


@pytest.mark.parametrize("noise", ["per_sample", "microbatch"])
def test_a_row_every_5_steps_estimates_the_noise_of_its_own_step(noise):
    """The monitor does not change training: a row booked every 5 steps has the estimate of
    the every-step row at that step, from that step's 4 micro-batches alone."""
    trace = {
        every: train_regression(sgd(0.01, 0.9), 32, noise, steps=40, micro=4, every=every)[
            0
        ].ledger["noise_trace"]
        for every in (1, 5)
    }
    torch.testing.assert_close(trace[5], trace[1][::5], rtol=1e-12, atol=0)


def softmax_digits_chains(chains: int, wd: float):
    """`chains` copies of L2-regularised softmax regression on scikit-learn's digits: the
    full loss per chain of weights (chains, 64, 10) and biases (chains, 10), per-sample losses
    for a batch of indices per chain, and the regularised optimum found by L-BFGS."""
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    x = torch.tensor(data.data, dtype=F64) / 16.0
    labels = torch.tensor(data.target)

    def per_sample(w, b, idx):
        logits = torch.einsum("cnd,cdk->cnk", x[idx], w) + b[:, None, :]
        return torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), labels[idx].flatten(), reduction="none"
        ).view(idx.shape)

    def full(w, b):
        every = torch.arange(len(labels)).expand(w.shape[0], -1)
        decay = (w**2).sum((1, 2)) + (b**2).sum(1)
        return per_sample(w, b, every).mean(1) + 0.5 * wd * decay

    w, b = torch.zeros(1, 64, 10, dtype=F64), torch.zeros(1, 10, dtype=F64)
    w.requires_grad_(), b.requires_grad_()
    lbfgs = torch.optim.LBFGS(
        [w, b],
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure():
        lbfgs.zero_grad()
        loss = full(w, b).sum()
        loss.backward()
        return loss

    lbfgs.step(closure)
    w = torch.nn.Parameter(w.detach().repeat(chains, 1, 1))
    b = torch.nn.Parameter(b.detach().repeat(chains, 1))
    return w, b, per_sample, full, float(full(w[:1], b[:1]).detach()), len(labels)


@pytest.mark.parametrize(
    "make_opt",
    [sgd(0.05, 0.9, weight_decay=1e-2), adam(0.0, weight_decay=1e-2), adam(0.9, weight_decay=1e-2)],
    ids=["sgd-momentum", "adam-b0", "adam-b0.9"],
)
def test_predicted_floor_for_softmax_regression_on_digits(make_opt):
    """The floor of a non-quadratic loss, L2 decay in the potential (the update is its
    gradient in the map's metric), measured on the full regularised loss every 10 steps."""
    chains, steps, batch = 8, 1200, 32
    w, b, per_sample, full, best, n = softmax_digits_chains(chains, wd=1e-2)
    monitor = InertiaMonitor(make_opt([w, b]), noise="per_sample")
    gen = torch.Generator().manual_seed(0)
    excess, samples = torch.zeros(chains, dtype=F64), 0
    for k in range(steps):
        idx = torch.randint(0, n, (chains, batch), generator=gen)
        monitor.optimizer.zero_grad()
        losses = per_sample(w, b, idx).sum(0)
        monitor.observe(losses.mean(), per_sample=losses)
        losses.mean().backward()
        monitor.optimizer.step()
        if k >= steps // 2 and k % 10 == 0:
            with torch.no_grad():
                excess += full(w, b) - best
            samples += 1
    excess /= samples
    assert_floor(monitor, float(excess.sum()), float(excess.std() * math.sqrt(chains)))


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


def test_adam_trace_weighs_the_covariance_by_the_inverse_metric_the_step_starts_from():
    """tr(M⁻¹C)/B with M = sqrt(v̂) + ε of Adam's state before the step; unknown (NaN) at
    the first step, before Adam has a state."""
    x, y, best = regression(n=64)
    theta = torch.nn.Parameter(best + 0.3)
    opt = torch.optim.Adam([theta], lr=0.01, betas=(0.9, 0.99), eps=1e-3)
    monitor = InertiaMonitor(opt, noise="per_sample")
    expected = []
    for _ in range(3):
        state = opt.state.get(theta)
        grads = torch.stack(
            [torch.autograd.grad(0.5 * (x[i] @ theta - y[i]) ** 2, theta)[0] for i in range(64)]
        )
        if state:
            v_hat = state["exp_avg_sq"] / (1 - 0.99 ** float(state["step"]))
            expected.append(float((grads.var(0) / (v_hat.sqrt() + 1e-3)).sum()) / 64)
        opt.zero_grad()
        per_sample = 0.5 * (x @ theta - y) ** 2
        monitor.observe(per_sample.mean(), per_sample=per_sample)
        per_sample.mean().backward()
        opt.step()
    trace = monitor.ledger["noise_trace"]
    assert trace[0].isnan()
    torch.testing.assert_close(trace[1:], torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)


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
        estimate.observe(None, [-step], [EUCLIDEAN])
    result = estimate.take([EUCLIDEAN])
    along = 4 * float((torch.stack(increments) @ step).var())
    assert float(result.along[0]) == pytest.approx(along, rel=1e-10)
    trace = 4 * float(torch.stack(increments).var(0).sum())
    assert float(result.trace[0]) == pytest.approx(trace, rel=1e-10)


def test_injected_heat_is_half_h_squared_noise_trace_per_step():
    monitor = train_regression(sgd(0.01, 0.9), 16, "per_sample", steps=50, chains=1)[0]
    led = monitor.ledger
    heat = 0.5 * led["h"][:-1] ** 2 * led["noise_trace"][:-1]
    expected = torch.cat([torch.zeros(1, dtype=F64), heat.cumsum(0)])
    torch.testing.assert_close(led["injected"], expected, rtol=1e-12, atol=1e-15)


def test_clipped_steps_book_their_factor_heat_and_floor():
    """Clipping g to c·g makes the step that of the learning rate c·η with the noise c·ξ: the
    `clip` column is c = min(1, max_norm/‖g‖) as clip_grad_norm_ applies it, each step
    injects ½h²c²·tr(C)/B, and the floor predicted with c (E[L − L*] × c, E[K] × c²) meets
    the measured plateau, where the unclipped law would be 1/c too high."""
    opt = sgd(0.01, 0.9)
    free = train_regression(opt, 32, "microbatch", micro=4, steps=200)[0]
    typical = float(free.ledger["noise_trace"][100:].mean().sqrt())  # ‖ξ‖ at the plateau
    norms: list[float] = []
    monitor, measured, stderr = train_regression(
        opt, 32, "microbatch", micro=4, clip=0.5 * typical, norms=norms
    )
    led = monitor.ledger
    expected = torch.tensor([min(1.0, 0.5 * typical / (n + 1e-6)) for n in norms], dtype=F64)
    torch.testing.assert_close(led["clip"], expected, rtol=1e-5, atol=0)
    assert 0.3 < float(led["clip"][600:].mean()) < 0.7  # clipping is at work
    heat = 0.5 * led["h"][:-1] ** 2 * led["clip"][:-1] ** 2 * led["noise_trace"][:-1]
    torch.testing.assert_close(led["injected"][1:].diff(), heat[1:], rtol=1e-9, atol=1e-15)
    assert_floor(monitor, measured, stderr)


def test_rows_every_3_steps_inject_3_steps_of_heat():
    """Between rows 3 steps apart the books take 3 steps of heat, ½h²·tr(C)/B each, at the
    last row's estimate."""
    monitor = train_regression(sgd(0.01, 0.9), 16, "per_sample", steps=30, chains=1, every=3)[0]
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


@pytest.mark.parametrize("noise", ["per_sample", "microbatch", "microbatch-clipped"])
def test_noise_scale_is_mccandlish_b_simple_far_from_the_optimum(noise):
    """B_simple = tr(C)/‖G‖² (McCandlish et al. 2018), exact from all 4000 per-sample
    gradients at a point far from the optimum, against the column's average over 400 rows of
    batch 32 (steps of 1e-6 leave B_simple unchanged to 1e-4). Its error: 15% bounds the
    averages' standard error over the ~200 rows they weigh (about 4% here) with room. With the
    accumulated gradient clipped to norm 1e-3 before each step, the micro-batch estimate reads
    ‖g_B‖² as the micro-batches left it, unclipped."""
    x, y, best = regression()
    theta = torch.nn.Parameter(best + torch.linspace(-0.3, 0.3, 5, dtype=F64))
    residual = (x @ theta - y).detach()
    grads = x * residual[:, None]
    exact = float(grads.var(0, correction=0).sum() / (grads.mean(0) ** 2).sum())
    kind = "microbatch" if noise == "microbatch-clipped" else noise
    monitor = InertiaMonitor(torch.optim.SGD([theta], lr=1e-6), noise=kind)
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        monitor.optimizer.zero_grad()
        idx = torch.randint(0, len(y), (32,), generator=gen)
        per_sample = 0.5 * (x[idx] @ theta - y[idx]) ** 2
        if noise == "per_sample":
            monitor.observe(per_sample.mean(), per_sample=per_sample)
            per_sample.mean().backward()
        else:
            for chunk in per_sample.view(4, 8):
                (chunk.mean() / 4).backward(retain_graph=True)
                monitor.observe(chunk.mean(), accumulate=True, batch_size=8)
            if noise == "microbatch-clipped":
                torch.nn.utils.clip_grad_norm_([theta], 1e-3)
        monitor.optimizer.step()
    scale = monitor.ledger["noise_scale"]
    assert 1 < exact < 32, exact  # neither noise- nor signal-dominated
    assert float(scale[-1]) == pytest.approx(exact, rel=0.15)


def test_noise_scale_is_unknown_without_a_batch_size():
    x, y, best = regression(n=64)
    theta = torch.nn.Parameter(best + 0.3)
    monitor = InertiaMonitor(torch.optim.SGD([theta], lr=1e-3), noise="microbatch")
    for _ in range(3):
        monitor.optimizer.zero_grad()
        for chunk in (0.5 * (x @ theta - y) ** 2).view(4, 16):
            (chunk.mean() / 4).backward(retain_graph=True)
            monitor.observe(chunk.mean(), accumulate=True)
        monitor.optimizer.step()
    assert monitor.ledger["noise_trace"][1:].isfinite().all()
    assert monitor.ledger["noise_scale"].isnan().all()


def test_ranks_noise_needs_the_ddp_module():
    theta = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = torch.optim.SGD([theta], lr=0.1)
    with pytest.raises(ValueError, match="^model: noise='ranks' needs the DistributedDataParallel"):
        InertiaMonitor(opt, noise="ranks")
    with pytest.raises(ValueError, match="model: .*got Linear"):
        InertiaMonitor(opt, noise="ranks", model=torch.nn.Linear(3, 1))


def test_per_sample_noise_names_a_sparse_gradient_it_cannot_batch():
    """Batched gradients have no sparse kernels: per-sample noise on an
    nn.Embedding(sparse=True) fails with a ValueError that says so and what works, not torch's
    page-long dispatcher error; micro-batch noise reads the sparse gradients (dense)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(20, 4, sparse=True), torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def losses() -> torch.Tensor:
        return model(torch.randint(0, 20, (8,))).squeeze(1) ** 2

    monitor = InertiaMonitor(opt, noise="per_sample", on_error="raise")
    per_sample = losses()
    with pytest.raises(ValueError, match=r"per_sample.*sparse.*microbatch"):
        monitor.observe(per_sample.mean(), per_sample=per_sample)
    monitor.detach()
    monitor = InertiaMonitor(opt, noise="microbatch", on_error="raise")
    for _ in range(3):
        opt.zero_grad()
        for _ in range(2):
            loss = losses().mean()
            (loss / 2).backward()
            monitor.observe(loss, accumulate=True, batch_size=8)
        opt.step()
    assert bool(monitor.ledger["noise_trace"][1:].isfinite().all())


def test_per_sample_noise_is_unknown_where_reentrant_checkpointing_hides_the_gradients():
    """Activation checkpointing with use_reentrant=True gives torch.autograd.grad no path to
    the checkpointed parameters: their per-sample gradients are missing, though the step's
    backward reaches them. Their noise is NaN with one warning that names the cure, not 0 (it
    had silently dropped the layer's share); use_reentrant=False is exact, and a parameter
    the loss never uses still adds 0."""

    def run(reentrant: bool | None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        inner = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh())
        outer, unused = torch.nn.Linear(6, 1), torch.nn.Linear(2, 2)
        model = torch.nn.ModuleDict({"inner": inner, "outer": outer, "unused": unused})
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        monitor = InertiaMonitor(opt, noise="per_sample", by="module", model=model)
        for _ in range(4):
            x = torch.randn(16, 4, requires_grad=reentrant is not None)
            h = inner(x) if reentrant is None else checkpoint(inner, x, use_reentrant=reentrant)
            losses = outer(h).squeeze(1) ** 2
            monitor.observe(losses.mean(), per_sample=losses)
            opt.zero_grad()
            losses.mean().backward()
            opt.step()
        return dict(monitor.ledger.items())

    plain = run(None)
    assert bool(plain["noise_trace"][1:].isfinite().all())
    assert bool((plain["noise_trace/inner.0"][1:] > 0).all())
    torch.testing.assert_close(run(False)["noise_trace"], plain["noise_trace"])
    with pytest.warns(RuntimeWarning, match="use_reentrant=False") as caught:
        hidden = run(True)
    assert len([w for w in caught if "use_reentrant" in str(w.message)]) == 1
    assert bool(hidden["noise_trace/inner.0"].isnan().all())
    assert bool(hidden["noise_trace"].isnan().all())
    torch.testing.assert_close(hidden["noise_trace/outer"], plain["noise_trace/outer"])
    assert hidden["noise_trace/unused"][1:].tolist() == [0.0] * 3
