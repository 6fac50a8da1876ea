"""The synthetic losses: analytic gradients against autograd, and their known minima."""

from __future__ import annotations

import math
import re

import pytest
import torch

from conftest import random_spd
from inertia import Potential, systems

SYSTEMS = {
    "quadratic": lambda: systems.Quadratic(
        random_spd(4, seed=3), center=torch.ones(4), minimum=0.5
    ),
    "quadratic-diag": lambda: systems.Quadratic(
        eigenvalues=torch.tensor([0.5, 2.0, 3.0]), minimum=-1.0
    ),
    "rosenbrock": lambda: systems.Rosenbrock(4),
    "double-well": lambda: systems.DoubleWell(3, barrier=2.0, width=0.7),
    "chain": lambda: systems.AnharmonicChain(5, beta=0.5),
    "logistic": lambda: systems.LogisticRegression(100, 4, l2=0.05, seed=1),
    "mlp": lambda: systems.TeacherStudentMLP(2, 3, 16, seed=2),
}


@pytest.mark.parametrize("name", SYSTEMS)
def test_gradient_matches_autograd_of_value(name):
    pot = SYSTEMS[name]()
    q = torch.randn(3, pot.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    value, grad = pot.value_and_grad(q)
    ref_value, ref_grad = Potential.value_and_grad(pot, q)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: pot.value(x), (q.clone().requires_grad_(),))


@pytest.mark.parametrize("name", SYSTEMS)
def test_known_minimum_is_attained_with_zero_gradient(name):
    pot = SYSTEMS[name]()
    value, grad = pot.value_and_grad(pot.argmin[None])
    assert float(value[0]) == pytest.approx(pot.minimum, abs=1e-13)
    assert float(grad.abs().max()) < 1e-10
    nearby = pot.argmin + 1e-3 * torch.randn(8, pot.dim, dtype=torch.float64)
    assert bool((pot.value(nearby) >= pot.minimum - 1e-14).all())


def test_curvature_at_minima():
    chain = systems.AnharmonicChain(4)
    hessian = torch.autograd.functional.hessian(chain, chain.argmin)
    laplacian = (
        2 * torch.eye(4, dtype=torch.float64)
        - torch.diag(torch.ones(3), 1)
        - torch.diag(torch.ones(3), -1)
    )
    torch.testing.assert_close(hessian, laplacian.double())
    well = systems.DoubleWell(1, barrier=2.0, width=0.5)
    curvature = torch.autograd.functional.hessian(well, well.argmin)
    assert float(curvature) == pytest.approx(8 * 2.0 / 0.5**2)


def test_quadratic_rejects_bad_hessians():
    with pytest.raises(ValueError, match="exactly one"):
        systems.Quadratic()
    with pytest.raises(ValueError, match="^hessian"):
        systems.Quadratic(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="positive semi-definite"):
        systems.Quadratic(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="^eigenvalues"):
        systems.Quadratic(eigenvalues=torch.tensor([1.0, -2.0]))
    with pytest.raises(ValueError, match="^center"):
        systems.Quadratic(eigenvalues=torch.ones(2), center=torch.ones(3))


def test_seeded_data_is_reproducible():
    a, b = systems.LogisticRegression(seed=4), systems.LogisticRegression(seed=4)
    assert torch.equal(a.features, b.features) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.features, systems.LogisticRegression(seed=5).features)
    m1, m2 = systems.TeacherStudentMLP(seed=1), systems.TeacherStudentMLP(seed=1)
    assert torch.equal(m1.argmin, m2.argmin) and torch.equal(m1.inputs, m2.inputs)


def test_mlp_parameter_vector_drives_the_torch_module():
    pot = systems.TeacherStudentMLP(2, 3, 5, seed=0)
    theta = torch.randn(pot.dim, dtype=torch.float64)
    torch.nn.utils.vector_to_parameters(theta, pot.module.parameters())
    with torch.no_grad():
        direct = pot.module(pot.inputs)[:, 0]
    torch.testing.assert_close(pot.predict(theta[None])[0], direct)


BAD_CONSTRUCTIONS = [
    (lambda: systems.Quadratic("x"), "hessian"),  # was TypeError
    (lambda: systems.Quadratic([[1.0, None], [None, 1.0]]), "hessian"),
    (lambda: systems.Quadratic([[1e308, 1e308], [1e308, 1e308]]), "hessian"),  # eigenvalue 2e308
    (lambda: systems.Quadratic(eigenvalues="x"), "eigenvalues"),
    (lambda: systems.Quadratic(eigenvalues=[1.0, 2.0], center="x"), "center"),
    (lambda: systems.Quadratic(eigenvalues=[1.0, 2.0], center=[0.0, math.nan]), "center"),
    (lambda: systems.Quadratic(eigenvalues=[1.0, 2.0], minimum=math.inf), "minimum"),
    (lambda: systems.Rosenbrock(dim=10**30), "dim"),
    (lambda: systems.Rosenbrock(b="steep"), "b"),
    (lambda: systems.DoubleWell(dim=2**40), "dim"),  # 8 TiB for the minimiser alone
    (lambda: systems.AnharmonicChain(n=10**7), "n"),  # an (n + 1) × n bond matrix
    (lambda: systems.LogisticRegression(seed=2**64), "seed"),  # was RuntimeError
    (lambda: systems.LogisticRegression(samples=10**7, dim=10**6), "samples/dim"),
    (lambda: systems.TeacherStudentMLP(input_dim=10**12), "input_dim"),
    (lambda: systems.named(["quadratic"], 2), "system"),  # was TypeError (unhashable)
    (lambda: systems.named("quadratic", 10**6), "dim"),  # a 10⁶ × 10⁶ hessian
    (lambda: systems.named("quadratic", 2**64), "dim"),
]


@pytest.mark.parametrize(
    ("make", "name"),
    BAD_CONSTRUCTIONS,
    ids=[f"{name}-{i}" for i, (_, name) in enumerate(BAD_CONSTRUCTIONS)],
)
def test_bad_constructor_arguments_raise_value_error_naming_them(make, name):
    """Issue 18: every constructor names its bad argument, sizes beyond memory included,
    before allocating anything."""
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}"):
        make()


def test_a_point_of_the_wrong_shape_is_named():
    with pytest.raises(ValueError, match="^theta"):
        systems.DoubleWell(2)("not a tensor")


@pytest.mark.parametrize(
    "loss",
    [
        systems.Quadratic(torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 5.0]])),
        systems.Quadratic(eigenvalues=[1.0, 4.0, 9.0], center=[1.0, -0.5, 2.0], minimum=0.7),
    ],
    ids=["dense", "diagonal-centred"],
)
def test_the_quadratic_evaluator_is_value_and_grad_in_reused_buffers(loss):
    """The integrators' evaluator gives value_and_grad's (L, ∇L) to round-off, in buffers it
    reuses (the value alternating between two, so the last one survives one call)."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    evaluate = loss.evaluator(q, torch.empty_like(q))
    first, grad = evaluate(q)
    kept = first.clone()
    for point in (2 * q, q):
        value, g = evaluate(point)
        expected_value, expected_grad = loss.value_and_grad(point)
        torch.testing.assert_close(value, expected_value, rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(g, expected_grad, rtol=1e-15, atol=1e-15)
        assert g.data_ptr() == grad.data_ptr()
        if point is not q:  # the value before last is intact for one call
            torch.testing.assert_close(first, kept, rtol=0, atol=0)


def test_a_quadratic_subclass_with_its_own_loss_is_evaluated_by_it():
    class Shifted(systems.Quadratic):
        def value_and_grad(self, q):
            value, grad = super().value_and_grad(q)
            return value + 1.0, grad

    loss = Shifted(eigenvalues=[1.0, 2.0])
    q = torch.ones(2, 2, dtype=torch.float64)
    value, _ = loss.evaluator(q, torch.empty_like(q))(q)
    torch.testing.assert_close(value, loss.value_and_grad(q)[0])
