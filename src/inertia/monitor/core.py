"""`InertiaMonitor`: the energy ledger of a real training run (THEORY.md §4).

Attached to any `torch.optim.Optimizer` through its step hooks. Row k of the ledger describes
the parameters θ_k the k-th step starts from:

    kinetic   K_k = Σ_groups ½ ‖θ_k − θ_{k−1}‖²_M / h²   (0 at k = 0)
    potential L_k = observed loss at θ_k + Σ_groups (wd/2) ‖θ_k‖²
    shadow    H̃_k = K_k + L_k − ½ ⟨θ_k − θ_{k−1}, ∇L_k + wd θ_k⟩   (the modified energy; exact
              for momentum 1 on a quadratic, O(h²) otherwise)
    dissipated += Σ_groups (1 − μ_eff²) K_{k−1},  μ_eff = μ h_{k−1}/h_{k−2}  (one step's friction)
    injected   (0: the gradient-noise heat needs a noise estimate)
    residual   += ΔI + ΔD − ΔN: what the map does not explain (its approximations, the noise)

so inertia − inertia₀ = −dissipated + injected + residual. All sums are float64, whatever the
model's dtype: parameters are copied into float64 buffers, where differences are exact.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from .. import _checks
from .._distributed import local as _local
from .._distributed import rank_world
from ..energy import COLUMNS, Ledger
from ..theory import heavy_ball_margin
from . import maps
from .noise import estimator
from .sinks import CSVSink, Sink, _FileSink

#: The monitor's columns, in order. `noise_trace`: tr(C)/B (NaN without a noise estimate);
#: `margin`: the stability margin h²λ̂/(2(1 + μ)); `alarm`: 1 while the evidence that the
#: margin exceeds 1 (a CUSUM in noise standard errors) has passed its threshold for
#: `alarm_patience` rows. `flag`: 0 a normal step, 1 a non-finite loss, 2 an iteration whose
#: optimizer step was skipped (e.g. by GradScaler).
MONITOR_COLUMNS = (
    "step",
    "lr",
    "h",
    "gamma",
    *COLUMNS,
    "shadow",
    "noise_trace",
    "margin",
    "alarm",
    "flag",
)
OK, NONFINITE, SKIPPED = 0, 1, 2
CURVATURE_MEMORY = 0.5  # weight of the past in the curvature average (rows: 1/(1 − w))
ALARM_EVIDENCE = 4.0  # the alarm's threshold on S = Σ (margin − 1)/stderr (a CUSUM, in z units)
PARALLEL = 1e-6  # sin² of the angle below which two steps span one direction, not two
ROUND_OFF = 1e-3  # the largest relative round-off the two-step curvature may carry
F64 = torch.float64
#: The row's estimates from each rank's own batch, last in its packing: name → p, where the
#: mean over ranks is further ÷ world^p (a variance of the mean gradient: p = 1).
PER_RANK = {"noise": 1, "along": 1, "spread": 1, "curvature": 0}


class _Group:
    """A parameter group's two flat float64 buffers, one view per parameter: `buffer` holds
    θ_k at the step, then −Δθ_k after it (exact: any two float32/bf16 values differ exactly in
    float64); `scratch` takes ∇L or the metric M for a dot product. Without `buffers` (an
    optimizer that reports its energies) both are empty. With `two_steps`, a third, `previous`,
    keeps the step before the last (the alarm's two-step curvature)."""

    def __init__(self, params: list[Tensor], *, buffers: bool = True, two_steps: bool = False):
        self.params = list(params)
        self.sharded = any(_local(p) is not p for p in self.params)
        local = [_local(p).detach() for p in self.params] if buffers else []
        device = local[0].device if local else torch.device("cpu")
        self._sizes, self._shapes = [t.numel() for t in local], [t.shape for t in local]
        self.buffer = torch.zeros(sum(self._sizes), dtype=F64, device=device)
        self.scratch = torch.zeros_like(self.buffer)
        self.views, self.scratch_views = self.views_of(self.buffer), self.views_of(self.scratch)
        self._cached = None if self.sharded else local
        self.previous = torch.zeros_like(self.buffer) if two_steps else None
        # the parameters' unit round-off: the relative error of a step is eps·‖θ‖/‖Δθ‖
        self.eps = max((torch.finfo(p.dtype).eps for p in self.params), default=0.0)
        self.has_previous = False  # `previous` holds a measured step
        # the dots of the last booked row (`InertiaMonitor._measure`)
        self.grad_dot, self.grad_sq, self.cross_grad, self.cross = 0.0, math.nan, math.nan, math.nan
        self.delta_sq = 0.0  # ‖Δθ‖² of the last measured step
        self.theta_sq = 0.0  # ‖θ‖² at the last snapshot

    def views_of(self, flat: Tensor) -> list[Tensor]:
        """Per-parameter views of a flat buffer laid out as `buffer`."""
        return [v.view(s) for v, s in zip(flat.split(self._sizes), self._shapes, strict=True)]

    def local_params(self) -> list[Tensor]:
        """The (local shards of the) parameters; plain tensors are cached views of them."""
        if self._cached is not None:
            return self._cached
        return [_local(p).detach() for p in self.params]

    def load_scratch(self, tensors: list[Tensor]) -> Tensor:
        """Copy per-parameter tensors into the scratch buffer; returns it flat."""
        torch._foreach_copy_(self.scratch_views, tensors)
        return self.scratch

    def grads(self) -> list[Tensor]:
        return [
            _local(p.grad) if p.grad is not None else torch.zeros_like(_local(p))
            for p in self.params
        ]

    def snapshot(self, norm: bool) -> None:
        """buffer ← θ, remembering ‖θ‖² if `norm` (weight decay books it; else NaN)."""
        torch._foreach_copy_(self.views, self.local_params())
        self.theta_sq = _dot(self.buffer, self.buffer) if norm else math.nan


def _dot(a: Tensor, b: Tensor) -> float:
    """aᵀb of two float64 buffers."""
    return float(torch.dot(a, b))


def _two_step_curvature(a11, a21, a22, b11, b12, b22, precision: float = 0.0) -> float:
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


def _plain(group_maps: list[maps.GroupMap] | None) -> list[dict] | None:
    """Maps as plain dicts, so a checkpoint loads with torch.load(weights_only=True)."""
    return None if group_maps is None else [dataclasses.asdict(m) for m in group_maps]


def _maps_of(plain: list[dict] | None) -> list[maps.GroupMap] | None:
    return None if plain is None else [maps.GroupMap(**m) for m in plain]


def _kahan(total: list[float], carry: list[float], values: tuple[float, ...]) -> None:
    """total += values elementwise with Kahan compensation (plain floats: the monitor's books)."""
    for i, x in enumerate(values):
        y = x - carry[i]
        t = total[i] + y
        carry[i] = (t - total[i]) - y
        total[i] = t


class InertiaMonitor:
    """Books the energy ledger of training driven by `optimizer`, with no change to it.

    In the loop: ``loss.backward(); monitor.observe(loss); optimizer.step()`` (`observe` may
    also come before `backward`). Rows go to `monitor.ledger` and to the sinks (a CSV file in
    `log_dir`, if given). See `inertia.monitor.maps` for each optimizer's map.

    Args:
        optimizer: any `torch.optim.Optimizer`.
        every: book a row every `every` steps; each row measures the velocity over the step
            before it, and friction between rows is estimated by the trapezoid rule (exact
            bookkeeping needs every = 1).
        log_dir: folder for `ledger.csv`, streamed and flushed per row.
        sinks: more `Sink`s (CSV, JSONL, TensorBoard).
        on_nan: "flag" records a non-finite loss and carries on; "raise" raises
            FloatingPointError before the optimizer step.
        history: rows kept in memory; default all, or the last 10 000 when a file sink streams.
        noise: None, "per_sample", "microbatch" or "fluctuation" (`inertia.monitor.noise`): the
            gradient-noise estimate behind `noise_trace`, the injected heat ½h²·tr(C)/B per step
            and `noise_floor()`.
        alarm: compute the stability margin and raise the alarm (a `RuntimeWarning` and
            `on_alarm(row)`) once the evidence that it exceeds 1 passes its threshold (at once
            without noise; accumulated over rows with noise) for `alarm_patience` rows. The
            curvature: without noise, from the gradients the steps have (a few dot products a
            step); with noise="per_sample", from Hessian-vector products on the step's batch
            (in time in the tests' minibatch runs); with the other estimates, a secant that
            can be late at high momentum (docs/monitor.md). Without a `noise` estimate the
            gradients are taken as exact: with minibatches pass one, or their noise reads as
            curvature and raises false alarms.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        every: int = 1,
        log_dir: str | Path | None = None,
        sinks: list[Sink] | None = None,
        on_nan: str = "flag",
        history: int | None = None,
        noise: str | None = None,
        alarm: bool = False,
        alarm_patience: int = 1,
        on_alarm: Callable[[dict], None] | None = None,
    ):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise _checks.fail("optimizer", "a torch.optim.Optimizer", optimizer)
        self.every = _checks.integer("every", every, low=1)
        if on_nan not in ("flag", "raise"):
            raise _checks.fail("on_nan", "'flag' or 'raise'", on_nan)
        self.on_nan = on_nan
        self.sinks = list(sinks or [])
        if not all(isinstance(s, Sink) for s in self.sinks):
            raise _checks.fail("sinks", "a list of inertia.monitor sinks", sinks)
        if log_dir is not None:
            self.sinks.append(CSVSink(Path(log_dir) / "ledger.csv"))
        if history is None and any(isinstance(s, _FileSink) for s in self.sinks):
            history = 10_000
        if history is not None:
            history = _checks.integer("history", history, low=1)
        self.optimizer = optimizer
        self._rows: deque[tuple] = deque(maxlen=history)
        # An optimizer that reports its energies (InertiaSGD) is booked from its report, with no
        # pass over the parameters, unless the alarm or a noise estimate needs the buffers.
        self._reported = maps.reports_energy(optimizer) and not alarm and noise is None
        # The alarm's curvature (`_margin`): with per-sample losses, from Hessian-vector products
        # on the step's batch; without noise, the largest over the last two steps' secants (a
        # max over a subspace is biased upward by gradient noise: with it, the last step's).
        self._hessian = bool(alarm) and noise == "per_sample"
        self._two_steps = bool(alarm) and noise is None
        self._groups = [
            _Group(g["params"], buffers=not self._reported, two_steps=self._two_steps)
            for g in optimizer.param_groups
        ]
        self._sharded = any(g.sharded for g in self._groups)
        self._rank, self._world = rank_world()
        self._books, self._books_carry = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        self.step = 0  # optimizer steps seen
        self._loss_sum: Tensor | float = 0.0
        self._loss_count = 0
        self._last_inertia: float | None = None
        self._last_kinetic = [0.0] * len(self._groups)  # per group, at the last row
        self._kinetic_local = [0.0] * len(self._groups)  # per group, measured after the last step
        self._step_maps: list[maps.GroupMap] | None = None  # of the step under way
        self._maps: list[maps.GroupMap] | None = None  # of the last step taken
        self._maps_before: list[maps.GroupMap] | None = None  # of the step before it
        self._has_delta = False
        # the step under way (between steps: the last one) is measured, so that between steps
        # the buffers hold its −Δθ
        self._snapshot_taken = False
        self._in_nonfinite_run = False  # the last row's loss was not finite
        self._noise = estimator(noise, self._groups, curvature=bool(alarm))
        self.noise = noise
        self.alarm = bool(alarm)
        self.alarm_patience = _checks.integer("alarm_patience", alarm_patience, low=1)
        if on_alarm is not None and not callable(on_alarm):
            raise _checks.fail("on_alarm", "a callable taking the ledger row", on_alarm)
        self.on_alarm = on_alarm
        groups = len(self._groups)
        self._last_noise = [math.nan] * groups  # tr(C)/B at the last row, per group
        self._grad_dot_before = [0.0] * groups  # ⟨−Δθ, g⟩ with the step's own gradient
        self._cross_before = [math.nan] * groups  # ⟨−Δθ_prev, g⟩ with the last step's gradient
        self._last_secant: list[tuple[float, float] | None] = [None] * groups  # (dᵀHd, ‖d‖²)
        # EMAs of ⟨Δg, Δθ⟩, ‖Δθ‖² and the numerator's noise variance, per group (`_secant`)
        self._curvature = [[0.0, 0.0, 0.0] for _ in range(groups)]
        self._above = 0  # rows in a row with the evidence above its threshold
        self._evidence = 0.0  # S_k = max(0, S_{k−1} + (margin − 1)/stderr)
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    # ------------------------------------------------------------------ user API

    def observe(
        self, loss: Tensor | float, *, accumulate: bool = False, per_sample: Tensor | None = None
    ) -> None:
        """Record the loss at the current parameters (the mean over micro-batches when
        `accumulate` is true). An earlier loss that no optimizer step consumed marks that
        iteration as skipped (as GradScaler does on overflow). With noise="per_sample", pass
        the unreduced losses as `per_sample`, before `backward`; with noise="microbatch",
        call this after each micro-batch's `backward`."""
        if not accumulate and self._loss_count:
            self._book_row(self._maps_now(), SKIPPED)
        if self._noise is not None and self.step % self.every == 0:  # a booked step's noise
            along = [g.buffer for g in self._groups] if self._snapshot_taken else None
            self._noise.observe(self._groups, per_sample, along)
        value = loss.detach() if isinstance(loss, Tensor) else float(loss)
        if self._loss_count:  # micro-batches: summed in float64
            value = value.to(F64) if isinstance(value, Tensor) else value
            self._loss_sum = self._loss_sum + value
        else:
            self._loss_sum = value
        self._loss_count += 1

    def noise_floor(self, last: int | None = None) -> dict[str, float]:
        """Predicted stationary excess loss and kinetic energy from the noise estimates, beside
        the measured means, over the `last` rows kept (default: the later half).

        THEORY.md §4 with the map's h² = η(1 − τ): a step injects ½h²·tr(C)/B of kinetic
        energy and friction removes (1 − μ²) of it, so E[K] = h²·tr(C)/(2B(1 − μ²)); for a
        quadratic basin at small ηλ, E[L − L*] = h²·tr(C)/(4B(1 − μ)). Uses the first
        parameter group's map; standard errors treat rows as independent (an underestimate
        for correlated rows).
        """
        if self.noise is None:
            raise ValueError("noise_floor needs a noise estimate: InertiaMonitor(..., noise=...)")
        led = self.ledger
        rows = len(led["step"])
        if rows < 4:
            raise ValueError(f"noise_floor needs at least 4 rows; got {rows}")
        last = rows // 2 if last is None else _checks.integer("last", last, low=2)
        window = slice(max(0, rows - last), rows)
        trace, h, gamma = led["noise_trace"][window], led["h"][window], led["gamma"][window]
        ok = torch.isfinite(trace) & (led["flag"][window] == OK)
        mu = 1.0 - gamma * h

        def mean_se(x: Tensor) -> tuple[float, float]:
            return float(x.mean()), float(x.std() / math.sqrt(len(x))) if len(x) > 1 else math.nan

        excess, excess_se = mean_se((h * h * trace / (4.0 * (1.0 - mu)))[ok])
        kinetic, kinetic_se = mean_se((h * h * trace / (2.0 * (1.0 - mu * mu)))[ok])
        potential, potential_se = mean_se(led["potential"][window][ok])
        measured_k, measured_k_se = mean_se(led["kinetic"][window][ok])
        return {
            "rows": int(ok.sum()),
            "noise_trace": float(trace[ok].mean()),
            "excess_loss": excess,
            "excess_loss_stderr": excess_se,
            "kinetic": kinetic,
            "kinetic_stderr": kinetic_se,
            "measured_potential": potential,
            "measured_potential_stderr": potential_se,
            "measured_kinetic": measured_k,
            "measured_kinetic_stderr": measured_k_se,
        }

    @property
    def ledger(self) -> Ledger:
        """The rows kept in memory as a `Ledger` (1-D float64 columns against `step`)."""
        columns = (
            list(zip(*self._rows, strict=True)) if self._rows else [[] for _ in MONITOR_COLUMNS]
        )
        table = {
            name: torch.tensor(col, dtype=F64)
            for name, col in zip(MONITOR_COLUMNS, columns, strict=True)
        }
        step = table.pop("step")
        return Ledger(step, table, time_name="step")

    def detach(self) -> None:
        """Remove the hooks and close the sinks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for sink in self.sinks:
            sink.close()

    def state_dict(self) -> dict:
        """Everything needed to continue the same ledger after a restart."""
        return {
            "step": self.step,
            "every": self.every,
            "books": (list(self._books), list(self._books_carry)),
            "last_inertia": self._last_inertia,
            "last_kinetic": list(self._last_kinetic),
            "kinetic_local": list(self._kinetic_local),
            "maps": _plain(self._maps),
            "maps_before": _plain(self._maps_before),
            "has_delta": self._has_delta,
            "snapshot_taken": self._snapshot_taken,
            "buffers": [g.buffer.clone() for g in self._groups],
            "norms": [(g.delta_sq, g.theta_sq) for g in self._groups],
            "noise": list(self._last_noise),
            "alarm": (
                list(self._grad_dot_before),
                [list(c) for c in self._curvature],
                self._above,
                self._evidence,
            ),
            "top_curvature": self._noise.top.state_dict() if self._hessian else None,
            "two_steps": (
                [g.previous.clone() if g.has_previous else None for g in self._groups],
                list(self._cross_before),
                list(self._last_secant),
            ),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the ledger saved by `state_dict` (same parameter groups and sizes): the
        sinks drop what they hold from the checkpoint's step on, which is booked again."""
        sizes = [b.numel() for b in state["buffers"]]
        if sizes != [g.buffer.numel() for g in self._groups]:
            raise ValueError(
                f"state: parameter sizes {sizes} do not match this optimizer's "
                f"{[g.buffer.numel() for g in self._groups]}"
            )
        self.step, self.every = state["step"], state["every"]
        self._books, self._books_carry = list(state["books"][0]), list(state["books"][1])
        self._last_inertia = state["last_inertia"]
        self._last_kinetic = list(state["last_kinetic"])
        self._kinetic_local = list(state["kinetic_local"])
        self._maps, self._maps_before = _maps_of(state["maps"]), _maps_of(state["maps_before"])
        self._has_delta = state["has_delta"]
        self._snapshot_taken = state["snapshot_taken"]
        for group, buffer, (delta_sq, theta_sq) in zip(
            self._groups, state["buffers"], state["norms"], strict=True
        ):
            group.buffer.copy_(buffer)
            group.delta_sq, group.theta_sq = delta_sq, theta_sq
        self._last_noise = list(state["noise"])
        dots, curvature, self._above, self._evidence = state["alarm"]
        self._grad_dot_before, self._curvature = list(dots), [list(c) for c in curvature]
        if self._hessian:
            self._noise.top.load_state_dict(state["top_curvature"] or [])
        previous, cross_before, last_secant = state["two_steps"]
        for group, step in zip(self._groups, previous, strict=True):
            group.has_previous = group.previous is not None and step is not None
            if group.has_previous:
                group.previous.copy_(step)
        self._cross_before = list(cross_before)
        self._last_secant = [None if s is None else tuple(s) for s in last_secant]
        self._rows.clear()
        for sink in self.sinks:  # rows booked after the checkpoint are booked again
            sink.truncate(self.step)

    # ------------------------------------------------------------------ hooks

    def _maps_now(self) -> list[maps.GroupMap]:
        return [maps.group_map(self.optimizer, g) for g in self.optimizer.param_groups]

    def _before_step(self, optimizer, args, kwargs):
        # args = (optimizer, closure?, …): the step hooks see the optimizer as args[0]
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self._open_step()
            return None
        opened = False

        def monitored_closure():
            # The closure computes the loss and gradients at θ_k inside the step: book the row
            # after its first evaluation (LBFGS evaluates it again at other points).
            nonlocal opened
            loss = closure()
            if not opened:
                if not self._loss_count and loss is not None:
                    self.observe(loss)
                self._open_step()
                opened = True
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": monitored_closure}
        return (args[0], monitored_closure, *args[2:]), kwargs

    def _open_step(self) -> None:
        """Book row `step` (at θ_step) if it is due, and snapshot θ_step if the step is measured."""
        if self._reported:  # the row is booked after the step, from the optimizer's report
            return
        self._snapshot_taken = (self.step + 1) % self.every == 0
        booked = self.step % self.every == 0
        # the maps of a booked or measured step, read before it (Adam's h depends on its count)
        self._step_maps = self._maps_now() if booked or self._snapshot_taken else None
        if booked:
            self._book_row(self._step_maps, OK, snapshot=self._snapshot_taken)
        else:  # a step between rows consumes its loss unbooked
            self._loss_sum, self._loss_count = 0.0, 0
            if self._snapshot_taken:
                for group, m in zip(self._groups, self._step_maps, strict=True):
                    group.snapshot(norm=m.weight_decay != 0 or self._two_steps)

    def _after_step(self, optimizer, args, kwargs) -> None:
        if maps.reports_energy(optimizer) and (self._reported or self._step_maps is not None):
            self._step_maps = self._maps_now()  # h and μ are decided in the step: read them now
        if self._reported:
            if self.step % self.every == 0:
                self._book_row(self._step_maps, OK)
            else:
                self._loss_sum, self._loss_count = 0.0, 0
            self._has_delta = True
        elif self._snapshot_taken:
            for i, (group, gmap) in enumerate(zip(self._groups, self._step_maps, strict=True)):
                # buffer = θ_k − θ_{k+1} = −Δθ (a float64 copy, then one flat kernel: faster
                # than a mixed-dtype foreach subtraction)
                group.buffer.sub_(group.load_scratch(group.local_params()))
                m = maps.metric(optimizer, optimizer.param_groups[i], gmap.kind)
                delta = group.buffer
                group.delta_sq = _dot(delta, delta)
                if self.alarm and not self._hessian:  # ⟨−Δθ_k, g_k⟩: the secant's other half
                    grads = group.load_scratch(group.grads())
                    self._grad_dot_before[i] = _dot(delta, grads)
                    if group.has_previous:  # and the two-step curvature's cross term
                        self._cross_before[i] = _dot(group.previous, grads)
                sq = group.delta_sq if m is None else _dot(delta * delta, group.load_scratch(m))
                self._kinetic_local[i] = 0.5 * sq / (gmap.h * gmap.h) if gmap.h > 0 else 0.0
            self._has_delta = True
        if self._step_maps is not None:  # a step neither booked nor measured keeps no maps
            self._maps_before, self._maps = self._maps, self._step_maps
        self.step += 1

    # ------------------------------------------------------------------ booking

    def _book_row(self, now: list[maps.GroupMap], flag: int, *, snapshot: bool = False) -> None:
        """Close row `self.step`: energies at θ_step and the books since the last row; with
        `snapshot`, leave θ_step in the buffers for the step's velocity."""
        loss = float(self._loss_sum) / self._loss_count if self._loss_count else math.nan
        self._loss_sum, self._loss_count = 0.0, 0
        g = len(self._groups)
        fluctuation = self.noise == "fluctuation"
        if self._reported:
            decay, shadow = self._read_report(now, after_step=flag != SKIPPED)
        else:
            decay, shadow = self._measure(now, snapshot, fluctuation)
        noise, along, spread, curvature = (
            self._noise.take(self._groups, [gr.grad_sq for gr in self._groups])
            if self._noise is not None
            else ([math.nan] * g,) * 4
        )
        per_group = {
            "kinetic": list(self._kinetic_local),  # a copy: the next step overwrites it
            "grad_dot": [gr.grad_dot for gr in self._groups],
            "grad_dot_before": self._grad_dot_before,
            "delta_sq": [gr.delta_sq for gr in self._groups],
            "theta_sq": [gr.theta_sq for gr in self._groups],
            "cross_grad": [gr.cross_grad for gr in self._groups],
            "cross": [gr.cross for gr in self._groups],
            "cross_before": self._cross_before,
            # last, the estimates from each rank's own batch (`PER_RANK`)
            "noise": noise,
            "along": along,
            "spread": spread,
            "curvature": curvature,
        }
        if self._world > 1:
            loss, decay, shadow, per_group = self._reduce(loss, decay, shadow, per_group)
        kinetic_groups, noise = per_group["kinetic"], per_group["noise"]
        margin, stderr = self._margin(now, per_group) if self.alarm else (math.nan, math.nan)
        self._evidence = self._weigh(margin, stderr)
        self._above = self._above + 1 if self._evidence > ALARM_EVIDENCE else 0
        alarm = int(self._above >= self.alarm_patience)
        kinetic = sum(kinetic_groups)
        potential = loss + decay
        inertia = kinetic + potential
        if not math.isfinite(potential):
            flag = NONFINITE
            if self.on_nan == "raise":
                raise FloatingPointError(f"loss is {loss} at step {self.step}")
            if not self._in_nonfinite_run:  # once per run of non-finite rows
                warnings.warn(
                    f"inertia: non-finite loss {loss} at step {self.step}; recorded and flagged"
                    " (and so are the non-finite rows that follow it)",
                    RuntimeWarning,
                    stacklevel=3,
                )
        elif self._last_inertia is not None:
            dissipated = self._friction(kinetic_groups) if flag != SKIPPED else 0.0
            injected = self._injection() if flag != SKIPPED else 0.0
            change = inertia - self._last_inertia
            _kahan(
                self._books,
                self._books_carry,
                (dissipated, injected, change + dissipated - injected),
            )
        self._in_nonfinite_run = flag == NONFINITE
        if flag != NONFINITE:
            self._last_inertia = inertia
            self._last_kinetic = kinetic_groups
            self._last_noise = noise
        first = now[0] if now else maps.GroupMap("none", math.nan, math.nan, 0.0)
        row = (
            self.step,
            first.lr,
            first.h,
            first.gamma,
            kinetic,
            potential,
            inertia,
            *self._books,
            inertia + shadow,
            sum(noise) if all(math.isfinite(x) for x in noise) else math.nan,
            margin,
            alarm,
            flag,
        )
        self._rows.append(row)
        writes = self._rank == 0 and self.sinks
        fired = alarm and self._above == self.alarm_patience
        record = dict(zip(MONITOR_COLUMNS, row, strict=True)) if writes or fired else None
        if fired:
            warnings.warn(
                f"inertia: the stability margin exceeds 1 (now {margin:.3g}) at step "
                f"{self.step}: the learning rate is above the heavy-ball threshold",
                RuntimeWarning,
                stacklevel=3,
            )
            if self.on_alarm is not None:
                self.on_alarm(record)
        if writes:
            for sink in self.sinks:
                sink.write(record)

    def _reduce(self, loss: float, decay: float, shadow: float, per_group: dict) -> tuple:
        """The row's numbers over ranks (one `all_reduce`): the mean loss; sums of the norms and
        dots, counted once where the parameters are replicated (DDP) and over shards (FSDP2);
        the per-rank estimates from each rank's own batch (`PER_RANK`, last) averaged over
        ranks, the noise ones ÷ world once more (tr(C)/B of the global batch)."""
        g = len(self._groups)
        local = [loss, decay, shadow, *(x for v in per_group.values() for x in v)]
        packed = torch.tensor([*local, 1.0], dtype=F64)
        per_rank = PER_RANK if self.noise != "fluctuation" else {}  # ‖g_B‖²: global already
        end = len(local) - g * len(per_rank)
        replicated = not self._sharded or self._reported  # a report is already global
        if replicated and self._rank != 0:
            packed[1:end] = 0.0  # replicated: count once
        torch.distributed.all_reduce(packed)
        packed[0] /= packed[-1]  # mean loss over ranks
        for j, power in enumerate(per_rank.values()):
            packed[end + j * g : end + (j + 1) * g] /= self._world ** (1 + power)
        local = packed[:-1].tolist()
        per_group = {name: local[3 + j * g : 3 + (j + 1) * g] for j, name in enumerate(per_group)}
        return local[0], local[1], local[2], per_group

    def _measure(self, now, snapshot, fluctuation) -> tuple[float, float]:
        """Energies at θ_k from the buffers (buffer = −Δθ_{k−1} when measured); leaves in each
        group ⟨−Δθ, ∇L⟩ (`grad_dot`), ‖∇L‖² (`grad_sq`, for "fluctuation") and, for the
        two-step curvature, ⟨−Δθ_prev, ∇L⟩ (`cross_grad`) and ⟨Δθ, Δθ_prev⟩ (`cross`), NaN
        where not measured; returns (decay, shadow term)."""
        decay = shadow = 0.0
        for group, m in zip(self._groups, now, strict=True):
            group.grad_dot, group.grad_sq = 0.0, math.nan
            group.cross_grad = group.cross = math.nan
            if self._has_delta or fluctuation:
                grads = group.load_scratch(group.grads())
                if self._has_delta:  # buffer = −Δθ_{k−1}: ⟨−Δθ, ∇L⟩ (shadow, curvature)
                    group.grad_dot = _dot(group.buffer, grads)
                    shadow += 0.5 * group.grad_dot
                    if group.previous is not None:
                        if group.has_previous:
                            group.cross_grad = _dot(group.previous, grads)
                            group.cross = _dot(group.buffer, group.previous)
                        group.previous.copy_(group.buffer)
                        group.has_previous = True
                if fluctuation:
                    group.grad_sq = _dot(grads, grads)
            if not m.weight_decay:
                if snapshot:
                    group.snapshot(norm=self._two_steps)  # the two-step curvature's precision
                continue
            before = group.theta_sq  # ‖θ_{k−1}‖² (at the last snapshot; NaN if wd was 0 then)
            if snapshot:
                group.snapshot(norm=True)
                theta_sq = group.theta_sq
            else:
                norms = torch._foreach_norm(group.local_params(), 2, dtype=F64)
                theta_sq = float(torch.stack(norms).square().sum()) if norms else 0.0
            decay += 0.5 * m.weight_decay * theta_sq
            if self._has_delta:  # ½ wd ⟨−Δθ, θ_k⟩ = ¼ wd (‖θ_{k−1}‖² − ‖θ_k‖² − ‖Δθ‖²)
                shadow += 0.25 * m.weight_decay * (before - theta_sq - group.delta_sq)
        return decay, shadow

    def _read_report(self, now: list[maps.GroupMap], *, after_step: bool) -> tuple[float, float]:
        """Energies at θ_k from the optimizer's report (InertiaSGD): K = ½‖p_k‖², the shadow term
        −½h⟨p_k, ∇L + wd θ⟩ and (wd/2)‖θ_k‖²; returns (decay, shadow term). A row with no step
        behind it (skipped) reads K from the current velocity and books no shadow term."""
        decay = shadow = 0.0
        kinetic = None if after_step else self.optimizer.kinetic_energy()  # of the velocity now
        for i, (group, m) in enumerate(zip(self.optimizer.param_groups, now, strict=True)):
            if after_step:
                self._kinetic_local[i] = group["kinetic"]
                shadow -= 0.5 * group["h_before"] * group["power"]
                decay += 0.5 * m.weight_decay * group["theta_sq"]
            else:
                self._kinetic_local[i] = kinetic[i]
                norms = torch._foreach_norm([_local(p) for p in group["params"]], 2, dtype=F64)
                decay += 0.5 * m.weight_decay * float(torch.stack(norms).square().sum())
        return decay, shadow

    def _injection(self) -> float:
        """Heat injected by gradient noise since the last row: ½ h² tr(C)/B per step."""
        if self._maps is None:
            return 0.0
        heat = sum(
            0.5 * m.h * m.h * t
            for m, t in zip(self._maps, self._last_noise, strict=True)
            if math.isfinite(t)
        )
        return heat * self.every

    def _margin(self, now: list[maps.GroupMap], per_group: dict) -> tuple[float, float]:
        """Stability margin h²λ̂/(2(1 + μ)) (THEORY.md §4: stable iff < 1), the largest over
        groups, and its noise standard error in that group. λ̂ (+ wd) is:

        - with noise="per_sample", the top curvature of the step's minibatch Hessian along the
          motion (`inertia.monitor.curvature`), and the margin is the mean-square one,
          + h²Var(λ_B)/(2(1 − μ)λ̂) (`inertia.theory.heavy_ball_margin`), its standard error
          from the per-sample curvatures;
        - otherwise from the gradients the steps have (`_secant`).
        """
        if not self._has_delta or self._maps is None:
            return math.nan, math.nan
        best = (math.nan, math.nan)
        for i, (m, step_map) in enumerate(zip(now, self._maps, strict=True)):
            if self._hessian:
                curvature = per_group["curvature"][i] + m.weight_decay
                variance = per_group["spread"][i]  # of λ_B, and λ̂'s squared standard error
                stderr, fluctuation = math.sqrt(variance), variance
            else:
                curvature, stderr = self._secant(i, m, step_map, per_group)
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

    def _secant(self, i: int, m: maps.GroupMap, step_map: maps.GroupMap, per_group: dict):
        """Group i's curvature from gradients, (λ̂, standard error): the secant along the last
        step, ⟨g_k − g_{k−1}, Δθ⟩/‖Δθ‖², plus wd. With a noise estimate, the bias h²·tr(C)/B
        that the step's own gradient noise puts into the numerator is removed, and the
        numerator's noise variance, 2Δθᵀ(C/B)Δθ (two independent gradients), gives the
        standard error; where the estimate has no direction ("fluctuation") the bound
        2‖Δθ‖²·tr(C)/B stands in. Without a noise estimate λ̂ is the largest curvature over
        the last two steps (`_two_step_curvature`): a mode that is still a small part of the
        motion is seen as soon as the two steps hold it. Numerator, denominator and variance
        are averaged over rows (exponentially, weight ½) so that a single step does not
        decide."""
        delta_sq, along = per_group["delta_sq"][i], per_group["along"][i]
        numerator = per_group["grad_dot_before"][i] - per_group["grad_dot"][i]
        variance = 0.0
        noise = self._last_noise[i]
        if math.isfinite(noise):
            numerator -= step_map.h * step_map.h * noise
            variance = 2.0 * (along if math.isfinite(along) else delta_sq * noise)
        numerator += m.weight_decay * delta_sq
        if self._two_steps:
            last, self._last_secant[i] = self._last_secant[i], (numerator, delta_sq)
            if last is not None and delta_sq > 0:
                # ⟨Δθ_prev, H Δθ⟩ = ⟨Δθ_prev, g_k − g_{k−1}⟩ (+ wd ⟨Δθ_prev, Δθ⟩)
                cross = per_group["cross"][i]
                a21 = per_group["cross_before"][i] - per_group["cross_grad"][i]
                a21 += m.weight_decay * cross
                eps = self._groups[i].eps
                precision = eps * math.sqrt(per_group["theta_sq"][i] / delta_sq)
                numerator = delta_sq * _two_step_curvature(
                    numerator, a21, last[0], delta_sq, cross, last[1], precision
                )
        w = CURVATURE_MEMORY
        ema = self._curvature[i]
        ema[0] = w * ema[0] + (1 - w) * numerator
        ema[1] = w * ema[1] + (1 - w) * delta_sq
        ema[2] = w * w * ema[2] + (1 - w) ** 2 * variance
        if not ema[1] > 0:
            return math.nan, math.nan
        return ema[0] / ema[1], math.sqrt(ema[2]) / ema[1]

    def _weigh(self, margin: float, stderr: float) -> float:
        """The alarm's evidence that the margin exceeds 1: a one-sided CUSUM of the standardised
        excess, S_k = max(0, S_{k−1} + (margin − 1)/stderr). Without noise (stderr 0) one row
        above 1 decides; with noise a run of rows above 1 accumulates until S passes
        `ALARM_EVIDENCE`, while rows below 1 pull it back to 0."""
        if not math.isfinite(margin):
            return 0.0
        if not stderr > 0:
            return math.inf if margin > 1 else 0.0
        return max(0.0, self._evidence + (margin - 1.0) / stderr)

    def _friction(self, kinetic_now: list[float]) -> float:
        """Energy removed by friction since the last row (THEORY.md §4: (1 − μ²) of K a step)."""
        if self._maps is None:
            return 0.0
        total = 0.0
        for i, m in enumerate(self._maps):
            if self.every == 1:
                before = self._maps_before[i].h if self._maps_before else m.h
                rescale = m.h / before if before > 0 and not m.physical_velocity else 1.0
                mu_eff = m.momentum * rescale
                total += (1.0 - mu_eff * mu_eff) * self._last_kinetic[i]
            else:
                mean_k = 0.5 * (self._last_kinetic[i] + kinetic_now[i])
                total += self.every * (1.0 - m.momentum**2) * mean_k
        return total
