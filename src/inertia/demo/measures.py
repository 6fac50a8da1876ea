"""Numbers the experiments measure on trajectories: drift, fitted orders and rates, z-scores."""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from ..trajectory import Estimate, Trajectory
from .core import Array


def relative_error(traj: Trajectory) -> Array:
    """|I − I₀| / |I₀| of the first path, per record."""
    i: Array = traj.inertia[:, 0].numpy()
    error: Array = np.abs(i - i[0]) / abs(i[0])
    return error


def drift_ratio(error: Array) -> float:
    """max error over the last 10% of a run ÷ max over the first 10%: ≈ 1 bounded, ≫ 1 drifting."""
    tenth = max(1, len(error) // 10)
    return float(error[-tenth:].max() / error[1 : tenth + 1].max())


def order(steps: list[float], errors: list[float]) -> float:
    """Least-squares slope of log(error) against log(step)."""
    return float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


def fitted_rate(t: Array, excess: Array, high: float = 1e-2, low: float = 1e-11) -> float:
    """Decay rate of `excess` by a log-linear fit where excess/excess₀ ∈ [low, high]."""
    ratio = excess / excess[0]
    window = (ratio <= high) & (ratio >= low)
    return float(-np.polyfit(t[window], np.log(excess[window]), 1)[0])


def max_z(estimate: Estimate, predicted: Tensor) -> float:
    """Largest |mean − predicted| / stderr over the records after t = 0."""
    z = (estimate.mean - predicted) / estimate.stderr
    return float(z[1:].abs().max())


def stationary_mean(traj: Trajectory, minimum: float = 0.0) -> tuple[float, float]:
    """Mean over paths of each path's time-average of I − L* over the last quarter, and its
    standard error (paths are independent)."""
    tail = traj.inertia[-max(1, len(traj.t) // 4) :] - minimum
    per_path = tail.mean(0)
    return float(per_path.mean()), float(per_path.std() / math.sqrt(traj.paths))
