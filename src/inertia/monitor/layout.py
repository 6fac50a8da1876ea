"""A parameter group laid out as one flat vector: what every part of the monitor that keeps a
per-group buffer (the parameter probe, the micro-batch noise estimate) shares."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._distributed import local

F64 = torch.float64


class GroupLayout:
    """The (local shards of the) parameters of one group, in order, as one flat vector: sizes,
    shapes and device, per-parameter views of a flat buffer, the current gradients."""

    def __init__(self, params: Sequence[Tensor]):
        self.params = list(params)
        self.sharded = any(local(p) is not p for p in self.params)
        shards = [local(p).detach() for p in self.params]
        self.sizes = [t.numel() for t in shards]
        self.shapes = [t.shape for t in shards]
        self.numel = sum(self.sizes)
        self.device = shards[0].device if shards else torch.device("cpu")
        self._cached = None if self.sharded else shards
        # the parameters' unit round-off: the relative error of a step is eps·‖θ‖/‖Δθ‖
        self.eps = max((torch.finfo(p.dtype).eps for p in self.params), default=0.0)

    def zeros(self) -> Tensor:
        """A flat float64 buffer of the group's size, on its device."""
        return torch.zeros(self.numel, dtype=F64, device=self.device)

    def views_of(self, flat: Tensor) -> list[Tensor]:
        """Per-parameter views of a flat buffer laid out as the group."""
        return [v.view(s) for v, s in zip(torch.split(flat, self.sizes), self.shapes, strict=True)]

    def local_params(self) -> list[Tensor]:
        """The (local shards of the) parameters; plain tensors are cached detached views."""
        if self._cached is not None:
            return self._cached
        return [local(p).detach() for p in self.params]

    def grads(self) -> list[Tensor]:
        """The (local shards of the) gradients, zeros where a parameter has none."""
        return [
            local(p.grad) if p.grad is not None else torch.zeros_like(local(p)) for p in self.params
        ]
