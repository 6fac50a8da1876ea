"""The monitor's sinks for plain loops: every column a row carries reaches CSV, JSONL,
TensorBoard, Weights & Biases (offline run files read back) and MLflow (a file store read back
through `MlflowClient`)."""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import train_quadratic
from inertia import InertiaMonitor, Ledger
from inertia.monitor import MONITOR_COLUMNS, CSVSink, JSONLSink, TensorBoardSink
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
    """The complete records of an offline W&B run file (`run-<id>.wandb`): LevelDB-log records
    of `wandb_internal_pb2.Record` after a 7-byte header; chunks never cross a 32 KiB block.
    The file may be read while it is written: a torn last chunk ends the list."""
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
        if pos + 7 + length > len(data):  # a chunk W&B's service is still writing
            break
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
    # read while W&B's service writes it, the file's every prefix holds a prefix of its records
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    data, torn = run_file.read_bytes(), tmp_path / "torn.wandb"
    records = wandb_records(run_file)
    for cut in range(7, len(data), 7):
        torn.write_bytes(data[:cut])
        read = wandb_records(torn)
        assert read == records[: len(read)]


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


# ------------------------------------------------- ledger files: never mixed, never silently lost


def steps_in(path: Path) -> list[int]:
    """The steps of a CSV or JSONL ledger file, every line whole and parsed."""
    text = path.read_bytes().decode()
    assert text.endswith("\n") or not text
    if path.suffix == ".csv":
        return [int(float(r["step"])) for r in csv.DictReader(io.StringIO(text, newline=""))]
    return [int(json.loads(line)["step"]) for line in text.splitlines()]


def optimizer() -> torch.optim.Optimizer:
    theta = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    return torch.optim.SGD([theta], lr=0.1, momentum=0.9)


class Disk:
    """Fault injection: while `full`, `os.write` to a file under `folder` writes half its bytes
    (a row cut short) and fails with ENOSPC, as a disk filling up does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
        self.full, self.failures = False, 0
        real = os.write

        def write(fd: int, data: bytes) -> int:
            mine = any(os.path.samestat(os.fstat(fd), p.stat()) for p in folder.iterdir())
            if self.full and mine:
                self.failures += 1
                real(fd, bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, data)

        monkeypatch.setattr(os, "write", write)


def messages(caught, part: str) -> list[str]:
    return [str(w.message) for w in caught if part in str(w.message)]


def test_a_fresh_run_into_a_log_dir_with_a_ledger_starts_a_new_file_and_a_resume_continues_it(
    tmp_path,
):
    first = InertiaMonitor(optimizer(), log_dir=tmp_path)
    train_quadratic(first, 5)
    first.detach()
    opt = optimizer()
    second = InertiaMonitor(opt, log_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match=r"holds rows .* new file .*ledger-1\.csv") as caught:
        train_quadratic(second, 4)
    assert len(messages(caught, "new file")) == 1
    saved = second.state_dict()  # the second run's checkpoint at step 4; it goes on to 6
    train_quadratic(second, 2)
    second.detach()
    assert steps_in(tmp_path / "ledger.csv") == [0, 1, 2, 3, 4]
    assert steps_in(tmp_path / "ledger-1.csv") == [0, 1, 2, 3, 4, 5]
    resumed = InertiaMonitor(opt, log_dir=tmp_path)
    resumed.load_state_dict(saved)  # continues the newest file of the series
    train_quadratic(resumed, 3)
    resumed.detach()
    assert steps_in(tmp_path / "ledger.csv") == [0, 1, 2, 3, 4]
    assert steps_in(tmp_path / "ledger-1.csv") == [0, 1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger-1.csv", "ledger.csv"]


@pytest.mark.parametrize("sink", [CSVSink, JSONLSink])
def test_a_half_written_last_line_is_never_glued_to_a_new_runs_rows(tmp_path, sink):
    path = tmp_path / f"ledger.{sink.format}"
    out = sink(path)
    for row in rows(range(3)):
        out.write(row)
    out.close()
    with path.open("ab") as f:
        f.write(b"3,0.5" if sink is CSVSink else b'{"step": 3, "kin')  # the crash, mid-row
    before = path.read_bytes()
    out = sink(path)
    with pytest.warns(RuntimeWarning, match=f"new file .*ledger-1.{sink.format}"):
        for row in rows():
            out.write(row)
    out.close()
    assert path.read_bytes() == before  # the crashed run's file, as it was
    assert steps_in(path.with_name(f"ledger-1.{sink.format}")) == [0, 1, 2, 3]
    assert out.path == path.with_name(f"ledger-1.{sink.format}")


@pytest.mark.parametrize("sink", [CSVSink, JSONLSink])
def test_a_full_disk_is_warned_once_and_the_rows_are_written_when_it_frees(
    tmp_path, monkeypatch, sink
):
    path = tmp_path / f"ledger.{sink.format}"
    disk, out = Disk(monkeypatch, tmp_path), sink(path)
    with pytest.warns(RuntimeWarning, match="could not write .*No space left") as caught:
        for row in rows(range(3)):
            out.write(row)
        disk.full = True
        for row in rows(range(3, 40)):
            out.write(row)
    assert len(messages(caught, "could not write")) == 1 and 1 < disk.failures < 37
    disk.full = False
    for row in rows(range(40, 100)):  # retried, without waiting for close
        out.write(row)
    assert steps_in(path) == list(range(100))  # no row cut short, none twice, none lost
    out.close()


def test_rows_beyond_the_backlog_are_reported_lost_and_close_reports_the_rest(
    tmp_path, monkeypatch
):
    path = tmp_path / "ledger.csv"
    disk, out = Disk(monkeypatch, tmp_path), CSVSink(path, backlog=4)
    out.write({"step": 0, "x": 0.0})
    disk.full = True
    with pytest.warns(RuntimeWarning, match="could not write"):
        for step in range(1, 11):
            out.write({"step": step, "x": 1.0})
    disk.full = False
    with pytest.warns(RuntimeWarning, match=r"6 rows \(steps 1–6\) were lost"):
        out.close()
    assert steps_in(path) == [0, 7, 8, 9, 10]
    out = CSVSink(tmp_path / "other.csv")
    out.write({"step": 0, "x": 0.0})
    disk.full = True
    with pytest.warns(RuntimeWarning) as caught:
        out.write({"step": 1, "x": 0.0})
        out.write({"step": 2, "x": 0.0})
        out.close()  # a last try, then what is lost is said
    assert len(messages(caught, "could not write")) == 1
    assert len(messages(caught, "steps 1–2 could not be written and are lost")) == 1
    assert steps_in(tmp_path / "other.csv") == [0]


def test_on_error_raise_raises_the_failed_write(tmp_path, monkeypatch):
    disk = Disk(monkeypatch, tmp_path)
    out = JSONLSink(tmp_path / "ledger.jsonl", on_error="raise")
    out.write({"step": 0, "x": 0.0})
    disk.full = True
    with pytest.raises(OSError, match="No space"):
        out.write({"step": 1, "x": 0.0})
    disk.full = False
    out.write({"step": 2, "x": 0.0})
    out.close()
    assert steps_in(tmp_path / "ledger.jsonl") == [0, 1, 2]  # the failed row waited


def test_a_monitor_on_a_full_disk_keeps_its_sink_and_training_goes_on(tmp_path, monkeypatch):
    disk = Disk(monkeypatch, tmp_path)
    monitor = InertiaMonitor(optimizer(), log_dir=tmp_path)
    train_quadratic(monitor, 2)
    disk.full = True
    with pytest.warns(RuntimeWarning, match="could not write") as caught:
        train_quadratic(monitor, 10)
    assert len(messages(caught, "inertia")) == 1 and len(monitor.sinks) == 1
    disk.full = False
    train_quadratic(monitor, 3)
    monitor.detach()
    assert steps_in(tmp_path / "ledger.csv") == list(range(15))


def test_a_deleted_log_dir_is_noticed_and_the_rows_go_on_in_a_new_file(tmp_path):
    log_dir = tmp_path / "run"
    monitor = InertiaMonitor(optimizer(), log_dir=log_dir, sinks=[JSONLSink(log_dir / "l.jsonl")])
    train_quadratic(monitor, 3)
    shutil.rmtree(log_dir)
    with pytest.warns(RuntimeWarning, match="was deleted or replaced; rows from step 3") as caught:
        train_quadratic(monitor, 3)
    assert len(messages(caught, "deleted")) == 2  # one per file
    monitor.detach()
    assert steps_in(log_dir / "ledger.csv") == steps_in(log_dir / "l.jsonl") == [3, 4, 5]
    header = (log_dir / "ledger.csv").read_text().splitlines()[0]
    assert header.split(",") == list(MONITOR_COLUMNS)


def written(path: Path, sink, steps) -> list[bytes]:
    """The lines `sink` writes for `rows(steps)` (a CSV header first)."""
    out = sink(path)
    for row in rows(steps):
        out.write(row)
    out.close()
    return path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("sink", [CSVSink, JSONLSink])
def test_resume_keeps_every_parseable_row_and_moves_the_others_aside(tmp_path, sink):
    path = tmp_path / f"ledger.{sink.format}"
    lines = written(tmp_path / "whole", sink, [0, 1, 2, 7, 9])
    cut = {CSVSink: b"3,0.5", JSONLSink: b'{"step": 3, "kin'}[sink]  # a crash mid-row
    bad = [b"\xff\xfe not UTF-8\n", cut + lines[-2], b"garbage\n"]  # ... glued to a row
    path.write_bytes(b"".join(lines[:-2] + bad + lines[-2:]))
    out = sink(path)
    with pytest.warns(RuntimeWarning, match=r"3 lines that are not its rows \(line \d+: "):
        out.truncate(8)  # rows 0, 1, 2, 7 are kept; 9 is booked again
    out.write(next(rows([8])))
    out.close()
    assert steps_in(path) == [0, 1, 2, 7, 8]
    assert path.with_name(path.name + ".rejected").read_bytes() == b"".join(bad)


def test_a_resumed_csv_keeps_one_line_ending(tmp_path):
    path = tmp_path / "ledger.csv"
    lines = written(tmp_path / "whole", CSVSink, range(4))
    path.write_bytes(b"".join(line.replace(b"\r\n", b"\n") for line in lines))  # LF, as an editor
    out = CSVSink(path)
    out.truncate(2)
    for row in rows(range(2, 4)):
        out.write(row)
    out.close()
    assert path.read_bytes() == b"".join(lines)  # every line ends "\r\n", as the writer ends them


def test_a_non_utf8_jsonl_resumes_with_a_warning_and_the_sink_goes_on(tmp_path):
    path = tmp_path / "ledger.jsonl"
    opt = optimizer()
    monitor = InertiaMonitor(opt, sinks=[JSONLSink(path)])
    train_quadratic(monitor, 3)
    saved = monitor.state_dict()
    train_quadratic(monitor, 2)
    monitor.detach()
    text = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([text[0], "é".encode("latin-1") + b"\n", *text[1:]]))
    resumed = InertiaMonitor(opt, sinks=[JSONLSink(path)])
    with pytest.warns(RuntimeWarning, match=r"1 lines that are not its rows \(line 2: 'utf-8'"):
        resumed.load_state_dict(saved)
    train_quadratic(resumed, 2)
    resumed.detach()
    assert steps_in(path) == [0, 1, 2, 3, 4]


def test_rows_an_earlier_run_booked_again_are_replaced_by_the_later_ones(tmp_path):
    path = tmp_path / "ledger.csv"
    lines = written(tmp_path / "whole", CSVSink, range(5))
    path.write_bytes(b"".join(lines + lines[1:4]))  # steps 0–4 then 0–2: an old appended run
    out = CSVSink(path)
    with pytest.warns(RuntimeWarning, match="3 rows an earlier run booked again moved to"):
        out.truncate(3)
    out.close()
    assert steps_in(path) == [0, 1, 2]


def test_a_resumed_file_with_other_columns_is_left_as_it_is(tmp_path):
    path = tmp_path / "ledger.csv"
    written(path, CSVSink, range(4))
    before = path.read_bytes()
    out = CSVSink(path)
    out.truncate(4)
    with pytest.warns(RuntimeWarning, match="holds other columns; rows from step 4 on go to"):
        out.write({"step": 4, "other": 1.0})
    out.close()
    assert path.read_bytes() == before
    assert steps_in(tmp_path / "ledger-1.csv") == [4]


def test_a_path_under_a_file_is_a_value_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="^path must be a file in a folder"):
        CSVSink(tmp_path / "file" / "ledger.csv")


def test_a_deleted_tensorboard_folder_is_noticed_and_scalars_go_on(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = tmp_path / "tb"
    sink = TensorBoardSink(log_dir=folder)
    for row in rows(range(2)):
        sink.write(row)
    sink.writer.flush()
    shutil.rmtree(folder)
    with pytest.warns(RuntimeWarning, match="tb was deleted; scalars from step 2 on go to a new"):
        for row in rows(range(2, 4)):
            sink.write(row)
    sink.close()
    events = EventAccumulator(str(folder))
    events.Reload()
    assert [e.step for e in events.Scalars("inertia/kinetic")] == [2, 3]
