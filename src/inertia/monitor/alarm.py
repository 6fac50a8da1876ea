"""The stability alarm: the margin h²λ̂/(2(1 + μ)) in the map's metric (docs/theory.md §4: the
heavy ball is stable iff it is < 1; for Adam it is 1 at Cohen et al.'s threshold
λ_max(P⁻¹H) = (2 + 2β₁)/((1 − β₁)η)), a CUSUM of its excess over 1 in standard errors, and the
regime of the run.

A margin at or above 1 alone does not mean divergence: full-batch training settles at the
edge of stability (Cohen et al. 2021, 2022), the sharpness hovering at its threshold while the
loss keeps falling, the oscillation along the top direction held in check by the loss's
non-quadratic terms. The regime is therefore read from the energy as well:

- "edge" (1): the margin is at least `EDGE`, or its evidence has passed the threshold, with
  the energy held;
- "diverging" (2): the margin's evidence has passed its threshold and either the energy has
  grown, net of the heat the noise injected, by more than the factor e^{`GROWTH`} above its
  recent low (a CUSUM of log I: G_k = max(0, G_{k−1} + log((I_k − ΔN_k)/I_{k−1})), with
  energies below `FLOOR` × the first row's counted as that floor, so that a spike near a
  minimum that is small against where the run started does not count), or the margin is at
  least `FAST` (the top mode then grows several-fold a step: no catapult that recovered
  started there) and, from the two-step curvature, which can overestimate on a non-smooth
  loss, the energy rose at this row;
- "stable" (0): otherwise.

The alarm is raised when the regime has been "diverging" for `patience` rows. A loss that
first exceeds 10× its start has passed the growth criterion (for a positive loss, I_0 = L_0
and I ≥ L), so the criterion delays no alarm beyond that point. Rows that carry no margin
information are skipped: a loss that is zero or subnormal, iterates whose squared norm is
subnormal, or a step below the parameters' round-off (‖Δθ‖² ≤ eps²‖θ‖²).

λ̂, the curvature, comes in one of four ways, fixed at construction:

- "hessian" (with per-sample losses): the top curvature of the step's minibatch Hessian along
  the motion (`inertia.monitor.curvature.TopCurvature`), and the margin is the mean-square one,
  + h²Var(λ_B)/(2(1 − μ)λ̂) (`inertia.theory.heavy_ball_margin`), its standard error from the
  per-sample curvatures;
- "two_steps" (no noise estimate, or "fluctuation", whose ‖g_B‖² holds the gradient as well
  as its noise and grows with a divergence: the gradients are taken as exact): the largest
  curvature over the last two steps (`two_step_curvature`), from gradients the steps
  already have;
- "secant" (a micro-batch or DDP-ranks noise estimate): the secant along the last step,
  its noise bias removed and its standard error from the noise along the step;
- with `sharpness=closure`: the top eigenvalue in the metric of the closure's probe loss
  (`inertia.monitor.sharpness`), every `sharpness_every` steps, exact up to its power
  iteration (standard error 0), and the margin h²λ/(2(1 + μ)) with each row's own step (a
  learning-rate jump between measurements is seen at once); without a noise estimate the
  larger of it and the two-step margin along the motion (both are lower bounds on a
  quadratic). The others read the curvature along the motion, which is blind to a direction
  the motion has not yet found.

The secant and two-step curvatures are taken in the map's metric: ⟨g_k − g_{k−1}, Δθ⟩ over
‖Δθ‖²_M = 2h²K (the two-step curvature, which needs ⟨Δθ_{k−1}, MΔθ_k⟩, falls back to the
secant for a map with a metric).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..theory import heavy_ball_margin
from .curvature import MathAttention, TopCurvature
from .layout import GroupLayout
from .maps import METRIC_KINDS, GroupMap
from .noise import per_sample_losses
from .sharpness import Sharpness

CURVATURE_MEMORY = 0.5  # weight of the past in the curvature average (rows: 1/(1 − w))
ALARM_EVIDENCE = 4.0  # the alarm's threshold on S = Σ (margin − 1)/stderr (a CUSUM, in z units)
PARALLEL = 1e-6  # sin² of the angle below which two steps span one direction, not two
ROUND_OFF = 1e-3  # the largest relative round-off the two-step curvature may carry
EDGE = 0.85  # the margin from which a run is at the edge of stability
GROWTH = math.log(4.0)  # log of the energy's rise above its recent low that means divergence
FAST = 3.0  # a margin that means divergence without waiting for the energy
FLOOR = 0.1  # energies below this share of the first row's count as it in the growth
STABLE, AT_EDGE, DIVERGING = 0, 1, 2  # `Row.regime`
Mode = Literal["hessian", "two_steps", "secant"]


def two_step_curvature(
    a11: float,
    a21: float,
    a22: float,
    b11: float,
    b12: float,
    b22: float,
    precision: float = 0.0,
) -> float:
    """The largest curvature over span(d₁, d₂), a Rayleigh–Ritz value: with D = [d₁ d₂],
    A = DᵀHD and B = DᵀD, the larger root λ of det(A − λB) = 0, i.e. of
    (b11·b22 − b12²)λ² − (a11·b22 + a22·b11 − 2·a21·b12)λ + (a11·a22 − a21²) = 0.
    On a quadratic it never exceeds λ_max and equals it once the two steps span the top
    eigenvector. Resolving a second direction divides the data's relative error
    (`precision`) by sin²(d₁, d₂): where that exceeds ROUND_OFF, or the steps are (nearly)
    parallel, it is the secant a11/b11."""
    det = b11 * b22 - b12 * b12
    floor = max(PARALLEL, precision / ROUND_OFF) if math.isfinite(precision) else math.inf
    if not (det > floor * b11 * b22 and math.isfinite(a21 + a22 + b12)):  # sin² > floor
        return a11 / b11
    half = 0.5 * (a11 * b22 + a22 * b11 - 2.0 * a21 * b12)
    return (half + math.sqrt(max(half * half - det * (a11 * a22 - a21 * a21), 0.0))) / det


def alarm_mode(alarm: bool, noise: str | None) -> Mode | None:
    """The curvature the alarm uses with this noise estimate (None: no alarm)."""
    if not alarm:
        return None
    exact = noise in (None, "fluctuation")  # "fluctuation" holds the gradient: not noise alone
    return "hessian" if noise == "per_sample" else "two_steps" if exact else "secant"


@dataclass(frozen=True)
class AlarmReading:
    """A row's margin, whether the alarm is raised (the evidence has passed its threshold for
    `patience` rows) and whether it was raised at this row (`fired`)."""

    margin: float
    raised: bool
    fired: bool
    regime: int = STABLE
    sharpness: float = math.nan


class StabilityAlarm:
    """The margin per row from the curvature of `mode`, and the alarm over rows."""

    def __init__(
        self,
        layouts: Sequence[GroupLayout],
        mode: Mode,
        patience: int,
        attention: MathAttention | None = None,
        sharpness: Sharpness | None = None,
    ):
        self.layouts, self.mode, self.patience = layouts, mode, patience
        self._eps = [layout.eps for layout in layouts]  # the parameters' unit round-off
        self._tiny = max(
            (torch.finfo(p.dtype).tiny for x in layouts for p in x.params), default=0.0
        )  # the smallest normal number of the parameters' precision
        self.sharpness = sharpness
        self._sharp = (math.nan, math.nan)  # the last (margin, sharpness) measured
        self._growth = 0.0  # G_k, the CUSUM of the energy's log growth
        self._last_energy: tuple[float, float] | None = None  # (I, injected) of the last row
        self._floor = math.nan  # FLOOR × the first informative row's inertia
        n = len(layouts)
        self.attention = MathAttention() if attention is None else attention
        groups = [x.params for x in layouts]
        self._top = TopCurvature(groups, self.attention) if mode == "hessian" else None
        self._measured: list[float] | None = None  # Σλ̂, ΣVar(λ̂) over the step's micro-batches
        self._count = 0
        self._last_secant: list[tuple[float, float] | None] = [None] * n  # (dᵀHd, ‖d‖²)
        # EMAs of ⟨Δg, Δθ⟩, ‖Δθ‖² and the numerator's noise variance, per group (`_secant`)
        self._ema = [[0.0, 0.0, 0.0] for _ in range(n)]
        self._above = 0  # rows in a row with the evidence above its threshold
        self._evidence = 0.0  # S_k = max(0, S_{k−1} + (margin − 1)/stderr)

    def observe(self, per_sample: Tensor | None, steps: list[Tensor] | None) -> None:
        """A micro-batch of a booked step ("hessian": its top curvature along `steps`)."""
        if self._top is None:
            return
        losses = per_sample_losses(per_sample)
        self._count += 1
        if steps is not None:
            measured = self._top.measure(losses, steps)
            before = self._measured or [0.0, 0.0]
            self._measured = [x + y for x, y in zip(before, measured, strict=True)]

    def discard(self) -> None:
        """Forget the curvature measured since the last row (its step is left unbooked)."""
        self._measured, self._count = None, 0

    def take(self, groups: int, device: torch.device) -> tuple[list[Tensor], list[Tensor]]:
        """The step's (Var(x̂ᵀH_Bx̂), x̂ᵀH_Bx̂) per group since the last row, averaged over its
        micro-batches (independent batches: the variance ÷ m²); NaN where not measured."""
        m = self._count
        spread, curvature = (
            (self._measured[1] / m**2, self._measured[0] / m) if self._measured else (math.nan,) * 2
        )
        self._measured, self._count = None, 0
        values = torch.tensor((spread, curvature), dtype=torch.float64, device=device).unbind()
        return [values[0]] * groups, [values[1]] * groups

    def measure_sharpness(self, optimizer: torch.optim.Optimizer, now: list[GroupMap]) -> None:
        """Measure the probe's margin and sharpness for the step `now` is about to take."""
        if self.sharpness is not None:
            self._sharp = self.sharpness.measure(optimizer, now)

    def update(
        self,
        now: list[GroupMap],
        last: list[GroupMap] | None,
        per_group: dict[str, list[float]],
        last_noise: list[float],
        energy: tuple[float, float],
    ) -> AlarmReading:
        """The margin at this row (`now`: the maps of the step about to be taken, `last`: of
        the step taken; None before any measured step; `energy`: the row's inertia and the
        injected heat so far), the regime and the alarm's new state. In "two_steps" mode the
        gradients are taken as exact: a "fluctuation" estimate, ‖g_B‖² = tr(C)/B + ‖∇L‖²,
        bounds the noise with the gradient itself, which grows with a divergence, and neither
        its bias, its variance nor its heat is counted."""
        if self.mode == "two_steps":
            last_noise = [math.nan] * len(last_noise)
        if not self._informative(per_group):
            self._last_energy = None
            return AlarmReading(math.nan, False, False, STABLE, self._sharp[1])
        margin, stderr = self._margin(now, last, per_group, last_noise)
        unsure = self.mode == "two_steps"  # it can overestimate on a non-smooth loss
        if self.sharpness is not None:
            probe = self._sharp[1] * self._scale(now)
            noisy = self.mode != "two_steps"  # with noise the motion's margin is not a bound
            if not math.isnan(probe) and (noisy or not margin >= probe):
                margin, stderr, unsure = probe, 0.0, False
        self._evidence = self._weigh(margin, stderr)
        rose = self._grow(*energy)
        above = self._evidence > ALARM_EVIDENCE
        if above and (self._growth > GROWTH or (margin >= FAST and (rose or not unsure))):
            regime = DIVERGING
        elif above or margin >= EDGE:
            regime = AT_EDGE
        else:
            regime = STABLE
        self._above = self._above + 1 if regime == DIVERGING else 0
        raised = self._above >= self.patience
        fired = raised and self._above == self.patience
        return AlarmReading(margin, raised, fired, regime, self._sharp[1])

    def _informative(self, per_group: dict[str, list[float]]) -> bool:
        """Whether the row carries margin information: a normal, non-zero loss, and a group
        whose iterates are normal numbers and whose step is above their round-off."""
        if not abs(per_group["loss"][0]) >= self._tiny:
            return False
        for i, eps in enumerate(self._eps):
            theta_sq, delta_sq = per_group["theta_sq"][i], per_group["delta_sq"][i]
            if math.isnan(theta_sq):  # not measured: nothing tells against the row
                return True
            if theta_sq >= self._tiny and delta_sq > eps * eps * theta_sq:
                return True
        return False

    @staticmethod
    def _scale(now: list[GroupMap]) -> float:
        """h²/(2(1 + μ)) of the first group's step: the margin per unit of sharpness."""
        m = now[0] if now else None
        if m is None or not (m.h > 0 and m.momentum < 1):
            return math.nan
        return m.h * m.h / (2.0 * (1.0 + m.momentum))

    def _grow(self, inertia: float, injected: float) -> bool:
        """G_k = max(0, G_{k−1} + log((I_k − ΔN_k)/I_{k−1})), energies at least the floor, where
        positive and finite (else G is kept), and whether I_k − ΔN_k rose; "two_steps" takes
        the gradients as exact and counts no heat, ΔN = 0 (whatever a checkpoint's row held)."""
        if math.isnan(self._floor) and inertia > 0 and math.isfinite(inertia):
            self._floor = FLOOR * inertia
        last, self._last_energy = self._last_energy, (inertia, injected)
        if last is None:
            return False
        heat = injected - last[1] if self.mode != "two_steps" else 0.0
        net = inertia - (heat if math.isfinite(heat) else 0.0)
        before = max(last[0], self._floor)
        net = max(net, self._floor) if net > 0 else net
        if before > 0 and net > 0 and math.isfinite(net) and math.isfinite(before):
            self._growth = max(0.0, self._growth + math.log(net / before))
        return net > before

    def _margin(
        self,
        now: list[GroupMap],
        last: list[GroupMap] | None,
        per_group: dict[str, list[float]],
        last_noise: list[float],
    ) -> tuple[float, float]:
        """The largest margin over groups, and its noise standard error in that group."""
        if last is None:
            return math.nan, math.nan
        best = (math.nan, math.nan)
        for i, (m, step_map) in enumerate(zip(now, last, strict=True)):
            if self.mode == "hessian":
                curvature = per_group["curvature"][i] + m.weight_decay
                variance = per_group["spread"][i]  # of λ_B, and λ̂'s squared standard error
                stderr, fluctuation = math.sqrt(variance), variance
            else:
                curvature, stderr = self._secant(i, m, step_map, per_group, last_noise[i])
                fluctuation = 0.0
            if not (math.isfinite(curvature) and math.isfinite(m.h) and m.momentum < 1):
                continue
            h2 = m.h * m.h
            scale = h2 / (2.0 * (1.0 + m.momentum))
            margin, stderr = scale * curvature, scale * stderr
            if fluctuation > 0 and curvature > 0 and math.isfinite(fluctuation):
                total = heavy_ball_margin(
                    h2 * curvature, m.momentum, variance=h2 * h2 * fluctuation
                )
                # the mean-square term is ∝ 1/λ̂: it carries λ̂'s relative error too
                stderr *= math.hypot(1.0, (total - margin) / margin)
                margin = total
            if not margin <= best[0]:  # the largest margin, NaN-safe
                best = (margin, stderr)
        return best

    def _secant(
        self,
        i: int,
        m: GroupMap,
        step_map: GroupMap,
        per_group: dict[str, list[float]],
        noise: float,
    ) -> tuple[float, float]:
        """Group i's curvature from gradients, (λ̂, standard error): the secant along the last
        step, ⟨g_k − g_{k−1}, Δθ⟩/‖Δθ‖², plus wd. With a noise estimate (`noise`: tr(C)/B of
        the last row) the bias h²·tr(C)/B that the step's own gradient noise puts into the
        numerator is removed, and the numerator's noise variance, 2Δθᵀ(C/B)Δθ (two independent
        gradients), gives the standard error; where the estimate has no direction
        ("ranks") the bound 2‖Δθ‖²·tr(C)/B stands in. In "two_steps" mode λ̂ is the
        largest curvature over the last two steps (`two_step_curvature`): a mode that is still
        a small part of the motion is seen as soon as the two steps hold it. Numerator,
        denominator and variance are averaged over rows (exponentially, weight ½) so that a
        single step does not decide."""
        delta_sq, along = per_group["delta_sq"][i], per_group["along"][i]
        numerator = per_group["grad_dot_before"][i] - per_group["grad_dot"][i]
        in_metric = step_map.kind in METRIC_KINDS
        if in_metric:  # ‖Δθ‖²_M = 2h²K
            delta_sq = 2.0 * step_map.h * step_map.h * per_group["kinetic"][i]
        variance = 0.0
        if math.isfinite(noise):
            numerator -= step_map.h * step_map.h * noise
            variance = 2.0 * (along if math.isfinite(along) else delta_sq * noise)
        numerator += m.weight_decay * delta_sq
        if self.mode == "two_steps" and not in_metric:
            last, self._last_secant[i] = self._last_secant[i], (numerator, delta_sq)
            if last is not None and delta_sq > 0:
                # ⟨Δθ_prev, H Δθ⟩ = ⟨Δθ_prev, g_k − g_{k−1}⟩ (+ wd ⟨Δθ_prev, Δθ⟩)
                cross = per_group["cross"][i]
                a21 = per_group["cross_before"][i] - per_group["cross_grad"][i]
                a21 += m.weight_decay * cross
                precision = self._eps[i] * math.sqrt(per_group["theta_sq"][i] / delta_sq)
                numerator = delta_sq * two_step_curvature(
                    numerator, a21, last[0], delta_sq, cross, last[1], precision
                )
        w = CURVATURE_MEMORY
        ema = self._ema[i]
        ema[0] = w * ema[0] + (1 - w) * numerator
        ema[1] = w * ema[1] + (1 - w) * delta_sq
        ema[2] = w * w * ema[2] + (1 - w) ** 2 * variance
        if not ema[1] > 0:
            return math.nan, math.nan
        return ema[0] / ema[1], math.sqrt(ema[2]) / ema[1]

    def _weigh(self, margin: float, stderr: float) -> float:
        """The evidence that the margin exceeds 1: a one-sided CUSUM of the standardised excess,
        S_k = max(0, S_{k−1} + (margin − 1)/stderr). Without noise (stderr 0) one row above 1
        decides; with noise a run of rows above 1 accumulates until S passes
        `ALARM_EVIDENCE`, while rows below 1 pull it back to 0."""
        if not math.isfinite(margin):
            return 0.0
        if not stderr > 0:
            return math.inf if margin > 1 else 0.0
        return max(0.0, self._evidence + (margin - 1.0) / stderr)

    def fresh(self) -> StabilityAlarm:
        """An alarm like this one, as constructed (attention kept on the kernel it is on)."""
        return StabilityAlarm(
            self.layouts, self.mode, self.patience, self.attention, self.sharpness
        )

    def close(self) -> None:
        """Attention back on the kernels it had before the alarm met a fused one."""
        self.attention.restore()

    def state_dict(self) -> dict[str, Any]:
        return {
            "ema": [list(e) for e in self._ema],
            "last_secant": list(self._last_secant),
            "above": self._above,
            "evidence": self._evidence,
            "growth": self._growth,
            "floor": self._floor,
            "last_energy": None if self._last_energy is None else list(self._last_energy),
            "sharp": list(self._sharp),
            "vector": None if self.sharpness is None else self.sharpness.state_dict(),
            "tracked": self._top.state_dict() if self._top is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ema = [list(e) for e in state["ema"]]
        self._last_secant = [None if s is None else (s[0], s[1]) for s in state["last_secant"]]
        self._above, self._evidence = state["above"], state["evidence"]
        self._growth = state.get("growth", 0.0)  # layouts before the regime: no growth yet
        self._floor = state.get("floor", math.nan)
        last = state.get("last_energy")
        self._last_energy = None if last is None else (last[0], last[1])
        sharp = state.get("sharp", (math.nan, math.nan))
        self._sharp = (sharp[0], sharp[1])
        if self._top is not None:
            self._top.load_state_dict(state["tracked"] or [])
        if self.sharpness is not None:
            self.sharpness.load_state_dict(state.get("vector"))
