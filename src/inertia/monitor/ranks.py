"""A row's numbers over the ranks of torch.distributed: one `all_reduce` of the row's packed
values per row, on the parameters' device, with no host synchronisation."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._distributed import rank_world
from .layout import F64

#: The estimates each rank makes from its own batch: name → p, their mean over ranks is
#: further ÷ world^p (a variance of the mean gradient: p = 1).
PER_RANK = {
    "noise": 1,
    "along": 1,
    "spread": 1,
    "curvature": 0,
}  # "noise…" covers noise_trace/<layer>
#: Counts of ranks (`inertia.monitor.row.Pack`): every rank's, summed as they are.
COUNTS = ("unobserved", "ranks")


@dataclass
class Ranks:
    """This process among the ranks of torch.distributed (rank 0 of 1 outside it), where its
    parameters live, whether they are `replicated` (DDP, or a report that is global already;
    not FSDP2 shards) and whether the noise estimates come from each rank's `own_batch` (not
    "fluctuation": ‖g_B‖² of the all-reduced gradient is global already, like a norm)."""

    device: torch.device
    replicated: bool
    own_batch: bool
    rank: int
    world: int
    _weights: dict[tuple[tuple[str, int], ...], tuple[Tensor, Tensor]] = field(default_factory=dict)

    @classmethod
    def here(cls, device: torch.device, *, replicated: bool, own_batch: bool) -> Ranks:
        """This process, as torch.distributed sees it now."""
        return cls(device, replicated, own_batch, *rank_world())

    def reduce(self, packed: Tensor, layout: list[tuple[str, int]]) -> Tensor:
        """The row's values (`packed`: the loss first, then `layout`'s names and lengths in
        order) over all ranks after one `all_reduce`: the loss averaged; norms and dot products
        summed over shards, counted once where replicated (rank 0's); the `COUNTS` summed;
        with `own_batch`, the estimates of `PER_RANK` averaged over ranks and ÷ world^p once
        more (tr(C)/B of the global batch)."""
        keep, divide = self._weights.get(tuple(layout)) or self._weigh(layout)
        if self.replicated and self.rank != 0:
            packed = packed * keep  # replicated: count once
        torch.distributed.all_reduce(packed)
        return packed / divide

    def _weigh(self, layout: list[tuple[str, int]]) -> tuple[Tensor, Tensor]:
        keep, divide = [1.0], [float(self.world)]  # the loss: a mean over ranks
        for name, length in layout:
            power = next((p for key, p in PER_RANK.items() if name.startswith(key)), None)
            own = self.own_batch and power is not None
            keep += [1.0 if own or name in COUNTS else 0.0] * length
            scale = self.world ** (1 + power) if own and power is not None else 1
            divide += [float(scale)] * length
        weights = (
            torch.tensor(keep, dtype=F64, device=self.device),
            torch.tensor(divide, dtype=F64, device=self.device),
        )
        self._weights[tuple(layout)] = weights
        return weights
