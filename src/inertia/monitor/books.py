"""The monitor's books: the cumulative dissipated, injected, decay, schedule and residual energy
of the ledger, and the energies of the last row they are booked against (docs/theory.md §4).

Step k of the kick–drift map u_k = μ·r·u_{k−1} − hM⁻¹(g_k + wd θ_k), θ_{k+1} = θ_k + h u_k books
per group, with q = h_k/h_{k−1}: r = q and w = q² for a velocity kept as Δθ/η (SGD, Adam: a
changed learning rate rescales u and the shadow term with it), r = 1 and w = q for a physical
velocity (InertiaSGD: only its power rescales),

    schedule   += (r² − 1) K_k + ½(w − 1) P_k                (the energy a changed rate adds)
    dissipated += (1 − μ²) r² K_k + ½(1 − μ) w P_k          (the map's exact friction, (4.4))
                  + ½μ(1 + μ)⟨Δθ_{k−1}, G_k − G_{k−1}⟩       (Nesterov's look-ahead damping)
    injected   += ½ h² tr(M⁻¹C)/B                           (noise heat, in the map's metric)
    decay      += ½ηλ (⟨θ_k, g_k⟩ + ⟨θ_k, g_{k+1}⟩)         (a decoupled decay's work on L)
    residual   += ΔI + Δdissipated + Δdecay − Δinjected − Δschedule

with K_k and P_k = ⟨−Δθ_{k−1}, G_k⟩, G = g + wd θ, measured at row k (Δθ the step the momentum
carries: a decoupled decay's displacement −ηλθ_k is not, and does work on L instead), so that
inertia − inertia₀ = −dissipated − decay + injected + schedule + residual. The friction is
the exact dissipation of the shadow energy H̃ = I − ½⟨Δθ_{k−1}, g_k + wd θ_k⟩ on a quadratic:
the residual then holds the change of that shadow term (it does not accumulate), the
moving metric and what is not quadratic. Rows n steps apart (`every`) book n steps by the
trapezoid rule; a skipped iteration's row and the retry at the same parameters are 0 steps
apart. The books live on the parameters' device: a row whose potential is not finite books
nothing and leaves the last energies as they were, decided there (no host synchronisation);
the totals are compensated sums (`inertia.energy.CompensatedSum`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..energy import CompensatedSum
from .layout import F64
from .maps import NESTEROV, MapHistory
from .row import Pack

BOOKS = ("dissipated", "injected", "residual", "decay", "schedule")


class Books:
    """Running totals (`BOOKS`) and the last finite row's energies."""

    def __init__(self, groups: int, device: torch.device):
        self._sums = CompensatedSum((len(BOOKS),), device=device)
        self.device = device
        self._zero = torch.zeros((), dtype=F64, device=device)
        self._booked = torch.zeros((), dtype=torch.bool, device=device)  # a finite row exists
        self.last_inertia = self._zero
        self.last_kinetic = torch.zeros(groups, dtype=F64, device=device)
        self.last_power = torch.zeros(groups, dtype=F64, device=device)
        self.last_damping = torch.zeros(groups, dtype=F64, device=device)
        self.last_theta_grad = torch.zeros(groups, dtype=F64, device=device)
        self.last_noise = torch.full((groups,), math.nan, dtype=F64, device=device)  # tr(C)/B

    @property
    def totals(self) -> Tensor:
        """The running totals of `BOOKS`, on the device."""
        return self._sums.total

    def book(
        self,
        pack: Pack,
        inertia: Tensor,
        maps: MapHistory,
        *,
        finite: Tensor,
        steps: int,
    ) -> None:
        """Book a row (`pack`: its values per group) `steps` optimizer steps after the last
        one: the change of I since the last `finite` row (none before the first), with the
        friction, heat, decay work and schedule energy of those steps; a row whose potential
        is not finite books nothing and is not remembered."""
        kinetic, power, noise = pack["kinetic"], pack["power"], pack["noise"]
        theta_grad = pack["theta_grad"]
        # ⟨Δθ_{k−1}, G_k − G_{k−1}⟩, G = g + wd θ the gradient Nesterov's look-ahead takes
        damping = pack["grad_dot_before"] - pack["grad_dot"]
        decayed = [m.weight_decay if m.kind == NESTEROV else 0.0 for m in maps.last or ()]
        if any(decayed):  # wd ⟨Δθ_{k−1}, θ_k − θ_{k−1}⟩ = wd ‖Δθ_{k−1}‖²
            damping = damping + self._coefficients(decayed) * pack["delta_sq"]
        dissipated, schedule = self._friction(kinetic, power, damping, maps, steps)
        if maps.before is None and maps.last is not None and steps == 1:  # the first step's
            # look-ahead acts on G_0 − G_{−1} = G_0: ½μ⟨Δθ_0, G_0⟩ = −½μ⟨−Δθ_0, G_0⟩, with
            # wd ⟨−Δθ_0, θ_0⟩ = wd ⟨−Δθ_0, θ_1⟩ + wd ‖Δθ_0‖² = P_1 − ⟨−Δθ_0, g_1⟩ + wd ‖Δθ_0‖²
            first = [-0.5 * m.momentum if m.kind == NESTEROV else 0.0 for m in maps.last]
            lead = pack["grad_dot_before"]
            if any(decayed):
                lead = lead + power - pack["grad_dot"]
                lead = lead + self._coefficients(decayed) * pack["delta_sq"]
            dissipated = dissipated + (self._coefficients(first) * lead).sum()
        injected = self._injection(maps, steps)
        decay = self._decay(theta_grad, power, maps, steps)
        change = inertia - self.last_inertia
        residual = change + dissipated + decay - injected - schedule
        step = torch.stack((dissipated, injected, residual, decay, schedule))
        self._sums.add_(torch.where(finite & self._booked, step, self._zero))
        self.last_inertia = torch.where(finite, inertia, self.last_inertia)
        self.last_kinetic = torch.where(finite, kinetic, self.last_kinetic)
        self.last_power = torch.where(finite, power, self.last_power)
        self.last_damping = torch.where(finite, damping, self.last_damping)
        self.last_theta_grad = torch.where(finite, theta_grad, self.last_theta_grad)
        self.last_noise = torch.where(finite, noise, self.last_noise)
        self._booked = self._booked | finite

    def _decay(self, theta_grad: Tensor, power: Tensor, maps: MapHistory, steps: int) -> Tensor:
        """Work a decoupled decay's displacement −ηλθ_k did against L since the last row, by
        the trapezoid rule: ½ηλ(⟨θ_k, g_k⟩ + ⟨θ_k, g_{k+1}⟩), with
        ⟨θ_k, g_{k+1}⟩ = (⟨θ_{k+1}, g_{k+1}⟩ + P_{k+1})/(1 − ηλ)."""
        if maps.last is None or steps == 0 or not any(m.decoupled for m in maps.last):
            return self._zero
        rate = self._coefficients([m.decoupled for m in maps.last])
        if steps > 1:
            return (steps * 0.5 * rate * (self.last_theta_grad + theta_grad)).sum()
        after = (theta_grad + power) / (1.0 - rate)
        return (0.5 * rate * (self.last_theta_grad + after)).sum()

    def _coefficients(self, values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=F64).to(self.device, non_blocking=True)

    def _friction(
        self,
        kinetic_now: Tensor,
        power_now: Tensor,
        damping_now: Tensor,
        maps: MapHistory,
        steps: int,
    ) -> tuple[Tensor, Tensor]:
        """(friction, schedule energy) since the last row."""
        if maps.last is None or steps == 0:
            return self._zero, self._zero
        mu = self._coefficients([m.momentum for m in maps.last])
        # Nesterov: ½μ(1 + μ)⟨Δθ_{k−1}, g_k − g_{k−1}⟩, the work of its look-ahead force
        look = self._coefficients(
            [
                0.5 * m.momentum * (1.0 + m.momentum) if m.kind == NESTEROV else 0.0
                for m in maps.last
            ]
        )
        if steps > 1:  # the trapezoid rule between the two rows' friction per step
            start = (1.0 - mu * mu) * self.last_kinetic + 0.5 * (1.0 - mu) * self.last_power
            end = (1.0 - mu * mu) * kinetic_now + 0.5 * (1.0 - mu) * power_now
            start, end = start + look * self.last_damping, end + look * damping_now
            return steps * 0.5 * (start + end).sum(), self._zero
        # a velocity kept as Δθ/η is rescaled by q = h_k/h_{k−1} (r = q), and so is the shadow
        # term ½P (w = q²): schedule energy (q² − 1)(K + ½P), then friction on q²K and q²P; a
        # physical one is not (r = 1), but its power is q·P (w = q): schedule ½(q − 1)P
        rescale, weight = [], []
        for m, b in zip(maps.last, maps.before or maps.last, strict=True):
            q = m.h / b.h if b.h > 0 else 1.0
            rescale.append(1.0 if m.physical_velocity else q * q)
            weight.append(q if m.physical_velocity else q * q)
        r2, w = self._coefficients(rescale), self._coefficients(weight)
        kinetic, power = self.last_kinetic, self.last_power
        friction = (1.0 - mu * mu) * r2 * kinetic + 0.5 * (1.0 - mu) * w * power
        friction = friction + look * self.last_damping
        return friction.sum(), ((r2 - 1.0) * kinetic + 0.5 * (w - 1.0) * power).sum()

    def _injection(self, maps: MapHistory, steps: int) -> Tensor:
        """Heat injected by gradient noise since the last row: ½ h² tr(M⁻¹C)/B per step."""
        if maps.last is None or steps == 0:
            return self._zero
        heat = self._coefficients([0.5 * m.h * m.h for m in maps.last]) * self.last_noise
        return torch.where(self.last_noise.isfinite(), heat, self._zero).sum() * steps

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers (one host synchronisation, at checkpoint time only)."""
        head = torch.stack([self._booked.to(F64), self.last_inertia])
        per_group = {name: getattr(self, name) for name in _PER_GROUP}
        floats = torch.cat([head, *per_group.values()]).tolist()
        n = self.last_kinetic.numel()
        state: dict[str, Any] = {
            "sums": self._sums.state_dict(),
            "last_inertia": floats[1] if floats[0] else None,
        }
        for j, name in enumerate(per_group):
            state[name] = floats[2 + j * n : 2 + (j + 1) * n]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sums = state["sums"]
        total, carry = sums["total"], sums["carry"]
        if total.numel() < len(BOOKS):  # three books before decay and schedule were booked
            pad = torch.zeros(len(BOOKS) - total.numel(), dtype=total.dtype)
            sums = {"total": torch.cat([total, pad]), "carry": torch.cat([carry, pad])}
        self._sums.load_state_dict(sums)
        booked = state["last_inertia"] is not None
        self._booked = torch.tensor(booked, device=self.device)
        last = state["last_inertia"] if booked else 0.0
        self.last_inertia = torch.tensor(last, dtype=F64, device=self.device)
        n = len(state["last_kinetic"])
        for name in _PER_GROUP:  # books of earlier layouts have no power, damping, ⟨θ, g⟩
            values = state.get(name, [0.0] * n)
            setattr(self, name, torch.tensor(values, dtype=F64, device=self.device))


_PER_GROUP = ("last_kinetic", "last_power", "last_damping", "last_theta_grad", "last_noise")
