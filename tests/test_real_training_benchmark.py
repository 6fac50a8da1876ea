"""benchmarks/real_training.py, tiny: it runs end to end, its two-batch noise scale (computed
from gradients it reads itself) agrees with the monitor's column, the monitor's clip column
agrees with clip_grad_norm_'s factor, its floor is the monitor's (c counted once), its books
close, and it predicts the drop from factors measured before the fork, over the floor's
window (and again on the control arm, a cross-check). Its mean-squared displacement, the share
of the noise it leaves unrelaxed and that share's standard error, on Ornstein–Uhlenbeck modes
whose answer is known; its line probe and the probe's standard errors on a quadratic and a
quartic."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from inertia import Ledger
from real_training import (
    ARMS,
    Displacement,
    floor_trend,
    line_probe,
    main,
    ratio_se,
    unrelaxed_share,
    unrelaxed_share_se,
)

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
    # the drop predicted before the fork: the factors measured over the floor's window (the
    # plateau's later half, steps 15–25 here; the probe over its last 6 steps, every 3rd), and
    # the same on the control arm (arm steps 0–10, the probe over its first 6): a cross-check
    assert "The drop predicted at η before the fork" in printed
    assert "predicted before the fork ÷ measured" in printed
    x = summary["decomposition"]
    assert x["lags"] == [1, 2]
    window = 20 // 2
    assert summary["window"] == [fork - window, fork - 1]  # the floor's rows
    assert x["before"]["steps"] == [fork - window, fork]  # θ before row 15 … θ at the fork
    assert x["before"]["probe_steps"] == [fork - 6, fork - 3, fork]
    assert x["after"]["steps"] == [fork, fork + 10]
    assert x["after"]["probe_steps"] == [fork, fork + 3, fork + 6]
    floor = summary["floor"]["excess_loss"]
    for where in ("before", "after"):
        y = x[where]
        assert sorted(y["msd"]) == ["1", "2"]
        assert y["msd"]["2"] > y["msd"]["1"] > 0
        assert y["per_step"] > 0
        for name in ("heldout", "train"):
            p = y["probe"][name]
            # the part linear in x_k sums to zero: the per-snapshot parts have the same means
            assert np.mean(p["excess_k"]) == pytest.approx(p["excess"], rel=1e-6, abs=1e-9)
            assert np.mean(p["virial_k"]) == pytest.approx(p["virial"], rel=1e-6, abs=1e-9)
            assert len(p["excess_k"]) == 3
            # the prediction is 0.9 × floor × trend × (1 − f̄) × E(1)/V_train
            shape = np.mean(p["excess_k"]) / np.mean(y["probe"]["train"]["virial_k"])
            expected = 0.9 * floor * y["trend"][0] * (1 - y["unrelaxed"]) * shape
            assert y["prediction"][name][0] == pytest.approx(expected, rel=1e-9)
            drop = summary[f"drop_{name}"][0]
            assert y["ratio"][name][0] == pytest.approx(expected / drop, rel=1e-9)
        numbers = [
            *y["msd"].values(), y["per_step"], y["lag_one_ratio"], y["unrelaxed"],
            y["unrelaxed_se"], *y["trend"], y["drift"], *y["curvature"],
            *(v for r in y["anharmonic"].values() for v in r),
            *(v for r in y["prediction"].values() for v in r),
            *(v for r in y["ratio"].values() for v in r),
        ]  # fmt: skip
        assert all(math.isfinite(v) for v in numbers)
    assert summary["headline_heldout"] == x["before"]["ratio"]["heldout"]
    assert summary["headline_train"] == x["before"]["ratio"]["train"]
    assert x["middle"] == fork + (5 + 10) // 2  # the settled steps' middle: the trend's step


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "-1"], "--lr: a positive learning rate"),
        (["--heads", "3"], "--heads: a divisor of --d-model"),
        (["--arm-steps", "10", "--eval-every", "50"], "--arm-steps: at least 2 × --eval-every"),
        (["--settle", "1.5"], "--settle: a share in [0, 1)"),
        (["--arm-steps", "100", "--probe-window", "200"], "--probe-window: at most --arm-steps"),
        (["--plateau", "500", "--probe-window", "300"], "half of --plateau = 250, not 300"),
        (["--plateau", "400"], "--plateau: at least 480 steps, so that its later half"),
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
        # per block of consecutive origins (12 − 4 + 1 = 9 origins: 9 blocks of one)
        blocks = [float((metric[k + lag] * (theta[k + lag] - theta[k]) ** 2).sum())
                  for k in origins]  # fmt: skip
        assert moved.blocks()[lag] == pytest.approx(blocks, rel=1e-12)
    assert len(moved.origins) <= 4  # θ_k is dropped once its largest lag has passed
    wide = Displacement([1, 2], steps=30)  # 29 origins in 10 blocks of 2 or 3
    for t in torch.randn(31, 3, generator=gen, dtype=torch.float64).cumsum(0):
        wide.add(t, torch.ones(3, dtype=torch.float64))
    sizes = np.bincount([k * 10 // 29 for k in range(29)])
    assert sizes.sum() == 29 and set(sizes) == {2, 3}
    assert np.average(wide.blocks()[2], weights=sizes) == pytest.approx(wide.msd()[2], rel=1e-12)


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


def test_the_unrelaxed_shares_standard_error_is_its_spread_over_independent_runs():
    """One stationary run of Ornstein–Uhlenbeck modes (rates a ∈ [1e-4, 0.3], as a plateau's
    window: 750 steps, lags 60 and 120) per seed: the standard error from the blocks of origins
    against the standard deviation of f̄ over 60 independent runs. And what taking the mean
    displacement out costs on modes that are noise, not learning: the slowest look like drift
    over the window, so f̄ is low against the closed form (about a fifth, as the benchmark's
    docstring says)."""
    modes, steps, lo, hi, eta = 200, 750, 60, 120, 0.01
    rng = np.random.default_rng(2)
    a = np.geomspace(1e-4, 0.3, modes)
    m, s = rng.uniform(0.5, 2.0, modes), rng.uniform(0.5, 2.0, modes)
    lam, var = a * m / eta, (eta * s / m) ** 2 / (1 - (1 - a) ** 2)
    per_step = eta**2 * float(np.sum(s**2 / m))
    metric = torch.tensor(m)
    shares, errors = [], []
    for seed in range(60):
        r = np.random.default_rng(100 + seed)
        x = r.standard_normal(modes) * np.sqrt(var)
        moved = Displacement([1, lo, hi], steps)
        moved.add(torch.tensor(x), metric)
        for noise in r.standard_normal((steps, modes)):
            x = x - eta / m * (lam * x + s * noise)
            moved.add(torch.tensor(x), metric)
        msd, drift = moved.msd(), moved.drift()
        shares.append(unrelaxed_share({k: msd[k] - drift[k] for k in msd}, lo, hi, per_step))
        errors.append(unrelaxed_share_se(moved.blocks(), drift, lo, hi, per_step))
    spread = float(np.std(shares, ddof=1))
    assert spread > 0.01  # the share is noisy on one run: the test has teeth
    assert 0.7 < np.mean(errors) / spread < 1.4
    exact = float(np.sum(m * var * ((1 - a) ** lo - (1 - a) ** hi))) * 2 / ((hi - lo) * per_step)
    assert 0.75 < np.mean(shares) / exact < 0.9  # 0.40 against 0.49


def test_the_line_probe_on_a_quadratic_is_exact_and_without_spread():
    """L(θ) = ½θᵀHθ + bᵀθ: E(1) = V exactly for the mean of the kept θ_k, on every snapshot
    once the part linear in x_k is taken out (its standard error 0 although b and the
    snapshots' spread are large); with a quartic term ¼κΣθ⁴ the loss stiffens away from θ̄ and
    E(1) < V, the means still those of the definitions."""
    gen = torch.Generator().manual_seed(3)
    n = 40
    q = torch.randn(n, n, generator=gen, dtype=torch.float64)
    h = q @ q.T / n + 0.1 * torch.eye(n, dtype=torch.float64)
    b = 5.0 * torch.randn(n, generator=gen, dtype=torch.float64)
    kept = [torch.randn(n, generator=gen, dtype=torch.float64) for _ in range(7)]

    def quadratic(theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        return float(0.5 * theta @ h @ theta + b @ theta), h @ theta + b

    def quartic(theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        loss, grad = quadratic(theta)
        return loss + 0.25 * float((theta**4).sum()), grad + theta**3

    out = line_probe(kept, {"quadratic": quadratic, "quartic": quartic})
    p = out["quadratic"]
    assert p["excess"] / p["virial"] == pytest.approx(1.0, rel=1e-12)
    ratio, se = ratio_se(p["excess_k"], p["virial_k"])
    assert ratio == pytest.approx(1.0, rel=1e-12)
    assert se < 1e-12 and p["excess_se"] > 0.01 * p["excess"]
    mean = torch.stack(kept).mean(0)
    for name, evaluate in (("quadratic", quadratic), ("quartic", quartic)):
        direct_e = np.mean([evaluate(t)[0] for t in kept]) - evaluate(mean)[0]
        direct_v = np.mean([0.5 * float((t - mean) @ evaluate(t)[1]) for t in kept])
        assert out[name]["excess"] == pytest.approx(direct_e, rel=1e-12)
        assert out[name]["virial"] == pytest.approx(direct_v, rel=1e-12)
        assert np.mean(out[name]["excess_k"]) == pytest.approx(direct_e, rel=1e-9)
        assert np.mean(out[name]["virial_k"]) == pytest.approx(direct_v, rel=1e-9)
    ratio, se = ratio_se(out["quartic"]["excess_k"], out["quartic"]["virial_k"])
    assert ratio < 0.9 and 0 < se < 0.1


def test_ratio_se_is_the_delta_method():
    rng = np.random.default_rng(4)
    den = rng.uniform(1.0, 2.0, 2000)
    num = 0.5 * den + 0.1 * rng.standard_normal(2000)
    ratio, _ = ratio_se(num, den)
    assert ratio == pytest.approx(num.mean() / den.mean())
    # over many samples of 20 pairs, the spread of the ratio against the mean standard error
    ratios, errors = zip(*(ratio_se(num[i : i + 20], den[i : i + 20]) for i in range(0, 2000, 20)),
                         strict=True)  # fmt: skip
    assert 0.8 < np.mean(errors) / np.std(ratios, ddof=1) < 1.25


def floor_ledger(floor: np.ndarray) -> Ledger:
    """A ledger whose per-row floor c·h²·tr/(4B(1 − μ)) is `floor`: h = 1, μ = 1/2, c = 1,
    so tr/B = 2·floor (the monitor's law, `inertia.theory.heavy_ball_noise_floor`)."""
    n = len(floor)
    columns = {
        "h": torch.ones(n, dtype=torch.float64),
        "gamma": torch.full((n,), 0.5, dtype=torch.float64),
        "noise_trace": torch.as_tensor(2.0 * floor, dtype=torch.float64),
        "flag": torch.zeros(n, dtype=torch.float64),
        "clip": torch.ones(n, dtype=torch.float64),
    }
    for name in ("kinetic", "potential", "inertia", "dissipated", "injected", "residual"):
        columns[name] = torch.zeros(n, dtype=torch.float64)  # required, unused by the trend
    return Ledger(torch.arange(n, dtype=torch.float64), columns, time_name="step")


def test_the_floor_trend_is_its_line_at_the_step_and_its_error_the_spread_over_runs():
    steps = np.arange(750.0)
    line = 0.2 - 2e-5 * steps  # a falling floor, read at step 1 200 beyond its 750 rows
    exact = (0.2 - 2e-5 * 1200) / 0.2
    factor, se = floor_trend(floor_ledger(line), slice(None), 1200, 0.2)
    assert factor == pytest.approx(exact, rel=1e-12)
    assert se < 1e-12
    # noise about the line with the relative spread of the transformer's per-row floor (0.14),
    # white and AR(1) with lag-one correlation 0.5 (the transformer's is 0.09): the error
    # against the spread of the factor over independent runs
    gen = np.random.default_rng(3)
    for phi in (0.0, 0.5):
        factors, errors = [], []
        for _ in range(200):
            kicks = 0.025 * gen.standard_normal(len(steps))
            noise = np.zeros(len(steps))
            noise[0] = kicks[0] / math.sqrt(1 - phi**2)  # stationary from the first row
            for k in range(1, len(steps)):
                noise[k] = phi * noise[k - 1] + kicks[k]
            f, e = floor_trend(floor_ledger(line + noise), slice(None), 1200, 0.2)
            factors.append(f)
            errors.append(e)
        spread = np.std(factors)
        assert np.mean(factors) == pytest.approx(exact, abs=3 * spread / math.sqrt(200))
        # 200 runs give the spread to 5% and the mean error to under 1%: 3 standard errors of
        # their ratio are 15%; and one run's error is good to 15% (a 10-block jackknife's
        # scatters by a quarter)
        assert np.mean(errors) == pytest.approx(spread, rel=0.15), phi
        assert np.std(errors) < 0.15 * np.mean(errors), phi
