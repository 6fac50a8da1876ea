"""The simulation's records: books summed a block at a time, compensated across blocks."""

from __future__ import annotations

import math

import pytest
import torch

from inertia import BOOKS
from inertia.recording import MAX_BLOCK, Records

EPS = torch.finfo(torch.float64).eps


def run(increments: torch.Tensor, marks: list[int], rows: int) -> Records:
    """Book increments (steps, len(BOOKS), paths) one step at a time, recording after the
    steps in `marks` (0: before any) as `simulate` does, and flush at the end."""
    steps, _, paths = increments.shape
    records = Records(len(marks), paths, rows, torch.device("cpu"))
    vmv = torch.zeros(paths, dtype=torch.float64)
    r = 0
    if marks[0] == 0:
        records.record(0, vmv, vmv)
        r = 1
    for n in range(1, steps + 1):
        records.book(increments[n - 1])
        if r < len(marks) and marks[r] == n:
            records.record(r, vmv + n, vmv - n)
            r += 1
    records.flush()
    return records


@pytest.mark.parametrize("rows", [1, 2, 7, MAX_BLOCK])
@pytest.mark.parametrize("every", [1, 3, 16, 50])
def test_records_hold_the_running_books_at_their_steps(rows, every):
    gen = torch.Generator().manual_seed(rows * 100 + every)
    increments = torch.randn(200, len(BOOKS), 4, generator=gen, dtype=torch.float64)
    increments *= torch.logspace(-3, 3, 200, dtype=torch.float64)[:, None, None]
    marks = sorted({0, *range(every, 201, every), 200})
    records = run(increments, marks, rows)
    columns = records.columns(len(marks))
    for r, n in enumerate(marks):
        for b, name in enumerate(BOOKS):
            for p in range(4):
                exact = math.fsum(increments[:n, b, p].tolist())
                # plain sums within blocks of `rows` steps (γ_rows Σ|x|), Kahan across them
                # (2ε Σ|x|), the record rounded once (ε |sum|)
                bound = (rows + 3) * EPS * math.fsum(increments[:n, b, p].abs().tolist())
                assert abs(float(columns[name][r, p]) - exact) <= bound, (r, n, name, p)
        assert columns["kinetic"][r].tolist() == [0.5 * n] * 4  # ½ vᵀMv, exactly
        assert columns["inertia"][r].tolist() == [0.5 * n - n] * 4  # K + L


def test_books_stay_compensated_across_blocks_where_plain_sums_lose_every_addition():
    """1 then 20 000 increments of 3e-17: each is below half an ulp of 1 (1.1e-16), so a
    plain running sum stays at 1; the books must reach 1 + 6e-13. The block sums (4.8e-16)
    would lose 4.5e-14 summed plainly: the compensation across blocks keeps them."""
    steps = 20_001
    increments = torch.full((steps, len(BOOKS), 1), 3e-17, dtype=torch.float64)
    increments[0] = 1.0
    records = run(increments, [0, steps], MAX_BLOCK)
    exact = 1.0 + (steps - 1) * 3e-17
    books = records.columns(2)["dissipated"][-1, 0]
    # within the first block the 15 increments after the 1 are lost (plain sums, 4.5e-16);
    # then the total without its carry (≤ 1 ulp), rounded once more with the last block's sum
    bound = (MAX_BLOCK - 1) * 3e-17 + 2 * EPS
    assert abs(float(books) - exact) <= bound
    naive = torch.zeros((), dtype=torch.float64)
    for x in increments[:, 0, 0]:
        naive += x
    assert float(naive) == 1.0  # what a plain running sum would record
