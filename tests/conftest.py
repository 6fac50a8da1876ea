"""Independent references for the tests, computed with scipy, never with inertia's own code;
and the plain monitored loop on L = Σ‖θ‖² that the fault tests share."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import settings
from scipy.linalg import expm

# Property tests: a fixed, bounded budget in CI (derandomized, so a run is reproducible).
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one thread per xdist worker: the workers already fill the cores


def random_spd(dim: int, seed: int, low: float = 0.5, high: float = 4.0) -> torch.Tensor:
    """A non-diagonal SPD matrix with eigenvalues spread over [low, high]."""
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    eigenvalues = torch.linspace(low, high, dim, dtype=torch.float64)
    return (basis * eigenvalues) @ basis.T


def exact_quadratic_inertia(hessian, q0, v0, gamma, times, mass=1.0):
    """I(t) = ½ zᵀQz, z(t) = e^{Ft} z(0), for L = ½ θᵀAθ (docs/theory.md (2.3)), with scipy's
    expm."""
    a = np.asarray(hessian, dtype=float)
    d = a.shape[0]
    m = np.broadcast_to(np.asarray(mass, dtype=float), (d,))
    f = np.block([[np.zeros((d, d)), np.eye(d)], [-a / m[:, None], -gamma * np.eye(d)]])
    q = np.block([[a, np.zeros((d, d))], [np.zeros((d, d)), np.diag(m)]])
    z0 = np.concatenate([np.asarray(q0, dtype=float), np.asarray(v0, dtype=float)])
    out = []
    for t in np.asarray(times, dtype=float):
        z = expm(f * t) @ z0
        out.append(0.5 * z @ q @ z)
    return np.array(out)


def fitted_order(errors, ratio: float = 2.0) -> float:
    """Slope of log(error) against log(step) by least squares, steps shrinking by `ratio`."""
    x = -np.log(ratio) * np.arange(len(errors))
    return float(np.polyfit(x, np.log(errors), 1)[0])


@pytest.fixture
def spd4():
    return random_spd(4, seed=7)


def train_quadratic(monitor, steps: int, loss_of=None, after=None) -> None:
    """`steps` iterations of the monitored optimizer on `loss_of()` (default L = Σ over its
    parameters of ‖θ‖²), calling `after()` once each step is taken (a scheduler's step)."""
    opt = monitor.optimizer
    for _ in range(steps):
        opt.zero_grad()
        if loss_of is None:
            loss = sum((p**2).sum() for g in opt.param_groups for p in g["params"])
        else:
            loss = loss_of()
        loss.backward()
        monitor.observe(loss)
        opt.step()
        if after is not None:
            after()
