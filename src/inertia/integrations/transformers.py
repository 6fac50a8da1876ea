"""Hugging Face Trainer: `Trainer(..., callbacks=[InertiaCallback(log_dir="runs/inertia")])`."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from ..monitor import InertiaMonitor


def _loss_of(output):
    """The `loss` of a model output (a ModelOutput, a dict or an object), or None."""
    if isinstance(output, dict):
        return output.get("loss")
    return getattr(output, "loss", None)


class InertiaCallback(TrainerCallback):
    """Attaches an `InertiaMonitor` to the Trainer's optimizer when training begins.

    The loss is read from the model's forward output in training mode (`outputs.loss`, as
    Hugging Face models return it when given labels) and averaged over the micro-batches of
    each optimizer step. A model that does not return its loss needs `monitor.observe` by hand.
    The monitor is `callback.monitor`; it is detached when training ends.
    """

    def __init__(self, *, log_dir: str | Path | None = None, **monitor_kwargs):
        self.log_dir, self.monitor_kwargs = log_dir, monitor_kwargs
        self.monitor: InertiaMonitor | None = None
        self._hook = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
        self.monitor = InertiaMonitor(optimizer, log_dir=self.log_dir, **self.monitor_kwargs)

        def capture(module, inputs, output):
            loss = _loss_of(output)
            if module.training and loss is not None:
                self.monitor.observe(loss.detach(), accumulate=True)

        self._hook = model.register_forward_hook(capture)

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
        if self.monitor is not None:
            self.monitor.detach()
