"""Where ledger rows go as training runs: CSV, JSONL, TensorBoard, Weights & Biases and MLflow
(memory is the monitor's own).

Every sink passes on whatever columns a row has, the monitor's and any others (per-layer
`kinetic/<segment>`, `loss`, `regime`, …); within a run all rows have the same columns (a CSV
file's header is that of its first row).

File sinks (`file_sinks`, re-exported here) format rows through the ledger's one writer
(`inertia.ledger_io`) and append them every `flush_every` rows (default 1: every complete row is
on disk when the process dies; with N, at most the last N − 1 rows are lost). A file is never
mixed: a new run starts a new file next to one that holds rows, a resume (`truncate(step)`)
continues it without a gap or a duplicate step, and a write that fails is retried (see
`FileSink`). The services' histories (W&B, MLflow) are append-only: after a resume their sinks
skip the rows at steps they have already sent, and the service keeps the values it received
first.

The frameworks are imported when a sink is created, not before, so they are optional.
"""

from __future__ import annotations

import importlib
import math
import os
import posixpath
import re
import time
import warnings
from contextlib import suppress
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from .. import _checks
from .file_sinks import CSVSink, FileSink, JSONLSink, Sink

__all__ = [
    "CSVSink",
    "FileSink",
    "JSONLSink",
    "MLflowSink",
    "Sink",
    "TensorBoardSink",
    "WandbSink",
    "mlflow_name",
]


class _ScalarWriter(Protocol):
    def add_scalar(self, tag: str, scalar_value: float, global_step: float) -> object: ...

    def flush(self) -> object: ...


class TensorBoardSink(Sink):
    """Scalars `inertia/<column>` against the optimizer step, through a `SummaryWriter`
    (given, or created on `log_dir`; needs the tensorboard package). When the folder of a
    writer it created is deleted, the next row notices: a RuntimeWarning, and a new writer
    on the folder made again; `close` closes such a writer (a given one is flushed)."""

    def __init__(
        self, writer: _ScalarWriter | None = None, *, log_dir: str | Path | None = None
    ) -> None:
        self._folder: str | None = None  # the folder of a writer this sink created
        if writer is None:
            writer = self._writer(None if log_dir is None else str(log_dir))
        self.writer = writer

    def _writer(self, folder: str | None) -> _ScalarWriter:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=folder)
        self._folder = writer.log_dir
        return writer

    def write(self, row: dict[str, float]) -> None:
        if self._folder is not None and not os.path.isdir(self._folder):
            warnings.warn(
                f"inertia: TensorBoardSink: {self._folder} was deleted; scalars from step "
                f"{row['step']} on go to a new event file in it",
                RuntimeWarning,
                stacklevel=2,
            )
            with suppress(Exception):  # its writer thread failed on the missing file
                self.writer.close()  # type: ignore[attr-defined]
            self.writer = self._writer(self._folder)
        for name, value in row.items():
            if name != "step":
                self.writer.add_scalar(f"inertia/{name}", value, row["step"])

    def close(self) -> None:
        try:
            if self._folder is None:
                self.writer.flush()
            else:
                self.writer.close()  # type: ignore[attr-defined]
        except OSError as error:  # the folder deleted since the last row
            warnings.warn(
                f"inertia: TensorBoardSink could not flush ({error})", RuntimeWarning, stacklevel=2
            )


def _framework(module: str, sink: str) -> ModuleType:
    """`module`, imported now; a ModuleNotFoundError saying what to install if it is missing."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name not in (None, module.split(".")[0], module):
            raise  # the framework is there, but something it needs is not
        package = module.split(".")[0]
        raise ModuleNotFoundError(
            f"{sink} needs the {package} package: pip install {package}", name=package
        ) from err


class _AppendOnly(Sink):
    """A service whose history cannot be rewound: rows at steps already sent are skipped
    (after `truncate(step)` on a resume they are booked again; the service keeps the first)."""

    def __init__(self) -> None:
        self._last_step: int | None = None

    def write(self, row: dict[str, float]) -> None:
        step = int(row["step"])
        if self._last_step is not None and step <= self._last_step:
            return
        self._send(step, {name: value for name, value in row.items() if name != "step"})
        self._last_step = step

    def _send(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError


class _WandbRun(Protocol):
    def log(self, data: dict[str, Any], step: int | None = None) -> None: ...

    def finish(self) -> None: ...


class WandbSink(_AppendOnly):
    """Each row's columns (but `step`) as `<prefix><column>` at `step=row["step"]` in a
    Weights & Biases run: `run` if given (left open on `close`), else `wandb.init(**init_kwargs)`
    (finished on `close`). Values go as they are: W&B records NaN and ±inf and its charts leave
    them out. Needs the wandb package; offline: `WANDB_MODE=offline` or `mode="offline"`.
    """

    def __init__(
        self, run: _WandbRun | None = None, *, prefix: str = "inertia/", **init_kwargs: Any
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self._owned = run is None
        self.run: _WandbRun = (
            _framework("wandb", "WandbSink").init(**init_kwargs) if run is None else run
        )

    def _send(self, step: int, values: dict[str, float]) -> None:
        self.run.log({self.prefix + name: _number(v) for name, v in values.items()}, step=step)

    def close(self) -> None:
        if self._owned:
            self.run.finish()
            self._owned = False


_MLFLOW_UNSAFE = re.compile(r"[^\w\-. /]")
_MLFLOW_KEY_LENGTH = 250


def mlflow_name(prefix: str, column: str) -> str:
    """The MLflow metric name of a column: `prefix` + the column with "/" turned into "." (so
    `kinetic/<segment>` does not turn MLflow's file store's `kinetic` into a folder), characters
    MLflow refuses (anything but letters, digits, _ - . space /) as "_", at most 250 long."""
    return _MLFLOW_UNSAFE.sub("_", prefix + column.replace("/", "."))[:_MLFLOW_KEY_LENGTH]


class MLflowSink(_AppendOnly):
    """Each row's finite values (but `step`) as metrics `mlflow_name(prefix, column)` at
    `step=row["step"]`, one `log_batch` per row through an `MlflowClient(tracking_uri)` (None:
    MLflow's own default, e.g. `MLFLOW_TRACKING_URI`). The run: `run_id` if given, else the
    active run (`mlflow.start_run()`) when `tracking_uri` is None, else a new run in
    `experiment_name` (created if needed; MLflow's default experiment if None) named
    `run_name`, which `close` ends. NaN and ±inf are not sent: MLflow's SQL store would turn
    ±inf into ±1.8e308; the row's `flag` (1: a non-finite loss) records a blow-up.
    Needs the mlflow package (or mlflow-skinny).
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        prefix: str = "inertia/",
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
    ) -> None:
        super().__init__()
        name = posixpath.normpath(prefix + "x")  # as MLflow checks a name
        if name != prefix + "x" or name.startswith(("/", "..")):
            raise _checks.fail("prefix", "a relative name prefix without . or .. parts", prefix)
        mlflow = _framework("mlflow", "MLflowSink")
        self._metric = _framework("mlflow.entities", "MLflowSink").Metric
        self.prefix = prefix
        self.client = _framework("mlflow.tracking", "MLflowSink").MlflowClient(tracking_uri)
        active = mlflow.active_run() if run_id is None and tracking_uri is None else None
        self._owned = run_id is None and active is None
        if run_id is None:
            run_id = (
                active.info.run_id
                if active is not None
                else self._new_run(experiment_name, run_name)
            )
        self.run_id: str = run_id
        self._names: dict[str, str] = {}

    def _new_run(self, experiment_name: str | None, run_name: str | None) -> str:
        experiment_id = "0"
        if experiment_name is not None:
            found = self.client.get_experiment_by_name(experiment_name)
            experiment_id = (
                found.experiment_id
                if found is not None
                else self.client.create_experiment(experiment_name)
            )
        return str(self.client.create_run(experiment_id, run_name=run_name).info.run_id)

    def _send(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = []
        for column, value in values.items():
            number = float(value)
            if math.isfinite(number):
                if column not in self._names:
                    self._names[column] = mlflow_name(self.prefix, column)
                metrics.append(self._metric(self._names[column], number, now, step))
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 a batch
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def close(self) -> None:
        if self._owned:
            self.client.set_terminated(self.run_id)
            self._owned = False


def _number(value: float) -> float:
    """A plain Python number (an int stays an int; a 0-d tensor becomes a float)."""
    return value if isinstance(value, int | float) else float(value)
