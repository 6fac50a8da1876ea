"""The little of torch.distributed the library needs: local shards, rank and world size."""

from __future__ import annotations

import torch
from torch import Tensor


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "placements") else t


def rank_world() -> tuple[int, int]:
    """(rank, world size), (0, 1) outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
