"""The monitor's books: the cumulative dissipated, injected and residual energy of the ledger,
and the energies of the last row they are booked against (docs/theory.md §4).

Between two rows, with the maps of the last step (h, μ) and the step before it:

    dissipated += Σ_groups (1 − μ_eff²) K_{k−1},  μ_eff = μ h_{k−1}/h_{k−2}   (every = 1)
                  Σ_groups every·(1 − μ²)·½(K_{k−every} + K_k)              (trapezoid)
    injected   += every · Σ_groups ½ h² tr(C)/B                             (noise heat)
    residual   += ΔI + Δdissipated − Δinjected

so inertia − inertia₀ = −dissipated + injected + residual. The totals are compensated sums
(`inertia.energy.CompensatedSum`), so the identity closes to round-off over any run.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..energy import CompensatedSum
from .maps import MapHistory

F64 = torch.float64


class Books:
    """Running totals (dissipated, injected, residual) and the last row's energies."""

    def __init__(self, groups: int):
        self._sums = CompensatedSum((3,))
        self._step = torch.zeros(3, dtype=F64)  # one row's increments, written through numpy
        self._step_numpy = self._step.numpy()
        self.last_inertia: float | None = None
        self.last_kinetic = [0.0] * groups
        self.last_noise = [math.nan] * groups  # tr(C)/B at the last row, per group

    def totals(self) -> tuple[float, float, float]:
        """(dissipated, injected, residual) so far."""
        dissipated, injected, residual = self._sums.total.tolist()
        return dissipated, injected, residual

    def book(
        self,
        inertia: float,
        kinetic: list[float],
        noise: list[float],
        maps: MapHistory,
        *,
        every: int,
        skipped: bool,
    ) -> None:
        """Book a finite row: the change of I since the last one (none for the first), with no
        friction or heat when no step was taken (`skipped`)."""
        if self.last_inertia is not None:
            dissipated = 0.0 if skipped else self._friction(kinetic, maps, every)
            injected = 0.0 if skipped else self._injection(maps, every)
            change = inertia - self.last_inertia
            self._step_numpy[:] = (dissipated, injected, change + dissipated - injected)
            self._sums.add_(self._step)
        self.last_inertia, self.last_kinetic, self.last_noise = inertia, kinetic, noise

    def _friction(self, kinetic_now: list[float], maps: MapHistory, every: int) -> float:
        """Energy removed by friction since the last row ((1 − μ²) of K a step)."""
        if maps.last is None:
            return 0.0
        total = 0.0
        for i, m in enumerate(maps.last):
            if every == 1:
                before = maps.before[i].h if maps.before else m.h
                rescale = m.h / before if before > 0 and not m.physical_velocity else 1.0
                mu_eff = m.momentum * rescale
                total += (1.0 - mu_eff * mu_eff) * self.last_kinetic[i]
            else:
                mean_k = 0.5 * (self.last_kinetic[i] + kinetic_now[i])
                total += every * (1.0 - m.momentum**2) * mean_k
        return total

    def _injection(self, maps: MapHistory, every: int) -> float:
        """Heat injected by gradient noise since the last row: ½ h² tr(C)/B per step."""
        if maps.last is None:
            return 0.0
        heat = sum(
            0.5 * m.h * m.h * t
            for m, t in zip(maps.last, self.last_noise, strict=True)
            if math.isfinite(t)
        )
        return heat * every

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": self._sums.state_dict(),
            "last_inertia": self.last_inertia,
            "last_kinetic": list(self.last_kinetic),
            "last_noise": list(self.last_noise),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums.load_state_dict(state["sums"])
        self.last_inertia = state["last_inertia"]
        self.last_kinetic = list(state["last_kinetic"])
        self.last_noise = list(state["last_noise"])
