"""benchmarks/real_training.py, tiny: it runs end to end, its two-batch noise scale (computed
from gradients it reads itself) agrees with the monitor's column, the monitor's clip column
agrees with clip_grad_norm_'s factor, its floor is the monitor's (c counted once), and its
books close."""

from __future__ import annotations

import json
import math

import pytest

from inertia import Ledger
from real_training import ARMS, main

TINY = [
    "--d-model", "32", "--layers", "1", "--heads", "2", "--context", "16",
    "--micro-batch", "4", "--warmup", "5", "--plateau", "20", "--arm-steps", "10",
    "--eval-every", "5", "--chars", "10000", "--heldout-chars", "2000",
    "--eval-windows", "16", "--quiet",
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "-1"], "--lr: a positive learning rate"),
        (["--heads", "3"], "--heads: a divisor of --d-model"),
        (["--arm-steps", "10", "--eval-every", "50"], "--arm-steps: at least 2 × --eval-every"),
        (["--settle", "1.5"], "--settle: a share in [0, 1)"),
        (["--threads", "0"], "--threads: a positive integer"),
        (["--chars", "100000000"], "--chars + --heldout-chars: the standard library at"),
    ],
)
def test_bad_arguments_are_refused_by_name(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
