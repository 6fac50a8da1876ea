"""The Lightning and Hugging Face callbacks (docs/integrations.md), against references the tests
record themselves: each micro-batch's loss (in the model) and its gradients (after its own
backward, before clipping: Lightning's module hook, a Trainer subclass's `training_step`),
from which the micro-batch noise estimate documented in `inertia.monitor.noise.MicroBatch` is
recomputed in float64; the framework's own logged loss; and the columns read back from the
loggers' files (TensorBoard event files, W&B offline run files). Tiny models built from code;
nothing is downloaded."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from inertia.integrations import logged_values

F64 = torch.float64
SAMPLES, BATCH, ACCUMULATE, EPOCHS = 32, 4, 2, 2
STEPS = EPOCHS * SAMPLES // (BATCH * ACCUMULATE)  # 8 optimizer steps


def regression_data(samples: int = SAMPLES) -> torch.utils.data.TensorDataset:
    """y = x·w + label noise: the micro-batch gradients differ by much more than round-off."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 3, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.5 * torch.randn(samples, 1, generator=gen)
    return torch.utils.data.TensorDataset(x, y)


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def flat_grad(model: torch.nn.Module, scale: float = 1.0) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).to(F64) / scale


@dataclass
class Record:
    """Per micro-batch, in order: its mean loss, its samples and the accumulated gradient after
    its backward (unscaled)."""

    losses: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)

    def add(self, loss: torch.Tensor, size: int) -> None:
        self.losses.append(float(loss.detach()))
        self.sizes.append(size)

    def windows(self, lengths: list[int] | None = None) -> list[range]:
        """The micro-batches of each optimizer step (default: ACCUMULATE each)."""
        n = len(self.losses)
        assert len(self.grads) == len(self.sizes) == n
        lengths = lengths or [ACCUMULATE] * (n // ACCUMULATE)
        assert sum(lengths) == n
        starts = [sum(lengths[:k]) for k in range(len(lengths))]
        return [range(a, a + m) for a, m in zip(starts, lengths, strict=True)]

    def step_losses(self, lengths: list[int] | None = None) -> torch.Tensor:
        """Each optimizer step's mean loss over its samples."""
        out = []
        for w in self.windows(lengths):
            out.append(
                sum(self.losses[i] * self.sizes[i] for i in w) / sum(self.sizes[i] for i in w)
            )
        return torch.tensor(out, dtype=F64)

    def step_noise(self, lengths: list[int] | None = None) -> torch.Tensor:
        """MicroBatch's estimate, m·(Σ‖d_j‖² − ‖Σ d_j‖²/m)/(m − 1), Euclidean (SGD), from the
        increments d_j = G_j − G_{j−1} of the recorded gradients (G_0 = 0: zeroed each step);
        NaN for a step of one micro-batch."""
        out = []
        for w in self.windows(lengths):
            cumulative = [self.grads[i] for i in w]
            d = [g - (cumulative[j - 1] if j else 0.0) for j, g in enumerate(cumulative)]
            m = len(d)
            squares = sum(float(x @ x) for x in d)
            total = float(cumulative[-1] @ cumulative[-1])
            out.append(m * (squares - total / m) / (m - 1) if m > 1 else math.nan)
        return torch.tensor(out, dtype=F64)


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar in the TensorBoard event files under `folder`: tag → step → value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for path in folder.rglob("events.out.tfevents.*"):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return out


def offline_wandb(monkeypatch, tmp_path: Path) -> None:
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # read once per process: see finished_history


def finished_history(wandb, timeout: float = 60.0) -> list[dict[str, float]]:
    """Finish the current W&B run and return the history rows of its offline run file, once
    W&B's service has written the exit record (`finish` returns before it has)."""
    from test_sinks import wandb_records

    run = wandb.run
    path = Path(run.dir).parent / f"run-{run.id}.wandb"  # where W&B put it, whatever WANDB_DIR
    wandb.finish()
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path) if path.exists() else []
        kinds = [record.WhichOneof("record_type") for record in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert "exit" in kinds, kinds
    return [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r, kind in zip(records, kinds, strict=True)
        if kind == "history"
    ]


def assert_ledger_logged(logged: dict[str, dict[int, float]], ledger, prefix: str, shift: int):
    """Row k's columns are logged as `prefix + column` at the framework's step k + shift."""
    for k in range(len(ledger["step"])):
        row = {name: float(values[k]) for name, values in ledger.items()}
        row["step"] = k
        expected = logged_values(row)
        assert {"inertia/loss", "inertia/kinetic", "inertia/noise_trace"} <= set(expected)
        for name, value in expected.items():
            assert logged[prefix + name][k + shift] == pytest.approx(value, rel=1e-6, abs=1e-30)


def test_logged_values_name_the_finite_columns_for_any_logger():
    from inertia.integrations import batch_size_of

    row = {"step": 3, "loss": 1.5, "noise_trace": math.nan, "potential": math.inf, "flag": 1}
    row["kinetic/encoder.0"] = 2.0
    assert logged_values(row) == {
        "inertia/loss": 1.5,
        "inertia/flag": 1.0,
        "inertia/kinetic.encoder.0": 2.0,  # MLflow's file store: no file beside a folder
    }
    assert logged_values(row, columns=["loss", "noise_trace"]) == {"inertia/loss": 1.5}
    assert batch_size_of({"ids": [torch.zeros(()), torch.zeros(5, 2)], "y": torch.zeros(7)}) == 5
    assert batch_size_of(("text", 3)) is None
    assert batch_size_of(torch.zeros(0, 4)) is None  # not a batch size the monitor accepts


# Lightning ----------------------------------------------------------------------------------


def lightning_run(tmp_path: Path, precision: str, *, clip: float | None, loggers, **kwargs):
    lightning = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.plugins.precision import MixedPrecision

    from inertia.integrations.lightning import InertiaCallback

    record = Record()

    class Tiny(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = tiny_net()

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x).float(), y)
            record.add(loss, len(x))
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def on_after_backward(self):  # after the callback's, before unscaling and clipping
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
            record.grads.append(flat_grad(self, scaler.get_scale() if scaler else 1.0))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    plugins = []
    if precision == "16-mixed":  # Lightning turns precision="16-mixed" on the CPU into bf16
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        plugins = [MixedPrecision("16-mixed", "cpu", scaler=scaler)]
        precision = None
    callback = InertiaCallback(log_dir=tmp_path, noise="microbatch", **kwargs)
    trainer = lightning.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        precision=precision,
        plugins=plugins,
        logger=loggers,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accumulate_grad_batches=ACCUMULATE,
        gradient_clip_val=clip,
        callbacks=[callback],
    )
    data = torch.utils.data.DataLoader(regression_data(), batch_size=BATCH)
    trainer.fit(Tiny(), data)
    return trainer, callback, record


@pytest.mark.parametrize(
    ("precision", "clip"), [("32-true", 0.05), ("bf16-mixed", 0.05), ("16-mixed", None)]
)
def test_lightning_books_the_step_loss_and_each_micro_batch_gradient(tmp_path, precision, clip):
    pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path / "tb", name="run", version=0)
    trainer, callback, record = lightning_run(tmp_path, precision, clip=clip, loggers=[logger])
    led = callback.monitor.ledger
    assert trainer.global_step == STEPS and len(led["step"]) == STEPS
    assert (led["flag"] == 0).all()
    if precision == "16-mixed":
        assert callback.monitor._scaler is not None  # the plugin's GradScaler, unscaled
    # the loss booked is the step's mean loss, not the loss Lightning divided by 2 (and scaled)
    torch.testing.assert_close(led["loss"], record.step_losses().to(F64), rtol=1e-6, atol=0)
    # the noise is that of each micro-batch's own gradient, before clipping and unscaled
    noise = record.step_noise()
    assert (noise > 0).all()
    torch.testing.assert_close(led["noise_trace"], noise, rtol=1e-5, atol=0)
    if clip is None:  # the noise scale's ‖g_B‖² is the clipped gradient's, when clipped
        assert math.isfinite(float(led["noise_scale"][-1]))
    # the columns reach the logger at the row's step, beside the loss the module logged
    logged = tensorboard_scalars(tmp_path / "tb")
    assert_ledger_logged(logged, led, "", shift=0)
    per_epoch = led["loss"].reshape(EPOCHS, -1).mean(1)
    epochs = sorted(logged["train_loss"])
    assert [logged["train_loss"][s] for s in epochs] == pytest.approx(per_epoch.tolist(), rel=1e-6)
    assert (tmp_path / "ledger.csv").exists()


def test_lightning_columns_reach_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("lightning.pytorch")
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    offline_wandb(monkeypatch, tmp_path)
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="inertia-tests")
    _, callback, _ = lightning_run(
        tmp_path, "32-true", clip=None, loggers=[logger], columns=["loss", "kinetic"]
    )
    history = [h for h in finished_history(wandb) if "inertia/loss" in h]
    led = callback.monitor.ledger
    assert [h["trainer/global_step"] for h in history] == list(range(STEPS))
    assert [h["inertia/loss"] for h in history] == pytest.approx(led["loss"].tolist(), rel=1e-6)
    assert [h["inertia/kinetic"] for h in history] == pytest.approx(led["kinetic"].tolist())
    assert not any("inertia/noise_trace" in h for h in history)  # columns=


def one_epoch_trainer(lightning, callback):
    """A Lightning Trainer for one epoch on the CPU with `callback` and nothing else: no
    logger, checkpoints, progress bar or model summary."""
    return lightning.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )


def test_lightning_without_accumulation_books_one_row_per_batch(tmp_path):
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

    callback = InertiaCallback(by="module")  # the callback names the trained module's modules
    trainer = one_epoch_trainer(lightning, callback)
    trainer.fit(Tiny(), torch.utils.data.DataLoader(regression_data(), batch_size=BATCH))
    led = callback.monitor.ledger
    assert len(led["step"]) == len(losses) == trainer.global_step
    torch.testing.assert_close(led["loss"], torch.tensor(losses, dtype=F64), rtol=1e-6, atol=0)
    assert float(led["dissipated"][-1]) > 0
    torch.testing.assert_close(led["kinetic/lin"], led["kinetic"], rtol=1e-12, atol=0)


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`:UserWarning")
def test_lightning_a_training_step_returning_none_books_a_flagged_row_and_says_why(tmp_path):
    """Lightning's way to skip a batch: it still steps the optimizer, with no backward. The
    row is flagged with a NaN loss, and the warning says that a skipped batch is such a step
    (it needs no call to `monitor.observe`, which a Lightning user cannot make)."""
    lightning = pytest.importorskip("lightning.pytorch")
    from inertia.integrations.lightning import InertiaCallback

    class Skips(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def training_step(self, batch, index):
            if index in (1, 2):
                return None
            x, y = batch
            return ((self.lin(x) - y) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    callback = InertiaCallback()
    trainer = one_epoch_trainer(lightning, callback)
    data = torch.utils.data.DataLoader(regression_data(), batch_size=BATCH)
    with pytest.warns(RuntimeWarning, match="no loss was observed for step 1") as caught:
        trainer.fit(Skips(), data)
    (warning,) = [w for w in caught.list if "inertia:" in str(w.message)]
    assert "training_step returning None" in str(warning.message)
    assert "needs no call" in str(warning.message)
    led = callback.monitor.ledger
    assert led["flag"].tolist() == [0, 1, 1, 0, 0, 0, 0, 0]
    assert led["loss"][1:3].isnan().all() and not led["loss"][[0, 3]].isnan().any()


def test_callbacks_refuse_per_sample_noise():
    pytest.importorskip("lightning.pytorch")
    from inertia.integrations.lightning import InertiaCallback

    with pytest.raises(ValueError, match="per_sample"):
        InertiaCallback(noise="per_sample")


# Hugging Face -------------------------------------------------------------------------------


class Poison(torch.autograd.Function):
    """The identity, whose backward makes the gradient non-finite (a GradScaler overflow)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


class Tiny(torch.nn.Module):
    """A Hugging Face-style model: returns its loss given labels; the micro-batches numbered in
    `poison` get a non-finite gradient."""

    def __init__(self, record: Record, poison: tuple[int, ...] = ()):
        super().__init__()
        self.net, self.record, self.poison = tiny_net(), record, poison

    def forward(self, x, labels=None):
        out = self.net(x)
        if self.training and len(self.record.losses) in self.poison:
            out = Poison.apply(out)
        loss = torch.nn.functional.mse_loss(out, labels)
        if self.training:
            self.record.add(loss, len(x))
        return {"loss": loss, "logits": out}


class ItemNormalised(Tiny):
    """Normalises its loss over the step's items, as Hugging Face models given
    `num_items_in_batch` do (its `**kwargs` tell the Trainer, which then does not divide the
    loss by gradient_accumulation_steps)."""

    def forward(self, x, labels=None, num_items_in_batch=None, **kwargs):
        out = self.net(x)
        errors = (out - labels).square()
        if self.training:
            self.record.add(errors.mean(), len(x))
        return {"loss": errors.sum() / num_items_in_batch, "logits": out}


class TupleOutput(Tiny):
    """Returns (loss, logits), as models do with return_dict=False."""

    def forward(self, x, labels=None):
        out = super().forward(x, labels)
        return out["loss"], out["logits"]


class Data(torch.utils.data.Dataset):
    def __init__(self, samples: int = SAMPLES):
        self.data = regression_data(samples)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return {"x": x, "labels": y}


def transformers_run(
    tmp_path: Path,
    *,
    clip: float,
    report_to,
    scale: float | None = None,
    model: type[Tiny] = Tiny,
    poison: tuple[int, ...] = (),
    samples: int = SAMPLES,
    batch: int = BATCH,
    epochs: int = EPOCHS,
    by: str | None = None,
):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from inertia.integrations.transformers import InertiaCallback

    record = Record()

    class Recording(transformers.Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            scaler = self.accelerator.scaler  # before the Trainer unscales and clips
            record.grads.append(flat_grad(model, scaler.get_scale() if scaler else 1.0))
            return loss

    net = model(record, poison)
    callback = InertiaCallback(log_dir=tmp_path, noise="microbatch", by=by)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=ACCUMULATE,
        num_train_epochs=epochs,
        max_grad_norm=clip,
        lr_scheduler_type="constant",
        report_to=report_to,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1,
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    trainer = Recording(
        model=net,
        args=args,
        train_dataset=Data(samples),
        callbacks=[callback],
        optimizers=(optimizer, None),
    )
    if scale is not None:  # accelerate makes a GradScaler for fp16 on GPUs only: as if on one
        trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    trainer.train()
    return trainer, callback, record


def logged_losses(trainer) -> tuple[list[int], torch.Tensor]:
    """The steps at which the Trainer logged its training `loss`, and the values."""
    logs = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    return [h["step"] for h in logs], torch.tensor([h["loss"] for h in logs], dtype=F64)


def test_transformers_books_the_logged_loss_and_each_micro_batch_gradient(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    wandb = pytest.importorskip("wandb")

    offline_wandb(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_PROJECT", "inertia-tests")
    # clipping at 0.05 clips every step: the noise must still be that of the raw gradients
    trainer, callback, record = transformers_run(
        tmp_path, clip=0.05, report_to=["tensorboard", "wandb"]
    )
    history = [h for h in finished_history(wandb) if "train/inertia/loss" in h]
    led = callback.monitor.ledger
    assert trainer.state.global_step == STEPS and len(led["step"]) == STEPS
    assert all(h["grad_norm"] > 0.05 for h in trainer.state.log_history if "grad_norm" in h)
    # the loss booked is what the Trainer logs as `loss` for the step (its micro-batches' mean)
    steps, logged_loss = logged_losses(trainer)
    assert steps == list(range(1, STEPS + 1))
    torch.testing.assert_close(led["loss"], logged_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(led["loss"], record.step_losses(), rtol=1e-6, atol=0)
    # the noise is that of each micro-batch's own gradient, before clipping
    noise = record.step_noise()
    assert (noise > 0).all()
    torch.testing.assert_close(led["noise_trace"], noise, rtol=1e-5, atol=0)
    # the callback runs before the reporting callbacks, so its columns reach them through the
    # Trainer's logs (which they name train/inertia/…)
    names = [type(cb).__name__ for cb in trainer.callback_handler.callbacks]
    assert names.index("InertiaCallback") < names.index("TensorBoardCallback")
    logged = tensorboard_scalars(tmp_path / "out")
    assert_ledger_logged(logged, led, "train/", shift=1)
    assert [h["train/global_step"] for h in history] == list(range(1, STEPS + 1))
    assert [h["train/inertia/loss"] for h in history] == pytest.approx(logged_loss.tolist())
    assert [h["train/inertia/noise_trace"] for h in history] == pytest.approx(noise.tolist())


@pytest.mark.parametrize("model", [Tiny, ItemNormalised, TupleOutput])
def test_transformers_books_the_trainers_loss_whatever_its_normalisation(tmp_path, model):
    """36 samples in micro-batches of 8, 2 a step: steps of 16, 16 and 4 samples (one
    micro-batch); the Trainer divides the loss by the step's micro-batches, or the model by
    its items; the loss in a dict or first in a tuple."""
    trainer, callback, record = transformers_run(
        tmp_path, clip=1.0, report_to=[], model=model, samples=36, batch=8, epochs=1
    )
    lengths = [2, 2, 1]
    led = callback.monitor.ledger
    steps, logged_loss = logged_losses(trainer)
    assert steps == [1, 2, 3] and len(led["step"]) == 3
    torch.testing.assert_close(led["loss"], logged_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(led["loss"], record.step_losses(lengths), rtol=1e-6, atol=0)
    noise = record.step_noise(lengths)
    torch.testing.assert_close(led["noise_trace"], noise, rtol=1e-5, atol=0, equal_nan=True)


def test_transformers_under_a_grad_scaler_books_the_unscaled_run(tmp_path):
    """Per-module books too: the callback passes the Trainer's model (by="module")."""
    plain = transformers_run(tmp_path / "plain", clip=0.0, report_to=[], by="module")
    scaled = transformers_run(
        tmp_path / "scaled", clip=0.0, report_to=[], scale=2.0**10, by="module"
    )
    _, callback, record = scaled
    assert callback.monitor._scaler is not None  # accelerate's scaler, passed as scaler=
    led, reference = callback.monitor.ledger, plain[1].monitor.ledger
    assert len(led["step"]) == STEPS and (led["flag"] == 0).all()
    torch.testing.assert_close(led["loss"], record.step_losses(), rtol=1e-6, atol=0)
    torch.testing.assert_close(led["noise_trace"], record.step_noise(), rtol=1e-5, atol=0)
    assert led.keys() == reference.keys()
    for column in reference.keys():  # S = 2¹⁰ scales float32 gradients exactly
        torch.testing.assert_close(
            led[column], reference[column], rtol=1e-6, atol=0, equal_nan=True
        )
    layers = [name for name in led.keys() if name.startswith("kinetic/")]
    assert layers
    torch.testing.assert_close(sum(led[name] for name in layers), led["kinetic"], rtol=1e-9, atol=0)


def test_transformers_flags_a_step_the_grad_scaler_skips(tmp_path):
    """Micro-batch 5 (the second of step 2) overflows: the scaler skips that step, whose row is
    flagged 2 with its own loss; the next step books its own row."""
    _, callback, record = transformers_run(
        tmp_path, clip=1.0, report_to=[], scale=2.0**10, poison=(5,)
    )
    led = callback.monitor.ledger
    assert callback.monitor.step == STEPS - 1
    assert led["flag"].tolist() == [0, 0, 2, 0, 0, 0, 0, 0]
    torch.testing.assert_close(led["loss"], record.step_losses(), rtol=1e-6, atol=0)
    kept = [k for k in range(STEPS) if k != 2]
    torch.testing.assert_close(
        led["noise_trace"][kept], record.step_noise()[kept], rtol=1e-5, atol=0
    )


@pytest.mark.filterwarnings("ignore:inertia. no loss was observed")
def test_transformers_warns_when_the_model_returns_no_loss(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from inertia.integrations.transformers import InertiaCallback

    class NoLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, x, labels=None):
            return {"logits": self.lin(x)}

    def mse(outputs, labels, num_items_in_batch=None):
        return torch.nn.functional.mse_loss(outputs["logits"], labels)

    callback = InertiaCallback(noise="microbatch")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        max_steps=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=NoLoss(),
        args=args,
        train_dataset=Data(),
        callbacks=[callback],
        compute_loss_func=mse,
    )
    with pytest.warns(RuntimeWarning, match="returned no `loss`"):
        trainer.train()
    assert torch.isnan(callback.monitor.ledger["loss"]).all()
