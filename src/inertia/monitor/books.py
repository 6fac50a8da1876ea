"""The monitor's books: the cumulative dissipated, injected and residual energy of the ledger,
and the energies of the last row they are booked against (docs/theory.md §4).

Between two rows n steps apart (n = 1 with a row every step; `every` between periodic rows;
0 between a skipped iteration's row and the step's own, at the same parameters), with the maps
of the last step (h, μ) and the step before it:

    dissipated += Σ_groups (1 − μ_eff²) K_{k−1},  μ_eff = μ h_{k−1}/h_{k−2}   (n = 1)
                  Σ_groups n·(1 − μ²)·½(K_{k−n} + K_k)                      (trapezoid, n > 1)
    injected   += n · Σ_groups ½ h² tr(C)/B                                 (noise heat)
    residual   += ΔI + Δdissipated − Δinjected

so inertia − inertia₀ = −dissipated + injected + residual. The books live on the parameters'
device: a row whose inertia is not finite books nothing and leaves the last energies as they
were, decided there (no host synchronisation), and the totals are compensated sums
(`inertia.energy.CompensatedSum`), so the identity closes to round-off over any run.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..energy import CompensatedSum
from .layout import F64
from .maps import MapHistory


class Books:
    """Running totals (dissipated, injected, residual) and the last finite row's energies."""

    def __init__(self, groups: int, device: torch.device):
        self._sums = CompensatedSum((3,), device=device)
        self.device = device
        self._zero = torch.zeros((), dtype=F64, device=device)
        self._booked = torch.zeros((), dtype=torch.bool, device=device)  # a finite row exists
        self.last_inertia = self._zero
        self.last_kinetic = torch.zeros(groups, dtype=F64, device=device)
        self.last_noise = torch.full((groups,), math.nan, dtype=F64, device=device)  # tr(C)/B

    @property
    def totals(self) -> Tensor:
        """(dissipated, injected, residual) so far, on the device."""
        return self._sums.total

    def book(
        self,
        inertia: Tensor,
        kinetic: Tensor,
        noise: Tensor,
        maps: MapHistory,
        *,
        finite: Tensor,
        steps: int,
    ) -> None:
        """Book a row (`kinetic`, `noise`: per group) `steps` optimizer steps after the last
        one: the change of I since the last `finite` row (none before the first), with their
        friction and heat; a row whose potential is not finite books nothing and is not
        remembered."""
        dissipated = self._friction(kinetic, maps, steps)
        injected = self._injection(maps, steps)
        change = inertia - self.last_inertia
        step = torch.stack((dissipated, injected, change + dissipated - injected))
        self._sums.add_(torch.where(finite & self._booked, step, self._zero))
        self.last_inertia = torch.where(finite, inertia, self.last_inertia)
        self.last_kinetic = torch.where(finite, kinetic, self.last_kinetic)
        self.last_noise = torch.where(finite, noise, self.last_noise)
        self._booked = self._booked | finite

    def _coefficients(self, values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=F64).to(self.device, non_blocking=True)

    def _friction(self, kinetic_now: Tensor, maps: MapHistory, steps: int) -> Tensor:
        """Energy removed by friction since the last row ((1 − μ²) of K a step)."""
        if maps.last is None or steps == 0:
            return self._zero
        if steps == 1:
            mu = []
            for i, m in enumerate(maps.last):
                before = maps.before[i].h if maps.before else m.h
                rescale = m.h / before if before > 0 and not m.physical_velocity else 1.0
                mu.append(m.momentum * rescale)
            return (self._coefficients([1.0 - x * x for x in mu]) * self.last_kinetic).sum()
        coefficients = self._coefficients([steps * (1.0 - m.momentum**2) for m in maps.last])
        return (coefficients * (0.5 * (self.last_kinetic + kinetic_now))).sum()

    def _injection(self, maps: MapHistory, steps: int) -> Tensor:
        """Heat injected by gradient noise since the last row: ½ h² tr(C)/B per step."""
        if maps.last is None or steps == 0:
            return self._zero
        heat = self._coefficients([0.5 * m.h * m.h for m in maps.last]) * self.last_noise
        return torch.where(self.last_noise.isfinite(), heat, self._zero).sum() * steps

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers (one host synchronisation, at checkpoint time only)."""
        head = torch.stack([self._booked.to(F64), self.last_inertia])
        floats = torch.cat([head, self.last_kinetic, self.last_noise]).tolist()
        n = self.last_kinetic.numel()
        return {
            "sums": self._sums.state_dict(),
            "last_inertia": floats[1] if floats[0] else None,
            "last_kinetic": floats[2 : 2 + n],
            "last_noise": floats[2 + n :],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums.load_state_dict(state["sums"])
        booked = state["last_inertia"] is not None
        self._booked = torch.tensor(booked, device=self.device)
        last = state["last_inertia"] if booked else 0.0
        self.last_inertia = torch.tensor(last, dtype=F64, device=self.device)
        self.last_kinetic = torch.tensor(state["last_kinetic"], dtype=F64, device=self.device)
        self.last_noise = torch.tensor(state["last_noise"], dtype=F64, device=self.device)
