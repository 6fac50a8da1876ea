"""The energy ledger of real training: `InertiaMonitor`, its optimizer maps and its sinks."""

from .alarm import StabilityAlarm, two_step_curvature
from .core import InertiaMonitor
from .curvature import TopCurvature
from .estimate import NoiseEstimate, NoiseEstimator
from .floor import noise_floor
from .layout import GroupLayout
from .maps import GroupMap, group_maps
from .noise import Fluctuation, MicroBatch, PerSample
from .row import MONITOR_COLUMNS, NONFINITE, OK, SKIPPED, Row
from .sinks import CSVSink, JSONLSink, MLflowSink, Sink, TensorBoardSink, WandbSink

__all__ = [
    "MONITOR_COLUMNS",
    "NONFINITE",
    "OK",
    "SKIPPED",
    "CSVSink",
    "Fluctuation",
    "GroupLayout",
    "GroupMap",
    "InertiaMonitor",
    "JSONLSink",
    "MLflowSink",
    "MicroBatch",
    "NoiseEstimate",
    "NoiseEstimator",
    "PerSample",
    "Row",
    "Sink",
    "StabilityAlarm",
    "TensorBoardSink",
    "TopCurvature",
    "WandbSink",
    "group_maps",
    "noise_floor",
    "two_step_curvature",
]
