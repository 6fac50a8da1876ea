"""The monitor's sinks for plain loops: every column a row carries reaches CSV, JSONL,
TensorBoard, Weights & Biases (offline run files read back) and MLflow (a file store read back
through `MlflowClient`)."""

from __future__ import annotations

import json
import math
import struct
import sys
import time
from pathlib import Path

import pytest
import torch

from inertia import InertiaMonitor, Ledger
from inertia.monitor import CSVSink, JSONLSink, TensorBoardSink
from inertia.monitor.sinks import MLflowSink, WandbSink, mlflow_name

NAN, INF = float("nan"), float("inf")


def rows(steps=range(4)):
    """Monitor-like rows with per-layer columns, an int flag, a NaN column and an inf."""
    for k in steps:
        yield {
            "step": k,
            "kinetic": 0.5 * k,
            "kinetic/encoder.0.attn": 0.25 * k,
            "kinetic/encoder.0.mlp": 0.125 * k,
            "potential": INF if k == 3 else 1.0 / (k + 1),
            "noise_trace": NAN,
            "flag": 1 if k == 3 else 0,
        }


@pytest.mark.parametrize("sink", [CSVSink, JSONLSink])
def test_file_sinks_pass_every_column_through(tmp_path, sink):
    path = tmp_path / f"ledger.{sink.format}"
    writer = sink(path)
    for row in rows():
        writer.write(row)
    writer.close()
    text = path.read_text()
    names = (
        text.splitlines()[0].split(",")
        if sink is CSVSink
        else list(json.loads(text.splitlines()[0]))
    )
    assert names == list(next(rows()))


def test_tensorboard_sink_passes_every_column_through():
    class Writer:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def flush(self):
            pass

    writer = Writer()
    sink = TensorBoardSink(writer)
    for row in rows():
        sink.write(row)
    assert ("inertia/kinetic/encoder.0.attn", 0.75, 3) in writer.scalars
    assert len(writer.scalars) == 4 * 6


class FakeRun:
    def __init__(self):
        self.logged, self.finished = [], False

    def log(self, data, step=None):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


def test_wandb_sink_logs_at_the_row_step_skips_steps_sent_and_leaves_a_given_run_open():
    run = FakeRun()
    sink = WandbSink(run, prefix="train/")
    for row in [*rows(range(3)), *rows(range(1, 4))]:  # a resume re-books steps 1 and 2
        sink.write(row)
    sink.truncate(1)
    sink.close()
    assert [step for step, _ in run.logged] == [0, 1, 2, 3]
    data = run.logged[-1][1]
    assert set(data) == {f"train/{name}" for name in next(rows())} - {"train/step"}
    assert data["train/kinetic/encoder.0.mlp"] == 0.375 and data["train/flag"] == 1
    assert not run.finished  # the caller's run


def wandb_records(run_file: Path) -> list:
    """The records of an offline W&B run file (`run-<id>.wandb`): LevelDB-log records of
    `wandb_internal_pb2.Record` after a 7-byte header; chunks never cross a 32 KiB block."""
    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header: padding
            pos += block - pos % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding to the end of the block
            pos += block - pos % block
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def wandb_history(run_dir: Path, timeout: float = 60.0) -> list[dict[str, float]]:
    """The history rows of the one offline run under `run_dir`, once W&B's service has written
    the run's exit record (`finish` returns before the file is complete)."""
    deadline = time.monotonic() + timeout
    while True:
        files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
        records = wandb_records(files[0]) if len(files) == 1 else []
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


def test_wandb_sink_offline_run_files_hold_every_row(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sink = WandbSink(dir=tmp_path, project="inertia-tests", settings={"x_disable_stats": True})
    for row in rows():
        sink.write(row)
    sink.close()
    history = wandb_history(tmp_path)
    assert [h["_step"] for h in history] == [0, 1, 2, 3]
    for h, row in zip(history, rows(), strict=True):
        assert h["inertia/kinetic/encoder.0.attn"] == row["kinetic/encoder.0.attn"]
        assert h["inertia/flag"] == row["flag"]
        assert math.isnan(h["inertia/noise_trace"])  # W&B records NaN and inf as they are
    assert history[3]["inertia/potential"] == INF


def test_mlflow_names_are_what_mlflow_accepts(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path}")  # should a run be made
    assert mlflow_name("inertia/", "kinetic/encoder.0.attn") == "inertia/kinetic.encoder.0.attn"
    assert (
        mlflow_name("inertia/", "noise scale (μ·h²)") == "inertia/noise scale _μ_h²_"
    )  # \w, as MLflow's own check
    assert len(mlflow_name("", "x" * 300)) == 250
    for prefix in ("../up/", "/root/", "a//b/", "a/./"):
        with pytest.raises(ValueError, match="^prefix"):
            MLflowSink(prefix=prefix)


def test_mlflow_sink_file_store_holds_every_finite_value(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow ≥ 3.7 wants it for file://
    uri = f"file://{tmp_path / 'mlruns'}"
    sink = MLflowSink(tracking_uri=uri, experiment_name="inertia", run_name="rows")
    for row in [*rows(range(3)), *rows(range(2, 4))]:  # a resume re-books step 2
        sink.write(row)
    sink.close()
    client = MlflowClient(uri)
    run = client.get_run(sink.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "rows"

    def history(name):
        return [(m.step, m.value) for m in client.get_metric_history(sink.run_id, name)]

    assert history("inertia/kinetic.encoder.0.attn") == [(k, 0.25 * k) for k in range(4)]
    assert history("inertia/kinetic") == [(k, 0.5 * k) for k in range(4)]
    assert history("inertia/potential") == [(k, 1.0 / (k + 1)) for k in range(3)]  # no inf
    assert history("inertia/noise_trace") == []  # NaN is not sent
    assert history("inertia/flag") == [(0, 0), (1, 0), (2, 0), (3, 1)]


def test_mlflow_sink_logs_to_the_active_run_and_leaves_it_open(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path / 'mlruns'}")
    with mlflow.start_run() as active:
        sink = MLflowSink()
        assert sink.run_id == active.info.run_id
        sink.write({"step": 7, "kinetic": 2.0})
        sink.close()
        assert mlflow.active_run() is not None
        status = mlflow.tracking.MlflowClient().get_run(active.info.run_id).info.status
        assert status == "RUNNING"
    history = mlflow.tracking.MlflowClient().get_metric_history(
        active.info.run_id, "inertia/kinetic"
    )
    assert [(m.step, m.value) for m in history] == [(7, 2.0)]


def test_mlflow_sink_books_a_monitored_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file://{tmp_path / 'mlruns'}"
    theta = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = torch.optim.SGD([theta], lr=0.1, momentum=0.9)
    sink = MLflowSink(tracking_uri=uri)
    monitor = InertiaMonitor(opt, sinks=[sink])
    for _ in range(5):
        opt.zero_grad()
        loss = 0.5 * (theta**2).sum()
        loss.backward()
        monitor.observe(loss)
        opt.step()
    monitor.detach()
    ledger: Ledger = monitor.ledger
    history = MlflowClient(uri).get_metric_history(sink.run_id, "inertia/inertia")
    assert [m.value for m in history] == ledger["inertia"].tolist()


@pytest.mark.parametrize(("module", "make"), [("wandb", WandbSink), ("mlflow", MLflowSink)])
def test_a_missing_framework_says_what_to_install(monkeypatch, module, make):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    with pytest.raises(ModuleNotFoundError, match=f"needs the {module} package: pip install"):
        make()
