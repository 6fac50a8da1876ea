"""What the monitor needs of a `torch.amp.GradScaler` (mixed precision): whether the gradients
it sees are still scaled by the loss scale S (then 1/S, on the device: no host
synchronisation), and whether an iteration ended since it last looked (the scaler's
`update()`), so that a loss no optimizer step consumed is booked as a skipped step even
under gradient accumulation. It reads the scaler's per-optimizer state, which `update()`
replaces each iteration (torch's GradScaler keeps it in `_per_optimizer_states`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.amp.grad_scaler import OptState

from .. import _checks


class ScalerWatch:
    """Watches `scaler` for `optimizer`."""

    @classmethod
    def of(cls, scaler: Any, optimizer: torch.optim.Optimizer) -> ScalerWatch | None:
        """The watch of `scaler`, or None without one."""
        return None if scaler is None else cls(scaler, optimizer)

    def __init__(self, scaler: Any, optimizer: torch.optim.Optimizer):
        if not (
            hasattr(scaler, "_per_optimizer_states")
            and hasattr(scaler, "is_enabled")
            and hasattr(scaler, "update")
        ):
            raise _checks.fail("scaler", "a torch.amp.GradScaler", scaler)
        self.scaler, self._key = scaler, id(optimizer)
        self._states = scaler._per_optimizer_states

    def unscale(self) -> Tensor | None:
        """1/S where the optimizer's gradients are still scaled by S, else None."""
        if not self.scaler.is_enabled():
            return None
        state = self.scaler._per_optimizer_states.get(self._key)
        scale = getattr(self.scaler, "_scale", None)
        if not isinstance(scale, Tensor) or (
            state is not None and state["stage"] is not OptState.READY
        ):
            return None  # unscaled already (unscale_ or step), or nothing scaled yet
        return scale.to(torch.float64).reciprocal()

    def iteration_ended(self) -> bool:
        """Whether `update()` ran since the last call (a new iteration has begun)."""
        states = self.scaler._per_optimizer_states
        ended, self._states = states is not self._states, states
        return ended
