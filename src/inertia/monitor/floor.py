"""The noise floor a monitored run predicts, beside what it measured (docs/theory.md §4)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _checks
from ..energy import Ledger
from ..theory import heavy_ball_noise_floor
from .row import OK


def _mean_se(x: Tensor) -> tuple[float, float]:
    return float(x.mean()), float(x.std() / math.sqrt(len(x))) if len(x) > 1 else math.nan


LAWS = {
    False: "heavy ball: E[K] = h²tr(C)/(2B(1 − μ²)), E[L − L*] ≈ h²tr(C)/(4B(1 − μ))",
    True: "heavy ball in the metric M = diag(sqrt(v̂) + ε): E[K] = h²tr(M⁻¹C)/(2B(1 − μ²)), "
    "E[L − L*] ≈ h²tr(M⁻¹C)/(4B(1 − μ))",
}


def noise_floor(ledger: Ledger, last: int | None = None) -> dict[str, float | int | str]:
    """Predicted stationary excess loss and kinetic energy from a monitor ledger's noise
    estimates (`inertia.theory.heavy_ball_noise_floor`, μ = 1 − γh of each row), beside the
    measured means, over its `last` rows (default: the later half) whose flag is OK and whose
    noise estimate is finite. The law is that of the heavy ball in the map's metric M (the
    ledger's `metric` column): E[K] = h²·tr(M⁻¹C)/(2B(1 − μ²)), E[L − L*] ≈ h²·tr(M⁻¹C)/(4B(1 − μ)),
    with M the identity for SGD and diag(sqrt(v̂) + ε) for Adam and RMSprop, taken as fixed over
    the window (`law` names it). Where gradients were clipped (the ledger's `clip` column c, the
    factor by which the step's gradient was scaled, `noise="microbatch"`) the step is that of
    the learning rate c·h² with the noise c·ξ: E[K] × c², E[L − L*] × c, row by row. Standard
    errors treat rows as independent (an underestimate for correlated rows)."""
    rows = len(ledger["step"])
    if rows < 4:
        raise ValueError(f"noise_floor needs at least 4 rows; got {rows}")
    last = rows // 2 if last is None else _checks.integer("last", last, low=2)
    window = slice(max(0, rows - last), rows)
    trace, h, gamma = ledger["noise_trace"][window], ledger["h"][window], ledger["gamma"][window]
    mu = 1.0 - gamma * h
    ok = trace.isfinite() & (ledger["flag"][window] == OK) & (mu >= 0) & (mu < 1)
    if not ok.any():
        raise ValueError(
            "noise_floor: no row of the window has a finite noise estimate and friction "
            "(0 ≤ μ = 1 − γh < 1)"
        )
    # the law is linear in the trace, whose unbiased estimates may fall below 0 on a row
    kinetic, excess = heavy_ball_noise_floor(h[ok], torch.ones_like(h[ok]), mu[ok])
    kinetic, excess = kinetic * trace[ok], excess * trace[ok]
    if "clip" in ledger:  # steps scaled by c: the learning rate c·h², the noise c·ξ
        c = ledger["clip"][window][ok].nan_to_num(1.0)
        kinetic, excess = kinetic * c * c, excess * c
    excess_mean, excess_se = _mean_se(excess)
    kinetic_mean, kinetic_se = _mean_se(kinetic)
    potential, potential_se = _mean_se(ledger["potential"][window][ok])
    measured_k, measured_k_se = _mean_se(ledger["kinetic"][window][ok])
    metric = "metric" in ledger and bool((ledger["metric"][window] > 0).any())
    return {
        "law": LAWS[metric],
        "rows": int(ok.sum()),
        "noise_trace": float(trace[ok].mean()),
        "excess_loss": excess_mean,
        "excess_loss_stderr": excess_se,
        "kinetic": kinetic_mean,
        "kinetic_stderr": kinetic_se,
        "measured_potential": potential,
        "measured_potential_stderr": potential_se,
        "measured_kinetic": measured_k,
        "measured_kinetic_stderr": measured_k_se,
    }
