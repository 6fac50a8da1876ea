"""Ledger rows as text: the one CSV and JSONL writer and reader.

A row is a dict of plain numbers, time first. CSV: a header line, then one line per row, floats
in full precision (`repr`, so reading gives back the same float64), integers as they are, lines
ended by "\\r\\n" (the csv module's default). JSONL: one JSON object per line (NaN and ±inf as
JSON's extensions NaN, Infinity). `Ledger.to_csv`/`to_jsonl`, the monitor's file sinks and
`Ledger.read_csv`/`read_jsonl` all go through here.
"""

from __future__ import annotations

import csv
import itertools
import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal, TextIO

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

__all__ = ["Format", "Row", "RowWriter", "ledger_error", "read_table", "write_rows"]

#: A ledger row: column name ↦ number (an int stays an int on disk, a float is written by repr).
Row = Mapping[str, float]
Format = Literal["csv", "jsonl"]


class RowWriter:
    """Writes rows to an open text file (opened with newline="") in one format.

    CSV takes its columns from the first row and writes the header before it, unless
    `header` is False (a file resumed mid-run already has one).
    """

    def __init__(self, file: TextIO, fmt: Format, *, header: bool = True) -> None:
        self.file, self.format = file, fmt
        self._header = header
        self._csv: csv.DictWriter[str] | None = None

    def write(self, row: Row) -> None:
        """Append one row."""
        if self.format == "jsonl":
            self.file.write(json.dumps(row) + "\n")
            return
        if self._csv is None:
            self._csv = csv.DictWriter(self.file, fieldnames=list(row))
            if self._header:
                self._csv.writeheader()
        self._csv.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})


def write_rows(path: str | Path, rows: Iterable[Row], fmt: Format) -> Path:
    """Write `rows` to a new file at `path` (replacing it) in `fmt`."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = RowWriter(f, fmt)
        for row in rows:
            writer.write(row)
    return path


def ledger_error(path: str | Path, what: str) -> ValueError:
    """The error for a file that is not a readable ledger: names the file and what is wrong."""
    return ValueError(f"ledger {str(path)!r}: {what}")


def read_table(path: str | Path, fmt: Format) -> tuple[list[str], Tensor]:
    """The column names and the float64 table (rows, columns) of a CSV or JSONL file of numbers.

    Streamed: the file is read `CHUNK` lines at a time into one preallocated column-major array
    (its rows counted first), so reading holds the table (8 bytes a value) and one chunk, never a
    Python object per value; each column of the table (`table[:, j]`) is contiguous.

    ValueError (`ledger_error`) for no rows, a repeated column name, a row with other columns
    than the first, or a value that is not a number.
    """
    try:
        lines = _count_lines(path)
        with Path(path).open(newline="") as f:
            names, columns = _csv_table(f, lines) if fmt == "csv" else _jsonl_table(f, lines)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ledger_error(path, f"not a {fmt.upper()} file ({err})") from None
    except _BadRow as bad:
        raise ledger_error(path, f"line {bad.line}: {bad}") from None
    if not columns.shape[1]:
        raise ledger_error(path, "no rows")
    if len(set(names)) < len(names):
        raise ledger_error(path, f"repeated column names in {names}")
    return names, torch.from_numpy(columns).T


#: Lines parsed at a time by `read_table`.
CHUNK = 1 << 15


class _BadRow(ValueError):
    def __init__(self, line: int, what: str) -> None:
        super().__init__(what)
        self.line = line


def _count_lines(path: str | Path) -> int:
    """The number of lines of a file (a last line without its newline counted too)."""
    count, last = 0, b"\n"
    with Path(path).open("rb") as f:
        while block := f.read(1 << 20):
            count, last = count + block.count(b"\n"), block[-1:]
    return count + (last != b"\n")


class _Columns:
    """A column-major float64 table filled a chunk of rows at a time, sized by an upper bound
    on its rows (pages never written are never resident)."""

    def __init__(self, width: int, rows: int) -> None:
        self.data = np.empty((width, max(rows, 0)), dtype=np.float64)
        self.rows = 0

    def add(self, chunk: npt.NDArray[np.float64]) -> None:
        end = self.rows + len(chunk)
        if end > self.data.shape[1]:  # more rows than lines counted (the file grew)
            grown = np.empty((self.data.shape[0], 2 * end), dtype=np.float64)
            grown[:, : self.rows] = self.data[:, : self.rows]
            self.data = grown
        self.data[:, self.rows : end] = chunk.T
        self.rows = end

    def table(self) -> npt.NDArray[np.float64]:
        """(columns, rows), each column contiguous."""
        kept = self.data[:, : self.rows]
        return kept if self.rows == self.data.shape[1] else np.ascontiguousarray(kept)


def _csv_table(f: TextIO, lines: int) -> tuple[list[str], npt.NDArray[np.float64]]:
    names = next(csv.reader([f.readline()]), [])
    table, first = _Columns(len(names), lines - 1), 2
    while chunk := list(itertools.islice(f, CHUNK)):
        table.add(_csv_chunk(chunk, len(names), first))
        first += len(chunk)
    return names, table.table()


def _csv_chunk(lines: list[str], width: int, first: int) -> npt.NDArray[np.float64]:
    """The rows of CSV `lines` (the first is line `first` of the file): numpy's parser, and
    where it refuses a line or skips one, the csv module's, which names the bad line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns of empty input
            rows = np.loadtxt(
                lines, delimiter=",", quotechar='"', comments=None, dtype=np.float64, ndmin=2
            )
        if rows.shape == (len(lines), width):
            return rows
    except ValueError:
        pass
    reader = csv.reader(lines)
    parsed = []
    try:
        for cells in reader:
            line = first + reader.line_num - 1
            if len(cells) != width:
                raise _BadRow(line, f"{len(cells)} values for {width} columns")
            try:
                parsed.append([float(cell) for cell in cells])
            except ValueError:
                raise _BadRow(line, f"a value that is not a number in {_shown(cells)}") from None
    except csv.Error as err:  # a cell over the csv module's field limit, a stray quote
        raise _BadRow(first + reader.line_num - 1, f"not CSV ({err})") from None
    return np.array(parsed, dtype=np.float64).reshape(len(parsed), width)


def _shown(cells: Sequence[object]) -> str:
    """Cells for an error message: at most 200 characters of them."""
    text = repr(cells)
    return text if len(text) <= 200 else text[:200] + "…"


def _jsonl_table(f: TextIO, lines: int) -> tuple[list[str], npt.NDArray[np.float64]]:
    names: list[str] = []
    table: _Columns | None = None
    rows: list[list[float]] = []
    for line, text in enumerate(f, start=1):
        try:
            row = json.loads(text)
        except ValueError:  # not JSON, or an integer of more digits than Python converts
            raise _BadRow(line, "not a JSON object") from None
        if not isinstance(row, dict):
            raise _BadRow(line, "not a JSON object")
        names = names or list(row)
        if list(row) != names:
            raise _BadRow(line, f"columns {_shown(list(row))}, not {_shown(names)}")
        values = list(row.values())
        try:
            if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in values):
                raise TypeError
            rows.append([float(x) for x in values])
        except (TypeError, OverflowError):
            raise _BadRow(line, f"a value that is not a number in {_shown(values)}") from None
        if len(rows) == CHUNK:
            table = table or _Columns(len(names), lines)
            table.add(np.array(rows, dtype=np.float64))
            rows.clear()
    table = table or _Columns(len(names), lines)
    if rows:
        table.add(np.array(rows, dtype=np.float64))
    return names, table.table()
