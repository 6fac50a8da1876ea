"""Hugging Face Trainer: `Trainer(..., callbacks=[InertiaCallback(log_dir="runs/inertia")])`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import TrainerCallback

from ..monitor import InertiaMonitor


def _loss_of(output: Any) -> Tensor | None:
    """The `loss` of a model output (a ModelOutput, a dict or an object), or None."""
    loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    return loss if isinstance(loss, Tensor) else None


class InertiaCallback(TrainerCallback):
    """Attaches an `InertiaMonitor` to the Trainer's optimizer when training begins.

    The loss is read from the model's forward output in training mode (`outputs.loss`, as
    Hugging Face models return it when given labels) and averaged over the micro-batches of
    each optimizer step. A model that does not return its loss needs `monitor.observe` by hand.
    The monitor is `callback.monitor`; it is detached when training ends.
    """

    def __init__(self, *, log_dir: str | Path | None = None, **monitor_kwargs: Any):
        self.log_dir, self.monitor_kwargs = log_dir, monitor_kwargs
        self.monitor: InertiaMonitor | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        inner: Any = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
        monitor = InertiaMonitor(inner, log_dir=self.log_dir, **self.monitor_kwargs)
        self.monitor = monitor

        def capture(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            loss = _loss_of(output)
            if module.training and loss is not None:
                monitor.observe(loss.detach(), accumulate=True)

        if model is None:
            raise ValueError("model: the Trainer passed no model to on_train_begin")
        self._hook = model.register_forward_hook(capture)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
        if self.monitor is not None:
            self.monitor.detach()
