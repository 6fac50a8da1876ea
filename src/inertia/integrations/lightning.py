"""PyTorch Lightning: `Trainer(callbacks=[InertiaCallback(noise="microbatch")])`
(docs/integrations.md)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from ..monitor import InertiaMonitor
from ..monitor.scaler import ScalerWatch
from . import RowBuffer, batch_size_of, check_noise, logged_values, with_buffer


class InertiaCallback(Callback):
    """Books the energy ledger of a Lightning run: an `InertiaMonitor` on the (first) optimizer.

    At each hook (automatic optimization, `accumulate_grad_batches` = A):
    - `on_fit_start`: the monitor is created on the optimizer, with the precision plugin's
      GradScaler (`precision="16-mixed"`) as its `scaler=`.
    - `on_before_backward`: Lightning hands over the loss it backpropagates, the micro-batch's
      loss divided by A (and multiplied by the loss scale S under a GradScaler); it is kept.
    - `on_after_backward`: `monitor.observe(loss × A / S, accumulate=True, batch_size=…)`,
      after the micro-batch's own backward and before Lightning unscales or clips: the
      micro-batch estimate (`noise="microbatch"`) reads this micro-batch's own increment of
      `.grad`, still scaled by S, which the monitor divides out. The row's loss is the mean of
      the micro-batch losses of the step (`training_step`'s loss).
    - the optimizer step books the row (the monitor's step hooks) after `gradient_clip_val`
      has clipped: the step booked is the clipped step the optimizer takes, while the noise
      trace is that of the gradients before clipping (and the noise scale's ‖g_B‖² that of
      the gradient the optimizer receives, clipped).
    - `on_train_batch_end`: on the steps Lightning logs (`log_every_n_steps`), the last row
      booked goes to `pl_module.log_dict` as `inertia/<column>` (`inertia.integrations.
      logged_values`: non-finite values left out), so every logger of the Trainer receives
      it at the step of the row. The values are the host numbers the monitor fetched, logged
      as CPU tensors: no transfer to or from the device.
    - `on_fit_end`: the monitor is detached (its sinks closed).

    A `training_step` that returns None skips its batch. Where all the micro-batches of a step
    are skipped, Lightning still calls the optimizer's step (under a GradScaler it does not:
    no row), so the step's row is recorded with a NaN loss and flagged, and the monitor's
    `RuntimeWarning` says that a skipped batch is such a step.

    Args:
        log_dir: folder for the monitor's `ledger.csv`.
        columns: the columns sent to the loggers (None: all).
        **monitor_kwargs: passed to `InertiaMonitor` (`noise`, `alarm`, `every`, `sinks`, …);
            noise="per_sample" needs per-sample losses a callback does not see, and is refused.

    `callback.monitor` is the monitor (None before fitting starts).
    """

    def __init__(
        self,
        *,
        log_dir: str | Path | None = None,
        columns: Iterable[str] | None = None,
        **monitor_kwargs: Any,
    ):
        check_noise(monitor_kwargs)
        self.log_dir, self.monitor_kwargs = log_dir, monitor_kwargs
        self.columns = None if columns is None else tuple(columns)
        self.monitor: InertiaMonitor | None = None
        self._rows = RowBuffer()
        self._scaler: ScalerWatch | None = None
        self._loss: Tensor | None = None
        self._batch: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps it
        kwargs = with_buffer(self.monitor_kwargs, self._rows, pl_module)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            kwargs.setdefault("scaler", scaler)
        self.monitor = InertiaMonitor(optimizer, log_dir=self.log_dir, **kwargs)
        scaler = kwargs.get("scaler")
        self._scaler = None if scaler is None else ScalerWatch(scaler, optimizer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch = batch_size_of(batch)

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        if self.monitor is not None and pl_module.training:
            self._loss = loss.detach()

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss, self._loss = self._loss, None
        if self.monitor is None or loss is None:
            return
        loss = loss.to(torch.float64)
        if pl_module.automatic_optimization:  # Lightning divided it by A
            loss = loss * trainer.accumulate_grad_batches
        unscale = None if self._scaler is None else self._scaler.unscale()
        if unscale is not None:  # Lightning handed over the scaled loss
            loss = loss * unscale
        self.monitor.observe(loss, accumulate=True, batch_size=self._batch)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        every = getattr(trainer, "log_every_n_steps", 1)  # set by the Trainer, not declared
        if not every or trainer.global_step % every:  # Lightning logs nothing at this step
            return
        row = self._rows.take()
        if row is None:
            return
        values = {
            name: torch.tensor(value, dtype=torch.float64)  # on the CPU: no device transfer
            for name, value in logged_values(row, self.columns).items()
        }
        if values:
            pl_module.log_dict(
                values,
                on_step=True,
                on_epoch=False,
                batch_size=1,
                rank_zero_only=trainer.world_size > 1,  # rows reach the sinks on rank 0 only
            )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is not None:
            self.monitor.detach()
