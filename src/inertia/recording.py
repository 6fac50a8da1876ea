"""The ledger table of a simulation and its running books (docs/architecture.md, simulate).

Each row of a small block holds the running sum of the increments D, N, R since the block
began (one addition a step); when the block is full (or before a look for blow-ups, and at
the end) its last row enters the Kahan-compensated books, and the records taken in it get
the books as they stood before it plus their row. A step then costs one addition, not a
compensated addition's four operations on the books. Within a block the sums are plain
(error at most `rows` · ε of the increments); across blocks the books stay compensated, so
the error does not grow with the number of steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .energy import BOOKS, COLUMNS, CompensatedSum

__all__ = ["MAX_BLOCK", "Records", "block_rows"]

#: The most steps a block of increments holds.
MAX_BLOCK = 16
#: The table's slots: vᵀMv (halved into K at the end), L, the books, I (= K + L, at the end).
_SLOTS = ("kinetic", "potential", *BOOKS, "inertia")


def block_rows(dim: int) -> int:
    """Rows of the block for states of dimension `dim`: at most MAX_BLOCK, and few enough
    that the block (3 float64 numbers a row and path) is no larger than 3 float64 state
    buffers (6 float32 ones)."""
    return max(1, min(MAX_BLOCK, dim))


class Records:
    """`records` rows of K, L, D, N, R, I for `paths` paths, float64, on `device`; the books
    (`books`, running totals of D, N, R) fed one step at a time by `book`."""

    def __init__(self, records: int, paths: int, rows: int, device: torch.device) -> None:
        self.books = CompensatedSum((len(BOOKS), paths), device=device)
        # One float64 slab per slot. Zero-filled: one pass that maps its pages, cheaper than
        # mapping them a record at a time (12 page faults per record of 1024 paths).
        self.table = torch.zeros(len(_SLOTS), records, paths, dtype=torch.float64, device=device)
        self._vmv, self._potential, self._sums = self.table[0], self.table[1], self.table[2:-1]
        self._block = torch.zeros(rows, len(BOOKS), paths, dtype=torch.float64, device=device)
        self._rows = self._block.unbind(0)
        self._filled = 0
        self._pending: list[tuple[int, int]] = []  # (record, row) of the records in the block

    def book(self, increments: Tensor) -> None:
        """Add one step's increments (len(BOOKS), paths) to the books."""
        if self._filled == len(self._rows):
            self.flush()
        row = self._rows[self._filled]
        if self._filled:
            torch.add(self._rows[self._filled - 1], increments, out=row)
        else:
            row.copy_(increments)
        self._filled += 1

    def record(self, r: int, vmv: Tensor, potential: Tensor) -> None:
        """Record r: vᵀMv and L now, the books as they stand after the last `book`."""
        self._vmv[r].copy_(vmv)
        self._potential[r].copy_(potential)
        if self._filled:
            self._pending.append((r, self._filled - 1))
        else:  # nothing booked since the last flush: the books are the total
            self._sums[:, r].copy_(self.books.total)

    def flush(self) -> None:
        """Add the block to the books, writing the books of the records taken in it."""
        if not self._filled:
            return
        running = self._block[: self._filled]
        # records are `every` rows apart, but for the last step's: one strided slice, and the
        # odd one alone (an index tensor would be a host-to-device copy, a wait on a GPU)
        while self._pending:
            (first, row), count = self._pending[0], 1
            gap = self._pending[1][1] - row if len(self._pending) > 1 else 1
            while count < len(self._pending) and self._pending[count][1] == row + count * gap:
                count += 1
            taken = running[row : row + (count - 1) * gap + 1 : gap]
            out = self._sums[:, first : first + count]
            torch.add(taken.transpose(0, 1), self.books.total[:, None], out=out)
            del self._pending[:count]
        self.books.add_(running[-1])
        self._filled = 0

    def columns(self, records: int) -> dict[str, Tensor]:
        """The ledger's columns over the first `records` records (K and I formed in place)."""
        kept = self.table[:, :records]
        kept[0].mul_(0.5)  # K = ½ vᵀMv, exactly
        torch.add(kept[0], kept[1], out=kept[-1])  # I = K + L, in float64
        return {name: kept[_SLOTS.index(name)] for name in COLUMNS}
