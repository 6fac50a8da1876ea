"""Ledger rows as text: the one CSV and JSONL writer and reader.

A row is a dict of plain numbers, time first. CSV: a header line, then one line per row, floats
in full precision (`repr`, so reading gives back the same float64), integers as they are, lines
ended by "\\r\\n" (the csv module's default). JSONL: one JSON object per line (NaN and ±inf as
JSON's extensions NaN, Infinity). `Ledger.to_csv`/`to_jsonl`, the monitor's file sinks and
`Ledger.read_csv`/`read_jsonl` all go through here.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal, TextIO

import torch
from torch import Tensor

__all__ = ["Format", "Row", "RowWriter", "ledger_error", "line_time", "read_table", "write_rows"]

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


def line_time(line: str, fmt: Format, time_name: str) -> float:
    """The time of one written row: its first cell (CSV) or its `time_name` (JSONL).

    ValueError, KeyError or TypeError if the line is not such a row.
    """
    if fmt == "csv":
        return float(line.split(",", 1)[0])
    return float(json.loads(line)[time_name])


def ledger_error(path: str | Path, what: str) -> ValueError:
    """The error for a file that is not a readable ledger: names the file and what is wrong."""
    return ValueError(f"ledger {str(path)!r}: {what}")


def read_table(path: str | Path, fmt: Format) -> tuple[list[str], Tensor]:
    """The column names and the float64 table (rows, columns) of a CSV or JSONL file of numbers.

    ValueError (`ledger_error`) for no rows, a repeated column name, a row with other columns
    than the first, or a value that is not a number.
    """
    try:
        with Path(path).open(newline="") as f:
            names, rows = _csv_rows(f) if fmt == "csv" else _jsonl_rows(f)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ledger_error(path, f"not a {fmt.upper()} file ({err})") from None
    except _BadRow as bad:
        raise ledger_error(path, f"line {bad.line}: {bad}") from None
    if not rows:
        raise ledger_error(path, "no rows")
    if len(set(names)) < len(names):
        raise ledger_error(path, f"repeated column names in {names}")
    return names, torch.tensor(rows, dtype=torch.float64)


class _BadRow(ValueError):
    def __init__(self, line: int, what: str) -> None:
        super().__init__(what)
        self.line = line


def _csv_rows(f: TextIO) -> tuple[list[str], list[list[float]]]:
    reader = csv.reader(f)
    names = next(reader, [])
    rows = []
    for cells in reader:
        if len(cells) != len(names):
            raise _BadRow(reader.line_num, f"{len(cells)} values for {len(names)} columns")
        try:
            rows.append([float(cell) for cell in cells])
        except ValueError:
            raise _BadRow(reader.line_num, f"a value that is not a number in {cells}") from None
    return names, rows


def _jsonl_rows(f: TextIO) -> tuple[list[str], list[list[float]]]:
    names: list[str] = []
    rows = []
    for line, text in enumerate(f, start=1):
        try:
            row = json.loads(text)
        except json.JSONDecodeError:
            raise _BadRow(line, "not a JSON object") from None
        if not isinstance(row, dict):
            raise _BadRow(line, "not a JSON object")
        names = names or list(row)
        if list(row) != names:
            raise _BadRow(line, f"columns {list(row)}, not {names}")
        values = list(row.values())
        try:
            if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in values):
                raise TypeError
            rows.append([float(x) for x in values])
        except (TypeError, OverflowError):
            raise _BadRow(line, f"a value that is not a number in {values}") from None
    return names, rows
