"""A row's numbers over the ranks of torch.distributed: one packed `all_reduce` per row."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._distributed import rank_world

F64 = torch.float64
#: The estimates each rank makes from its own batch: name → p, their mean over ranks is
#: further ÷ world^p (a variance of the mean gradient: p = 1).
PER_RANK = {"noise": 1, "along": 1, "spread": 1, "curvature": 0}


@dataclass(frozen=True)
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

    @classmethod
    def here(cls, device: torch.device, *, replicated: bool, own_batch: bool) -> Ranks:
        """This process, as torch.distributed sees it now."""
        return cls(device, replicated, own_batch, *rank_world())

    def reduce(
        self, loss: float, decay: float, shadow: float, values: dict[str, list[float]]
    ) -> tuple[float, float, float, dict[str, list[float]]]:
        """(loss, decay, shadow, values) of the whole run after one `all_reduce`: the loss
        averaged over ranks; the weight-decay potential, the shadow term and the per-group
        norms and dot products summed over shards, counted once where replicated (rank 0's);
        with `own_batch`, the estimates of `PER_RANK` averaged over ranks and ÷ world^p once
        more (tr(C)/B of the global batch)."""
        per_rank = PER_RANK if self.own_batch else {}
        summed = [name for name in values if name not in per_rank]
        blocks = [*summed, *per_rank]
        flat = [x for name in blocks for x in values[name]]
        packed = torch.tensor([loss, decay, shadow, *flat, 1.0], dtype=F64, device=self.device)
        end = 3 + sum(len(values[name]) for name in summed)
        if self.replicated and self.rank != 0:
            packed[1:end] = 0.0  # replicated: count once
        torch.distributed.all_reduce(packed)
        packed[0] /= packed[-1]  # mean loss over ranks
        start = end
        for name, power in per_rank.items():
            packed[start : start + len(values[name])] /= self.world ** (1 + power)
            start += len(values[name])
        out = packed[:-1].tolist()
        reduced, start = {}, 3
        for name in blocks:
            reduced[name] = out[start : start + len(values[name])]
            start += len(values[name])
        return out[0], out[1], out[2], reduced
