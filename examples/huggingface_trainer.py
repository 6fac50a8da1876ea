"""Hugging Face Trainer: the energy ledger of a `Trainer` run from one callback.

`InertiaCallback` (inertia.integrations.transformers) creates an `InertiaMonitor` on the
Trainer's optimizer when training begins; its keyword arguments go to the monitor. The model is
any `torch.nn.Module` that returns its `loss` given `labels`, as Hugging Face models do: here a
small classifier built in code, so nothing is downloaded. The ledger streams to DIR/ledger.csv
and its columns join the Trainer's logs as `inertia/<column>` (TensorBoard, W&B, MLflow… get
them through `report_to`; here a small callback that keeps what it is handed).

    python examples/huggingface_trainer.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from inertia.integrations.transformers import InertiaCallback


class Blobs(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Four Gaussian blobs in 8 dimensions, as the Trainer takes data: dicts with `labels`."""

    def __init__(self, samples: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        centres = 2.0 * torch.randn(4, 8, generator=generator)
        self.labels = torch.randint(0, 4, (samples,), generator=generator)
        self.x = centres[self.labels] + 1.5 * torch.randn(samples, 8, generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.labels[i]}


class Classifier(nn.Module):
    """Returns {"loss", "logits"} given labels, like a Hugging Face model."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.net(x)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


class KeepLogs(transformers.TrainerCallback):
    """Keeps the logs the Trainer hands its callbacks, as a `report_to` logger receives them."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs is not None:
            self.logs.append(dict(logs))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    parser.add_argument("--out", type=Path, default=Path("example-output/huggingface"))
    args = parser.parse_args(argv)
    epochs, samples, every = (2, 256, 1) if args.quick else (20, 4096, 25)
    transformers.set_seed(0)

    # --8<-- [start:trainer]
    callback = InertiaCallback(log_dir=args.out, noise="microbatch")  # kwargs → InertiaMonitor
    training = transformers.TrainingArguments(
        output_dir=str(args.out / "trainer"),
        per_device_train_batch_size=16,
        gradient_accumulation_steps=2,  # two micro-batches per step: the noise estimate's spread
        num_train_epochs=epochs,
        learning_rate=0.05,
        lr_scheduler_type="constant",
        optim="sgd",
        logging_steps=every,  # each log carries the ledger's last row
        report_to=[],  # "tensorboard", "wandb", "mlflow": they receive inertia/<column> as KeepLogs
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    kept = KeepLogs()
    trainer = transformers.Trainer(
        model=Classifier(),
        args=training,
        train_dataset=Blobs(samples),
        callbacks=[callback, kept],
    )
    trainer.train()
    # --8<-- [end:trainer]

    monitor = callback.monitor  # the InertiaMonitor the callback created (detached at the end)
    assert monitor is not None
    ledger = monitor.ledger
    rows = len(ledger["step"])
    logs = [entry for entry in kept.logs if "inertia/kinetic" in entry]
    print(
        f"{rows} rows (optimizer steps); loss {float(ledger['loss'][0]):.3f} → "
        f"{float(ledger['loss'][-1]):.3f}; dissipated {float(ledger['dissipated'][-1]):.4f}; "
        f"injected {float(ledger['injected'][-1]):.4f}"
    )
    columns = sorted(name for name in logs[-1] if name.startswith("inertia/"))
    print(
        f"{len(logs)} log entries carry {len(columns)} ledger columns: {', '.join(columns[:5])}, …"
    )
    return {
        "rows": rows,
        "first_loss": float(ledger["loss"][0]),
        "last_loss": float(ledger["loss"][-1]),
        "logged_rows": len(logs),
    }


if __name__ == "__main__":
    main()
