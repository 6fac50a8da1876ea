"""Dynamics: eager validation, and any callable as a loss."""

from __future__ import annotations

import math

import pytest
import torch

from inertia import CallablePotential, Dynamics, simulate, systems


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"gamma": -0.1}, "gamma"),
        ({"gamma": float("inf")}, "gamma"),
        ({"gamma": "fast"}, "gamma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": torch.tensor([0.1, -0.1])}, "sigma"),
        ({"sigma": torch.zeros(2, 2)}, "sigma"),
        ({"mass": 0.0}, "mass"),
        ({"mass": torch.tensor([1.0, 0.0])}, "mass"),
        ({"mass": True}, "mass"),
    ],
)
def test_bad_parameters_fail_at_construction(kw, name):
    with pytest.raises(ValueError, match=rf"^{name}"):
        Dynamics(systems.DoubleWell(2), **kw)


def test_disagreeing_dimensions_fail_at_construction():
    with pytest.raises(ValueError, match="dimensions disagree"):
        Dynamics(systems.DoubleWell(2), sigma=torch.ones(3))


def test_non_callable_loss_fails():
    with pytest.raises(ValueError, match="^loss"):
        Dynamics(42)


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda th: th**2, "scalar"),
        (lambda th: float((th**2).sum()), "scalar"),
        (lambda th: (th**2).sum().long(), "scalar"),
    ],
)
def test_loss_that_is_not_a_scalar_tensor_fails_before_any_step(fn, message):
    with pytest.raises(ValueError, match=message):
        simulate(Dynamics(fn), torch.ones(3), dt=0.1, steps=5)


def test_callable_loss_matches_the_analytic_potential():
    rosen = systems.Rosenbrock(3)

    def loss(th):
        return (100 * (th[1:] - th[:-1] ** 2) ** 2 + (1 - th[:-1]) ** 2).sum()

    q0 = torch.tensor([[-1.0, 0.5, 0.2], [0.3, 0.3, 0.3]], dtype=torch.float64)
    kw = dict(dt=1e-3, steps=200, paths=2, seed=0)
    a = simulate(Dynamics(loss, gamma=0.5, sigma=0.2), q0, **kw)
    b = simulate(Dynamics(rosen, gamma=0.5, sigma=0.2), q0, **kw)
    torch.testing.assert_close(a.inertia, b.inertia, rtol=1e-12, atol=1e-12)


def test_callable_that_vmap_cannot_trace_falls_back_to_row_by_row():
    def loss(th):
        if float(th[0].detach()) > 0:  # data-dependent Python branch: not traceable by vmap
            return (th**2).sum()
        return 2 * (th**2).sum()

    pot = CallablePotential(loss)
    q = torch.tensor([[1.0, 2.0], [-1.0, 2.0]], dtype=torch.float64)
    pot.check(q)
    value, grad = pot.value_and_grad(q)
    torch.testing.assert_close(value, torch.tensor([5.0, 10.0], dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor([[2.0, 4.0], [-4.0, 8.0]], dtype=torch.float64))


def test_noise_heat_rate_is_half_sum_of_m_sigma_squared():
    dyn = Dynamics(systems.DoubleWell(3), sigma=torch.tensor([1.0, 2.0, 0.0]), mass=2.0)
    assert dyn.noise_heat_rate(3) == pytest.approx(0.5 * 2.0 * (1 + 4))
    assert Dynamics(systems.DoubleWell(3), sigma=0.5).noise_heat_rate(3) == pytest.approx(
        0.5 * 3 * 0.25
    )


def test_noise_heat_rate_is_computed_in_float64():
    """σ² in float64, not in torch's default float32 (0.2² would be 0.0400000028, and a mass
    of 1e300 times a float32 σ² overflowed to inf)."""
    assert Dynamics(systems.DoubleWell(2), sigma=0.2).noise_heat_rate(2) == 0.5 * 0.2**2 * 2
    huge = Dynamics(systems.DoubleWell(2), sigma=0.2, mass=1e300)
    assert huge.noise_heat_rate(2) == pytest.approx(0.5 * 1e300 * 0.2**2 * 2, rel=1e-15)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda d: d.damping("soon"), "t"),
        (lambda d: d.damping(math.nan), "t"),
        (lambda d: d.noise_heat_rate("2"), "dim"),
        (lambda d: d.noise_heat_rate(3), "dim"),  # the dynamics are 2-D
        (lambda d: d.check("points"), "q"),
        (lambda d: d.check(torch.ones(2)), "q"),
        (lambda d: d.potential("theta"), "theta"),
    ],
)
def test_methods_name_their_bad_arguments(call, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call(Dynamics(systems.DoubleWell(2), gamma=0.1, sigma=0.2))


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"mass": 10**400}, "mass"),  # was OverflowError
        ({"sigma": [0.1, "x"]}, "sigma"),
        ({"sigma": torch.tensor([0.1 + 1j, 0.2])}, "sigma"),
        ({"gamma": None}, "gamma"),
    ],
)
def test_hostile_parameters_fail_at_construction_with_value_error(kw, name):
    with pytest.raises(ValueError, match=rf"^{name}"):
        Dynamics(systems.DoubleWell(2), **kw)


def test_parameter_tensors_that_require_grad_are_copied_detached():
    sigma = torch.full((2,), 0.1, requires_grad=True)
    dyn = Dynamics(systems.DoubleWell(2), gamma=0.5, sigma=sigma, mass=torch.ones(2) * 2)
    assert not dyn.sigma.requires_grad
    tr = simulate(dyn, torch.ones(2), dt=0.1, steps=5, seed=0)
    assert bool(torch.isfinite(tr.inertia).all())
