"""Parameter groups laid out as flat vectors, and the segments of the per-layer books: what every
part of the monitor that keeps a per-group buffer or a per-layer sum shares."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .. import _checks
from .._distributed import local

F64 = torch.float64


class GroupLayout:
    """The (local shards of the) parameters of one group, in order, as one flat vector: sizes,
    shapes and device, per-parameter views of a flat buffer, the current gradients.

    Buffers are kept in `dtype`: float64 where a parameter is float64, float32 otherwise (the
    difference of two nearby float32 values is exact in float32; bf16 and fp16 values are exact
    in float32)."""

    def __init__(self, params: Sequence[Tensor], device: torch.device | None = None):
        """`device`: an empty group's (default: the CPU); a group's own is its parameters'."""
        self.params = list(params)
        self.sharded = any(local(p) is not p for p in self.params)
        shards = [local(p).detach() for p in self.params]
        self.sizes = [t.numel() for t in shards]
        self.shapes = [t.shape for t in shards]
        self.numel = sum(self.sizes)
        self.device = shards[0].device if shards else device or torch.device("cpu")
        self.dtype = _buffer_dtype(shards)
        self._cached = None if self.sharded else shards
        # the parameters' unit round-off: the relative error of a step is eps·‖θ‖/‖Δθ‖
        self.eps = max((torch.finfo(p.dtype).eps for p in self.params), default=0.0)

    def zeros(self) -> Tensor:
        """A flat buffer of the group's size, in its buffer dtype, on its device."""
        return torch.zeros(self.numel, dtype=self.dtype, device=self.device)

    def views_of(self, flat: Tensor) -> list[Tensor]:
        """Per-parameter views of a flat buffer laid out as the group."""
        return [v.view(s) for v, s in zip(torch.split(flat, self.sizes), self.shapes, strict=True)]

    def local_params(self) -> list[Tensor]:
        """The (local shards of the) parameters; plain tensors are cached detached views, taken
        again when the parameters' storage was swapped (`Module.to`, `vector_to_parameters`:
        the optimizer steps the same Parameter objects, with new `.data`; the first one is
        looked at). A move to another device or buffer dtype is refused: the buffers are laid
        out for the parameters as they were at attach."""
        cached = self._cached
        if cached is None:
            return [local(p).detach() for p in self.params]
        if cached and cached[0].data_ptr() != self.params[0].data_ptr():
            shards = [p.detach() for p in self.params]
            device = shards[0].device
            if (device, _buffer_dtype(shards)) != (self.device, self.dtype):
                raise RuntimeError(
                    f"the parameters are now {shards[0].dtype} on {device}; the monitor laid "
                    f"out its buffers for {self.dtype} on {self.device}: attach it after "
                    "moving or casting the model"
                )
            self._cached = cached = shards
        return cached

    def grads(self) -> list[Tensor]:
        """The (local shards of the) gradients, zeros where a parameter has none; a sparse
        gradient (`nn.Embedding(sparse=True)`) as a dense one, the shape of its parameter."""
        return [
            _dense(local(p.grad)) if p.grad is not None else torch.zeros_like(local(p))
            for p in self.params
        ]


def layouts_of(groups: Sequence[dict[str, Any]]) -> list[GroupLayout]:
    """The layout of each parameter group; an empty group's on the parameters' device (the
    monitor's device is its first group's)."""
    first = next((p for g in groups for p in g["params"]), None)
    device = None if first is None else local(first).device
    return [GroupLayout(g["params"], device) for g in groups]


def _buffer_dtype(shards: Sequence[Tensor]) -> torch.dtype:
    """float64 where a parameter is float64, float32 otherwise."""
    return F64 if any(t.dtype == F64 for t in shards) else torch.float32


def _dense(grad: Tensor) -> Tensor:
    return grad.to_dense() if grad.layout != torch.strided else grad


class Segments:
    """The per-layer books' segments: named sets of parameter tensors (a module's own
    parameters, or a parameter group), and the sum over each of per-tensor values."""

    def __init__(self, names: list[str], index: list[list[int]], device: torch.device):
        self.names = names
        self.index = index  # per group, per tensor: its segment, or -1 where not watched
        watched = [s for group in index for s in group if s >= 0]
        self._index = torch.tensor(watched, dtype=torch.long, device=device)
        self._mask = [[s >= 0 for s in group] for group in index]

    @classmethod
    def of(
        cls,
        by: str | None,
        layouts: list[GroupLayout],
        model: torch.nn.Module | None,
        params: Iterable[Tensor] | None,
        groups: list[dict[str, Any]],
    ) -> Segments | None:
        """Segments `by` "module" (the modules of `model` that own parameters, by their
        qualified name; "other" for parameters outside it) or "group" (parameter groups, by
        their "name" entry or "group<i>"), None for None; only `params` are watched, if given.
        ValueError naming `by`, `model` or `params` where they are not one of these, or share
        no parameter with the optimizer (tensors it does not step are not watched)."""
        if by not in (None, "module", "group"):
            raise _checks.fail("by", "None, 'module' or 'group'", by)
        if by is None:
            return None
        optimized = {id(p) for layout in layouts for p in layout.params}
        watched = None if params is None else {id(p) for p in params}
        if watched is not None and not watched & optimized:
            raise ValueError("params must be parameters of the optimizer; got none it steps")
        owner: dict[int, str] = {}
        if by == "module":
            if not isinstance(model, torch.nn.Module):
                raise _checks.fail("model", "the torch.nn.Module whose modules to book", model)
            for name, module in model.named_modules():
                for p in module.parameters(recurse=False):
                    owner.setdefault(id(p), name or "root")
            if not owner.keys() & optimized:
                raise ValueError(
                    "model must be the module whose parameters the optimizer steps; "
                    "got one sharing none of them"
                )
        names: list[str] = []
        index: list[list[int]] = []
        for i, layout in enumerate(layouts):
            row = []
            for p in layout.params:
                if watched is not None and id(p) not in watched:
                    row.append(-1)
                    continue
                if by == "module":
                    name = owner.get(id(p), "other")
                else:
                    name = str(groups[i].get("name", f"group{i}"))
                if name not in names:
                    names.append(name)
                row.append(names.index(name))
            index.append(row)
        device = layouts[0].device if layouts else torch.device("cpu")
        return cls(names, index, device)

    def sum(self, per_tensor: list[list[Tensor]]) -> Tensor:
        """Σ over each segment of per-tensor 0-d values (per group, per tensor), as (S,)."""
        values = [
            v
            for group, mask in zip(per_tensor, self._mask, strict=True)
            for v, keep in zip(group, mask, strict=True)
            if keep
        ]
        out = torch.zeros(len(self.names), dtype=F64, device=self._index.device)
        if values:
            out.index_add_(0, self._index, torch.stack([v.to(F64) for v in values]))
        return out
