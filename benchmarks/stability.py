"""The stability alarm against the edge of stability and against loss spikes (issue 16, item 5).

(a) Edge-of-stability sweep. Full-batch gradient descent on a tanh MLP 64-W-W-10 (W = 128 by
default, to fit the default run in ~6 minutes on two busy cores; the issue's 200 with
--width 200) fitted to 1000 of scikit-learn's digits (pixels ÷ 16), mean-squared error on
one-hot targets (`F.mse_loss`), float32, PyTorch's default initialisation. Settings: SGD μ = 0
at lr 0.1 (a control below the threshold), 0.4, 0.8, 1.2 (the issue's edge runs), 2.0 (the
issue's "diverging"), 3.0 (well above: diverges); SGD μ = 0.9 at lr 0.05 (control), 0.5, 1.0
(the issue's "diverging"), 1.5, 2.0 (well above); Adam lr 0.01 (edge). Every 10
steps an independent power iteration on Hessian-vector products (`torch.func`, reverse over
reverse, warm-started; written here, sharing nothing with `inertia`) measures λ_max of H, or of
P^{-1/2}HP^{-1/2} with P = sqrt(v̂) + ε from Adam's state, and the true margin
m = h²λ_max/(2(1 + μ)) (h² = lr for SGD; for Adam m = λ_max·lr·(1 − β₁)/(2 + 2β₁), 1 at Cohen et
al. 2022's threshold). Two monitors watch the same run: one without `sharpness` (the margin
along the motion) and one with `sharpness=probe` (the full-batch loss), `sharpness_every=10`.
Per run: the first step the true margin reaches 1, the first `edge` row (regime ≥ 1) and the
first alarm of each monitor (and how often it fired), the step the loss first exceeds 10× its
start, the late median margin (last third of the run), and the relative error of the
monitor's `sharpness` against the independent one before the crossing and at the edge.

(b) Loss-spike study. A character-level transformer (`workloads.CharTransformer` on the
standard library's sources), AdamW with warmup then cosine, gradients clipped to norm 1, with
injected events every 150 steps: the learning rate ×10 or ×30 for 5 steps, or 3 batches of
random tokens. Detectors on the same runs: the monitor's alarm (noise="fluctuation"; with and
without a probe `sharpness` on a fixed batch of 8 windows, computed with the math attention
kernel, as the fused one has no double backward), OLMo-core's skip-step rule
(|loss − mean| > 6σ over the previous 128 losses, active from 64 losses on; also with its
gradient-norm z-score), and llm-foundry's KillLossSpike (loss ≥ 2× the mean of the last 100
losses on more than 4 consecutive steps).
Recall per event kind, false-positive episodes per 10 000 clean steps, lead in steps.

    python benchmarks/stability.py [--quick] [--seeds 3] [--width 128] [--out DIR]
                                   [--part sweep|spikes|both] [--save runs.pkl]

Tables are printed at the end (Markdown) and figures written to --out (matplotlib, Agg).
"""

from __future__ import annotations

import argparse
import math
import pickle
import statistics
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from inertia import InertiaMonitor
from workloads import CharTransformer, char_batches, char_vocabulary, stdlib_text, warmup_cosine

MEASURE_EVERY = 10  # steps between sharpness measurements (independent and the monitor's)
BLOW_UP = 10.0  # the loss "diverged" once it exceeds this multiple of its start
STOP = 1e3  # a run is stopped once its loss exceeds this multiple of its start
ADAM_BETAS = (0.9, 0.999)
KEPT = (
    "step",
    "loss",
    "margin",
    "sharpness",
    "regime",
    "alarm",
    "inertia",
    "injected",
    "h",
    "gamma",
)


# --- (a) the edge-of-stability sweep -------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One optimizer and learning rate of the sweep; `expect` is the issue's label (or ours
    for the settings added here), not a measurement."""

    optimizer: str  # "sgd" or "adam"
    lr: float
    momentum: float
    steps: int
    expect: str  # "below", "edge", "diverging (issue)", "diverging"

    @property
    def name(self) -> str:
        if self.optimizer == "adam":
            return f"Adam lr {self.lr:g}"
        return f"SGD μ = {self.momentum:g} lr {self.lr:g}"


def sweep_settings(quick: bool) -> list[Setting]:
    if quick:
        return [
            Setting("sgd", 0.1, 0.0, 100, "below"),
            Setting("sgd", 0.8, 0.0, 300, "edge"),
            Setting("sgd", 3.0, 0.0, 60, "diverging"),
            Setting("sgd", 1.5, 0.9, 150, "diverging"),
            Setting("adam", 1e-2, 0.0, 200, "edge"),
        ]
    return [
        Setting("sgd", 0.1, 0.0, 300, "below"),
        Setting("sgd", 0.4, 0.0, 1600, "edge"),
        Setting("sgd", 0.8, 0.0, 600, "edge"),
        Setting("sgd", 1.2, 0.0, 450, "edge"),
        Setting("sgd", 2.0, 0.0, 450, "diverging (issue)"),
        Setting("sgd", 3.0, 0.0, 100, "diverging"),
        Setting("sgd", 0.05, 0.9, 200, "below"),
        Setting("sgd", 0.5, 0.9, 450, "diverging (issue)"),
        Setting("sgd", 1.0, 0.9, 450, "diverging (issue)"),
        Setting("sgd", 1.5, 0.9, 250, "diverging"),
        Setting("sgd", 2.0, 0.9, 100, "diverging"),
        Setting("adam", 1e-2, 0.0, 450, "edge"),
    ]


def digits(n: int = 1000) -> tuple[Tensor, Tensor]:
    """The first `n` of scikit-learn's 8×8 digits as rows of 64 pixels ÷ 16 (float32) and
    one-hot targets."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data[:n], dtype=torch.float32) / 16.0
    y = F.one_hot(torch.tensor(data.target[:n]), 10).float()
    return x, y


def tanh_mlp(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10)
    )


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    return float(sum(float((u.double() * w.double()).sum()) for u, w in zip(a, b, strict=True)))


def _unit(v: Sequence[Tensor]) -> list[Tensor]:
    norm = math.sqrt(_dot(v, v))
    return [t / norm for t in v]


class PowerIteration:
    """λ_max of W H W (W = diag(w), H the Hessian of `loss(params)` at the model's parameters)
    by power iteration on Hessian-vector products from `torch.func` (vjp of the gradient),
    warm-started at the last eigenvector; stops when the Rayleigh quotient changes by less
    than `tol` (relative), after at most `first` products the first time and `warm` after."""

    def __init__(
        self,
        model: nn.Module,
        loss: Callable[[dict[str, Tensor]], Tensor],
        *,
        first: int = 100,
        warm: int = 30,
        tol: float = 1e-4,
        seed: int = 0,
    ):
        self.model, self.loss = model, loss
        self.first, self.warm, self.tol = first, warm, tol
        self.seed, self.vector, self.products = seed, None, 0

    def __call__(self, weights: list[Tensor] | None = None) -> float:
        names = [n for n, _ in self.model.named_parameters()]
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        _, pullback = vjp(grad(self.loss), params)
        w = weights or [torch.ones_like(p) for p in params.values()]
        if self.vector is None:
            gen = torch.Generator().manual_seed(self.seed)
            v = [torch.randn(p.shape, generator=gen) for p in params.values()]
            budget = self.first
        else:
            v, budget = self.vector, self.warm
        v, value, last = _unit(v), math.nan, math.nan
        for i in range(budget):
            tangent = dict(zip(names, (wi * vi for wi, vi in zip(w, v, strict=True)), strict=True))
            (product,) = pullback(tangent)
            image = [wi * product[n] for wi, n in zip(w, names, strict=True)]
            self.products += 1
            value = _dot(v, image)
            v = _unit(image)
            if i >= 2 and abs(value - last) <= self.tol * abs(value):
                break
            last = value
        self.vector = v
        return value


def adam_weights(opt: torch.optim.Optimizer) -> list[Tensor] | None:
    """P^{-1/2} per parameter, P = sqrt(v/(1 − β₂ᵗ)) + ε from Adam's state (None before its
    first step)."""
    group = opt.param_groups[0]
    out = []
    for p in group["params"]:
        state = opt.state.get(p, {})
        if "exp_avg_sq" not in state:
            return None
        t = float(state["step"])
        p_diag = (state["exp_avg_sq"] / (1.0 - group["betas"][1] ** t)).sqrt() + group["eps"]
        out.append(p_diag.rsqrt())
    return out


def true_margin(setting: Setting, sharpness: float) -> float:
    """h²λ/(2(1 + μ)): lr·λ/(2(1 + μ)) for SGD, λ·lr(1 − β₁)/(2 + 2β₁) for Adam."""
    if setting.optimizer == "adam":
        b1 = ADAM_BETAS[0]
        return sharpness * setting.lr * (1 - b1) / (2 + 2 * b1)
    return sharpness * setting.lr / (2 * (1 + setting.momentum))


@dataclass
class SweepRun:
    setting: Setting
    seed: int
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    measured: dict[int, float] = field(default_factory=dict)  # step → independent λ_max
    motion: dict[str, list[float]] = field(default_factory=dict)  # ledger without sharpness
    probe: dict[str, list[float]] = field(default_factory=dict)  # ledger with sharpness
    fires: dict[str, list[int]] = field(default_factory=dict)  # monitor → steps it fired
    products: int = 0
    seconds: float = 0.0

    def margin(self, step: int) -> float:
        return true_margin(self.setting, self.measured[step])

    @property
    def crossing(self) -> int | None:
        """The first measured step at which the true margin reaches 1."""
        return next((k for k in sorted(self.measured) if self.margin(k) >= 1.0), None)

    @property
    def rise(self) -> float:
        """The largest loss over the lowest loss before it (a catapult's or spike's height)."""
        low, best = math.inf, 1.0
        for v in self.loss:
            if not math.isfinite(v):
                return math.inf
            low = min(low, v)
            best = max(best, v / low)
        return best

    @property
    def blow_up(self) -> int | None:
        start = self.loss[0]
        return next(
            (k for k, v in zip(self.steps, self.loss, strict=True) if not v <= BLOW_UP * start),
            None,
        )

    def first(self, ledger: str, column: str, at_least: float) -> int | None:
        rows = getattr(self, ledger)
        return next(
            (int(s) for s, v in zip(rows["step"], rows[column], strict=True) if v >= at_least), None
        )

    def late(self) -> range:
        """The last third of the steps run."""
        end = self.steps[-1] + 1
        return range(end - end // 3, end)

    def late_median(self, ledger: str | None) -> float:
        late = self.late()
        if ledger is None:
            values = [self.margin(k) for k in self.measured if k in late]
        else:
            rows = getattr(self, ledger)
            values = [
                v
                for s, v in zip(rows["step"], rows["margin"], strict=True)
                if s in late and math.isfinite(v)
            ]
        return statistics.median(values) if values else math.nan

    def sharpness_errors(self, steps: Sequence[int]) -> list[float]:
        """|monitor − independent| / independent at the measured `steps`."""
        table = dict(zip(self.probe["step"], self.probe["sharpness"], strict=True))
        out = []
        for k in steps:
            mine = table.get(k, math.nan)
            if k in self.measured and math.isfinite(mine):
                out.append(abs(mine - self.measured[k]) / abs(self.measured[k]))
        return out

    def before_crossing(self) -> list[int]:
        """The (up to 5) measured steps before the crossing (all of them without one)."""
        crossing = self.crossing
        steps = sorted(k for k in self.measured if crossing is None or k < crossing)
        return steps[-5:]


def run_sweep(setting: Setting, seed: int, width: int, data: tuple[Tensor, Tensor]) -> SweepRun:
    x, y = data
    model = tanh_mlp(width, seed)
    params = list(model.parameters())
    if setting.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=setting.lr, betas=ADAM_BETAS)
    else:
        opt = torch.optim.SGD(params, lr=setting.lr, momentum=setting.momentum)

    def probe() -> Tensor:
        return F.mse_loss(model(x), y)

    def functional_loss(p: dict[str, Tensor]) -> Tensor:
        return F.mse_loss(functional_call(model, p, (x,)), y)

    run = SweepRun(setting, seed, fires={"motion": [], "probe": []})
    motion = InertiaMonitor(
        opt, alarm=True, on_alarm=lambda row: run.fires["motion"].append(int(row["step"]))
    )
    probed = InertiaMonitor(
        opt,
        alarm=True,
        sharpness=probe,
        sharpness_every=MEASURE_EVERY,
        on_alarm=lambda row: run.fires["probe"].append(int(row["step"])),
    )
    reference = PowerIteration(model, functional_loss, seed=seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in range(setting.steps):
            opt.zero_grad()
            loss = probe()
            loss.backward()
            if k % MEASURE_EVERY == 0:
                weights = adam_weights(opt) if setting.optimizer == "adam" else None
                if setting.optimizer == "sgd" or weights is not None:
                    run.measured[k] = reference(weights)
            motion.observe(loss)
            probed.observe(loss)
            value = float(loss.detach())
            run.steps.append(k)
            run.loss.append(value)
            if not value <= STOP * run.loss[0]:
                break
            opt.step()
    run.seconds = time.perf_counter() - start
    run.products = reference.products
    for name, monitor in (("motion", motion), ("probe", probed)):
        ledger = monitor.ledger
        setattr(
            run,
            name,
            {c: ledger[c].tolist() for c in KEPT},
        )
        monitor.detach()
    return run


# --- (b) the loss-spike study ----------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    kind: str  # "lr ×10", "lr ×30", "corrupted"
    start: int
    length: int

    @property
    def steps(self) -> range:
        return range(self.start, self.start + self.length)


ATTRIBUTION = 30  # a detection within this many steps after an event's end belongs to it
SPIKE = 1.5  # an event diverged if its loss exceeds this multiple of the loss before it


def spike_events(seed: int, steps: int) -> list[Event]:
    """Events every 150 steps from step 250 to 120 steps before the end, the kinds in turn from
    one that depends on the seed, each starting off the grid of the probe's measurements
    (every 10 steps): 5 steps of the learning rate ×10 or ×30, or 3 batches of random tokens."""
    kinds = ["lr ×30", "lr ×10", "corrupted"]
    kinds = kinds[seed % 3 :] + kinds[: seed % 3]
    starts = range(250, steps - 120, 150)
    return [
        Event(kinds[i % 3], start + 1 + (3 * i + seed) % 9, 3 if kinds[i % 3] == "corrupted" else 5)
        for i, start in enumerate(starts)
    ]


class OlmoSkipStep:
    """OLMo-core's `SkipStepOptimizer.get_step_factor` (olmo_core/optim/skip_step_optimizer.py):
    the losses of the last `interval` + 1 steps are kept; from max(20, interval // 2) of them on,
    a step is skipped when |loss − mean| / std (unbiased, over the previous ≤ `interval`
    losses) exceeds `sigma` for the loss or, when given, the gradient norm."""

    def __init__(self, interval: int = 128, sigma: float = 6.0, use_grad_norm: bool = False):
        self.interval, self.sigma, self.use_grad_norm = interval, sigma, use_grad_norm
        self.losses: deque[float] = deque(maxlen=interval + 1)
        self.norms: deque[float] = deque(maxlen=interval + 1)

    def __call__(self, loss: float, grad_norm: float) -> bool:
        self.losses.append(loss)
        self.norms.append(grad_norm)
        if len(self.losses) < max(20, self.interval // 2):
            return False
        flagged = _z(self.losses) > self.sigma
        return flagged or (self.use_grad_norm and _z(self.norms) > self.sigma)


def _z(values: deque[float]) -> float:
    past = torch.tensor(list(values)[:-1], dtype=torch.float64)
    std, mean = torch.std_mean(past)
    return float((values[-1] - mean).abs() / std)


class FoundryKillLossSpike:
    """llm-foundry's KillLossSpike (llmfoundry/callbacks/kill_loss_spike_callback.py) with
    its defaults: once the window of the last 100 losses is full, a loss ≥ 2× the window's
    mean is an outlier; more than `patience` = 4 consecutive outliers is a spike (the 5th)."""

    def __init__(self, window: int = 100, multiplier: float = 2.0, patience: int = 4):
        self.multiplier, self.patience = multiplier, patience
        self.window: deque[float] = deque(maxlen=window)
        self.outliers = 0

    def __call__(self, loss: float, grad_norm: float) -> bool:
        spike = False
        if len(self.window) == self.window.maxlen:
            if loss >= self.multiplier * statistics.fmean(self.window):
                self.outliers += 1
                spike = self.outliers > self.patience
            else:
                self.outliers = 0
        self.window.append(loss)
        return spike


@dataclass
class SpikeRun:
    seed: int
    events: list[Event]
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    flags: dict[str, list[int]] = field(default_factory=dict)  # detector → flagged steps
    ledgers: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # monitor → columns
    seconds: float = 0.0


DETECTORS = ("alarm (motion)", "alarm (probe)", "edge (probe)", "OLMo z > 6 (loss)")
DETECTORS += ("OLMo z > 6 (loss, ‖g‖)", "llm-foundry 2× for 5")


def run_spikes(seed: int, steps: int, text: str, vocab: str) -> SpikeRun:
    batch, context = 16, 32
    torch.manual_seed(seed)
    model = CharTransformer(vocab, d_model=64, n_layers=2, n_heads=4, context=context)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
        lr=3e-3,
        betas=(0.9, 0.95),
    )
    base = [g["lr"] for g in opt.param_groups]
    schedule = warmup_cosine(50, steps, floor=0.5)
    batches = char_batches(text, vocab, batch, context, torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(1000 + seed)
    probe_x, probe_y = next(char_batches(text, vocab, 8, context, gen))

    def probe() -> Tensor:
        # the fused CPU attention kernel has no double backward: Hessian-vector products
        # need the math kernel (the monitor's own fallback covers noise="per_sample" only)
        with sdpa_kernel(SDPBackend.MATH):
            return F.cross_entropy(model(probe_x).flatten(0, 1), probe_y.flatten())

    run = SpikeRun(seed, spike_events(seed, steps))
    run.flags = {name: [] for name in DETECTORS}
    monitors = {
        "alarm (motion)": InertiaMonitor(opt, alarm=True, noise="fluctuation"),
        "alarm (probe)": InertiaMonitor(
            opt, alarm=True, noise="fluctuation", sharpness=probe, sharpness_every=MEASURE_EVERY
        ),
    }
    rules = {
        "OLMo z > 6 (loss)": OlmoSkipStep(),
        "OLMo z > 6 (loss, ‖g‖)": OlmoSkipStep(use_grad_norm=True),
        "llm-foundry 2× for 5": FoundryKillLossSpike(),
    }
    factors = {"lr ×10": 10.0, "lr ×30": 30.0}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in range(steps):
            event = next((e for e in run.events if k in e.steps), None)
            factor = factors.get(event.kind, 1.0) if event else 1.0
            for group, lr in zip(opt.param_groups, base, strict=True):
                group["lr"] = lr * schedule(k) * factor
            x, y = next(batches)
            if event is not None and event.kind == "corrupted":
                x = torch.randint(0, len(vocab), x.shape, generator=gen)
                y = torch.randint(0, len(vocab), y.shape, generator=gen)
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for monitor in monitors.values():
                monitor.observe(loss)
            norm = float(nn.utils.clip_grad_norm_(model.parameters(), 1.0))
            value = float(loss.detach())
            for name, rule in rules.items():
                if rule(value, norm):
                    run.flags[name].append(k)
            run.loss.append(value)
            run.lr.append(opt.param_groups[0]["lr"])
            opt.step()
    run.seconds = time.perf_counter() - start
    for name, monitor in monitors.items():
        rows = run.ledgers[name] = {c: monitor.ledger[c].tolist() for c in KEPT}
        run.flags[name] = [int(k) for k, a in zip(rows["step"], rows["alarm"], strict=True) if a]
        if name == "alarm (probe)":
            run.flags["edge (probe)"] = [
                int(k) for k, r in zip(rows["step"], rows["regime"], strict=True) if r >= 1
            ]
        monitor.detach()
    return run


def episodes(flags: Sequence[int]) -> list[int]:
    """The first step of each run of consecutive flagged steps."""
    return [k for i, k in enumerate(flags) if i == 0 or flags[i - 1] != k - 1]


@dataclass
class EventOutcome:
    run: SpikeRun
    event: Event
    before: float  # median loss over the 64 steps before the event
    peak: float
    spike_step: int | None  # first step whose loss exceeds SPIKE × before

    @property
    def diverged(self) -> bool:
        return self.spike_step is not None

    def window(self) -> range:
        return range(self.event.start, self.event.start + self.event.length + ATTRIBUTION)

    def detected(self, name: str) -> int | None:
        return next((k for k in self.run.flags[name] if k in self.window()), None)


def outcomes(runs: Sequence[SpikeRun]) -> list[EventOutcome]:
    out = []
    for run in runs:
        for event in run.events:
            before = statistics.median(run.loss[max(0, event.start - 64) : event.start])
            window = range(
                event.start, min(event.start + event.length + ATTRIBUTION, len(run.loss))
            )
            peak = max(run.loss[k] for k in window)
            spike = next((k for k in window if run.loss[k] > SPIKE * before), None)
            out.append(EventOutcome(run, event, before, peak, spike))
    return out


def clean_steps(run: SpikeRun) -> list[int]:
    taken = {k for e in run.events for k in range(e.start, e.start + e.length + ATTRIBUTION)}
    return [k for k in range(len(run.loss)) if k not in taken]


# --- tables, acceptance, figures -------------------------------------------------------------


def _cell(values: Sequence[object]) -> str:
    return ", ".join("—" if v is None else str(v) for v in values)


def _num(value: float, digits: int = 2) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _pct(values: Sequence[float], how: Callable[[Sequence[float]], float] = max) -> str:
    return f"{100 * how(values):.1f}%" if values else "—"


def sweep_tables(runs: list[SweepRun]) -> list[str]:
    by_setting: dict[Setting, list[SweepRun]] = {}
    for run in runs:
        by_setting.setdefault(run.setting, []).append(run)
    lines = [
        "Sweep, events (per seed; steps): first true margin = at step 0 (Adam: 10, its first"
        " state); true margin ≥ 1 = the independent power iteration's first crossing (measured"
        " every 10 steps); edge = first row with regime ≥ 1; alarm ="
        " first alarm (×n: times it fired); 10× = loss first above 10× its start; rise ="
        " largest loss ÷ the lowest loss before it",
        "",
        "| setting | expect | first true margin | true margin ≥ 1 | edge (motion) | edge (probe) |"
        " alarm (motion) | alarm (probe) | 10× | rise |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, group in by_setting.items():

        def alarms(g: list[SweepRun], name: str) -> str:
            return _cell(
                [f"{r.fires[name][0]} ×{len(r.fires[name])}" if r.fires[name] else None for r in g]
            )

        first_margin = [_num(r.margin(min(r.measured))) for r in group]
        lines.append(
            f"| {setting.name} | {setting.expect} | {_cell(first_margin)} |"
            f" {_cell([r.crossing for r in group])} |"
            f" {_cell([r.first('motion', 'regime', 1) for r in group])} |"
            f" {_cell([r.first('probe', 'regime', 1) for r in group])} |"
            f" {alarms(group, 'motion')} | {alarms(group, 'probe')} |"
            f" {_cell([r.blow_up for r in group])} |"
            f" {_cell([_num(r.rise, 1) if r.rise < 1e3 else '>10³' for r in group])} |"
        )
    lines += [
        "",
        "Sweep, margins and sharpness (per seed): late = the last third of the run's steps;"
        " sharpness error = |monitor − independent| / independent at the same step: the 5"
        " measurements before the crossing (max), the crossing's, and those of the late third"
        " (median / max)",
        "",
        "| setting | late median margin: true | probe | motion | motion margin before crossing"
        " (max) | sharpness error before crossing / at it | sharpness error late (median / max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting, group in by_setting.items():
        motion_before = []
        for r in group:
            steps = set(r.before_crossing())
            values = [
                v
                for s, v in zip(r.motion["step"], r.motion["margin"], strict=True)
                if s in steps and math.isfinite(v)
            ]
            motion_before.append(_num(max(values), 3) if values else None)
        late_errors = [r.sharpness_errors([k for k in r.measured if k in r.late()]) for r in group]

        def at(r: SweepRun) -> str:
            """The largest error before the crossing, and the error at it."""
            crossing = "—" if r.crossing is None else _pct(r.sharpness_errors([r.crossing]))
            return f"{_pct(r.sharpness_errors(r.before_crossing()))} / {crossing}"

        lines.append(
            f"| {setting.name} | {_cell([_num(r.late_median(None)) for r in group])} |"
            f" {_cell([_num(r.late_median('probe')) for r in group])} |"
            f" {_cell([_num(r.late_median('motion'), 3) for r in group])} |"
            f" {_cell(motion_before)} |"
            f" {_cell([at(r) for r in group])} |"
            f" {_cell([f'{_pct(e, statistics.median)} / {_pct(e)}' for e in late_errors])} |"
        )
    return lines


EDGE_RUNS = {("sgd", 0.4, 0.0), ("sgd", 0.8, 0.0), ("sgd", 1.2, 0.0), ("adam", 1e-2, 0.0)}


def _key(run: SweepRun) -> tuple[str, float, float]:
    s = run.setting
    return (s.optimizer, s.lr, s.momentum)


def sweep_acceptance(runs: list[SweepRun]) -> list[str]:
    lines = ["", "Acceptance, sweep:"]
    edge = [r for r in runs if _key(r) in EDGE_RUNS]
    for ledger in ("motion", "probe"):
        loud = [f"{r.setting.name} seed {r.seed}" for r in edge if r.fires[ledger]]
        lines.append(
            f"- edge runs silent ({ledger}): {'met' if not loud else 'NOT met'}"
            f" ({len(edge) - len(loud)} of {len(edge)} silent{'; alarmed: ' if loud else ''}"
            f"{', '.join(loud)})"
        )
        outside = []
        for r in edge:
            value = r.late_median(ledger)
            high = 1.15 if r.setting.optimizer == "adam" else 1.3
            if not 0.85 <= value <= high:
                outside.append(f"{r.setting.name} seed {r.seed}: {_num(value, 3)}")
        lines.append(
            f"- edge runs' late median margin in [0.85, 1.3] (Adam [0.85, 1.15]) ({ledger}):"
            f" {'met' if not outside else 'NOT met'}"
            f"{' (' + '; '.join(outside) + ')' if outside else ''}"
        )
    diverged = [r for r in runs if r.blow_up is not None]
    for ledger in ("motion", "probe"):
        late = []
        for r in diverged:
            alarm = r.fires[ledger][0] if r.fires[ledger] else None
            if alarm is None or alarm > r.blow_up:
                late.append(f"{r.setting.name} seed {r.seed}: alarm {alarm}, 10× at {r.blow_up}")
        lines.append(
            f"- runs whose loss exceeded 10× alarm no later ({ledger}):"
            f" {'met' if not late else 'NOT met'} ({len(diverged) - len(late)} of"
            f" {len(diverged)}{'; ' + '; '.join(late) if late else ''})"
        )
    issue = [r for r in runs if r.setting.expect == "diverging (issue)"]
    grew = sum(r.blow_up is not None for r in issue)
    lines.append(
        f"- the issue's diverging settings (μ = 0 lr 2.0; μ = 0.9 lr 0.5, 1.0): the loss exceeded"
        f" 10× its start in {grew} of {len(issue)} runs"
    )
    for where in ("before crossing", "late"):
        for optimizer in ("sgd", "adam"):
            errors = []
            for r in runs:
                if r.setting.optimizer != optimizer or r.blow_up is not None:
                    continue
                steps = (
                    r.before_crossing()
                    if where == "before crossing"
                    else [k for k in r.measured if k in r.late()]
                )
                errors += r.sharpness_errors(steps)
            within = sum(e <= 0.1 for e in errors)
            lines.append(
                f"- sharpness within 10% {where} ({optimizer}):"
                f" {'met' if errors and within == len(errors) else 'NOT met'}"
                f" ({within} of {len(errors)} measurements; median error"
                f" {_pct(errors, statistics.median)}, max {_pct(errors)})"
            )
    return lines


def spike_tables(runs: list[SpikeRun]) -> list[str]:
    events = outcomes(runs)
    kinds = sorted({o.event.kind for o in events})
    lines = [
        "Spike study, events (per event: run seed, start, loss before → peak; per detector the"
        " step it flagged, lead = step the loss first exceeds 1.5× its level before − flagged"
        " step; — not flagged within 30 steps of the event's end)",
        "",
        "| event | seed | start | loss before → peak | diverged | " + " | ".join(DETECTORS) + " |",
        "|---|---|---|---|---|" + "---|" * len(DETECTORS),
    ]
    for o in events:
        cells = []
        for name in DETECTORS:
            k = o.detected(name)
            lead = "" if k is None or o.spike_step is None else f" (lead {o.spike_step - k})"
            cells.append("—" if k is None else f"{k}{lead}")
        lines.append(
            f"| {o.event.kind} | {o.run.seed} | {o.event.start} | {o.before:.2f} → {o.peak:.2f} |"
            f" {'yes' if o.diverged else 'no'} | " + " | ".join(cells) + " |"
        )
    clean = sum(len(clean_steps(r)) for r in runs)
    lines += [
        "",
        f"Spike study, summary: recall = events flagged within 30 steps of their end; false"
        f" positives = flagged episodes on the {clean} clean steps (outside every event's"
        f" window), per 10 000; lead over the loss's 1.5× rise (median)",
        "",
        "| detector | "
        + " | ".join(f"recall {k}" for k in kinds)
        + " | false positives / 10 000 steps | median lead (diverging lr events) |",
        "|---|" + "---|" * (len(kinds) + 2),
    ]
    for name in DETECTORS:
        recall = []
        for kind in kinds:
            pool = [
                o for o in events if o.event.kind == kind and (o.diverged or kind == "corrupted")
            ]
            hit = sum(o.detected(name) is not None for o in pool)
            recall.append(f"{hit}/{len(pool)}")
        false = 0
        for r in runs:
            allowed = set(clean_steps(r))
            false += sum(k in allowed for k in episodes(r.flags[name]))
        leads = [
            o.spike_step - o.detected(name)
            for o in events
            if o.event.kind != "corrupted" and o.diverged and o.detected(name) is not None
        ]
        lead = f"{statistics.median(leads):g}" if leads else "—"
        rate = 1e4 * false / clean if clean else math.nan
        lines.append(f"| {name} | " + " | ".join(recall) + f" | {false} ({rate:.0f}) | {lead} |")
    return lines


def spike_acceptance(runs: list[SpikeRun]) -> list[str]:
    events = [o for o in outcomes(runs) if o.event.kind != "corrupted" and o.diverged]
    lines = ["", "Acceptance, spike study:"]
    olmo = "OLMo z > 6 (loss)"
    for name in ("alarm (motion)", "alarm (probe)"):
        earlier = 0
        for o in events:
            mine, theirs = o.detected(name), o.detected(olmo)
            if mine is not None and (theirs is None or mine < theirs):
                earlier += 1
        fp = {}
        for detector in (name, olmo):
            fp[detector] = sum(
                k in set(clean_steps(r)) for r in runs for k in episodes(r.flags[detector])
            )
        met = events and 2 * earlier >= len(events) and fp[name] <= fp[olmo]
        lines.append(
            f"- {name} earlier than OLMo's z-score in ≥ half of the lr-induced divergences, no"
            f" more false positives: {'met' if met else 'NOT met'} (earlier in {earlier} of"
            f" {len(events)}; false-positive episodes {fp[name]} vs {fp[olmo]})"
        )
    return lines


def sweep_figure(runs: list[SweepRun], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in runs if r.seed == runs[0].seed]
    cols = 4
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(4.2 * cols, 4.4 * rows), squeeze=False)
    for i, r in enumerate(shown):
        top, bottom = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
        top.semilogy(r.steps, r.loss, color="k", lw=0.8)
        top.set_title(f"{r.setting.name} ({r.setting.expect})", fontsize=9)
        top.set_ylabel("loss", fontsize=8)
        steps = sorted(r.measured)
        bottom.plot(steps, [r.margin(k) for k in steps], "o", ms=2.5, color="k", label="true")
        for name, color in (("probe", "tab:blue"), ("motion", "tab:orange")):
            rows_ = getattr(r, name)
            bottom.plot(rows_["step"], rows_["margin"], lw=0.7, color=color, label=name)
            for s, regime in zip(rows_["step"], rows_["regime"], strict=True):
                if regime >= 2:
                    bottom.axvline(s, color="tab:red", alpha=0.05 if name == "motion" else 0.15)
            for k in r.fires[name]:
                bottom.axvline(k, color="tab:red", lw=1.0, ls="--" if name == "motion" else "-")
        bottom.axhline(1.0, color="grey", lw=0.5)
        if r.blow_up is not None:
            for ax in (top, bottom):
                ax.axvline(r.blow_up, color="purple", lw=1.0, ls=":")
        bottom.set_ylim(0, 2.0)
        bottom.set_ylabel("margin", fontsize=8)
        bottom.set_xlabel("step", fontsize=8)
        if i == 0:
            bottom.legend(fontsize=7)
    for j in range(len(shown), rows * cols):
        axes[2 * (j // cols), j % cols].axis("off")
        axes[2 * (j // cols) + 1, j % cols].axis("off")
    fig.suptitle(
        "Edge-of-stability sweep (seed 0): loss; margin (true: independent power iteration;"
        " probe: monitor with sharpness; motion: without). Red: alarm (solid probe, dashed"
        " motion); purple: loss 10× its start",
        fontsize=10,
    )
    fig.tight_layout()
    path = out / "stability_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def spike_figure(runs: list[SpikeRun], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = ("tab:orange", "tab:blue", "tab:cyan", "tab:green", "olive", "tab:purple")
    colors = dict(zip(DETECTORS, palette, strict=True))
    fig, axes = plt.subplots(len(runs), 1, figsize=(12, 2.8 * len(runs)), squeeze=False)
    for ax, r in zip(axes[:, 0], runs, strict=True):
        ax.plot(r.loss, color="k", lw=0.6)
        for e in r.events:
            ax.axvspan(e.start, e.start + e.length, color="grey", alpha=0.3)
            ax.text(e.start, max(r.loss), e.kind, fontsize=8, va="top")
        top = max(r.loss)
        for i, name in enumerate(DETECTORS):
            marks = episodes(r.flags[name])
            ax.plot(
                marks,
                [top * (0.95 - 0.05 * i)] * len(marks),
                "v",
                color=colors[name],
                ms=5,
                label=name,
            )
        ax.set_ylabel(f"loss (seed {r.seed})")
        ax.set_yscale("log")
    axes[0, 0].legend(fontsize=7, ncol=6, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(
        "Loss-spike study: events (grey) and the first step of each detection episode", y=1.0
    )
    fig.tight_layout()
    path = out / "stability_spikes.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- main --------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a positive integer, not {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 seed, fewer settings and steps")
    parser.add_argument("--seeds", type=positive_int, help="seeds (default 3; 1 with --quick)")
    parser.add_argument(
        "--width", type=positive_int, default=128, help="hidden width of the MLP (issue: 200)"
    )
    parser.add_argument(
        "--part",
        choices=("sweep", "spikes", "both"),
        default="both",
        help="the edge-of-stability sweep, the loss-spike study, or both (default)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("stability-out"), help="folder for the figures"
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    parser.add_argument(
        "--save", type=Path, help="also pickle the runs (as dicts: ledgers, measurements) here"
    )
    args = parser.parse_args(argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--out: cannot create {args.out}: {error}")
    if args.save is not None and not args.save.parent.is_dir():
        parser.error(f"--save: no folder {args.save.parent} to write {args.save.name} in")
    torch.set_num_threads(args.threads)
    seeds = range(args.seeds or (1 if args.quick else 3))
    began = time.perf_counter()
    lines: list[str] = []
    runs: list[SweepRun] = []
    spike_runs: list[SpikeRun] = []
    if args.part in ("sweep", "both"):
        runs = sweep(seeds, args.width, args.quick)
        lines += sweep_tables(runs) + sweep_acceptance(runs)
        lines.append(f"\nfigure: {sweep_figure(runs, args.out)}")
        lines.append(f"sweep time: {sum(r.seconds for r in runs):.0f} s")
    if args.part in ("spikes", "both"):
        spike_runs = spikes(seeds, args.quick)
        lines += ["", *spike_tables(spike_runs), *spike_acceptance(spike_runs)]
        lines.append(f"\nfigure: {spike_figure(spike_runs, args.out)}")
        lines.append(f"spike study time: {sum(r.seconds for r in spike_runs):.0f} s")
    lines.append(f"total wall time: {time.perf_counter() - began:.0f} s")
    if args.save is not None:
        with open(args.save, "wb") as file:
            plain = {"sweep": [asdict(r) for r in runs], "spikes": [asdict(r) for r in spike_runs]}
            pickle.dump(plain, file)
        lines.append(f"runs saved to {args.save}")
    print("\n".join(lines))


def sweep(seeds: Sequence[int], width: int, quick: bool) -> list[SweepRun]:
    """Every setting of the sweep for every seed (progress on stderr)."""
    data = digits()
    runs = []
    for setting in sweep_settings(quick):
        for seed in seeds:
            run = run_sweep(setting, seed, width, data)
            runs.append(run)
            print(
                f"sweep {setting.name} seed {seed}: {len(run.steps)} steps,"
                f" {run.products} products, {run.seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    return runs


def spikes(seeds: Sequence[int], quick: bool) -> list[SpikeRun]:
    """The spike study's runs, one per seed (progress on stderr)."""
    text = stdlib_text(300_000)
    vocab = char_vocabulary(text)
    runs = []
    for seed in seeds:
        run = run_spikes(seed, 420 if quick else 1000, text, vocab)
        runs.append(run)
        print(f"spikes seed {seed}: {run.seconds:.1f} s", file=sys.stderr, flush=True)
    return runs


if __name__ == "__main__":
    main()
