"""The energy ledger of real training: `InertiaMonitor`, its optimizer maps and its sinks."""

from .core import MONITOR_COLUMNS, InertiaMonitor
from .maps import GroupMap, group_map
from .sinks import CSVSink, JSONLSink, Sink, TensorBoardSink

__all__ = [
    "MONITOR_COLUMNS",
    "CSVSink",
    "GroupMap",
    "InertiaMonitor",
    "JSONLSink",
    "Sink",
    "TensorBoardSink",
    "group_map",
]
