"""Hugging Face Trainer: `Trainer(..., callbacks=[InertiaCallback(noise="microbatch")])`
(docs/integrations.md)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd.variable import Variable
from transformers import TrainerCallback
from transformers.trainer_callback import (
    CallbackHandler,
    DefaultFlowCallback,
    PrinterCallback,
    ProgressCallback,
)

from ..monitor import InertiaMonitor
from ..monitor.scaler import ScalerWatch
from . import RowBuffer, batch_size_of, check_noise, logged_values, with_buffer

#: Callbacks the Trainer runs that need not see the ledger's columns before it.
_FLOW = (DefaultFlowCallback, ProgressCallback, PrinterCallback)


def _loss_of(output: Any, labelled: bool) -> Tensor | None:
    """The `loss` of a model output (a ModelOutput, a dict or an object; given labels, the
    first element of a tuple, if a scalar, as the Trainer reads it), or None."""
    if isinstance(output, tuple):
        first = output[0] if output and labelled else None
        return first if isinstance(first, Tensor) and first.dim() == 0 else None
    loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    return loss if isinstance(loss, Tensor) else None


def _calling_handler() -> CallbackHandler | None:
    """The Trainer's `CallbackHandler` running the current event (a few frames up), or None."""
    frame = sys._getframe(1)
    for _ in range(8):
        owner = frame.f_locals.get("self")
        if isinstance(owner, CallbackHandler):
            return owner
        if frame.f_back is None:
            return None
        frame = frame.f_back
    return None


class InertiaCallback(TrainerCallback):
    """Books the energy ledger of a Hugging Face Trainer run: an `InertiaMonitor` on its optimizer.

    The Trainer has no event after a micro-batch's backward (`on_substep_end` comes after it
    only for the micro-batches before the last, and `on_pre_optimizer_step` after the
    gradients were unscaled and clipped), so the callback hooks autograd:
    - `on_train_begin`: the monitor is created on the optimizer accelerate wraps, with its
      GradScaler (fp16) as `scaler=`, and a forward hook goes on the model. The callback also
      moves itself ahead of the reporting callbacks `report_to` adds (and of any other callback
      but the Trainer's flow and progress ones), so that what it adds to the logs reaches them.
    - each training forward whose output has a `loss` (as Hugging Face models return it given
      labels) gets a gradient hook on that loss. In the backward it reads the weight w the
      Trainer gave the micro-batch (the gradient of what is backpropagated with respect to the
      model's loss: 1/gradient_accumulation_steps, or 1 where the loss is already normalised
      over the step's items, ÷ the GradScaler's S) and queues, for the end of that backward
      (after every other end-of-backward callback, e.g. DDP's), `monitor.observe(…,
      accumulate=True, batch_size=…)`: after the micro-batch's own backward, before the Trainer
      unscales and clips, so `noise="microbatch"` reads each micro-batch's own increment of
      `.grad` (divided by S by the monitor).
    - the loss booked is the step's Σ_j w_j·loss_j, the mean loss the step's gradient is that
      of, and what the Trainer logs as `loss` for that step (observe averages what it is given;
      micro-batch j hands over j·S_j − (j − 1)·S_{j−1}, S_j = Σ_{i≤j} w_i·loss_i, so that the
      mean over the step is S_m whatever the number m of micro-batches).
    - `on_step_begin` starts a step's sum; the optimizer step books the row (the monitor's step
      hooks) after `max_grad_norm` clipping: the step booked is the clipped step, the noise
      trace that of the gradients before clipping (the noise scale's ‖g_B‖² that of the
      gradient the optimizer receives, clipped).
    - `on_log`: the last row booked is added to the Trainer's `logs` as `inertia/<column>`
      (`inertia.integrations.logged_values`), which TensorBoard, W&B, MLflow… receive at the
      Trainer's step: the row of step k (θ_k) at global_step k + 1, beside the `loss` of the
      same micro-batches. These are the host numbers the monitor fetched: no synchronisation.
    - `on_train_end`: the hook is removed and the monitor detached (its sinks closed).

    A model that returns no `loss` (a `compute_loss_func`, label smoothing) leaves the ledger's
    loss NaN and no micro-batch noise (a warning says so): call `callback.monitor.observe`
    yourself, e.g. in a Trainer subclass's `training_step`.

    Args:
        log_dir: folder for the monitor's `ledger.csv`.
        columns: the columns added to the logs (None: all).
        **monitor_kwargs: passed to `InertiaMonitor` (`noise`, `alarm`, `every`, `sinks`, …);
            noise="per_sample" needs per-sample losses a callback does not see, and is refused.

    `callback.monitor` is the monitor (None before training starts).
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
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._weighted: Tensor | None = None  # Σ w·loss of this backward's losses
        self._batch: int | None = None
        self._queued = False  # the end-of-backward observation is queued
        self._total: Tensor | float = 0.0  # S_j of the step
        self._count = 0  # micro-batches observed in the step
        self._warned = False

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        self._run_first(_calling_handler())
        if model is None or optimizer is None:
            raise ValueError("model, optimizer: the Trainer passed none to on_train_begin")
        inner: Any = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
        monitor_kwargs = with_buffer(self.monitor_kwargs, self._rows, model)
        scaler = getattr(optimizer, "scaler", None)  # accelerate's GradScaler (fp16)
        if scaler is not None:
            monitor_kwargs.setdefault("scaler", scaler)
        self.monitor = InertiaMonitor(inner, log_dir=self.log_dir, **monitor_kwargs)
        scaler = monitor_kwargs.get("scaler")
        self._scaler = None if scaler is None else ScalerWatch(scaler, inner)
        self._hook = model.register_forward_hook(self._forward, with_kwargs=True)
        self._start_step()

    def _run_first(self, handler: CallbackHandler | None) -> None:
        """Move this callback ahead of every callback but the flow and progress ones (the
        reporting callbacks come before the user's), in a new list: the handler is iterating
        over the old one."""
        if handler is None:
            warnings.warn(
                "inertia: InertiaCallback could not find the Trainer's callbacks to run before"
                " the reporting ones; its columns reach only the callbacks after it",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        if self not in handler.callbacks:
            return
        callbacks = [cb for cb in handler.callbacks if cb is not self]
        first = next((i for i, cb in enumerate(callbacks) if not isinstance(cb, _FLOW)), None)
        if first is not None and first < handler.callbacks.index(self):
            handler.callbacks = [*callbacks[:first], self, *callbacks[first:]]

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start_step()

    def _start_step(self) -> None:
        self._total, self._count = 0.0, 0

    def _forward(
        self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any], output: Any
    ) -> None:
        loss = _loss_of(output, labelled=kwargs.get("labels") is not None)
        if self.monitor is None or not module.training or loss is None or not loss.requires_grad:
            return
        batch = batch_size_of(kwargs.get("labels"))
        batch = batch_size_of((args, kwargs)) if batch is None else batch
        hook = partial(self._loss_gradient, loss.detach(), batch)
        loss.register_hook(hook)  # type: ignore[no-untyped-call]

    def _loss_gradient(self, loss: Tensor, batch: int | None, grad: Tensor) -> None:
        """In the backward: w = grad (÷ S) for this loss; the observation queued for its end."""
        weighted = (loss.to(torch.float64) * grad.to(torch.float64)).sum()
        self._weighted = weighted if self._weighted is None else self._weighted + weighted
        self._batch = batch
        if not self._queued:
            self._queued = True
            Variable._execution_engine.queue_callback(self._after_callbacks)

    def _after_callbacks(self) -> None:
        """Queued from within the end-of-backward callbacks, so it runs after all of them."""
        Variable._execution_engine.queue_callback(self._observe)

    def _observe(self) -> None:
        """At the end of a micro-batch's backward: observe j·S_j − (j − 1)·S_{j−1}."""
        weighted, self._weighted, self._queued = self._weighted, None, False
        if self.monitor is None or weighted is None:
            return
        unscale = None if self._scaler is None else self._scaler.unscale()
        if unscale is not None:  # the gradient came through the scaled loss S·Σ w·loss
            weighted = weighted * unscale
        self._count += 1
        handed = self._total + self._count * weighted
        self._total = self._total + weighted
        with torch.no_grad():
            self.monitor.observe(handed, accumulate=True, batch_size=self._batch)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None and not self._count and not self._warned:
            self._warned = True
            warnings.warn(
                "inertia: the model returned no `loss` in training: the ledger's loss is NaN and"
                " there is no micro-batch noise; call callback.monitor.observe yourself",
                RuntimeWarning,
                stacklevel=2,
            )

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        row = self._rows.take()
        if row is not None and logs is not None:
            logs.update(logged_values(row, self.columns))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.monitor is not None:
            self.monitor.detach()
