"""benchmarks/real_training.py, tiny: it runs end to end, its two-batch noise scale (computed
from gradients it reads itself) agrees with the monitor's column, the monitor's clip column
agrees with clip_grad_norm_'s factor, its floor is the monitor's (c counted once), its books
close, and it prints and records the drop's factors. Its mean-squared displacement and the
share of the noise it leaves unrelaxed, on Ornstein–Uhlenbeck modes whose answer is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from inertia import Ledger
from real_training import ARMS, Displacement, main, unrelaxed_share

TINY = [
    "--d-model", "32", "--layers", "1", "--heads", "2", "--context", "16",
    "--micro-batch", "4", "--warmup", "5", "--plateau", "20", "--arm-steps", "10",
    "--eval-every", "5", "--chars", "10000", "--heldout-chars", "2000",
    "--eval-windows", "16", "--probe-window", "6", "--probe-every", "3",
    "--probe-windows", "16", "--quiet",
]  # fmt: skip


def test_a_tiny_run_prints_its_tables_and_writes_its_figures(tmp_path, capsys):
    assert main([*TINY, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for heading in ("Books at the end", "Noise floor", "Gradient noise scale"):
        assert heading in printed
    assert "ratio predicted / measured" in printed
    assert "The monitor's `clip` column against clip_grad_norm_'s factor" in printed
    assert "unclipped" not in printed  # the monitor books c itself
    for name in ("real_training_loss.png", "real_training_noise_scale.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    fork = summary["fork"]
    for arm in ARMS:
        ledger = Ledger.read_csv(tmp_path / f"ledger_{arm}.csv")
        assert len(ledger["loss"]) == fork + 10
        b = summary["books"][arm]  # I − I₀ = −dissipated − decay + injected + schedule + residual
        closed = b["dissipated"] + b["decay"] - b["injected"] - b["schedule"] - b["residual"]
        assert b["-dI"] == pytest.approx(closed, rel=1e-9, abs=1e-9)
        # the monitor's heat carries c² once: summed again from its columns it is the same,
        # and booking without c (every c ≤ 1) would inject more
        assert b["injected_resummed"] == pytest.approx(b["injected"], rel=1e-9)
        assert b["injected_unclipped"] >= b["injected"]
        # the monitor's clip column against the factor of the norm clip_grad_norm_ returned
        agree = summary["clip_agreement"][arm]
        assert agree["max_abs_difference"] < 1e-5
        assert agree["rows"] == fork + 9  # every row but step 0's (Adam has no metric yet)
        assert agree["clipped_rows"] > 0
    # the floor is noise_floor()'s, which is the per-row law with the ledger's clip
    assert summary["floor_recomputed"] == pytest.approx(summary["floor"]["excess_loss"], rel=1e-9)
    assert summary["floor_unclipped"] >= summary["floor"]["excess_loss"]
    assert summary["predicted_drop"] == pytest.approx(0.9 * summary["floor"]["excess_loss"])
    scale = summary["noise_scale"]
    # the monitor's micro-batch noise and noise scale against the benchmark's own two-batch
    # estimate in Adam's metric, from the gradients it read between micro-batches
    assert scale["trace_max_error"] < 1e-5
    assert scale["monitor_nan_rows"] == scale["two_batch_nan_rows"]
    assert scale["ratio_median"] == pytest.approx(1.0, abs=1e-5)
    assert scale["ratio_range"][0] == pytest.approx(1.0, abs=1e-4)
    assert scale["ratio_range"][1] == pytest.approx(1.0, abs=1e-4)
    assert math.isfinite(summary["ratio_heldout"]) or summary["drop_heldout"][0] == 0
    # the drop's factors: the control arm's MSD at lags 1, τ₀ = s₀/5 and τ₁ = s₁/5 (here 1
    # and 2), its unrelaxed share, the line probe on both losses, the corrected drops
    assert "The drop, factor by factor" in printed
    x = summary["decomposition"]
    assert x["lags"] == [1, 2]
    assert sorted(x["msd"]) == ["1", "2"]
    for name in ("heldout", "train"):
        assert set(x["probe"][name]) == {"excess", "virial"}
    numbers = [
        *x["msd"].values(), x["per_step"], x["lag_one_ratio"], x["unrelaxed"], x["drift"],
        *x["anharmonic"].values(), x["curvature"], *x["corrected"].values(),
        x["ratio_heldout"], x["ratio_train"],
        *(v for p in x["probe"].values() for v in p.values()),
    ]  # fmt: skip
    assert all(math.isfinite(v) for v in numbers)
    assert x["msd"]["2"] > x["msd"]["1"] > 0
    assert x["per_step"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "-1"], "--lr: a positive learning rate"),
        (["--heads", "3"], "--heads: a divisor of --d-model"),
        (["--arm-steps", "10", "--eval-every", "50"], "--arm-steps: at least 2 × --eval-every"),
        (["--settle", "1.5"], "--settle: a share in [0, 1)"),
        (["--arm-steps", "100", "--probe-window", "200"], "--probe-window: at most --arm-steps"),
        (["--threads", "0"], "--threads: a positive integer"),
        (["--chars", "100000000"], "--chars + --heldout-chars: the standard library at"),
    ],
)
def test_bad_arguments_are_refused_by_name(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_the_displacement_is_the_mean_over_shared_origins_in_the_later_metric():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(13, 5, generator=gen, dtype=torch.float64).cumsum(0)
    metric = torch.rand(13, 5, generator=gen, dtype=torch.float64) + 0.5
    moved = Displacement([1, 3, 4], steps=12)
    for t, m in zip(theta, metric, strict=True):
        assert math.isnan(moved.msd()[4])  # not before every lag has all its origins
        moved.add(t, m)
    origins = range(12 - 4 + 1)  # the same origins at every lag: those the largest fits
    for lag, value in moved.msd().items():
        direct = np.mean([float((metric[k + lag] * (theta[k + lag] - theta[k]) ** 2).sum())
                          for k in origins])  # fmt: skip
        assert value == pytest.approx(direct, rel=1e-12)
        mean_move = np.mean([(theta[k + lag] - theta[k]).numpy() for k in origins], 0)
        mean_metric = np.mean([metric[k + lag].numpy() for k in origins], 0)
        drift = float(np.sum(mean_metric * mean_move**2))
        assert moved.drift()[lag] == pytest.approx(drift, rel=1e-12)
    assert len(moved.origins) <= 4  # θ_k is dropped once its largest lag has passed


def test_unrelaxed_share_of_ornstein_uhlenbeck_modes_is_their_closed_form():
    """Fixed-metric SGD on a diagonal quadratic, x ← x − (η/M)(λx + s·ξ): each mode is
    x ← (1 − a)x + noise, a = ηλ/M, with lag-τ MSD (in M) 2·M·Var·(1 − (1 − a)^τ) from its
    stationary state, and the free diffusion c²η²·tr(M⁻¹C)/B = η²·Σ s²/M per step."""
    rng = np.random.default_rng(0)
    modes, chains, steps, lo, hi, eta = 20, 500, 2000, 20, 40, 0.01
    a = np.geomspace(1e-3, 0.3, modes)  # from modes that barely move to ones relaxed at lag 10
    m, s = rng.uniform(0.5, 2.0, modes), rng.uniform(0.5, 2.0, modes)
    lam = a * m / eta
    var = (eta * s / m) ** 2 / (1 - (1 - a) ** 2)
    x = rng.standard_normal((chains, modes)) * np.sqrt(var)
    metric = torch.tensor(np.tile(m, chains))
    moved = Displacement([1, lo, hi], steps)
    moved.add(torch.tensor(x.ravel()), metric)
    for _ in range(steps):
        x = x - eta / m * (lam * x + s * rng.standard_normal((chains, modes)))
        moved.add(torch.tensor(x.ravel()), metric)
    per_step = chains * eta**2 * np.sum(s**2 / m)

    def msd(tau: int) -> float:
        return chains * float(np.sum(m * 2 * var * (1 - (1 - a) ** tau)))

    measured = moved.msd()
    assert measured[1] == pytest.approx(msd(1), rel=0.01)
    exact = (msd(hi) - msd(lo)) / ((hi - lo) * per_step)
    assert 0.3 < exact < 0.8  # some modes relaxed, some not: the test has teeth
    assert unrelaxed_share(measured, lo, hi, per_step) == pytest.approx(exact, rel=0.02)


def test_the_unrelaxed_share_at_lag_2s_over_r_predicts_what_a_drop_arm_has_not_shed():
    """Closed forms on Ornstein–Uhlenbeck modes x ← (1 − a)x + noise, the floor's weight of
    each mode ∝ its share of the free diffusion (s²/m): cut η to η/r at step 0 from the
    stationary state at η; the share of the drop still to come, averaged over steps
    [s₀, s₁], against the secant f̄ of MSD at η over lags [2s₀/r, 2s₁/r]. The two agree to
    first order in a ((1 − a/r)^{2s} against (1 − a)^{2s/r}), within 5% on this spectrum."""
    rng = np.random.default_rng(1)
    modes, eta, r, s0, s1 = 200, 0.01, 10, 300, 600
    a = np.geomspace(1e-4, 0.3, modes)
    m, s = rng.uniform(0.5, 2.0, modes), rng.uniform(0.5, 2.0, modes)

    def variance(rate: float, lr: float) -> np.ndarray:  # stationary, a = lr·λ/m ∝ lr
        return (lr * s / m) ** 2 / (1 - (1 - rate) ** 2)

    lam = a * m / eta
    before, after = variance(a, eta), variance(a / r, eta / r)
    steps = np.arange(s0, s1 + 1)
    left = (1 - a[None, :] / r) ** (2 * steps[:, None])  # share of each mode's drop to come
    drop = 0.5 * lam * (before - after)
    unshed = float(np.mean(left @ drop) / drop.sum())

    def msd(tau: int) -> float:
        return float(np.sum(m * 2 * before * (1 - (1 - a) ** tau)))

    per_step = eta**2 * float(np.sum(s**2 / m))
    f = unrelaxed_share({t: msd(t) for t in (2 * s0 // r, 2 * s1 // r)}, 2 * s0 // r,
                        2 * s1 // r, per_step)  # fmt: skip
    assert 0.2 < unshed < 0.8  # part of the drop still to come: the test has teeth
    assert f == pytest.approx(unshed, rel=0.05)
