"""The little of torch.distributed the library needs: rank and world size, local shards of
DTensors, contiguous shares of paths, per-rank seeds and in-place reductions."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "placements") else t


def rank_world() -> tuple[int, int]:
    """(rank, world size), (0, 1) outside torch.distributed."""
    if initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def initialized() -> bool:
    """Whether a torch.distributed process group is initialised."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def shard(total: int, rank: int, world: int) -> tuple[int, int]:
    """(offset, count) of rank's contiguous share of `total` items: the first total mod world
    ranks take one more, so the shares differ by at most one and follow rank order."""
    base, extra = divmod(total, world)
    return rank * base + min(rank, extra), base + (rank < extra)


def stream_seed(seed: int, rank: int) -> int:
    """The 64-bit seed of rank's noise stream, derived from (seed, rank).

    numpy's SeedSequence hashes `seed` to a 32-bit base b; the low 32 bits are (b + rank) mod
    2³², distinct for every rank (torch keys its CPU Mersenne Twister by the low 32 bits only),
    and the high 32 bits hash (seed, rank) (CUDA's Philox takes all 64).
    """
    base = int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0])
    high = int(np.random.SeedSequence(seed, spawn_key=(rank,)).generate_state(1, np.uint32)[0])
    return high << 32 | (base + rank) % 2**32


def all_reduce(t: Tensor, op: str = "sum") -> Tensor:
    """t reduced in place over the process group ("sum", "max" or "min"); t itself outside."""
    if initialized():
        dist = torch.distributed
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(t, op=ops[op])
    return t
