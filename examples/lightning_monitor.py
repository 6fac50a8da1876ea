"""PyTorch Lightning: the energy ledger of a `Trainer` run from one callback.

`InertiaCallback` (inertia.integrations.lightning) creates an `InertiaMonitor` on the Trainer's
optimizer when fitting starts; its keyword arguments go to the monitor (here the micro-batch
noise estimate, which gradient accumulation makes possible). The ledger streams to
DIR/ledger.csv and its columns reach every logger of the Trainer as `inertia/<column>` (here a
CSVLogger: DIR/logs/.../metrics.csv).

    python examples/lightning_monitor.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from inertia.integrations.lightning import InertiaCallback


def regression(samples: int, seed: int = 0) -> torch.utils.data.TensorDataset:
    """y = sin(3x₁) + x₂² + label noise."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 2, generator=generator)
    y = (3 * x[:, :1]).sin() + x[:, 1:] ** 2 + 0.1 * torch.randn(samples, 1, generator=generator)
    return torch.utils.data.TensorDataset(x, y)


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    parser.add_argument("--out", type=Path, default=Path("example-output/lightning"))
    args = parser.parse_args(argv)
    epochs, samples = (2, 256) if args.quick else (30, 2048)
    pl.seed_everything(0, verbose=False)

    # --8<-- [start:trainer]
    callback = InertiaCallback(log_dir=args.out, noise="microbatch")  # kwargs → InertiaMonitor
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        accumulate_grad_batches=2,  # two micro-batches per step: the noise estimate's spread
        callbacks=[callback],
        logger=CSVLogger(args.out, name="logs"),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = torch.utils.data.DataLoader(regression(samples), batch_size=16, shuffle=True)
    trainer.fit(Regressor(), loader)
    # --8<-- [end:trainer]

    monitor = callback.monitor  # the InertiaMonitor the callback created (detached at fit end)
    assert monitor is not None
    ledger = monitor.ledger
    rows = len(ledger["step"])
    print(
        f"{rows} rows (optimizer steps); loss {float(ledger['loss'][0]):.3f} → "
        f"{float(ledger['loss'][-1]):.3f}; dissipated {float(ledger['dissipated'][-1]):.4f}; "
        f"injected {float(ledger['injected'][-1]):.4f}; "
        f"noise scale {float(ledger['noise_scale'][-1]):.1f}"
    )
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as file:
        logged = sorted(name for name in next(csv.reader(file)) if name.startswith("inertia/"))
    print(f"the CSVLogger received {len(logged)} ledger columns: {', '.join(logged[:6])}, …")
    return {
        "rows": rows,
        "first_loss": float(ledger["loss"][0]),
        "last_loss": float(ledger["loss"][-1]),
        "logged_columns": len(logged),
    }


if __name__ == "__main__":
    main()
