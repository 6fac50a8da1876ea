"""The gradient noise scale B_simple = tr(C)/‖G‖² of McCandlish et al. 2018 ("An Empirical Model
of Large-Batch Training", appendix A), in the map's metric M (the identity for SGD).

Each row gives two unbiased estimates from the step's batch of B samples: S = B·T, with
T = tr(M⁻¹C)/B the noise estimate, and |G|² = ‖g_B‖²_{M⁻¹} − T, since E‖g_B‖² = ‖G‖² + T. Their
ratio row by row is noisy and often undefined (|G|² < 0 near a minimum), so, as the paper
advises and GPT-NeoX does, each is averaged exponentially over rows (weight β = 0.99 for the
past, bias-corrected) and the column is the ratio of the averages.
"""

from __future__ import annotations

import math
from typing import Any

BETA = 0.99


class NoiseScale:
    """Bias-corrected exponential averages of S and |G|² over rows, and their ratio."""

    def __init__(self, beta: float = BETA) -> None:
        self.beta = beta
        self._noise = self._signal = 0.0
        self._rows = 0

    def update(self, trace: float, gradient: float, batch: int | None) -> float:
        """Take a row's noise estimate T = tr(M⁻¹C)/B, its ‖g_B‖²_{M⁻¹} and batch size B;
        return B_simple (NaN while the batch size or the estimate is unknown, or while the
        averaged |G|² is not positive)."""
        if not (batch and math.isfinite(trace) and math.isfinite(gradient)):
            return self.value()
        self._noise = self.beta * self._noise + (1 - self.beta) * batch * trace
        self._signal = self.beta * self._signal + (1 - self.beta) * (gradient - trace)
        self._rows += 1
        return self.value()

    def value(self) -> float:
        """B_simple from the averages so far (the bias corrections cancel in the ratio)."""
        if not self._rows or self._signal <= 0:
            return math.nan
        return self._noise / self._signal

    def state_dict(self) -> dict[str, Any]:
        return {"noise": self._noise, "signal": self._signal, "rows": self._rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        noise, signal, rows = float(state["noise"]), float(state["signal"]), int(state["rows"])
        self._noise, self._signal, self._rows = noise, signal, rows
