"""The monitor on the training people run (issue 15, item 7): the character transformer of
`workloads.py` on text built from the Python standard library's own sources (no download),
AdamW β = (0.9, 0.95), weight decay 0.1 on matrices, linear warmup then a constant learning
rate, then a cosine decay (and two other arms, below), gradients clipped to norm 1, bf16
autocast (CPU), gradient accumulation over 2 micro-batches, under
`InertiaMonitor(opt, noise="microbatch")` with `observe(loss, accumulate=True,
batch_size=b)` after each micro-batch's backward.

    python benchmarks/real_training.py [--quick] [--out DIR] [--figures DIR] [--report]
        [--threads N] [--lr 0.003] [--plateau 1500] [--arm-steps 600] [--seed 0] …

(`--help` lists every knob.) The run:

1. Warmup (100 steps), then a constant learning rate η until the loss falls slowly (the
   plateau). `monitor.noise_floor()` over the later half of the plateau predicts the
   stationary excess loss there, E[L − L*] ≈ c·η·tr(M⁻¹C)/(4B) in Adam's metric
   M = diag(sqrt(v̂) + ε), c each step's clip factor (below).
2. Everything (model, optimizer, monitor, batch stream) is forked into three arms that see
   the same batches: `control` stays at η, `drop` continues at η/10, `cosine` decays from η
   to η/10 by a half cosine (the final factor 0.1 of `workloads.warmup_cosine`). The floor
   is ∝ η, so the drop arm should settle 0.9 × floor below where it would have been at η.
3. Measured drop: the paired difference control − drop of the held-out loss (fixed windows
   of later standard-library files, float32, every --eval-every steps) and of the training
   loss (the same batches in both arms), averaged over the later half of the arms
   (--settle). The loss still falls from continued learning while the floor is read; a drop
   measured against the loss before the fork would count that too. The control arm takes it
   out: what remains is what the smaller learning rate changed. That is not all noise
   either: at η/10 the drop arm also learns the slow directions ten times more slowly,
   which pulls the difference back as the arms go on; the difference is printed against
   time and drawn. Printed: the law as-is, 0.9 × floor ÷ measured drop, and the drop
   predicted before the fork (6) ÷ measured.
   A second measurement needs no change of learning rate: the held-out loss at the mean of
   the parameters over the floor's window, below the mean held-out loss of the parameters
   themselves, is the excess the noise costs on time scales shorter than the window (the
   floor predicts it whole, not 0.9 of it); the same over the arms' later halves, at η and
   at η/10. Their difference is the held-out drop's noise part; the rest of the drop,
   L(θ̄_control) − L(θ̄_drop), is where the arms' mean parameters learned apart (printed after
   the fact, with the prediction ÷ the noise part).
   Clipping: the monitor's noise estimate is taken from the micro-batch gradients before
   `clip_grad_norm_`, which then scales the step's gradient, noise included, by
   c = min(1, clip/‖g‖). The monitor measures c itself, ‖g‖/‖g_B‖ of the `.grad` the step
   takes over the micro-batches' sum (its `clip` column), and books it: the floor and E[K]
   above are `noise_floor()`'s, E[L − L*] × c and E[K] × c² row by row, the heat
   ½h²c²·tr(M⁻¹C)/B. Checked here against the factor computed independently from the norm
   clip_grad_norm_ returns (`clip_factor`): the largest |Δc| over the rows. For
   contrast, the same law without c (from `noise_trace` alone): what booking without c would
   say.
4. The gradient noise scale: the monitor's `noise_scale` column (McCandlish et al. 2018,
   B_simple = tr(M⁻¹C)/‖G‖²_{M⁻¹}, EMA-smoothed, β = 0.99) against the two-batch estimator of
   their appendix A as GPT-NeoX computes it, from gradients read here between micro-batches
   (`TwoBatch`): with b the micro-batch and B = 2b the step's batch,
   |G|² = (B|G_big|² − b|G_small|²)/(B − b), S = (|G_small|² − |G_big|²)/(1/b − 1/B), each
   smoothed by the same EMA, B_simple = S/|G|², in sequences of --context characters. In
   Adam's metric M⁻¹ before the step (the monitor's) and Euclidean (GPT-NeoX's); for
   contrast, the metric one with |G_big|² read after clipping. With two micro-batches the
   two-batch estimator and the monitor's micro-batch estimate are the same algebra, so the
   ratio tests which gradients, metric and batch size the monitor uses: it is 1 to
   round-off when they are the right ones.
5. The books at the end of each arm (its ledger from step 0): −ΔI = I₀ − I, dissipated,
   decay, schedule, injected, residual and |residual| / (|dissipated| + |decay| + |schedule|
   + |injected|); I − I₀ = −dissipated − decay + injected + schedule + residual. The
   monitor's heat already carries each step's c²; it is summed again here from the ledger's
   `h`, `noise_trace` and `clip` columns (a check), and without c, with the residual and the
   share that booking without c would leave.
6. The drop predicted before the fork (the headline): 0.9 × floor counts every mode of a
   quadratic basin; the prediction scales it by what a drop measured over the arms' settled
   steps can see, each factor measured on its own (none fitted) at η over the floor's
   window, the plateau's later half (steps F − P/2 … F, F the fork, P --plateau), before the
   cut:
   (a) The floor's trend: the drop is measured over the settled steps, 300–600 steps after
   the fork, and the floor falls as the model learns. A least-squares line through the
   monitor's per-row floor over the window, at the middle of the settled steps, over the
   floor, with the line's standard error there (widened for correlated rows).
   (b) Slow modes: at arm step s the drop arm has relaxed only the modes that relax at η
   within lag τ = s/5 (a mode's variance relaxes at twice its rate, and η/10 divides the rate
   by 10). The mean-squared displacement in Adam's metric, MSD(τ) = ⟨‖θ_{k+τ} − θ_k‖²_M⟩,
   M = diag(sqrt(v̂) + ε), at lags 1, τ₀ = s₀/5 and τ₁ = s₁/5 over the window: its slope per
   step over the free diffusion c²η²·tr(M⁻¹C)/B (the ledger's h, γ, clip and noise_trace
   over the same rows) is f(τ), the share of the floor not relaxed by lag τ, once the part of
   the MSD that the window's mean displacement makes (learning, not noise) is taken out; its
   mean f̄ over [τ₀, τ₁] is the secant, its standard error the spread of the secant over 10
   blocks of consecutive origins. (c) The loss is not quadratic: the noise balance fixes the
   virial V = ½E⟨θ − θ̄, ∇L⟩ for any loss, which is E[L − L*] only in a quadratic basin; a line
   probe over the plateau's last --probe-window steps up to the fork (θ_k kept every
   --probe-every), x_k = θ_k − θ̄, measures E(1) = ⟨L(θ̄ + x_k)⟩ − L(θ̄) against V on the
   held-out windows and on --probe-windows fixed training windows, with standard errors over
   the snapshots (taken as independent; the part of each term linear in x_k, which sums to
   zero, taken out). The probe must see the fluctuations the drop relaxes, those of the modes
   that relax at η within τ₁: its default window is 5τ₁ = --arm-steps (600 steps; at most
   half the plateau) where a window of 60, half of τ₁, saw only the fastest modes (E(1)/V
   0.88 there against 0.84). Its snapshots, 50 steps apart (five momentum times
   1/(1 − β₁)), are taken as independent by the standard errors, which the slower modes
   make them not quite (lag-one correlation 0.3–0.45 on the transformer): the errors are
   likely too small. (d) Held-out loss is less curved along the noise: V_held/V_train.
   Predicted: 0.9 × floor × trend × (1 − f̄) × E(1)/V on training loss, the same with
   (E(1)/V)_held × V_held/V_train held out, against the measured drops beside the law as-is,
   standard errors from the factors' relative errors in quadrature.
   Why the floor's window: the floor the factors scale is read there, so they describe the
   same stretch of training; it is the part of the plateau past the warmup's fast descent;
   and at the default 750 steps it gives 631 origins at the largest lag τ₁ = 120, more than
   the control arm's 481, where a shorter stretch (the last τ₁ + a few hundred steps) would
   leave fewer origins and a noisier mean displacement to take out. The probe's last steps up
   to the fork are the state the arms start from. --plateau must be at least 4τ₁ (0.8 ×
   --arm-steps; checked). Taking the mean displacement out also takes out part of the
   slowest modes' noise, which over a window this long looks like drift (on stationary
   Ornstein–Uhlenbeck modes it makes f̄ about a fifth low): the share with it left in is
   printed beside.
   The same factors on the control arm after the fork (the trend its line through the arm's
   rows, the MSD over the whole arm, the probe over its first --probe-window steps): a
   cross-check, which should agree within noise. After the fact, not in the prediction: the
   arms' own floors over the settled steps [s₀, s₁] differ by Δ, not by 0.9 × floor × trend
   (the floor at η/10 is not a tenth of the floor at η); printed, Δ ÷ (0.9 × floor × trend)
   and the prediction × that ÷ measured. Memory: the MSD keeps at most τ₁ + 1
   float32 copies of θ, over the floor's window and then over the control arm, never both.

Prints markdown tables. Writes to --out (default benchmarks/out/real_training):
`ledger_<arm>.csv` (the monitor's ledger from step 0, which `inertia report` reads),
`summary.json`, and, there or to --figures, `real_training_loss.png` (the loss with the
predicted floor; control − drop against the prediction) and `real_training_noise_scale.png`
(the noise scale against the two-batch estimates); with --report, `inertia report` of the
cosine arm in `report/`. Deterministic for a seed and a thread count. The default
(417 280 parameters, 3 400 steps) takes about 5–10 minutes on 2 idle CPU cores; on a loaded
machine --threads 1 is much faster than two contending threads. --quick (58 304 parameters,
780 steps) takes under a minute: a smoke run, its numbers are not a result.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from inertia import InertiaMonitor, Ledger
from inertia.figures import figure
from inertia.monitor import OK
from inertia.theory import heavy_ball_noise_floor
from workloads import CharTransformer, char_batches, char_vocabulary, stdlib_text, warmup_cosine

F64 = torch.float64
ARMS = ("control", "drop", "cosine")
BETA = 0.99  # the noise scale's EMA, the monitor's (inertia.monitor.noise_scale.BETA)
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "real_training"
COLORS = {"shared": "#444444", "control": "#1f77b4", "drop": "#d62728", "cosine": "#2ca02c"}


@dataclass(frozen=True)
class Config:
    """Everything that decides the run (each a --flag of the same name)."""

    d_model: int = 128
    layers: int = 2
    heads: int = 4
    context: int = 64
    micro_batch: int = 16  # sequences per micro-batch
    lr: float = 3e-3
    warmup: int = 100
    plateau: int = 1500  # steps at the constant lr after the warmup
    arm_steps: int = 600  # steps of each arm after the fork
    settle: float = 0.5  # the share of an arm after which it is taken as settled
    weight_decay: float = 0.1
    clip: float = 1.0
    chars: int = 4_000_000  # training text
    heldout_chars: int = 200_000
    eval_windows: int = 256
    eval_every: int = 50
    probe_window: int = 0  # the line probe's steps (0: --arm-steps = 5τ₁, at most P/2)
    probe_every: int = 50  # θ kept every so many steps of that window
    probe_windows: int = 512  # fixed training windows it evaluates on
    seed: int = 0
    bf16: bool = True
    micro: int = field(default=2, init=False)  # micro-batches per step: the two-batch pair

    def __post_init__(self) -> None:
        if self.probe_window == 0:  # the plateau's last steps, the control arm's first
            object.__setattr__(self, "probe_window", min(self.arm_steps, self.plateau // 2))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and f.name != "seed" and not value > 0:
                raise ValueError(f"--{f.name.replace('_', '-')}: a positive integer, not {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr: a positive learning rate, not {self.lr}")
        if not 0 <= self.settle < 1:
            raise ValueError(f"--settle: a share in [0, 1), not {self.settle}")
        if not self.clip > 0:
            raise ValueError(f"--clip: a positive norm, not {self.clip}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay: at least 0, not {self.weight_decay}")
        if self.d_model % self.heads:
            raise ValueError(f"--heads: a divisor of --d-model {self.d_model}, not {self.heads}")
        if self.plateau < 8:
            raise ValueError(
                f"--plateau: at least 8 steps (the floor's window), not {self.plateau}"
            )
        if self.arm_steps < 2 * self.eval_every:
            raise ValueError(
                f"--arm-steps: at least 2 × --eval-every = {2 * self.eval_every}, "
                f"not {self.arm_steps}"
            )
        lag = relaxation_lags(self)[1]
        if self.plateau // 2 < 2 * lag:
            raise ValueError(
                f"--plateau: at least {4 * lag} steps, so that its later half (the floor's "
                f"window, where the factors are measured before the fork) spans twice the "
                f"largest lag τ₁ = {lag} that --arm-steps {self.arm_steps} needs, not "
                f"{self.plateau}"
            )
        if self.probe_window > min(self.arm_steps, self.plateau // 2):
            raise ValueError(
                f"--probe-window: at most --arm-steps = {self.arm_steps} and half of --plateau "
                f"= {self.plateau // 2}, not {self.probe_window}"
            )

    @property
    def batch(self) -> int:
        return self.micro_batch * self.micro


NOTES = {"probe_window": ": --arm-steps (5τ₁), at most half of --plateau"}  # in --help

QUICK = {
    "d_model": 64,
    "layers": 1,
    "heads": 2,
    "context": 32,
    "micro_batch": 8,
    "warmup": 30,
    "plateau": 300,
    "arm_steps": 150,
    "chars": 400_000,
    "heldout_chars": 40_000,
    "eval_windows": 64,
    "eval_every": 25,
    "probe_every": 25,
    "probe_windows": 128,
}


# --- data ------------------------------------------------------------------------------


@dataclass
class Data:
    train: str
    vocab: str
    heldout: tuple[Tensor, Tensor]  # fixed (x, y) windows of the held-out text


def data(cfg: Config) -> Data:
    """The first `chars` characters of the standard library's sources to train on; the next
    `heldout_chars` (later files) held out, as `eval_windows` fixed windows spread over them."""
    try:
        text = stdlib_text(cfg.chars + cfg.heldout_chars)
    except ValueError as error:  # the standard library is shorter
        raise ValueError(
            f"--chars + --heldout-chars: {str(error).removeprefix('chars: ')}"
        ) from None
    vocab = char_vocabulary(text)
    index = {c: i for i, c in enumerate(vocab)}
    held = torch.tensor([index[c] for c in text[cfg.chars :]], dtype=torch.int64)
    span = cfg.context + 1
    if len(held) < 2 * span:
        raise ValueError(f"--heldout-chars: at least 2 × (context + 1) = {2 * span}")
    windows = min(cfg.eval_windows, len(held) // span)
    starts = torch.linspace(0, len(held) - span, windows).long()
    w = held[starts[:, None] + torch.arange(span)]
    return Data(text[: cfg.chars], vocab, (w[:, :-1], w[:, 1:]))


# --- the two-batch estimator, from gradients read between micro-batches -----------------


class TwoBatch:
    """The micro-batch gradients g_j, read from `.grad` after each micro-batch's backward (the
    accumulated gradient is Σ_j g_j/m), and the step's G_big = Σ_j g_j/m, before clipping:
    |G_small|² = mean_j ‖g_j‖², |G_big|² = ‖G_big‖², in the metric M⁻¹ of Adam's state before
    the step (`metric`) and Euclidean (`euclid`); per step S = (|G_small|² − |G_big|²)/(1/b −
    1/B) and |G|² = (B|G_big|² − b|G_small|²)/(B − b) (b the micro-batch, B = m·b)."""

    def __init__(self, params: list[Tensor], optimizer: torch.optim.Optimizer, micro_batch: int):
        self.params, self.optimizer, self.b = params, optimizer, micro_batch
        self._groups = [
            next(g for g in optimizer.param_groups if any(p is q for q in g["params"]))
            for p in params
        ]
        self._previous: Tensor | None = None
        self._increments: list[Tensor] = []

    def _flat_grad(self) -> Tensor:
        return torch.cat([p.grad.reshape(-1).to(torch.float64) for p in self.params])

    def inverse_metric(self) -> Tensor | None:
        """M⁻¹ = 1/(sqrt(v/(1 − β₂ᵗ)) + ε) of the optimizer's state (None before it has one)."""
        out = []
        for p, group in zip(self.params, self._groups, strict=True):
            state = self.optimizer.state.get(p, {})
            if "exp_avg_sq" not in state or int(state["step"]) < 1:
                return None
            correction = 1.0 - group["betas"][1] ** int(state["step"])
            v = state["exp_avg_sq"].reshape(-1).to(torch.float64) / correction
            out.append(1.0 / (v.sqrt() + group["eps"]))
        return torch.cat(out)

    def after_backward(self) -> None:
        """Read this micro-batch's increment of the accumulated gradient, g_j/m."""
        now = self._flat_grad()
        self._increments.append(now if self._previous is None else now - self._previous)
        self._previous = now

    def take(self) -> dict[str, float]:
        """The step's S, |G|² and |G_big|² in both metrics (NaN in the metric before Adam has a
        state), before clipping and the optimizer step; then reset."""
        increments, big = self._increments, self._previous
        self._increments, self._previous = [], None
        m = len(increments)
        if m < 2 or big is None:
            raise ValueError(f"the two-batch estimate needs 2 or more micro-batches, not {m}")
        b, bb = self.b, self.b * m
        out: dict[str, float] = {}
        for name, w in (("metric", self.inverse_metric()), ("euclid", torch.ones_like(big))):
            if w is None:
                out |= {f"{name}_noise": math.nan, f"{name}_signal": math.nan}
                out[f"{name}_big"] = math.nan
                continue
            small = sum(float((w * (m * d) ** 2).sum()) for d in increments) / m
            g_big = float((w * big**2).sum())
            out[f"{name}_noise"] = (small - g_big) / (1.0 / b - 1.0 / bb)  # S = B·tr(C)/B
            out[f"{name}_signal"] = (bb * g_big - b * small) / (bb - b)  # unbiased |G|²
            out[f"{name}_big"] = g_big
        return out


def smoothed(noise: np.ndarray, signal: np.ndarray, beta: float = BETA) -> np.ndarray:
    """B_simple = EMA(S)/EMA(|G|²) after each step, as the monitor smooths (the EMAs' bias
    corrections cancel; steps with a NaN estimate left out; NaN while EMA(|G|²) ≤ 0)."""
    out, s, g, seen = np.full(len(noise), math.nan), 0.0, 0.0, False
    for k, (x, y) in enumerate(zip(noise, signal, strict=True)):
        if math.isfinite(x) and math.isfinite(y):
            s, g, seen = beta * s + (1 - beta) * x, beta * g + (1 - beta) * y, True
        out[k] = s / g if seen and g > 0 else math.nan
    return out


# --- a training run that can be forked ----------------------------------------------------


class Run:
    """The model, AdamW (two groups: decay on matrices only), the monitor, the batch stream and
    the two-batch reader; `fork()` copies the whole state, `Run(cfg, data, state)` continues
    it. `log` holds per-step values, `evals` the held-out losses (step, loss)."""

    def __init__(self, cfg: Config, d: Data, state: dict[str, Any] | None = None):
        self.cfg, self.data = cfg, d
        torch.manual_seed(cfg.seed)
        self.model = CharTransformer(d.vocab, cfg.d_model, cfg.layers, cfg.heads, cfg.context)
        matrices = [p for p in self.model.parameters() if p.dim() >= 2]
        others = [p for p in self.model.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [
                {"params": matrices, "weight_decay": cfg.weight_decay},
                {"params": others, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            betas=(0.9, 0.95),
        )
        self.monitor = InertiaMonitor(self.opt, noise="microbatch")
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.params = list(self.model.parameters())
        self.two_batch = TwoBatch(self.params, self.opt, cfg.micro_batch)
        self.step = 0
        self.log: dict[str, list[float]] = {}
        self.evals: list[tuple[int, float]] = []
        self._sum: Tensor | None = None  # Σθ over the averaging window
        self._summed = 0
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            self.monitor.load_state_dict(state["monitor"])
            self.gen.set_state(state["gen"])
            self.step = state["step"]
        self.batches = char_batches(d.train, d.vocab, cfg.micro_batch, cfg.context, self.gen)

    def fork(self) -> dict[str, Any]:
        """A deep copy of everything the run continues from (between steps)."""
        return copy.deepcopy(
            {
                "model": self.model.state_dict(),
                "opt": self.opt.state_dict(),
                "monitor": self.monitor.state_dict(),
                "gen": self.gen.get_state(),
                "step": self.step,
            }
        )

    def train_step(self, lr: float) -> None:
        """One optimizer step at `lr`: 2 micro-batches, each observed after its backward."""
        cfg = self.cfg
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(cfg.micro):
            x, y = next(self.batches)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = self.model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            (loss / cfg.micro).backward()
            self.monitor.observe(loss.detach(), accumulate=True, batch_size=len(x))
            self.two_batch.after_backward()
            total += float(loss.detach()) / cfg.micro
        two = self.two_batch.take()
        norm = float(nn.utils.clip_grad_norm_(self.params, cfg.clip))
        self.opt.step()
        record = {"step": self.step, "lr": lr, "loss": total, "grad_norm": norm, **two}
        for key, value in record.items():
            self.log.setdefault(key, []).append(value)
        self.step += 1
        if self._sum is not None:
            self._add_to_average()

    def flat(self) -> Tensor:
        """θ, flattened (float64)."""
        return torch.cat([p.detach().reshape(-1).to(torch.float64) for p in self.params])

    def start_average(self) -> None:
        """Average the parameters from now (the current ones included) on."""
        self._sum, self._summed = torch.zeros(sum(p.numel() for p in self.params), dtype=F64), 0
        self._add_to_average()

    def _add_to_average(self) -> None:
        assert self._sum is not None
        self._sum += self.flat()
        self._summed += 1

    @torch.no_grad()
    def heldout(self, record: bool = True) -> float:
        """Mean cross-entropy on the fixed held-out windows (float32, batches of 64)."""
        x, y = self.data.heldout
        total = 0.0
        for i in range(0, len(x), 64):
            logits = self.model(x[i : i + 64])
            target = y[i : i + 64].flatten()
            total += float(F.cross_entropy(logits.flatten(0, 1), target, reduction="sum"))
        value = total / y.numel()
        if record:
            self.evals.append((self.step, value))
        return value

    @torch.no_grad()
    def averaged_heldout(self) -> float:
        """The held-out loss at the mean of the parameters since `start_average` (the
        parameters are put back); the average stops."""
        assert self._sum is not None and self._summed
        now = self.flat()
        torch.nn.utils.vector_to_parameters((self._sum / self._summed).float(), self.params)
        value = self.heldout(record=False)
        torch.nn.utils.vector_to_parameters(now.float(), self.params)
        self._sum = None
        return value


# --- why the floor over-predicts the drop: slow modes and a loss that is not quadratic ---


class Displacement:
    """The mean-squared displacement in Adam's metric at a few lags τ,

        MSD(τ) = ⟨‖θ_{k+τ} − θ_k‖²_M⟩,    M = diag(sqrt(v̂) + ε) at step k + τ,

    over the origins k = 0 … n − max τ of a run of n steps, the same origins at every lag (so
    that differences between lags are not blurred by different samples). `add` takes θ_j and M
    for j = 0 … n in turn; θ_k is kept only until its largest lag has passed (at most
    max τ + 1 copies of θ at a time). The sums are also kept per block of consecutive origins
    (up to 10 blocks), for a standard error (`blocks`)."""

    def __init__(self, lags: list[int], steps: int):
        if min(lags) < 1 or max(lags) > steps:
            raise ValueError(f"lags: in [1, {steps}], not {lags}")
        self.lags, self.last_origin = sorted(set(lags)), steps - max(lags)
        self.sums = dict.fromkeys(self.lags, 0.0)
        self.n_blocks = min(10, self.last_origin + 1)
        self.block_sums = {lag: np.zeros(self.n_blocks) for lag in self.lags}
        self.moved: dict[int, Tensor] = {}  # Σ_k (θ_{k+τ} − θ_k) and Σ_k M, per lag
        self.metric: dict[int, Tensor] = {}
        self.origins: dict[int, Tensor] = {}
        self.j = 0

    def add(self, theta: Tensor, metric: Tensor) -> None:
        """Take θ_j and the metric's diagonal at step j."""
        for lag in self.lags:
            origin = self.origins.get(self.j - lag)
            if origin is not None:
                d, m = (theta - origin).to(F64), metric.to(F64)
                value = float((m * d * d).sum())
                self.sums[lag] += value
                self.block_sums[lag][self._block(self.j - lag)] += value
                self.moved[lag] = self.moved[lag] + d if lag in self.moved else d
                self.metric[lag] = self.metric[lag] + m if lag in self.metric else m
        self.origins.pop(self.j - self.lags[-1], None)
        if self.j <= self.last_origin:
            self.origins[self.j] = theta.detach().clone()
        self.j += 1

    def _block(self, origin: int) -> int:
        return origin * self.n_blocks // (self.last_origin + 1)

    def msd(self) -> dict[int, float]:
        """MSD(τ) at each lag (NaN before every lag has seen all its origins)."""
        n = self.last_origin + 1
        done = self.j > self.last_origin + self.lags[-1]
        return {lag: self.sums[lag] / n if done else math.nan for lag in self.lags}

    def blocks(self) -> dict[int, np.ndarray]:
        """MSD(τ) over each block of consecutive origins (NaN before every lag has seen all its
        origins): their spread gives a standard error of what is computed from MSD."""
        counts = np.bincount(
            [self._block(k) for k in range(self.last_origin + 1)], minlength=self.n_blocks
        )
        done = self.j > self.last_origin + self.lags[-1]
        return {
            lag: self.block_sums[lag] / counts if done else np.full(self.n_blocks, math.nan)
            for lag in self.lags
        }

    def drift(self) -> dict[int, float]:
        """‖ū_τ‖²_M̄, ū_τ the mean displacement over lag τ and M̄ the mean metric: the part of
        MSD(τ) that a steady descent contributes (‖u‖²τ² for a drift u per step), which is
        learning, not noise; MSD(τ) − drift(τ) is the fluctuation's alone."""
        n = self.last_origin + 1
        done = self.j > self.last_origin + self.lags[-1]
        return {
            lag: float((self.metric[lag] / n * (self.moved[lag] / n) ** 2).sum())
            if done
            else math.nan
            for lag in self.lags
        }


def relaxation_lags(cfg: Config) -> tuple[int, int]:
    """The lags at η that the drop arm's settled steps [s₀, s₁] see: a mode relaxing at rate a
    per step at η relaxes at a/10 at η/10, its variance at 2a/10, so at arm step s its excess
    is unrelaxed by exp(−a·s/5), as much as at lag τ = s/5 at η."""
    lo = max(1, round(cfg.arm_steps * cfg.settle / 5))
    return lo, max(lo + 1, round(cfg.arm_steps / 5))


def diffusion_laws(ledger: Ledger, rows: slice = slice(None)) -> dict[str, float]:
    """From the monitor's ledger columns h, γ (μ = 1 − γh), clip c and noise_trace tr(M⁻¹C)/B,
    averaged over the `rows` with a finite trace, the displacement the noise drives in the
    metric M: per step, once the momentum has forgotten it (a free diffusion),

        per_step = c²(h²/(1 − μ))²·tr(M⁻¹C)/B = c²η²·tr(M⁻¹C)/B    (Adam: h²/(1 − μ) = η),

    and over a single step, 2h²·E[K] of the kinetic law, lag_one = c²h⁴·tr(M⁻¹C)/(B(1 − μ²))."""
    h, gamma, trace = (ledger[k].numpy()[rows] for k in ("h", "gamma", "noise_trace"))
    c, mu = clip_column(ledger)[rows], 1.0 - gamma * h
    finite = np.isfinite(trace)
    step = (c * h * h)[finite] ** 2 * trace[finite]
    return {
        "per_step": float(np.mean(step / (1.0 - mu[finite]) ** 2)),
        "lag_one": float(np.mean(step / (1.0 - mu[finite] ** 2))),
    }


def unrelaxed_share(msd: dict[int, Any], lo: int, hi: int, per_step: float) -> Any:
    """The mean over τ ∈ [lo, hi] of f(τ) = (dMSD/dτ)/per_step, the share of the noise's excess
    not relaxed by lag τ: a mode x ← (1 − a)x + ξ has MSD(τ) = 2·Var·(1 − (1 − a)^τ), whose
    slope falls as (1 − a)^τ from the free diffusion's per_step, weighted by the mode's share of
    the floor. Its mean over the lags is the secant, (MSD(hi) − MSD(lo))/((hi − lo)·per_step)
    (MSD's values may be arrays: one secant each)."""
    return (msd[hi] - msd[lo]) / ((hi - lo) * per_step)


def unrelaxed_share_se(
    blocks: dict[int, np.ndarray], drift: dict[int, float], lo: int, hi: int, per_step: float
) -> float:
    """A standard error of `unrelaxed_share` of MSD − drift: the spread of the secant over the
    blocks of consecutive origins (`Displacement.blocks`), the drift of the whole run held
    fixed, ÷ √blocks. Neighbouring blocks share steps (a lag is longer than a block), which
    this ignores; on stationary Ornstein–Uhlenbeck modes it is within 10–20% of the spread over
    independent runs (tests/test_real_training_benchmark.py)."""
    fluctuation = {lag: blocks[lag] - drift[lag] for lag in (lo, hi)}
    per_block = unrelaxed_share(fluctuation, lo, hi, per_step)
    per_block = per_block[np.isfinite(per_block)]
    if len(per_block) < 2:
        return math.nan
    return float(np.std(per_block, ddof=1) / math.sqrt(len(per_block)))


def ratio_se(numerator: Any, denominator: Any) -> tuple[float, float]:
    """R = mean(numerator)/mean(denominator) over paired samples and its delta-method standard
    error std(num_k − R·den_k)/(√n·|mean den|), the pairs taken as independent."""
    num, den = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    r = float(num.mean() / den.mean())
    if len(num) < 2:
        return r, math.nan
    return r, float(np.std(num - r * den, ddof=1) / (math.sqrt(len(num)) * abs(den.mean())))


class Window:
    """Every `every`-th θ_k over steps k = 0 … n of a run, and their mean θ̄: the mean of the
    very θ_k the probe averages over, so that Σ x_k = 0 and E(1) = V exactly on a quadratic
    (the mean of all θ_k would bias E(1)/V by the kept ones' mean offset). `steps`: the run's
    steps of the kept θ_k."""

    def __init__(self, every: int):
        self.every, self.kept, self.steps, self.k = every, [], [], 0

    def add(self, theta: Tensor, step: int = -1) -> None:
        if self.k % self.every == 0:
            self.kept.append(theta.to(F64).clone())
            self.steps.append(step)
        self.k += 1

    def mean(self) -> Tensor:
        return torch.stack(self.kept).mean(0)


def loss_and_gradient(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, Tensor]:
    """Mean cross-entropy over the windows (x, y) (float32, batches of 64) and its gradient."""
    params = list(model.parameters())
    model.zero_grad(set_to_none=True)
    total = 0.0
    for i in range(0, len(x), 64):
        target = y[i : i + 64].flatten()
        loss = F.cross_entropy(model(x[i : i + 64]).flatten(0, 1), target, reduction="sum")
        (loss / y.numel()).backward()
        total += float(loss.detach())
    return total / y.numel(), torch.cat([p.grad.reshape(-1).to(F64) for p in params])


Evaluate = Callable[[Tensor], tuple[float, Tensor]]  # θ (float64) → L(θ), ∇L(θ) (float64)


def model_loss(model: nn.Module, x: Tensor, y: Tensor) -> Evaluate:
    """L and ∇L on the windows (x, y) at a θ put into `model` (which it changes)."""
    params = list(model.parameters())

    def evaluate(theta: Tensor) -> tuple[float, Tensor]:
        torch.nn.utils.vector_to_parameters(theta.float(), params)
        return loss_and_gradient(model, x, y)

    return evaluate


def line_probe(kept: list[Tensor], sets: dict[str, Evaluate]) -> dict[str, dict[str, Any]]:
    """On each loss, with θ̄ the mean of the kept θ_k and x_k = θ_k − θ̄: the excess
    E(1) = ⟨L(θ̄ + x_k)⟩ − L(θ̄) and the virial V = ½⟨x_k, ∇L(θ_k)⟩ (`excess`, `virial`).
    The noise balance fixes V (the floor), for any loss; E(1) = V only in a quadratic basin
    (there E(t) = t²E(1) along the line, and ⟨x, ∇L⟩ = 2E).

    Per snapshot (`excess_k`, `virial_k`, for standard errors), the same less their part
    linear in x_k, e_k = L(θ_k) − L(θ̄) − ⟨x_k, g⟩ and v_k = ½⟨x_k, ∇L(θ_k) − g⟩, g = ∇L(θ̄):
    since Σ x_k = 0 that part sums to zero, so their means are E(1) and V, but it would
    dominate their spread (the gradient at θ̄ is mostly learning, not the basin's curvature).
    On a quadratic e_k = v_k = ½x_kᵀHx_k exactly, and E(1)/V = 1 with no spread;
    `excess_se`, `virial_se` their standard errors over the snapshots, taken as independent."""
    mean = torch.stack(kept).mean(0)
    out = {}
    for name, evaluate in sets.items():
        at_mean, g = evaluate(mean)
        excess, virial, excess_k, virial_k = [], [], [], []
        for theta in kept:
            loss, grad = evaluate(theta)
            x = theta - mean
            linear = float((x * g).sum())
            excess.append(loss - at_mean)
            virial.append(0.5 * float((x * grad).sum()))
            excess_k.append(loss - at_mean - linear)
            virial_k.append(0.5 * float((x * (grad - g)).sum()))
        n = len(kept)
        out[name] = {
            "excess": float(np.mean(excess)),
            "virial": float(np.mean(virial)),
            "excess_se": float(np.std(excess_k, ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
            "virial_se": float(np.std(virial_k, ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
            "excess_k": excess_k,
            "virial_k": virial_k,
        }
    return out


class Watch:
    """What a stretch of a run records for the drop's factors, at each of its steps
    j = 0 … n: θ and Adam's metric for the MSD at lags 1, τ₀ and τ₁ over the whole stretch,
    and θ every `probe_every` steps over j = probe_from … probe_from + probe_window for the
    line probe. Before the fork it watches the floor's window, the plateau's later half (the
    probe over its last `probe_window` steps, up to the fork); after it, the control arm (the
    probe over its first `probe_window` steps), a cross-check. Memory: the MSD's θ copies (at
    most τ₁ + 1, float32) and the probe's (float64), freed by `result`."""

    def __init__(self, cfg: Config, steps: int, probe_from: int):
        self.moved: Displacement | None = Displacement([1, *relaxation_lags(cfg)], steps)
        self.window = Window(cfg.probe_every)
        self.probe_from, self.probe_to = probe_from, probe_from + cfg.probe_window
        self.j, self.steps, self.seconds = 0, [-1, -1], 0.0

    def add(self, r: Run) -> None:
        """Take the run's θ and metric now (first the stretch's start, then after each step)."""
        start = time.perf_counter()
        assert self.moved is not None
        theta, inverse = r.flat(), r.two_batch.inverse_metric()
        assert inverse is not None  # Adam has a state after the warmup
        self.moved.add(theta.float(), 1.0 / inverse)
        if self.probe_from <= self.j <= self.probe_to:
            self.window.add(theta, r.step)
        self.steps = [r.step if self.j == 0 else self.steps[0], r.step]
        self.j += 1
        self.seconds += time.perf_counter() - start

    def result(self, r: Run) -> dict[str, Any]:
        """The MSD (its blocks, its drift) and the line probe of the window on the held-out
        windows and on `probe_windows` fixed training windows (their own generator: the run's
        batches are not touched; a copy of the model); then the θ copies are let go."""
        start, cfg = time.perf_counter(), r.cfg
        assert self.moved is not None
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        train = next(char_batches(r.data.train, r.data.vocab, cfg.probe_windows, cfg.context, gen))
        model = copy.deepcopy(r.model)
        probe = line_probe(
            self.window.kept,
            {"heldout": model_loss(model, *r.data.heldout), "train": model_loss(model, *train)},
        )
        out = {
            "steps": self.steps,
            "probe_steps": self.window.steps,
            "msd": self.moved.msd(),
            "drift": self.moved.drift(),
            "blocks": self.moved.blocks(),
            "probe": probe,
        }
        self.moved, self.window.kept = None, []
        self.seconds += time.perf_counter() - start
        out["seconds"] = self.seconds
        return out


# --- the experiment -----------------------------------------------------------------------


def arm_lr(arm: str, lr: float, steps: int) -> Callable[[int], float]:
    """The learning rate of an arm's step s."""
    cosine = warmup_cosine(0, steps, floor=0.1)  # η → η/10 by a half cosine
    return {
        "control": lambda s: lr,
        "drop": lambda s: lr / 10,
        "cosine": lambda s: lr * cosine(s),
    }[arm]


@dataclass
class Results:
    cfg: Config
    params: int
    vocab: int
    floor: dict[str, Any]  # monitor.noise_floor() at the fork
    shared: Run
    shared_ledger: Ledger
    averaged: dict[str, tuple[float, list[float]]]  # the averaging probe: L(θ̄), window L(θ_j)
    arms: dict[str, Run]
    before: dict[str, Any]  # `Watch.result` of the floor's window, before the fork
    after: dict[str, Any]  # the same of the control arm (a cross-check)
    seconds: float


def experiment(cfg: Config, d: Data, say: Callable[[str], None]) -> Results:
    """Warmup and plateau, the floor at the fork, then the three arms from the fork."""
    start = time.perf_counter()
    shared = Run(cfg, d)
    params = sum(p.numel() for p in shared.params)
    say(f"{params} parameters, warmup {cfg.warmup} + {cfg.plateau} steps at lr {cfg.lr:g}")
    window = cfg.plateau // 2  # the floor's window: the later half of the plateau
    steps = cfg.warmup + cfg.plateau
    before = Watch(cfg, window, window - cfg.probe_window)  # the prediction's factors
    shared.heldout()
    for k in range(steps):
        if k == steps - window:
            shared.start_average()
            before.add(shared)
        shared.train_step(cfg.lr * min(1.0, (k + 1) / cfg.warmup))
        if k >= steps - window:
            before.add(shared)
        if (k + 1) % cfg.eval_every == 0:
            shared.heldout()
        if (k + 1) % 250 == 0:
            loss = np.mean(shared.log["loss"][-50:])
            say(f"  step {k + 1}: loss {loss:.4f} ({time.perf_counter() - start:.0f} s)")
    averaged = {"plateau": (shared.averaged_heldout(), window_evals(shared.evals, steps, window))}
    floor = shared.monitor.noise_floor(last=window)
    prefork = before.result(shared)
    say(f"  MSD and line probe over the floor's window: {prefork['seconds']:.0f} s")
    state = shared.fork()
    shared_ledger = shared.monitor.ledger
    shared.monitor.detach()
    say(f"fork at step {steps}: floor {floor['excess_loss']:.4g} at lr {cfg.lr:g}")
    arms: dict[str, Run] = {}
    watch, control = Watch(cfg, cfg.arm_steps, 0), {}  # on the control arm: a cross-check
    for arm in ARMS:
        r = arms[arm] = Run(cfg, d, state)
        r.evals = [shared.evals[-1]]
        lr_of = arm_lr(arm, cfg.lr, cfg.arm_steps)
        watching = arm == "control"
        if watching:
            watch.add(r)
        for s in range(cfg.arm_steps):
            if arm != "cosine" and s == cfg.arm_steps - int(cfg.arm_steps * (1 - cfg.settle)):
                r.start_average()
            r.train_step(lr_of(s))
            if watching:
                watch.add(r)
            if (s + 1) % cfg.eval_every == 0:
                r.heldout()
        if watching:
            control = watch.result(r)
            say(f"  MSD and line probe over the control arm: {watch.seconds:.0f} s")
        if arm != "cosine":
            n = int(cfg.arm_steps * (1 - cfg.settle))
            averaged[arm] = (r.averaged_heldout(), window_evals(r.evals, r.step, n))
        r.monitor.detach()
        loss = np.mean(r.log["loss"][-50:])
        say(f"  arm {arm}: loss {loss:.4f} ({time.perf_counter() - start:.0f} s)")
    seconds = time.perf_counter() - start
    return Results(
        cfg, params, len(d.vocab), floor, shared, shared_ledger, averaged, arms, prefork,
        control, seconds,
    )  # fmt: skip


def window_evals(evals: list[tuple[int, float]], end: int, window: int) -> list[float]:
    """The held-out losses recorded at steps in [end − window, end]."""
    return [v for s, v in evals if end - window <= s <= end]


# --- the numbers ------------------------------------------------------------------------


def concatenated(first: Ledger, second: Ledger) -> Ledger:
    """The ledger of the shared phase followed by an arm's rows."""
    columns = {name: torch.cat([first[name], second[name]]) for name in second}
    return Ledger(torch.cat([first.t, second.t]), columns, time_name="step")


def clip_column(ledger: Ledger) -> np.ndarray:
    """The monitor's clip factor c per row, 1 where it is not finite (as it books and floors)."""
    c = ledger["clip"].numpy()
    return np.where(np.isfinite(c), c, 1.0)


def books(ledger: Ledger) -> dict[str, float]:
    """The monitor's books at the end of a ledger from step 0: its heat ½h²c²·tr(M⁻¹C)/B per
    step already carries each step's clip factor c. Beside them, the heat of each step k
    (booked at row k + 1) summed again from the ledger's columns with c² (a check of the
    books), and without c (what booking without c would say), with the residual that would
    then remain (the other books unchanged)."""
    last = {k: float(ledger[k][-1]) for k in ("dissipated", "decay", "schedule", "injected")}
    residual = float(ledger["residual"][-1])
    booked = sum(abs(v) for v in last.values())
    minus_delta = float(ledger["inertia"][0] - ledger["inertia"][-1])
    h, trace = ledger["h"].numpy()[:-1], ledger["noise_trace"].numpy()[:-1]
    heat = np.where(np.isfinite(trace), 0.5 * h * h * trace, 0.0)
    c = clip_column(ledger)[:-1]
    unclipped = float(np.sum(heat))
    residual_u = residual + last["injected"] - unclipped
    booked_u = booked - abs(last["injected"]) + abs(unclipped)
    return {
        "-dI": minus_delta,
        **last,
        "residual": residual,
        "ratio": abs(residual) / booked,
        "injected_resummed": float(np.sum(heat * c**2)),
        "injected_unclipped": unclipped,
        "residual_unclipped": residual_u,
        "ratio_unclipped": abs(residual_u) / booked_u,
    }


def mean_se(x: Any) -> tuple[float, float]:
    """Mean, and a standard error from up to 10 consecutive blocks (neighbours correlate)."""
    x = np.asarray(x, dtype=float)
    blocks = [b.mean() for b in np.array_split(x, min(10, len(x))) if len(b)]
    se = float(np.std(blocks, ddof=1) / math.sqrt(len(blocks))) if len(blocks) > 1 else math.nan
    return float(x.mean()), se


def trailing(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` steps (shorter at the start)."""
    c = np.cumsum(np.insert(np.asarray(x, dtype=float), 0, 0.0))
    i = np.arange(1, len(x) + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def joined(res: Results, arm: str) -> dict[str, np.ndarray]:
    """The per-step log of the shared phase followed by an arm's."""
    shared, own = res.shared.log, res.arms[arm].log
    return {k: np.concatenate([shared[k], own[k]]).astype(float) for k in shared}


def clip_factor(grad_norm: np.ndarray, clip: float) -> np.ndarray:
    """torch's clip_grad_norm_ factor: min(1, clip/(‖g‖ + 1e-6))."""
    return np.minimum(1.0, clip / (grad_norm + 1e-6))


def predicted_floors(ledger: Ledger) -> dict[str, np.ndarray]:
    """Per row (NaN where the noise estimate is not finite or the flag is not OK), μ = 1 − γh:
    the monitor's law as `noise_floor` takes it, with the ledger's clip factor c (`excess`
    E[L − L*] × c, `kinetic` E[K] × c²), and the same law without c, from `noise_trace` alone
    (`excess_unclipped`, `kinetic_unclipped`)."""
    h, gamma, trace = ledger["h"], ledger["gamma"], ledger["noise_trace"]
    ok = trace.isfinite() & (ledger["flag"] == OK)
    out = {name: np.full(len(h), np.nan) for name in ("excess", "kinetic")}
    k, e = heavy_ball_noise_floor(h[ok], trace[ok], 1.0 - gamma[ok] * h[ok])
    rows = ok.numpy()
    out["excess_unclipped"], out["kinetic_unclipped"] = out["excess"].copy(), out["kinetic"].copy()
    out["excess_unclipped"][rows], out["kinetic_unclipped"][rows] = e.numpy(), k.numpy()
    c = clip_column(ledger)[rows]
    out["excess"][rows], out["kinetic"][rows] = c * e.numpy(), c**2 * k.numpy()
    return out


def clip_agreement(ledger: Ledger, grad_norm: np.ndarray, clip: float) -> dict[str, float]:
    """The monitor's `clip` column against `clip_factor` of the norms clip_grad_norm_ returned
    (row k is step k): the largest |Δc| over the rows where the monitor measured c, how many
    those are, and how many of them were clipped (c < 1)."""
    measured = ledger["clip"].numpy()
    independent = clip_factor(grad_norm, clip)[: len(measured)]
    rows = np.isfinite(measured)
    return {
        "max_abs_difference": float(np.max(np.abs(measured[rows] - independent[rows])))
        if rows.any()
        else math.nan,
        "rows": int(rows.sum()),
        "unmeasured_rows": int((~rows).sum()),
        "clipped_rows": int((independent[rows] < 1).sum()),
    }


def factors(watched: dict[str, Any], ledger: Ledger, rows: slice, cfg: Config) -> dict[str, Any]:
    """The drop's factors from one watched stretch (`Watch.result`), each with a standard
    error: the unrelaxed share f̄ (`unrelaxed_share` of the MSD less the part its mean
    displacement makes, learning rather than noise, normalised by `diffusion_laws` over the
    ledger's `rows`, the same steps), and from the line probe E(1)/V on held-out and training
    loss, V_held/V_train, and the product the held-out prediction uses, E_held(1)/V_train.
    Beside them, MSD(1) against the kinetic law's 2h²E[K] (a check of the normaliser)."""
    lo, hi = relaxation_lags(cfg)
    laws = diffusion_laws(ledger, rows)
    msd, drift, probe = watched["msd"], watched["drift"], watched["probe"]
    fluctuation = {lag: msd[lag] - drift[lag] for lag in msd}
    held, train = probe["heldout"], probe["train"]
    anharmonic = {name: ratio_se(p["excess_k"], p["virial_k"]) for name, p in probe.items()}
    return {
        "steps": watched["steps"],
        "probe_steps": watched["probe_steps"],
        "msd": {str(lag): value for lag, value in msd.items()},
        "msd_drift": {str(lag): value for lag, value in drift.items()},
        "per_step": laws["per_step"],
        "lag_one_ratio": msd[1] / laws["lag_one"],
        "unrelaxed": unrelaxed_share(fluctuation, lo, hi, laws["per_step"]),
        "unrelaxed_se": unrelaxed_share_se(watched["blocks"], drift, lo, hi, laws["per_step"]),
        "unrelaxed_with_drift": unrelaxed_share(msd, lo, hi, laws["per_step"]),
        "probe": probe,
        "anharmonic": anharmonic,
        "curvature": ratio_se(held["virial_k"], train["virial_k"]),
        "shape": {  # E(1)/V_train: E(1)/V on training loss, (E(1)/V)_held·V_held/V_train held out
            "heldout": ratio_se(held["excess_k"], train["virial_k"]),
            "train": anharmonic["train"],
        },
        "seconds": watched["seconds"],
    }


def floor_trend(ledger: Ledger, rows: slice, at: int, floor: float) -> tuple[float, float]:
    """The least-squares line through the monitor's per-row floor (`predicted_floors`) over
    the ledger's `rows`, at step `at`, over `floor`, with the line's standard error there,
    s·sqrt(1/n + (at − x̄)²/Σ(x − x̄)²), widened for rows correlated as an AR(1) by
    sqrt((1 + ρ)/(1 − ρ)), ρ ≥ 0 the residuals' lag-one correlation."""
    excess = predicted_floors(ledger)["excess"][rows]
    steps = ledger["step"].numpy()[rows]
    ok = np.isfinite(excess)
    x, y = steps[ok], excess[ok]
    line = np.polyfit(x, y, 1)
    residual = y - np.polyval(line, x)
    lag_one = float(residual[:-1] @ residual[1:]) / max(float(residual @ residual), 1e-300)
    rho = min(max(lag_one, 0.0), 0.9)
    spread = math.sqrt(float(residual @ residual) / (len(x) - 2))
    leverage = 1 / len(x) + (at - x.mean()) ** 2 / float(((x - x.mean()) ** 2).sum())
    se = spread * math.sqrt(leverage * (1 + rho) / (1 - rho))
    return float(np.polyval(line, at)) / floor, se / floor


def predicted(floor: tuple[float, float], x: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """0.9 × floor × trend × (1 − f̄) × E(1)/V_train on each loss, with a standard error from
    the factors' relative errors in quadrature (taken as independent)."""
    relaxed, (trend, trend_se) = 1.0 - x["unrelaxed"], x["trend"]
    out = {}
    for name, (shape, shape_se) in x["shape"].items():
        value = 0.9 * floor[0] * trend * relaxed * shape
        rel = math.hypot(
            floor[1] / floor[0], trend_se / trend, x["unrelaxed_se"] / relaxed, shape_se / shape
        )
        out[name] = (value, abs(value) * rel)
    return out


def over(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """a/b with a standard error from the relative errors in quadrature."""
    r = a[0] / b[0]
    return r, abs(r) * math.hypot(a[1] / a[0], b[1] / b[0])


def decomposition(
    res: Results,
    own: dict[str, float],
    drops: dict[str, tuple[float, float]],
) -> dict[str, Any]:
    """The floor's drop predicted from what is measured at η before the fork, against the drops
    measured after it (`drops`, held-out and training, control − drop). The law 0.9 × floor
    counts every mode of a quadratic basin; the prediction scales it, each factor measured on
    its own over the floor's window (the plateau's later half): the floor's trend to the
    middle of the settled steps (`floor_trend`), the share 1 − f̄ of the floor the drop arm
    relaxes by its settled steps, and the loss's shape E(1)/V (the noise fixes the virial V,
    the excess is E(1)), held out also V_held/V_train (held-out loss is less curved along the
    noise than the training loss it was driven by):

        predicted = 0.9 × floor × trend × (1 − f̄) × E(1)/V [× V_held/V_train held out].

    The same factors on the control arm after the fork: a cross-check. After the fact (the
    arms' own floors, after the cut, so not in the prediction): their own floors over the
    settled steps differ by Δ, not by 0.9 × floor × trend (`drift` = Δ/(0.9 × floor × trend)
    of each stretch's trend); the ratio with it (`with_drift`)."""
    cfg, fork, window = res.cfg, res.cfg.warmup + res.cfg.plateau, res.cfg.plateau // 2
    floor = (res.floor["excess_loss"], res.floor["excess_loss_stderr"])
    settled = int(cfg.arm_steps * cfg.settle)
    middle = fork + (settled + cfg.arm_steps) // 2  # of the settled steps, where the drop is read
    out: dict[str, Any] = {"lags": list(relaxation_lags(cfg)), "middle": middle}
    for name, watched, ledger, rows in (
        ("before", res.before, res.shared_ledger, slice(fork - window, fork)),
        ("after", res.after, res.arms["control"].monitor.ledger, slice(None)),
    ):
        x = factors(watched, ledger, rows, cfg)
        x["trend"] = floor_trend(ledger, rows, middle, floor[0])
        x["prediction"] = predicted(floor, x)
        x["ratio"] = {k: over(x["prediction"][k], drops[k]) for k in drops}
        x["drift"] = (own["control"] - own["drop"]) / (0.9 * floor[0] * x["trend"][0])
        x["with_drift"] = {k: x["ratio"][k][0] * x["drift"] for k in drops}
        out[name] = x
    out["seconds"] = res.before["seconds"] + res.after["seconds"]
    return out


def analyse(res: Results) -> dict[str, Any]:
    cfg, floor = res.cfg, res.floor
    ledgers = {arm: concatenated(res.shared_ledger, res.arms[arm].monitor.ledger) for arm in ARMS}
    fork = cfg.warmup + cfg.plateau
    window = cfg.plateau // 2
    settled_from = int(cfg.arm_steps * cfg.settle)
    # --- the floor and the drop: the monitor's (with each step's clip factor c), and the same
    # law without c, for contrast
    laws = predicted_floors(ledgers["control"])
    w = slice(fork - window, fork)
    ok = np.isfinite(laws["excess"][w])
    c = clip_column(ledgers["control"])[w][ok]
    floor_unclipped = float(np.mean(laws["excess_unclipped"][w][ok]))
    kinetic_unclipped = float(np.mean(laws["kinetic_unclipped"][w][ok]))
    # the monitor's floor against its law summed again here row by row (a check)
    floor_recomputed = float(np.mean(laws["excess"][w][ok]))
    predicted = 0.9 * floor["excess_loss"]
    train = {arm: np.asarray(res.arms[arm].log["loss"]) for arm in ARMS}
    paired = train["control"] - train["drop"]
    held = {arm: np.asarray([v for _, v in res.arms[arm].evals]) for arm in ARMS}
    held_steps = np.asarray([s for s, _ in res.arms["control"].evals]) - fork
    held_paired = held["control"] - held["drop"]
    settled = held_steps >= settled_from
    drop_held = mean_se(held_paired[settled])
    drop_train = mean_se(paired[settled_from:])
    own = {  # each arm's own floor from its monitor, over its settled rows
        arm: float(
            res.arms[arm].monitor.noise_floor(last=cfg.arm_steps - settled_from)["excess_loss"]
        )
        for arm in ("control", "drop")
    }
    clip = {
        arm: clip_agreement(ledgers[arm], joined(res, arm)["grad_norm"], cfg.clip) for arm in ARMS
    }
    averaging = {}
    for name, (at_mean, values) in res.averaged.items():
        averaging[name] = (float(np.mean(values)) - at_mean, len(values))
    course = []
    for s in sorted({50, 100, 200, 300, 400, 500, 600, cfg.arm_steps} & set(held_steps.tolist())):
        i = int(np.flatnonzero(held_steps == s)[0])
        course.append((s, float(held_paired[i]), float(np.mean(paired[max(0, s - 50) : s]))))
    x = decomposition(res, own, {"heldout": drop_held, "train": drop_train})
    # the held-out drop split at the arms' mean parameters θ̄ over the same settled steps: the
    # noise's part, the difference of their averaging excesses, and the rest, L(θ̄_control) −
    # L(θ̄_drop), where the arms' mean parameters have learned apart
    noise_part = averaging["control"][0] - averaging["drop"][0]
    split = {
        "noise": noise_part,
        "mean": drop_held[0] - noise_part,
        "ratio_noise": x["before"]["prediction"]["heldout"][0] / noise_part,
    }
    # --- the noise scale (the cosine arm: the recipe's run)
    log = joined(res, "cosine")
    c_cos = clip_factor(log["grad_norm"], cfg.clip)
    monitor_scale = ledgers["cosine"]["noise_scale"].numpy()
    two = smoothed(log["metric_noise"], log["metric_signal"])
    read_clipped = c_cos**2 * log["metric_big"] - log["metric_noise"] / cfg.batch
    two_clipped = smoothed(log["metric_noise"], read_clipped)
    euclid = smoothed(log["euclid_noise"], log["euclid_signal"])
    trace = ledgers["cosine"]["noise_trace"].numpy()
    both = np.isfinite(trace) & np.isfinite(log["metric_noise"])
    trace_error = float(np.max(np.abs(trace[both] * cfg.batch / log["metric_noise"][both] - 1)))
    after = np.arange(len(two)) >= cfg.warmup
    ratio = monitor_scale / two
    valid = np.isfinite(ratio)
    end = len(two) - 1
    scale = {
        "at": {"fork": fork - 1, "end": end},
        "monitor": [float(monitor_scale[fork - 1]), float(monitor_scale[end])],
        "two_batch": [float(two[fork - 1]), float(two[end])],
        "two_batch_clipped": [float(two_clipped[fork - 1]), float(two_clipped[end])],
        "euclid": [float(euclid[fork - 1]), float(euclid[end])],
        "ratio_median": float(np.median(ratio[valid])) if valid.any() else math.nan,
        "ratio_range": [float(ratio[valid].min()), float(ratio[valid].max())]
        if valid.any()
        else [math.nan, math.nan],
        "monitor_nan_rows": int((after & ~np.isfinite(monitor_scale)).sum()),
        "two_batch_nan_rows": int((after & ~np.isfinite(two)).sum()),
        "trace_max_error": trace_error,
        "clipped_share_plateau": float(np.mean(c_cos[cfg.warmup : fork] < 1)),
        "clipped_share_end": float(np.mean(c_cos[end - 99 :] < 1)),
    }
    return {
        "config": asdict(cfg),
        "parameters": res.params,
        "vocabulary": res.vocab,
        "threads": torch.get_num_threads(),
        "seconds": res.seconds,
        "fork": fork,
        "window": [fork - window, fork - 1],
        "floor": floor,
        "floor_recomputed": floor_recomputed,
        "floor_unclipped": floor_unclipped,
        "kinetic_unclipped": kinetic_unclipped,
        "clip_mean": float(np.mean(c)),
        "clipped_share_window": float(np.mean(c < 1)),
        "clip_agreement": clip,
        "predicted_drop": predicted,
        "predicted_drop_unclipped": 0.9 * floor_unclipped,
        "drop_heldout": drop_held,
        "drop_train": drop_train,
        "ratio_heldout": predicted / drop_held[0],
        "ratio_train": predicted / drop_train[0],
        "ratio_heldout_unclipped": 0.9 * floor_unclipped / drop_held[0],
        "ratio_train_unclipped": 0.9 * floor_unclipped / drop_train[0],
        "own_floors": own,
        "decomposition": x,
        "headline_heldout": x["before"]["ratio"]["heldout"],
        "headline_train": x["before"]["ratio"]["train"],
        "averaging": averaging,
        "split": split,
        "course": course,
        "settled_from": settled_from,
        "books": {arm: books(ledgers[arm]) for arm in ARMS},
        "noise_scale": scale,
        "heldout": {arm: res.arms[arm].evals for arm in ARMS},
    }


# --- the table ------------------------------------------------------------------------


def table(s: dict[str, Any]) -> str:
    cfg, f = s["config"], s["floor"]
    n = cfg["arm_steps"]
    lines = [
        f"Character transformer on the standard library's sources: {s['parameters']:,} "
        f"parameters (d_model {cfg['d_model']}, {cfg['layers']} layers, {cfg['heads']} heads, "
        f"context {cfg['context']}, vocabulary {s['vocabulary']}); AdamW β = (0.9, 0.95), "
        f"weight decay {cfg['weight_decay']:g} on matrices, clip {cfg['clip']:g}, "
        f"{'bf16 autocast' if cfg['bf16'] else 'float32'}, 2 micro-batches of "
        f"{cfg['micro_batch']} sequences (B = {2 * cfg['micro_batch']}); warmup "
        f"{cfg['warmup']}, lr η = {cfg['lr']:g} for {cfg['plateau']} steps, then {n} steps "
        f"each of control (η), drop (η/10), cosine (η → η/10). "
        f"{s['seconds']:.0f} s on {s['threads']} threads.",
        "",
        "Books at the end (the monitor's ledger from step 0; its heat carries each step's "
        "clip factor c²):",
        "",
        "| arm | −ΔI | dissipated | decay | schedule | injected | residual "
        "| \\|residual\\| / booked | injected without c | residual then | ratio then |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, b in s["books"].items():
        cells = [b[k] for k in ("-dI", "dissipated", "decay", "schedule", "injected", "residual")]
        lines.append(
            f"| {arm} | "
            + " | ".join(f"{x:.4g}" for x in cells)
            + f" | {b['ratio']:.3f} | {b['injected_unclipped']:.4g} "
            f"| {b['residual_unclipped']:.4g} | {b['ratio_unclipped']:.3f} |"
        )
    resum = max(abs(b["injected_resummed"] / b["injected"] - 1) for b in s["books"].values())
    agree = s["clip_agreement"]
    worst = max(x["max_abs_difference"] for x in agree.values())
    lines += [
        "",
        "(injected: the monitor's heat, ½h²c²·tr(M⁻¹C)/B per step, c = ‖g‖/‖g_B‖ its `clip` "
        f"column; summed again here from the ledger's h, noise_trace and clip: within "
        f"{resum:.1e}. Without c: the same heat ½h²·tr(M⁻¹C)/B from noise_trace alone, and the "
        "residual and share booking without c would leave.)",
        "",
        "The monitor's `clip` column against clip_grad_norm_'s factor "
        "min(1, clip/(‖g‖ + 1e-6)) from the norm it returned, computed here: largest |Δc| "
        f"**{worst:.1e}** over the rows where it measured c, each arm's ledger from step 0 ("
        + "; ".join(
            f"{arm}: {x['rows']} rows, {x['clipped_rows']} clipped, "
            f"{x['unmeasured_rows']} unmeasured"
            for arm, x in agree.items()
        )
        + ").",
    ]
    a, b = s["window"]
    dh, dt = s["drop_heldout"], s["drop_train"]
    lo = s["settled_from"]
    av = s["averaging"]
    lines += [
        "",
        f"Noise floor (monitor.noise_floor() over steps {a}–{b}, {f['rows']} rows; E[L − L*] × c "
        f"and E[K] × c² row by row, mean c {s['clip_mean']:.3f}, "
        f"{100 * s['clipped_share_window']:.0f}% of steps clipped):",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| floor at η: predicted E[L − L*], monitor | {f['excess_loss']:.4f} "
        f"± {f['excess_loss_stderr']:.4f} |",
        f"| for contrast: the same law without c (noise_trace alone) | "
        f"{s['floor_unclipped']:.4f} |",
        f"| E[K]: predicted, monitor / without c / measured | {f['kinetic']:.4f} / "
        f"{s['kinetic_unclipped']:.4f} / {f['measured_kinetic']:.4f} |",
        f"| predicted drop at η/10: 0.9 × floor (without c) | {s['predicted_drop']:.4f} "
        f"({s['predicted_drop_unclipped']:.4f}) |",
        f"| measured drop, held-out, control − drop, arm steps {lo}–{n} | "
        f"{dh[0]:.4f} ± {dh[1]:.4f} |",
        f"| measured drop, training loss (same batches), arm steps {lo}–{n} | "
        f"{dt[0]:.4f} ± {dt[1]:.4f} |",
        f"| the law as-is: ratio predicted / measured, held-out (training) | "
        f"{s['ratio_heldout']:.2f} ({s['ratio_train']:.2f}) |",
        f"| for contrast: the ratio without c, held-out (training) | "
        f"{s['ratio_heldout_unclipped']:.2f} ({s['ratio_train_unclipped']:.2f}) |",
        f"| **predicted before the fork ÷ measured**: 0.9 × floor × trend × (1 − f̄) × E(1)/V "
        f"(× V_held/V_train), factors below, held-out (training) | "
        f"**{pm(s['headline_heldout'], 2)}** ({pm(s['headline_train'], 2)}) |",
        f"| each arm's own floor (its monitor) over its steps {lo}–{n}: at η, at η/10, "
        f"difference | {s['own_floors']['control']:.4f}, {s['own_floors']['drop']:.4f}, "
        f"{s['own_floors']['control'] - s['own_floors']['drop']:.4f} |",
        f"| averaging: mean held-out L(θ_k) − L(mean θ) over the floor's window "
        f"({av['plateau'][1]} evaluations) | {av['plateau'][0]:.4f} |",
        f"| averaging over the arms' steps {lo}–{n}: control (η), drop (η/10) | "
        f"{av['control'][0]:.4f}, {av['drop'][0]:.4f} |",
        "",
        "control − drop against the arms' step (held-out; training, mean of the 50 steps "
        "before): " + ", ".join(f"{st}: {h:.3f} ({t:.3f})" for st, h, t in s["course"]),
    ]
    lines += decomposition_table(s)
    ns = s["noise_scale"]
    at = ns["at"]
    lines += [
        "",
        f"Gradient noise scale B_simple (sequences of {cfg['context']} characters; the cosine "
        f"arm), at the fork (step {at['fork']}) and at the end (step {at['end']}):",
        "",
        "| estimate | at the fork | at the end |",
        "|---|---|---|",
    ]
    names = {
        "monitor": "monitor `noise_scale` column",
        "two_batch": "two-batch, Adam's metric, gradients before clipping",
        "two_batch_clipped": "for contrast: the same with \\|G_big\\|² read after clipping",
        "euclid": "two-batch, Euclidean (GPT-NeoX)",
    }
    for key, name in names.items():
        x, y = ns[key]
        lines.append(f"| {name} | {x:.4g} | {y:.4g} |")
    lo_r, hi_r = ns["ratio_range"]
    lines += [
        "",
        f"monitor ÷ two-batch (Adam's metric, before clipping), rows where both exist: median "
        f"**{ns['ratio_median']:.6f}**, largest deviation from 1 "
        f"{max(abs(lo_r - 1), abs(hi_r - 1)):.1e}; after the warmup the "
        f"monitor's column is NaN in {ns['monitor_nan_rows']} rows, the two-batch estimate in "
        f"{ns['two_batch_nan_rows']}. The monitor's noise_trace against "
        f"the two-batch tr(M⁻¹C)/B, row by row: within {ns['trace_max_error']:.1e}. Steps "
        f"clipped: {100 * ns['clipped_share_plateau']:.0f}% over warmup and plateau, "
        f"{100 * ns['clipped_share_end']:.0f}% over the last 100.",
    ]
    return "\n".join(lines)


def pm(value: tuple[float, float], digits: int = 3) -> str:
    """A value ± its standard error."""
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def decomposition_table(s: dict[str, Any]) -> list[str]:
    """The drop predicted before the fork, factor by factor, against the drop measured after
    it; the same factors on the control arm (a cross-check); the floor's drift and the drop's
    split at the arms' mean parameters after the fact."""
    x, cfg, sp = s["decomposition"], s["config"], s["split"]
    lo, hi = x["lags"]
    n, settled = cfg["arm_steps"], s["settled_from"]
    b, a = x["before"], x["after"]
    fork = s["fork"]
    f = s["floor"]

    def cells(y: dict[str, Any], key: str, digits: int = 3) -> str:
        return f"{pm(y[key]['heldout'], digits)} ({pm(y[key]['train'], digits)})"

    def span(steps: list[int]) -> str:
        return f"{steps[0]}–{steps[-1]}"

    def arm(steps: list[int]) -> str:
        return f"{steps[0] - fork}–{steps[-1] - fork}"

    probes = len(b["probe_steps"])
    dh, dt = s["drop_heldout"], s["drop_train"]
    return [
        "",
        "The drop predicted at η before the fork, factor by factor (each measured on its own "
        "over the floor's window, the plateau's later half, none fitted), against the drop "
        "measured after it; held-out (training), ± standard errors. Beside it, the same "
        "factors on the control arm after the fork: a cross-check.",
        "",
        f"| quantity | before the fork: steps {span(b['steps'])} | control arm: arm steps "
        f"{arm(a['steps'])} |",
        "|---|---|---|",
        f"| 0.9 × floor (monitor.noise_floor(), steps {span(s['window'])}) | "
        f"{0.9 * f['excess_loss']:.4f} ± {0.9 * f['excess_loss_stderr']:.4f} | — |",
        "| the floor's trend: its least-squares line through the rows (before: the floor's "
        f"window; control: the arm's) at step {x['middle']} (arm step {x['middle'] - fork}, "
        f"the settled steps' middle) ÷ floor | {pm(b['trend'])} | {pm(a['trend'])} |",
        f"| slow modes: relaxed share 1 − f̄, f̄ the MSD slope in Adam's metric (less its mean "
        f"displacement's part; with it) ÷ c²η²·tr(M⁻¹C)/B over lags {lo}–{hi} | "
        f"{1 - b['unrelaxed']:.3f} ± {b['unrelaxed_se']:.3f} "
        f"({1 - b['unrelaxed_with_drift']:.3f}) | {1 - a['unrelaxed']:.3f} ± "
        f"{a['unrelaxed_se']:.3f} ({1 - a['unrelaxed_with_drift']:.3f}) |",
        f"| not quadratic: E(1) ÷ virial, line probe ({probes} snapshots; before: steps "
        f"{span(b['probe_steps'])}, control: arm steps {arm(a['probe_steps'])}) | "
        f"{cells(b, 'anharmonic')} | {cells(a, 'anharmonic')} |",
        f"| held-out ÷ training virial | {pm(b['curvature'])} | {pm(a['curvature'])} |",
        "| **predicted drop** 0.9 × floor × trend × (1 − f̄) × E(1)/V (× V_held/V_train held "
        "out) | "
        f"{cells(b, 'prediction', 4)} | {cells(a, 'prediction', 4)} |",
        f"| measured drop, control − drop, arm steps {settled}–{n} | "
        f"{dh[0]:.4f} ± {dh[1]:.4f} ({dt[0]:.4f} ± {dt[1]:.4f}) | |",
        f"| **predicted ÷ measured** | **{pm(b['ratio']['heldout'], 2)}** "
        f"({pm(b['ratio']['train'], 2)}) | {cells(a, 'ratio', 2)} |",
        f"| the law as-is: 0.9 × floor ÷ measured | {s['ratio_heldout']:.2f} "
        f"({s['ratio_train']:.2f}) | |",
        "",
        "The line probe's means (their standard errors over the snapshots, the part linear in "
        "x_k taken out, the snapshots taken as independent): "
        + "; ".join(
            f"{where}: "
            + ", ".join(
                f"{loss} E(1) {pm((p['excess'], p['excess_se']), 4)}, "
                f"V {pm((p['virial'], p['virial_se']), 4)}"
                for loss, p in (
                    ("held-out", y["probe"]["heldout"]),
                    ("training", y["probe"]["train"]),
                )
            )
            for where, y in (("before the fork", b), ("control arm", a))
        )
        + f". MSD at lag 1 ÷ the kinetic law's 2h²E[K] = c²h⁴·tr(M⁻¹C)/(B(1 − μ²)): "
        f"{b['lag_one_ratio']:.3f} before the fork, {a['lag_one_ratio']:.3f} on the control "
        f"arm. The MSDs and line probes took {x['seconds']:.0f} s.",
        "",
        f"After the fact (measured after the cut, so not in the prediction): the arms' own "
        f"floors over arm steps {settled}–{n} differ by "
        f"{s['own_floors']['control'] - s['own_floors']['drop']:.4f}, {b['drift']:.3f} of "
        f"0.9 × floor × trend ({a['drift']:.3f} with the control arm's trend); the prediction "
        f"× that ÷ measured: {b['with_drift']['heldout']:.2f} "
        f"({b['with_drift']['train']:.2f}) with the factors before the fork, "
        f"{a['with_drift']['heldout']:.2f} ({a['with_drift']['train']:.2f}) with the control "
        "arm's. The held-out drop split at each arm's mean parameters θ̄ over the same steps: "
        f"the noise's part, the averaging excesses' difference, {sp['noise']:.4f}; the rest, "
        f"L(θ̄_control) − L(θ̄_drop), {sp['mean']:+.4f} (the arms' mean parameters learned "
        f"apart); the prediction before the fork ÷ the noise's part: {sp['ratio_noise']:.2f}.",
    ]


# --- the figures ----------------------------------------------------------------------


def draw(res: Results, s: dict[str, Any], out: Path) -> list[Path]:
    cfg, fork = res.cfg, s["fork"]
    smooth = 50
    out.mkdir(parents=True, exist_ok=True)
    loss_png, scale_png = out / "real_training_loss.png", out / "real_training_noise_scale.png"
    with figure(loss_png, ncols=2, width=6.0, height=4.2) as (ax, diff):
        shared = np.asarray(res.shared.log["loss"])
        steps = np.arange(len(shared))
        ax.plot(steps, trailing(shared, smooth), color=COLORS["shared"], lw=1, label="warmup, η")
        held = np.asarray(res.shared.evals)
        ax.plot(held[:, 0], held[:, 1], ".", color=COLORS["shared"], ms=3)
        full = {}
        for arm in ARMS:
            own = np.concatenate([shared, res.arms[arm].log["loss"]])
            full[arm] = trailing(own, smooth)[fork:]
            arm_steps = np.arange(fork, fork + len(full[arm]))
            ax.plot(arm_steps, full[arm], color=COLORS[arm], lw=1, label=arm)
            held = np.asarray(res.arms[arm].evals)
            ax.plot(held[:, 0], held[:, 1], ".", color=COLORS[arm], ms=3)
        arm_steps = np.arange(fork, fork + len(full["control"]))
        ax.plot(
            arm_steps,
            full["control"] - s["predicted_drop"],
            "--",
            color=COLORS["drop"],
            lw=1,
            label="control − 0.9 × floor (predicted)",
        )
        ax.axvspan(*s["window"], color="#999999", alpha=0.15, lw=0, label="floor's window")
        ax.set_ylim(full["cosine"].min() - 0.15, shared[cfg.warmup :].max() + 0.05)
        ax.set_xlabel("step")
        ax.set_title(f"loss (training: lines, {smooth}-step mean; held-out: dots)")
        paired = np.asarray(res.arms["control"].log["loss"]) - np.asarray(
            res.arms["drop"].log["loss"]
        )
        s_steps = np.arange(1, len(paired) + 1)
        diff.plot(s_steps, trailing(paired, smooth), color="#444444", lw=1, label="training")
        held_c, held_d = np.asarray(res.arms["control"].evals), np.asarray(res.arms["drop"].evals)
        diff.plot(held_c[:, 0] - fork, held_c[:, 1] - held_d[:, 1], "o", ms=3, label="held-out")
        diff.axhline(
            s["predicted_drop"], color="black", ls="--", lw=1, label="0.9 × floor (monitor)"
        )
        diff.axhline(
            s["decomposition"]["before"]["prediction"]["heldout"][0],
            color="#d62728",
            ls="--",
            lw=1,
            label="predicted before the fork (held-out)",
        )
        diff.axhline(
            s["predicted_drop_unclipped"],
            color="black",
            ls=":",
            lw=1,
            label="0.9 × floor without c",
        )
        diff.axhline(
            0.9 * s["averaging"]["plateau"][0],
            color="#9467bd",
            ls="-.",
            lw=1,
            label="0.9 × excess over the mean θ",
        )
        diff.axhline(0, color="#999999", lw=0.5)
        diff.axvspan(s["settled_from"], cfg.arm_steps, color="#999999", alpha=0.15, lw=0)
        diff.set_ylim(-0.01, 1.25 * max(s["predicted_drop"], s["predicted_drop_unclipped"]))
        diff.legend(fontsize=8, frameon=False, loc="lower right")
        diff.set_xlabel("steps after the fork")
        diff.set_title(
            f"control − drop (η vs η/10); held-out, predicted ÷ measured:\n"
            f"{s['headline_heldout'][0]:.2f} from before the fork, "
            f"{s['ratio_heldout']:.2f} for 0.9 × floor",
            fontsize=10,
        )
    with figure(scale_png, ncols=2, width=6.0, height=4.2) as (ax, ratio_ax):
        log = joined(res, "cosine")
        ledger = concatenated(res.shared_ledger, res.arms["cosine"].monitor.ledger)
        monitor = ledger["noise_scale"].numpy()
        c = clip_factor(log["grad_norm"], cfg.clip)
        two = smoothed(log["metric_noise"], log["metric_signal"])
        after_clip = c**2 * log["metric_big"] - log["metric_noise"] / cfg.batch
        read_after = smoothed(log["metric_noise"], after_clip)
        euclid = smoothed(log["euclid_noise"], log["euclid_signal"])
        steps = np.arange(len(two))
        ax.plot(steps, monitor, color="#d62728", lw=2.5, alpha=0.6, label="monitor noise_scale")
        ax.plot(steps, two, color="#1f77b4", lw=1, label="two-batch, Adam's metric")
        ax.plot(steps, euclid, color="#2ca02c", lw=1, label="two-batch, Euclidean")
        ax.axvline(fork, color="#999999", lw=0.5)
        ax.set_yscale("log")
        ax.set_xlabel("step (warmup, plateau, cosine arm)")
        ax.set_title("gradient noise scale B_simple (sequences)")
        with np.errstate(invalid="ignore"):
            ratio_ax.plot(
                steps, np.abs(monitor / two - 1), color="#d62728", lw=1, label="monitor ÷ two-batch"
            )
            ratio_ax.plot(
                steps,
                np.abs(read_after / two - 1),
                color="#ff7f0e",
                lw=1,
                label="‖G_big‖² read after clipping ÷ before",
            )
        ratio_ax.set_yscale("log")
        ratio_ax.set_xlabel("step")
        ratio_ax.set_ylabel("|ratio − 1|")
        ratio_ax.set_title("against the two-batch estimate (Adam's metric)")
        ratio_ax.legend(fontsize=8, frameon=False, loc="center left")
        share = ratio_ax.twinx()
        share.plot(steps, trailing((c < 1).astype(float), 50), color="#777777", lw=0.8)
        share.set_ylim(0, 1.05)
        share.set_ylabel("share of steps clipped (50-step mean)", color="#777777")
    return [loss_png, scale_png]


# --- the command ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smaller model, fewer steps (~1 min)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="ledgers, summary and figures (default benchmarks/out/real_training)",
    )
    parser.add_argument(
        "--figures", type=Path, default=None, help="where the two figures go (default: --out)"
    )
    parser.add_argument("--report", action="store_true", help="inertia report of the cosine arm")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--no-bf16", action="store_true", help="float32 instead of bf16 autocast")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    defaults = asdict(Config())
    for f in fields(Config):
        if f.init and f.type in ("int", "float"):
            kind = int if f.type == "int" else float
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                type=kind,
                default=None,
                metavar=f.type.upper(),
                help=f"default {defaults[f.name]}"
                + (f" (--quick: {QUICK[f.name]})" if f.name in QUICK else "")
                + NOTES.get(f.name, ""),
            )
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads: a positive integer, not {args.threads}")
        torch.set_num_threads(args.threads)
    values = dict(QUICK) if args.quick else {}
    for f in fields(Config):
        given = getattr(args, f.name, None)
        if f.init and given is not None:
            values[f.name] = given
    values["bf16"] = not args.no_bf16
    try:
        cfg = Config(**values)
        text = data(cfg)
    except ValueError as error:
        parser.error(str(error))
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    res = experiment(cfg, text, say)
    summary = analyse(res)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for arm in ARMS:
        ledger = concatenated(res.shared_ledger, res.arms[arm].monitor.ledger)
        ledger.to_csv(out / f"ledger_{arm}.csv")
    written = draw(res, summary, args.figures or out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if args.report:
        from inertia.report import ledger_report

        written.append(ledger_report(out / "ledger_cosine.csv", out / "report"))
    print(table(summary))
    print("\nwritten: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
