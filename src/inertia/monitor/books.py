"""The monitor's books: the cumulative dissipated, injected, decay, schedule and residual energy
of the ledger, and the energies of the last row they are booked against (docs/theory.md §4).

Step k of the kick–drift map u_k = μ·r·u_{k−1} − hM⁻¹(g_k + wd θ_k), θ_{k+1} = θ_k + h u_k books
per group, with q = h_k/h_{k−1} and b = (1 − β₁,k−1)/(1 − β₁,k) (Adam's u = −(h/(1 − β₁))M⁻¹m
carries m ← β₁m + (1 − β₁)g; b = 1 for the other maps): r = qb and w = qr for a velocity kept
as Δθ/h (SGD, Adam, RMSprop: a changed learning rate or β₁ rescales u, and the shadow term
with it), r = 1 and w = q for a physical velocity (InertiaSGD: only its power rescales),

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
moving metric and what is not quadratic. A skipped iteration's row and the retry at the same
parameters are 0 steps apart.

Rows n ≥ 2 steps apart (`every`), k₀ and k₁ = k₀ + n, book steps j = k₀ … k₁ − 1 from the
two rows' values and maps. Step j rescales X = K by f_j = r_j² and X = P by f_j = w_j, so
X_j = A_j X̂_j, A_j = Π_{k₀ ≤ i < j} f_i; X̂, the energy with the rescaling taken out, is
taken linear in t = (s − k₀)/n from X_{k₀} to X_{k₁}/A_{k₁} (held at X_{k₀} if A_{k₁} = 0).
With step j's rate c_j (1 − μ_j² for K, ½(1 − μ_j) for P; μ_j linear in j from the maps of
steps k₀ and k₁ − 1, for a cycled momentum) and t_j = (j − k₀)/n,

    schedule   += Σ_j (A_{j+1} − A_j) X̂(t_j)                   (each rescaling at its step)
    dissipated += Σ_j c_j A_{j+1} ½(X̂(t_j) + X̂(t_{j+1}))        (the trapezoid rule)
                  + Σ_j ½μ_j(1 + μ_j)·½(d_{k₀} + d_{k₁})        (Nesterov, d = ⟨Δθ, ΔG⟩)

which is n·½(x_{k₀} + x_{k₁}) where the rate is constant. Exact: q_{k₀}b_{k₀} of the row's own
step (from h and β₁ of steps k₀ − 1 and k₀, read at row k₀ and kept) and the products of the
interior q's and b's, h_{k₁−1}/h_{k₀} and (1 − β₁,k₀)/(1 − β₁,k₁−1), so that for K the books'
Σ_j (A_{j+1} − A_j) is the true A_{k₁} − 1: a learning rate that changes only at rows' steps
(StepLR on a multiple of `every`) has the schedule book of `every=1`, and so has a β₁ that
changes only there, but for P's share. Estimated: X̂ between the rows; where in the interior the
factors fall (the maps of those steps are not read): q and b are each taken equal, the
(n − 1)-th root of their product (q: 1 where h is 0 at either end); and b_{k₀} apart from
q_{k₀}b_{k₀}, which P's w_{k₀} = q_{k₀}²b_{k₀} needs (a checkpoint keeps the product only):
taken equal to the interior b's. Where the rate moves one way between the rows, the schedule
book is then within |A_{k₁} − f_{k₀}|·(max − min of X̂_j, k₀ ≤ j ≤ k₁) of Σ_j (f_j − 1)X_j (for
P: where b_{k₀} is the interior b's); the friction carries the trapezoid rule's error.
Between rows the heat takes the last row's noise estimate and clip factor with h² of each
step, and the decay work ηλ of each step, linear from the stretch's first step to its last
(the row's own h and map, and the last map): exact for a learning rate linear in the step
(a warmup), estimated otherwise.

The books are kept in Python floats (IEEE float64, the same operations in the same order as
on a float64 tensor) from the row's values once they are on the host: the row's one transfer
(`inertia.monitor.row.Pack.fetch`) is the only synchronisation, and booking launches no
device work. A row whose potential is not finite books nothing and leaves the last energies
as they were; the totals are Kahan-compensated sums, y = x − c, t = s + y, c = (t − s) − y,
s = t (`inertia.energy.CompensatedSum`'s recurrence).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..energy import CompensatedSum
from .layout import F64
from .maps import NESTEROV, GroupMap, MapHistory

BOOKS = ("dissipated", "injected", "residual", "decay", "schedule")
PER_GROUP = (
    "last_kinetic",
    "last_power",
    "last_damping",
    "last_theta_grad",
    "last_noise",
    "last_clip",
    "last_h",
    "last_q",
)
Floats = list[float]


class Books:
    """Running totals (`BOOKS`) and the last finite row's energies, as host floats."""

    def __init__(self, groups: int):
        self._total, self._carry = [0.0] * len(BOOKS), [0.0] * len(BOOKS)
        self._booked = False  # a finite row exists
        self._remembered = False  # the last row was finite: its energies are the last ones
        self.last_inertia = 0.0
        self.last_kinetic, self.last_power = [0.0] * groups, [0.0] * groups
        self.last_damping, self.last_theta_grad = [0.0] * groups, [0.0] * groups
        self.last_noise = [math.nan] * groups  # tr(C)/B
        self.last_clip = [1.0] * groups  # c² of the step's gradient (clipping), 1 if unknown
        # h_k of the last row's own step and q·b of it (`last_q`; NaN, 1: unknown)
        self.last_h, self.last_q = [math.nan] * groups, [1.0] * groups

    def book(
        self,
        values: dict[str, Floats],
        inertia: float,
        maps: MapHistory,
        *,
        finite: bool,
        steps: int,
    ) -> Floats:
        """Book a row (`values`: its floats per group by name) `steps` optimizer steps after
        the last one: the change of I since the last `finite` row (none before the first),
        with the friction, heat, decay work and schedule energy of those steps; a row whose
        potential is not finite books nothing and is not remembered. Returns the totals."""
        kinetic, power = values["kinetic"], values["power"]
        theta_grad, delta_sq = values["theta_grad"], values["delta_sq"]
        gd, gdb = values["grad_dot"], values["grad_dot_before"]
        noise = values.get("noise", [math.nan] * len(kinetic))
        clip = [c if math.isfinite(c) else 1.0 for c in values.get("clip", [1.0] * len(kinetic))]
        # ⟨Δθ_{k−1}, G_k − G_{k−1}⟩, G = g + wd θ the gradient Nesterov's look-ahead takes
        damping = [b - a for a, b in zip(gd, gdb, strict=True)]
        decayed = [m.weight_decay if m.kind == NESTEROV else 0.0 for m in maps.last or ()]
        if any(decayed):  # wd ⟨Δθ_{k−1}, θ_k − θ_{k−1}⟩ = wd ‖Δθ_{k−1}‖²
            damping = [d + c * s for d, c, s in zip(damping, decayed, delta_sq, strict=True)]
        dissipated, schedule = self._friction(kinetic, power, damping, maps.last, maps, steps)
        if maps.before is None and maps.last is not None and steps == 1:  # the first step's
            # look-ahead acts on G_0 − G_{−1} = G_0: ½μ⟨Δθ_0, G_0⟩ = −½μ⟨−Δθ_0, G_0⟩, with
            # wd ⟨−Δθ_0, θ_0⟩ = wd ⟨−Δθ_0, θ_1⟩ + wd ‖Δθ_0‖² = P_1 − ⟨−Δθ_0, g_1⟩ + wd ‖Δθ_0‖²
            first = [-0.5 * m.momentum if m.kind == NESTEROV else 0.0 for m in maps.last]
            lead = list(gdb)
            if any(decayed):
                lead = [x + p - g for x, p, g in zip(lead, power, gd, strict=True)]
                lead = [x + c * s for x, c, s in zip(lead, decayed, delta_sq, strict=True)]
            dissipated = dissipated + _sum(f * x for f, x in zip(first, lead, strict=True))
        injected = self._injection(maps, steps)
        decay = self._decay(theta_grad, power, maps, steps)
        change = inertia - self.last_inertia
        residual = change + dissipated + decay - injected - schedule
        step = (dissipated, injected, residual, decay, schedule)
        self._add([x if finite and self._booked else 0.0 for x in step])
        if finite:
            self.last_inertia = inertia
            self.last_kinetic, self.last_power = list(kinetic), list(power)
            self.last_damping, self.last_theta_grad = damping, list(theta_grad)
            self.last_noise, self.last_clip = list(noise), clip
            self.last_h, self.last_q = _row_step(maps, len(kinetic))
        self._booked, self._remembered = self._booked or finite, finite
        return list(self._total)

    def reread(self, maps: MapHistory, booked: bool) -> None:
        """The maps of the step a row was just `booked` before, read again after it (a
        reporting optimizer decides h in its step): the row's own h and q from them."""
        if booked and self._remembered:
            self.last_h, self.last_q = _row_step(maps, len(self.last_h))

    def _add(self, x: Floats) -> None:
        """total += x, compensated (the recurrence of `CompensatedSum.add_`)."""
        for j, value in enumerate(x):
            y = value - self._carry[j]
            t = self._total[j] + y
            self._carry[j] = (t - self._total[j]) - y
            self._total[j] = t

    def _decay(self, theta_grad: Floats, power: Floats, maps: MapHistory, steps: int) -> float:
        """Work a decoupled decay's displacement −ηλθ_k did against L since the last row, by
        the trapezoid rule: ½ηλ(⟨θ_k, g_k⟩ + ⟨θ_k, g_{k+1}⟩), with
        ⟨θ_k, g_{k+1}⟩ = (⟨θ_{k+1}, g_{k+1}⟩ + P_{k+1})/(1 − ηλ); rows n ≥ 2 steps apart take
        ηλ of each step linear between the maps of the stretch's first and last steps."""
        last = maps.last
        if last is None or steps == 0 or not any(m.decoupled for m in last):
            return 0.0
        rate = [m.decoupled for m in last]
        before = self.last_theta_grad
        if steps > 1:
            first = [m.decoupled for m in maps.before or last]
            return _sum(
                steps * 0.5 * (r0 + r) * 0.5 * (a + b)
                for r0, r, a, b in zip(first, rate, before, theta_grad, strict=True)
            )
        after = [(t + p) / (1.0 - r) for t, p, r in zip(theta_grad, power, rate, strict=True)]
        return _sum(0.5 * r * (a + b) for r, a, b in zip(rate, before, after, strict=True))

    def _friction(
        self,
        kinetic_now: Floats,
        power_now: Floats,
        damping_now: Floats,
        last: list[GroupMap] | None,
        maps: MapHistory,
        steps: int,
    ) -> tuple[float, float]:
        """(friction, schedule energy) since the last row."""
        if last is None or steps == 0:
            return 0.0, 0.0
        if steps > 1:
            return self._between(kinetic_now, power_now, damping_now, last, maps, steps)
        mu = [m.momentum for m in last]
        # Nesterov: ½μ(1 + μ)⟨Δθ_{k−1}, g_k − g_{k−1}⟩, the work of its look-ahead force
        look = [0.5 * m.momentum * (1.0 + m.momentum) if m.kind == NESTEROV else 0.0 for m in last]
        k, p, d = self.last_kinetic, self.last_power, self.last_damping
        # a velocity kept as Δθ/h is rescaled by r = q·b (q = h_k/h_{k−1}, b Adam's β₁ factor),
        # its shadow term ½P by w = q·r: schedule energy (r² − 1)K + ½(w − 1)P, then friction
        # on r²K and wP; a physical one is not (r = 1), but its power is q·P (w = q)
        friction, schedule = [], []
        for j, (m, b) in enumerate(zip(last, maps.before or last, strict=True)):
            q = _ratio(m, b)
            r = 1.0 if m.physical_velocity else q * _beta(m, b)
            w = q * r
            u = mu[j]
            f = (1.0 - u * u) * (r * r) * k[j] + 0.5 * (1.0 - u) * w * p[j]
            friction.append(f + look[j] * d[j])
            schedule.append((r * r - 1.0) * k[j] + 0.5 * (w - 1.0) * p[j])
        return _sum(friction), _sum(schedule)

    def _between(
        self,
        kinetic_now: Floats,
        power_now: Floats,
        damping_now: Floats,
        last: list[GroupMap],
        maps: MapHistory,
        steps: int,
    ) -> tuple[float, float]:
        """(friction, schedule energy) of `steps` ≥ 2 steps between rows (module docstring):
        q₀b₀ kept from the last row's maps, the interior factors from h_{k₁−1}/h_{k₀} and from
        β₁ of the maps kept, of steps k₀ (`before`) and k₁ − 1 (`last`)."""
        friction, schedule = [], []
        for j, m in enumerate(last):
            start = (maps.before or last)[j]
            h0 = self.last_h[j] if math.isfinite(self.last_h[j]) else start.h
            qb0 = self.last_q[j] if math.isfinite(self.last_q[j]) else 1.0
            inner = (m.h / h0) ** (1.0 / (steps - 1)) if h0 > 0 and m.h > 0 else 1.0
            beta = _beta(m, start) ** (1.0 / (steps - 1))
            if m.physical_velocity:  # r = 1, w = q (b = 1)
                r2, w = [1.0] * steps, [qb0] + [inner] * (steps - 1)
            else:  # r = qb, w = qr = r²/b
                r = inner * beta
                r2 = [qb0 * qb0] + [r * r] * (steps - 1)
                w = [qb0 * qb0 / beta] + [inner * inner * beta] * (steps - 1)
            # μ of step k₀ + i linear from the maps of steps k₀ and k₁ − 1 (a cycled momentum)
            mu = [
                start.momentum + (m.momentum - start.momentum) * i / (steps - 1)
                for i in range(steps)
            ]
            jk, fk = _weights(r2, self.last_kinetic[j], kinetic_now[j], [1.0 - u * u for u in mu])
            jp, fp = _weights(w, self.last_power[j], power_now[j], [0.5 * (1.0 - u) for u in mu])
            look = sum(0.5 * u * (1.0 + u) for u in mu) if m.kind == NESTEROV else 0.0
            damping = look * 0.5 * (self.last_damping[j] + damping_now[j])
            friction.append(fk + fp + damping)
            schedule.append(jk + 0.5 * jp)
        return _sum(friction), _sum(schedule)

    def _injection(self, maps: MapHistory, steps: int) -> float:
        """Heat injected by gradient noise since the last row: ½ h² c² tr(M⁻¹C)/B per step,
        c the factor by which the step's gradient was scaled (clipping: its noise is c·ξ), from
        the last row's estimate; rows n ≥ 2 steps apart take h² of each step linear between the
        stretch's first step (the row's own h) and its last."""
        last = maps.last
        if last is None or steps == 0:
            return 0.0
        square = [m.h * m.h for m in last]
        if steps > 1:
            first = [
                h if math.isfinite(h) else b.h
                for h, b in zip(self.last_h, maps.before or last, strict=True)
            ]
            square = [0.5 * (h * h + s) for h, s in zip(first, square, strict=True)]
        heat = [
            0.5 * s * n * c if math.isfinite(n) else 0.0
            for s, n, c in zip(square, self.last_noise, self.last_clip, strict=True)
        ]
        return _sum(heat) * steps

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers (the totals and carries as float64 tensors)."""
        state: dict[str, Any] = {
            "sums": {
                "total": torch.tensor(self._total, dtype=F64),
                "carry": torch.tensor(self._carry, dtype=F64),
            },
            "last_inertia": self.last_inertia if self._booked else None,
        }
        for name in PER_GROUP:
            state[name] = list(getattr(self, name))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A state in the current layout (`inertia.monitor.checkpoint` upgrades and checks it)."""
        checked = CompensatedSum((len(BOOKS),))  # checks shape and dtype, ValueError if not
        checked.load_state_dict(state["sums"])
        booked = state["last_inertia"] is not None
        per_group = {name: [float(x) for x in state[name]] for name in PER_GROUP}
        self._total, self._carry = checked.total.tolist(), checked.carry.tolist()
        self._booked = booked
        self.last_inertia = float(state["last_inertia"]) if booked else 0.0
        self.last_kinetic, self.last_power = per_group["last_kinetic"], per_group["last_power"]
        self.last_damping = per_group["last_damping"]
        self.last_theta_grad = per_group["last_theta_grad"]
        self.last_noise, self.last_clip = per_group["last_noise"], per_group["last_clip"]
        self.last_h, self.last_q = per_group["last_h"], per_group["last_q"]


def _row_step(maps: MapHistory, groups: int) -> tuple[Floats, Floats]:
    """Per group, h_k of the step a row at step k opens and q·b, q = h_k/h_{k−1} and b its β₁
    factor (NaN and 1 where the maps are not known: q = 1 also out of h_{k−1} = 0, as for
    `every=1`)."""
    now, last = maps.under_way, maps.last
    if now is None:
        return [math.nan] * groups, [1.0] * groups
    h = [m.h for m in now]
    if last is None:
        return h, [1.0] * groups
    return h, [_ratio(m, b) * _beta(m, b) for m, b in zip(now, last, strict=True)]


def _ratio(now: GroupMap, before: GroupMap) -> float:
    """q = h_k/h_{k−1}: 1 out of h_{k−1} = 0 (a step from rest rescales nothing)."""
    return now.h / before.h if before.h > 0 else 1.0


def _beta(now: GroupMap, before: GroupMap) -> float:
    """b = (1 − β₁,k−1)/(1 − β₁,k), the factor a changed β₁ rescales Adam's u by (1 for the
    other maps: `GroupMap.gain`)."""
    return before.gain / now.gain


def _weights(factors: Floats, start: float, end: float, rates: Floats) -> tuple[float, float]:
    """(Σ_j (A_{j+1} − A_j) X̂(t_j), Σ_j c_j A_{j+1} ½(X̂(t_j) + X̂(t_{j+1}))) for per-step
    factors f_j and rates c_j, A_j = Π_{i<j} f_i, X̂ linear from `start` to `end`/A_n (module
    docstring)."""
    n, a = len(factors), 1.0
    jump, jump_end, rate, rate_end = 0.0, 0.0, 0.0, 0.0
    for i, (f, c) in enumerate(zip(factors, rates, strict=True)):
        b = a * f
        t, mid = i / n, (i + 0.5) / n
        jump, jump_end = jump + (b - a) * (1.0 - t), jump_end + (b - a) * t
        rate, rate_end = rate + c * b * (1.0 - mid), rate_end + c * b * mid
        a = b
    if a > 0 and math.isfinite(a):
        return jump * start + jump_end * (end / a), rate * start + rate_end * (end / a)
    return (jump + jump_end) * start, (rate + rate_end) * start  # X̂ held at the first row's


def _sum(values: Any) -> float:
    """Σ of floats left to right (0.0 for none)."""
    total = 0.0
    for j, x in enumerate(values):
        total = total + x if j else x
    return total
