"""The sink protocol and the file sinks (CSV, JSONL): rows formatted by the ledger's one writer
(`inertia.ledger_io`), appended every `flush_every` rows, never mixed with another run's rows,
kept through failed writes and continued on a resume (`FileSink`)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import warnings
from bisect import bisect_left
from collections import deque
from contextlib import suppress
from pathlib import Path
from typing import IO

from .. import _checks
from ..ledger_io import Format, RowWriter


class Sink:
    """Receives each ledger row (a dict of plain numbers) in order."""

    def write(self, row: dict[str, float]) -> None:
        raise NotImplementedError

    def truncate(self, step: int) -> None:
        """Forget rows from `step` on (a run resumes there); the default keeps nothing to forget."""

    def close(self) -> None:
        """Flush and release; the default has nothing to release."""


class FileSink(Sink):
    """Rows appended to a file in `format`, the time column `step` first; `sink.path` is the
    file being written.

    A run appends only to a file it started or resumes. `path` missing or empty: it is this
    run's file. `path` holding rows: a resume (`truncate(step)`, called by
    `InertiaMonitor.load_state_dict`) continues the newest non-empty file of the series `path`,
    `<stem>-1<suffix>`, `<stem>-2<suffix>`, …; without one, the first row goes to the next file
    of the series (`ledger-1.csv` beside `ledger.csv`), with a RuntimeWarning naming it. The
    same happens when a resumed file's columns are not the new rows'.

    `truncate(step)` rewrites the file atomically with its complete rows before `step`, each
    line ended as the writer ends them ("\\r\\n" in CSV, "\\n" in JSONL). A last line cut short
    by a crash is dropped; lines that are not rows of the file (not UTF-8, a cell that is not a
    number, other columns) and rows of an earlier run that a restart booked again (a step not
    after the one before: the later row stays) are moved to `<name>.rejected`, with a warning;
    every other row is kept.

    A write that fails (OSError: a full disk, a folder gone) is one RuntimeWarning; the rows
    wait in memory (the last `backlog`; older ones are reported lost) and are written once it
    works again, retried after 1, 2, 4, … up to 64 rows and on `close`; a row cut short by the
    failure is cut off. A file deleted or replaced while written (its folder removed) is
    noticed at the next write: a warning, and the rows go on in a new file (the folder made
    again). With on_error="raise" the OSError is raised instead.
    """

    format: Format

    def __init__(
        self,
        path: str | Path,
        flush_every: int = 1,
        *,
        backlog: int = 10_000,
        on_error: str = "warn",
    ) -> None:
        self.path = self._base = Path(path)
        self.flush_every = _checks.integer("flush_every", flush_every, low=1)
        self.backlog = max(_checks.integer("backlog", backlog, low=1), self.flush_every)
        if on_error not in ("warn", "raise"):
            raise _checks.fail("on_error", "'warn' or 'raise'", on_error)
        self.on_error = on_error
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise _checks.fail("path", "a file in a folder (not under a file)", str(path)) from None
        self._end = b"\r\n" if self.format == "csv" else b"\n"
        self._fd: int | None = None
        self._id: tuple[int, int] | None = None  # (device, inode) of the file chosen
        self._size = 0  # bytes of its complete rows
        self._columns: list[str] | None = None  # its rows' columns (None: no rows yet)
        self._why = ""  # why the next file is a new one
        self._pending: deque[tuple[float, bytes]] = deque()  # (step, line) not yet written
        self._lost = [0, math.nan, math.nan]  # rows dropped while failing: count, first, last
        self._failing, self._tries, self._wait = False, 0, 0
        self._text = io.StringIO()
        self._rows: RowWriter | None = None
        self._wanted: list[str] = []  # the columns of this run's rows
        self._header = b""
        if _size(self.path) == 0:  # missing or empty: this run's file
            self._open()

    def write(self, row: dict[str, float]) -> None:
        if self._rows is None:
            self._rows = RowWriter(self._text, self.format, header=False)
            self._wanted = list(row)
            self._header = _csv_header(row) if self.format == "csv" else b""
        self._rows.write(row)
        line = self._text.getvalue().encode()
        self._text.seek(0)
        self._text.truncate()
        if len(self._pending) >= self.backlog:
            lost = self._pending.popleft()[0]
            count, first, _ = self._lost
            self._lost = [count + 1, lost if count == 0 else first, lost]
        self._pending.append((float(row["step"]), line))
        if len(self._pending) >= self.flush_every:
            self._drain()

    def close(self) -> None:
        try:
            if self._pending:
                self._drain(now=True)
            if self._pending:
                first, last = self._pending[0][0], self._pending[-1][0]
                self._pending.clear()
                self._warn(f"steps {first:g}–{last:g} could not be written and are lost")
        finally:
            self._close_fd()

    def truncate(self, step: int) -> None:
        """Continue the file with its rows before `step` (see the class)."""
        self._pending = deque(p for p in self._pending if p[0] < step)
        self._close_fd()
        path = self.path if self._id else self._series(max(self._written(), default=0))
        self.path, self._why = path, ""
        if _size(path) == 0:  # nothing to continue
            self._id = None
            return
        try:
            self._id, self._size, self._columns = self._rewrite(path, step)
        except OSError as error:
            if self.on_error == "raise":
                raise
            self._id, self._why = None, f"{path} could not be resumed ({error})"

    def _drain(self, *, now: bool = False) -> None:
        """Append the rows waiting; a failure is warned about once until writes work again."""
        if self._failing and not now:
            self._wait -= 1
            if self._wait > 0:
                return
        data = b"".join(line for _, line in self._pending)
        try:
            fd = self._ready()
            if self._size == 0:
                data = self._header + data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) or _stalled() :]
        except OSError as error:
            if self._fd is not None:
                with suppress(OSError):
                    os.ftruncate(self._fd, self._size)  # no row cut short is left behind
            self._close_fd()
            if self.on_error == "raise":
                raise
            self._tries += 1
            self._wait = min(2 ** (self._tries - 1), 64)
            if not self._failing:
                self._failing = True
                self._warn(
                    f"could not write ({error}); the rows wait in memory (the last "
                    f"{self.backlog}) and are written once it works again"
                )
            return
        self._size += len(data)
        self._pending.clear()
        self._failing, self._tries = False, 0
        count, first, last = self._lost
        if count:
            self._lost = [0, math.nan, math.nan]
            self._warn(f"writes again; {count} rows (steps {first:g}–{last:g}) were lost")

    def _ready(self) -> int:
        """The descriptor to append to: the file chosen, or a new one (warned about) if none is
        chosen yet, it was deleted or replaced, or it holds other columns."""
        if self._id is not None:
            status = _stat(self.path)
            if status is None or (status.st_dev, status.st_ino) != self._id:
                self._why = f"{self.path} was deleted or replaced"
            elif self._columns not in (None, self._wanted):
                self._why = f"{self.path} holds other columns"
            if self._why:
                self._close_fd()
                self._id = None
        if self._id is None:
            path = self._series(max(self._written(), default=-1) + 1)  # the next free one
            self.path, self._size, self._columns = path, 0, None
            self._open()
            if path != self._base or self._why:
                why = self._why or f"{self._base} holds rows (load_state_dict continues them)"
                warnings.warn(
                    f"inertia: {why}; rows from step {self._pending[0][0]:g} on go to a new "
                    f"file {path}",
                    RuntimeWarning,
                    stacklevel=4,
                )
            self._why = ""
        if self._fd is None:
            self._open()
        assert self._fd is not None
        return self._fd

    def _open(self) -> None:
        """Open `path` to append, cut to its `_size` bytes of complete rows."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
        fd = os.open(self.path, flags, 0o666)
        try:
            status = os.fstat(fd)
            if status.st_size > self._size:
                os.ftruncate(fd, self._size)  # a row cut short by a failed write
        except OSError:
            os.close(fd)
            raise
        self._fd, self._id = fd, (status.st_dev, status.st_ino)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with suppress(OSError):
                os.close(fd)

    def _warn(self, what: str) -> None:
        message = f"inertia: {type(self).__name__} {self.path}: {what}"
        warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _series(self, n: int) -> Path:
        base = self._base
        return base if n == 0 else base.with_name(f"{base.stem}-{n}{base.suffix}")

    def _written(self) -> list[int]:
        """The numbers of the series' files that hold something (0: `path` itself)."""
        base = self._base
        numbered = re.compile(re.escape(base.stem) + r"-([1-9]\d*)" + re.escape(base.suffix))
        found = [0] if _size(base) else []
        with suppress(OSError):
            for entry in base.parent.iterdir():
                match = numbered.fullmatch(entry.name)
                if match and _size(entry):
                    found.append(int(match[1]))
        return found

    def _rewrite(self, path: Path, step: float) -> tuple[tuple[int, int], int, list[str] | None]:
        """Rewrite `path` with its rows before `step` (see the class): its identity, size and
        columns (None: no rows)."""
        tmp, side = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".rejected")
        try:
            with path.open("rb") as src, tmp.open("w+b") as out, _Aside(side) as aside:
                columns = self._keep(src, out, aside, step)
                size = out.tell()
            tmp.replace(path)
        except BaseException:
            with suppress(OSError):
                tmp.unlink()  # the file stays as it was
            raise
        if aside.bad or aside.again:
            what = [f"{aside.bad} lines that are not its rows ({aside.first})"] if aside.bad else []
            what += [f"{aside.again} rows an earlier run booked again"] if aside.again else []
            self._warn(f"resuming at step {step:g}: {' and '.join(what)} moved to {side}")
        status = os.stat(path)
        return (status.st_dev, status.st_ino), size, columns

    def _keep(self, src: IO[bytes], out: IO[bytes], aside: _Aside, step: float) -> list[str] | None:
        """Copy the rows of `src` before `step` to `out`, the others to `aside`: the columns of
        the rows kept (None: none kept, and `out` is empty)."""
        steps: list[float] = []
        ends: list[int] = []
        columns: list[str] | None = None
        start = 0  # where the rows begin, after a CSV header
        for number, raw in enumerate(src, start=1):
            if not raw.endswith(b"\n"):
                break  # the last line, cut short by a crash
            line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            try:
                time_, cells = self._parse(line, columns, number)
            except (ValueError, csv.Error) as error:
                aside.move(raw, f"line {number}: {error}")
                continue
            if columns is None:
                columns = cells
                if self.format == "csv":
                    out.write(line + self._end)
                    start = out.tell()
                    continue
            if time_ >= step:
                continue
            i = bisect_left(steps, time_)
            if i < len(steps):  # booked again after a restart: the later rows stay
                out.seek(ends[i - 1] if i else start)
                aside.move(out.read(), again=len(steps) - i)
                out.seek(ends[i - 1] if i else start)
                out.truncate()
                del steps[i:], ends[i:]
            out.write(line + self._end)
            steps.append(time_)
            ends.append(out.tell())
        if not steps:  # a header alone: the next rows write theirs
            out.seek(0)
            out.truncate()
        return columns if steps else None

    def _parse(
        self, line: bytes, columns: list[str] | None, number: int
    ) -> tuple[float, list[str]]:
        """The step and columns of a line of the file (`columns`: the file's, None before its
        first row or CSV header); ValueError (or csv.Error) if it is not a row."""
        text = line.decode()
        if self.format == "csv":
            cells = text.split(",") if '"' not in text else next(csv.reader([text]))
            if columns is None:
                if number > 1 or not cells or not all(cells):
                    raise ValueError("no CSV header on line 1")
                return math.nan, cells
            if len(cells) != len(columns):
                raise ValueError(f"{len(cells)} values for {len(columns)} columns")
            values = [float(cell) for cell in cells]  # every cell a number
            return _finite(values[0]), columns
        row = json.loads(text)
        if not isinstance(row, dict) or "step" not in row:
            raise ValueError("not a JSON object with a step")
        if columns is not None and list(row) != columns:
            raise ValueError(f"columns {list(row)}, not {columns}")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in row.values()):
            raise ValueError("a value that is not a number")
        return _finite(float(row["step"])), list(row)


def _size(path: Path) -> int:
    """The size of `path`, 0 if it is missing (or cannot be read)."""
    return 0 if (status := _stat(path)) is None else status.st_size


class _Aside:
    """Where the lines a resume does not keep go: appended to `path`, opened at the first."""

    def __init__(self, path: Path) -> None:
        self.path, self.bad, self.again, self.first = path, 0, 0, ""
        self.file: IO[bytes] | None = None

    def __enter__(self) -> _Aside:
        return self

    def __exit__(self, *error: object) -> None:
        if self.file is not None:
            self.file.close()

    def move(self, data: bytes, why: str = "", again: int = 0) -> None:
        """`data`: a line that is not a row (`why`), or `again` rows booked again."""
        self.file = self.file or self.path.open("ab")
        self.file.write(data)
        self.bad, self.again = self.bad + (not again), self.again + again
        self.first = self.first or why


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _finite(step: float) -> float:
    if not math.isfinite(step):
        raise ValueError(f"step {step}")
    return step


def _stalled() -> int:
    raise OSError("the write made no progress")


def _csv_header(row: dict[str, float]) -> bytes:
    """The header line RowWriter writes before `row`."""
    whole, alone = io.StringIO(), io.StringIO()
    RowWriter(whole, "csv").write(row)
    RowWriter(alone, "csv", header=False).write(row)
    return whole.getvalue()[: -len(alone.getvalue())].encode()


class CSVSink(FileSink):
    """One CSV line per row, header first (not repeated when continuing a resumed file)."""

    format = "csv"


class JSONLSink(FileSink):
    """One JSON object per line."""

    format = "jsonl"
