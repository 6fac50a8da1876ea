"""Training workloads shared by the benchmarks and the tests: runs with known answers or an
independent reference, built from code and generated data (no downloads).

- `regression`: linear regression with label noise, its exact least-squares minimum;
- `alarm_run`: heavy-ball steps under `InertiaMonitor(alarm=True)`, returning the first alarm
  and the step at which the loss first exceeds 10× its start;
- `regression_run`, `mlp_near_a_minimum`, `mlp_run`: the stability alarm's scenarios at a
  chosen factor of the heavy-ball threshold 2(1 + μ)/λ_max (λ_max exact for the quadratic,
  by Hessian-vector power iteration for the MLP), the unstable direction starting small.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch.func import functional_call, grad, vjp

from inertia import InertiaMonitor

F64 = torch.float64


def regression(n: int = 4000, d: int = 5, label_noise: float = 0.5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=F64) * torch.linspace(0.5, 1.0, d, dtype=F64)
    y = x @ torch.randn(d, generator=gen, dtype=F64) + label_noise * torch.randn(
        n, generator=gen, dtype=F64
    )
    best = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
    return x, y, best


def full_loss(x, y, theta) -> float:
    return float(0.5 * ((x @ theta - y) ** 2).mean())


def alarm_run(opt, loss_at, steps, *, batch_loss=None, noise=None, alarm=True, seed=5, every=1):
    """Heavy-ball steps; returns the monitor, the first alarm row and the step after which the
    full loss first exceeds 10× its start (None if it never does)."""
    alarms = []
    monitor = InertiaMonitor(opt, alarm=alarm, noise=noise, on_alarm=alarms.append, every=every)
    start, blow_up = loss_at(), None
    gen = torch.Generator().manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in range(steps):
            opt.zero_grad()
            loss, per_sample = batch_loss(gen)
            monitor.observe(loss, per_sample=per_sample if noise else None)
            loss.backward()
            opt.step()
            now = loss_at()
            if blow_up is None and now > 10 * start:
                blow_up = k + 1
            if not math.isfinite(now) or now > 1e12:
                break
    return monitor, (alarms[0]["step"] if alarms else None), blow_up


def regression_run(mu, factor, steps, batch=None, seed=0, every=1):
    x, y, best = regression(seed=seed)
    lam, vecs = torch.linalg.eigh(x.T @ x / len(y))
    theta = torch.nn.Parameter(best + 2.0 * vecs[:, 0] + 1e-3 * vecs[:, -1])  # unstable: small
    opt = torch.optim.SGD([theta], lr=factor * 2 * (1 + mu) / float(lam.max()), momentum=mu)
    floor = full_loss(x, y, best)

    def batch_loss(gen):
        idx = torch.randint(0, len(y), (batch,), generator=gen) if batch else slice(None)
        per_sample = 0.5 * (x[idx] @ theta - y[idx]) ** 2
        return per_sample.mean(), per_sample

    return alarm_run(
        opt,
        lambda: full_loss(x, y, theta.detach()) - floor,
        steps,
        batch_loss=batch_loss,
        noise="per_sample" if batch else None,
        seed=seed,
        every=every,
    )


def mlp_near_a_minimum(seed=0, n=1024):
    """A 4-16-1 tanh MLP fitted (Adam) to a noisy 4-8-1 teacher; λ_max and its eigenvector at
    the fit by power iteration on Hessian-vector products."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen, dtype=F64)
    torch.manual_seed(seed)
    teacher = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    with torch.no_grad():
        y = teacher.double()(x) + 0.1 * torch.randn(n, 1, generator=gen, dtype=F64)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    model = model.double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(1500):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    star = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflatten(v):
        return dict(zip(names, torch.split(v, [math.prod(s) for s in shapes]), strict=True))

    def loss(v):
        params = {k: t.view(s) for (k, t), s in zip(unflatten(v).items(), shapes, strict=True)}
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    v = torch.randn(star.shape, generator=gen, dtype=F64)
    for _ in range(200):
        hv = vjp(grad(loss), star)[1](v / v.norm())[0]  # H v, reverse over reverse
        lam, v = float((v / v.norm()) @ hv), hv
    return model, x, y, star, lam, v / v.norm()


def mlp_run(mlp, mu, factor, steps, batch=None, seed=0):
    model, x, y, star, lam, top = mlp
    gen = torch.Generator().manual_seed(11 + seed)
    kick = torch.randn(star.shape, generator=gen, dtype=F64)
    kick -= (kick @ top) * top
    start = star + 0.01 * kick / kick.norm() + 1e-4 * top  # the unstable direction: small
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(start, model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=factor * 2 * (1 + mu) / lam, momentum=mu)

    def loss_at():
        with torch.no_grad():
            return float(((model(x) - y) ** 2).mean())

    def batch_loss(g):
        idx = torch.randint(0, len(y), (batch,), generator=g) if batch else slice(None)
        per_sample = ((model(x[idx]) - y[idx]) ** 2).squeeze(1)
        return per_sample.mean(), per_sample

    return alarm_run(
        opt, loss_at, steps, batch_loss=batch_loss, noise="per_sample" if batch else None
    )
