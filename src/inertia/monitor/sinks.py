"""Where ledger rows go as training runs: CSV, JSONL, TensorBoard (memory is the monitor's own).

File sinks append and flush every `flush_every` rows (default 1: every complete row is on disk
when the process dies; with N, at most the last N − 1 rows are lost). When a run resumes from
a checkpoint, `truncate(step)` drops the rows booked after it and any half-written last line,
so the file continues without a gap or a duplicate step.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .. import _checks
from ..energy import csv_cells


class Sink:
    """Receives each ledger row (a dict of plain numbers) in order."""

    def write(self, row: dict) -> None:
        raise NotImplementedError

    def truncate(self, step: int) -> None:
        """Forget rows from `step` on (a run resumes there); the default keeps nothing to forget."""

    def close(self) -> None:
        """Flush and release; the default has nothing to release."""


class _FileSink(Sink):
    def __init__(self, path: str | Path, flush_every: int = 1):
        self.path = Path(path)
        self.flush_every = _checks.integer("flush_every", flush_every, low=1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._resuming = self.path.exists() and self.path.stat().st_size > 0
        self._file = self.path.open("a", newline="")
        self._unflushed = 0

    def _written(self) -> None:
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self._file.flush()
            self._unflushed = 0

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def _step_of(self, line: str) -> float:
        raise NotImplementedError

    def truncate(self, step: int) -> None:
        """Rewrite the file with its complete rows before `step` (atomically), then append."""
        self._file.close()
        kept = []
        if self.path.exists():
            text = self.path.read_text()
            lines = text.splitlines(keepends=True)
            for i, line in enumerate(lines):
                if not line.endswith("\n"):
                    break  # a row cut short by a crash
                if i == 0 and isinstance(self, CSVSink):
                    kept.append(line)  # the header
                    continue
                try:
                    if self._step_of(line) < step:
                        kept.append(line)
                except (ValueError, KeyError, IndexError):
                    break
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(self.path)
        self._resuming = bool(kept)
        self._file = self.path.open("a", newline="")
        self._unflushed = 0


class CSVSink(_FileSink):
    """One CSV line per row, header first (not repeated when appending to a resumed file)."""

    def __init__(self, path: str | Path, flush_every: int = 1):
        super().__init__(path, flush_every)
        self._writer: csv.DictWriter | None = None

    def _step_of(self, line: str) -> float:
        return float(line.split(",", 1)[0])

    def truncate(self, step: int) -> None:
        super().truncate(step)
        self._writer = None

    def write(self, row: dict) -> None:
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=list(row))
            if not self._resuming:
                self._writer.writeheader()
        self._writer.writerow(csv_cells(row))
        self._written()


class JSONLSink(_FileSink):
    """One JSON object per line."""

    def _step_of(self, line: str) -> float:
        return float(json.loads(line)["step"])

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._written()


class TensorBoardSink(Sink):
    """Scalars `inertia/<column>` against the optimizer step, through a `SummaryWriter`
    (given, or created on `log_dir`; needs the tensorboard package)."""

    def __init__(self, writer=None, *, log_dir: str | Path | None = None):
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=None if log_dir is None else str(log_dir))
        self.writer = writer

    def write(self, row: dict) -> None:
        for name, value in row.items():
            if name != "step":
                self.writer.add_scalar(f"inertia/{name}", value, row["step"])

    def close(self) -> None:
        self.writer.flush()
