"""PyTorch Lightning: `trainer = Trainer(callbacks=[InertiaCallback(log_dir="runs/inertia")])`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from ..monitor import InertiaMonitor


class InertiaCallback(Callback):
    """Attaches an `InertiaMonitor` to the (first) optimizer when fitting starts.

    The loss comes from `on_before_backward`, where Lightning hands over the loss divided by
    `accumulate_grad_batches`; it is scaled back and averaged over the micro-batches of a step.
    The monitor is `callback.monitor`; it is detached (and its sinks closed) when fitting ends.
    """

    def __init__(self, *, log_dir: str | Path | None = None, **monitor_kwargs: Any):
        self.log_dir, self.monitor_kwargs = log_dir, monitor_kwargs
        self.monitor: InertiaMonitor | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps it
        self.monitor = InertiaMonitor(optimizer, log_dir=self.log_dir, **self.monitor_kwargs)

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        if self.monitor is not None and pl_module.training:
            self.monitor.observe(loss.detach() * trainer.accumulate_grad_batches, accumulate=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is not None:
            self.monitor.detach()
