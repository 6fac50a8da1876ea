"""The contract between an optimizer that reports its own energies and `InertiaMonitor`.

An optimizer that decides its step inside `step()` (InertiaSGD's brake chooses h and μ there)
knows the energies of the point θ_k it started from at no extra cost. It implements
`ReportsEnergy`; the monitor then books its rows from the reports, with no pass of its own
over the parameters, and reads the map (h, μ, wd) of each step from them (docs/theory.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class EnergyReport:
    """One parameter group's last step θ_k → θ_{k+1} = θ_k + h·p_{k+1}, as it was taken.

    The map: `lr` = h², `h` the step, `momentum` μ (0 for a step that restarted from rest),
    `weight_decay` wd (coupled: part of the potential L + (wd/2)‖θ‖²). The energies of θ_k:
    `kinetic` ½‖p_k‖², `power` ⟨p_k, ∇L(θ_k) + wd·θ_k⟩, `theta_sq` ‖θ_k‖² (0 without weight
    decay), and `h_before`, the h that produced p_k (the shadow term is −½·h_before·power).
    """

    lr: float
    h: float
    momentum: float
    weight_decay: float
    kinetic: float
    power: float
    theta_sq: float
    h_before: float


@runtime_checkable
class ReportsEnergy(Protocol):
    """An optimizer whose velocity is physical (p = Δθ/h, unchanged when h changes) and which
    reports each group's last step (`energy_report`) and the kinetic energy ½‖p‖² of each
    group's current velocity (`kinetic_energy`, for a row with no step behind it)."""

    def energy_report(self) -> list[EnergyReport]:
        """One report per parameter group, of the last step taken (defaults before any)."""
        ...

    def kinetic_energy(self) -> list[float]:
        """½‖p‖² of each group's current velocity."""
        ...
