"""The Lightning and Hugging Face callbacks attach the monitor with no user code (tiny models
built from code; nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch

F64 = torch.float64


def regression_data(n: int = 32) -> torch.utils.data.TensorDataset:
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    return torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lightning_callback_books_one_row_per_optimizer_step(accumulate, tmp_path):
    lightning = pytest.importorskip("lightning.pytorch")
    from inertia.integrations.lightning import InertiaCallback

    losses: list[float] = []

    class Tiny(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def training_step(self, batch, _):
            x, y = batch
            loss = ((self.lin(x) - y) ** 2).mean()
            losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    callback = InertiaCallback(log_dir=tmp_path)
    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accumulate_grad_batches=accumulate,
        callbacks=[callback],
    )
    trainer.fit(Tiny(), torch.utils.data.DataLoader(regression_data(), batch_size=4))
    led = callback.monitor.ledger
    steps = len(losses) // accumulate
    assert len(led["step"]) == steps == trainer.global_step
    expected = torch.tensor(losses, dtype=F64).reshape(steps, accumulate).mean(1)
    torch.testing.assert_close(led["potential"], expected, rtol=1e-6, atol=1e-7)
    assert float(led["dissipated"][-1]) > 0
    assert (tmp_path / "ledger.csv").exists()


def test_transformers_callback_reads_the_loss_from_model_outputs(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from inertia.integrations.transformers import InertiaCallback

    losses: list[float] = []

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, x, labels=None):
            out = self.lin(x)
            loss = ((out - labels) ** 2).mean()
            if self.training:
                losses.append(float(loss.detach()))
            return {"loss": loss, "logits": out}

    class Data(torch.utils.data.Dataset):
        def __init__(self):
            self.data = regression_data()

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            x, y = self.data[i]
            return {"x": x, "labels": y}

    callback = InertiaCallback(log_dir=tmp_path)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_train_epochs=2,
        learning_rate=0.05,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1000,
    )
    trainer = transformers.Trainer(
        model=Tiny(), args=args, train_dataset=Data(), callbacks=[callback]
    )
    trainer.train()
    led = callback.monitor.ledger
    steps = trainer.state.global_step
    assert len(led["step"]) == steps and len(losses) == 2 * steps
    expected = torch.tensor(losses, dtype=F64).reshape(steps, 2).mean(1)
    torch.testing.assert_close(led["potential"], expected, rtol=1e-6, atol=1e-7)
    assert float(led["kinetic"][-1]) > 0
