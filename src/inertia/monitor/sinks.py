"""Where ledger rows go as training runs: CSV, JSONL, TensorBoard (memory is the monitor's own).

File sinks append through the ledger's one writer (`inertia.ledger_io`) and flush every
`flush_every` rows (default 1: every complete row is on disk when the process dies; with N, at
most the last N − 1 rows are lost). When a run resumes from a checkpoint, `truncate(step)` drops
the rows booked after it and any half-written last line, so the file continues without a gap
or a duplicate step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .. import _checks
from ..ledger_io import Format, RowWriter, line_time


class Sink:
    """Receives each ledger row (a dict of plain numbers) in order."""

    def write(self, row: dict[str, float]) -> None:
        raise NotImplementedError

    def truncate(self, step: int) -> None:
        """Forget rows from `step` on (a run resumes there); the default keeps nothing to forget."""

    def close(self) -> None:
        """Flush and release; the default has nothing to release."""


class _FileSink(Sink):
    """Rows appended to a file in `format`, the time column `step` first."""

    format: Format

    def __init__(self, path: str | Path, flush_every: int = 1) -> None:
        self.path = Path(path)
        self.flush_every = _checks.integer("flush_every", flush_every, low=1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open(resuming=self.path.exists() and self.path.stat().st_size > 0)

    def _open(self, *, resuming: bool) -> None:
        self._file = self.path.open("a", newline="")
        self._writer = RowWriter(self._file, self.format, header=not resuming)
        self._unflushed = 0

    def write(self, row: dict[str, float]) -> None:
        self._writer.write(row)
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self._file.flush()
            self._unflushed = 0

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def truncate(self, step: int) -> None:
        """Rewrite the file with its complete rows before `step` (atomically), then append."""
        self._file.close()
        kept = []
        if self.path.exists():
            with self.path.open(newline="") as f:
                lines = f.read().splitlines(keepends=True)
            for i, line in enumerate(lines):
                if not line.endswith("\n"):
                    break  # a row cut short by a crash
                if i == 0 and self.format == "csv":
                    kept.append(line)  # the header
                    continue
                try:
                    if line_time(line, self.format, "step") < step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    break
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            f.write("".join(kept))
        tmp.replace(self.path)
        self._open(resuming=bool(kept))


class CSVSink(_FileSink):
    """One CSV line per row, header first (not repeated when appending to a resumed file)."""

    format = "csv"


class JSONLSink(_FileSink):
    """One JSON object per line."""

    format = "jsonl"


class _ScalarWriter(Protocol):
    def add_scalar(self, tag: str, scalar_value: float, global_step: float) -> object: ...

    def flush(self) -> object: ...


class TensorBoardSink(Sink):
    """Scalars `inertia/<column>` against the optimizer step, through a `SummaryWriter`
    (given, or created on `log_dir`; needs the tensorboard package)."""

    def __init__(
        self, writer: _ScalarWriter | None = None, *, log_dir: str | Path | None = None
    ) -> None:
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=None if log_dir is None else str(log_dir))
        self.writer = writer

    def write(self, row: dict[str, float]) -> None:
        for name, value in row.items():
            if name != "step":
                self.writer.add_scalar(f"inertia/{name}", value, row["step"])

    def close(self) -> None:
        self.writer.flush()
