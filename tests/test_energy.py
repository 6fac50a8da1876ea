"""Energies and compensated accumulation."""

from __future__ import annotations

import math

import torch

from inertia import CompensatedSum, kinetic


def test_kinetic_with_scalar_and_diagonal_mass():
    v = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(kinetic(v), torch.tensor([2.5, 5.0], dtype=torch.float64))
    torch.testing.assert_close(kinetic(v, 2.0), torch.tensor([5.0, 10.0], dtype=torch.float64))
    m = torch.tensor([1.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(
        kinetic(v, m), torch.tensor([0.5 + 8.0, 4.5 + 2.0], dtype=torch.float64)
    )


def test_compensated_sum_is_exact_where_naive_summation_drifts():
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(100_000, 2, generator=gen, dtype=torch.float64) * 1e-3 + 1.0
    acc = CompensatedSum((2,))
    naive = torch.zeros(2, dtype=torch.float64)
    for row in values:
        acc.add_(row)
        naive += row
    exact = torch.tensor([math.fsum(values[:, j].tolist()) for j in range(2)], dtype=torch.float64)
    kahan_error = float((acc.total - exact).abs().max() / exact.abs().max())
    naive_error = float((naive - exact).abs().max() / exact.abs().max())
    assert kahan_error <= 2.3e-16
    assert naive_error > 10 * kahan_error
