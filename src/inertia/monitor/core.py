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
from pathlib import Path

import torch
from torch import Tensor

from .. import _checks
from ..energy import COLUMNS, Ledger
from . import maps
from .sinks import CSVSink, Sink, _FileSink

#: The monitor's columns, in order. `flag`: 0 a normal step, 1 a non-finite loss, 2 an
#: iteration whose optimizer step was skipped (e.g. by GradScaler).
MONITOR_COLUMNS = ("step", "lr", "h", "gamma", *COLUMNS, "shadow", "flag")
OK, NONFINITE, SKIPPED = 0, 1, 2
F64 = torch.float64


def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "placements") else t


def _distributed() -> tuple[int, int]:
    """(rank, world size), (0, 1) outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _Group:
    """A parameter group's two flat float64 buffers, one view per parameter: `buffer` holds
    θ_k at the step, then −Δθ_k after it (exact: any two float32/bf16 values differ exactly in
    float64); `scratch` takes ∇L or the metric M for a dot product."""

    def __init__(self, params: list[Tensor]):
        self.params = list(params)
        self.sharded = any(_local(p) is not p for p in self.params)
        local = [_local(p).detach() for p in self.params]
        device = local[0].device if local else torch.device("cpu")
        sizes = [t.numel() for t in local]
        self.buffer = torch.zeros(sum(sizes), dtype=F64, device=device)
        self.scratch = torch.zeros_like(self.buffer)
        self.views = [v.view(t.shape) for v, t in zip(self.buffer.split(sizes), local, strict=True)]
        self.scratch_views = [
            v.view(t.shape) for v, t in zip(self.scratch.split(sizes), local, strict=True)
        ]
        self._cached = None if self.sharded else local
        self.delta_sq = 0.0  # ‖Δθ‖² of the last measured step
        self.theta_sq = 0.0  # ‖θ‖² at the last snapshot

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

    def snapshot(self) -> None:
        """buffer ← θ, remembering ‖θ‖²."""
        torch._foreach_copy_(self.views, self.local_params())
        self.theta_sq = _dot(self.buffer, self.buffer)


def _dot(a: Tensor, b: Tensor) -> float:
    """aᵀb of two float64 buffers."""
    return float(torch.dot(a, b))


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
        self._groups = [_Group(g["params"]) for g in optimizer.param_groups]
        self._sharded = any(g.sharded for g in self._groups)
        self._rank, self._world = _distributed()
        self._books, self._books_carry = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        self.step = 0  # optimizer steps seen
        self._loss_sum: Tensor | float = 0.0
        self._loss_count = 0
        self._last_inertia: float | None = None
        self._last_kinetic = [0.0] * len(self._groups)  # per group, at the last row
        self._kinetic_local = [0.0] * len(self._groups)  # per group, measured after the last step
        self._maps: list[maps.GroupMap] | None = None  # of the last step taken
        self._maps_before: list[maps.GroupMap] | None = None  # of the step before it
        self._has_delta = False
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    # ------------------------------------------------------------------ user API

    def observe(self, loss: Tensor | float, *, accumulate: bool = False) -> None:
        """Record the loss at the current parameters (the mean over micro-batches when
        `accumulate` is true). An earlier loss that no optimizer step consumed marks that
        iteration as skipped (as GradScaler does on overflow)."""
        if not accumulate and self._loss_count:
            self._book_row(self._maps_now(), SKIPPED)
        value = loss.detach().to(F64) if isinstance(loss, Tensor) else float(loss)
        self._loss_sum = self._loss_sum + value
        self._loss_count += 1

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
            "buffers": [g.buffer.clone() for g in self._groups],
            "norms": [(g.delta_sq, g.theta_sq) for g in self._groups],
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
        for group, buffer, (delta_sq, theta_sq) in zip(
            self._groups, state["buffers"], state["norms"], strict=True
        ):
            group.buffer.copy_(buffer)
            group.delta_sq, group.theta_sq = delta_sq, theta_sq
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
        self._step_maps = self._maps_now()  # before the step: Adam's h depends on its count
        self._snapshot_taken = (self.step + 1) % self.every == 0
        if self.step % self.every == 0:
            self._book_row(self._step_maps, OK, snapshot=self._snapshot_taken)
        else:  # a step between rows consumes its loss unbooked
            self._loss_sum, self._loss_count = 0.0, 0
            if self._snapshot_taken:
                for group in self._groups:
                    group.snapshot()

    def _after_step(self, optimizer, args, kwargs) -> None:
        if self._snapshot_taken:
            for i, (group, gmap) in enumerate(zip(self._groups, self._step_maps, strict=True)):
                torch._foreach_sub_(group.views, group.local_params())  # buffer = −Δθ
                m = maps.metric(optimizer, optimizer.param_groups[i], gmap.kind)
                delta = group.buffer
                group.delta_sq = _dot(delta, delta)
                sq = group.delta_sq if m is None else _dot(delta * delta, group.load_scratch(m))
                self._kinetic_local[i] = 0.5 * sq / (gmap.h * gmap.h) if gmap.h > 0 else 0.0
            self._has_delta = True
        self._maps_before, self._maps = self._maps, self._step_maps
        self.step += 1

    # ------------------------------------------------------------------ booking

    def _book_row(self, now: list[maps.GroupMap], flag: int, *, snapshot: bool = False) -> None:
        """Close row `self.step`: energies at θ_step and the books since the last row; with
        `snapshot`, leave θ_step in the buffers for the step's velocity."""
        loss = self._loss_sum / self._loss_count if self._loss_count else math.nan
        self._loss_sum, self._loss_count = 0.0, 0
        decay = shadow = 0.0
        for group, m in zip(self._groups, now, strict=True):
            if self._has_delta:  # buffer = −Δθ_{k−1}: shadow term ½⟨−Δθ, ∇L⟩
                shadow += 0.5 * _dot(group.buffer, group.load_scratch(group.grads()))
            if not m.weight_decay:
                if snapshot:
                    group.snapshot()
                continue
            before = group.theta_sq  # ‖θ_{k−1}‖² (at the last snapshot)
            if snapshot:
                group.snapshot()
                theta_sq = group.theta_sq
            else:
                norms = torch._foreach_norm(group.local_params(), 2, dtype=F64)
                theta_sq = float(torch.stack(norms).square().sum()) if norms else 0.0
            decay += 0.5 * m.weight_decay * theta_sq
            if self._has_delta:  # ½ wd ⟨−Δθ, θ_k⟩ = ¼ wd (‖θ_{k−1}‖² − ‖θ_k‖² − ‖Δθ‖²)
                shadow += 0.25 * m.weight_decay * (before - theta_sq - group.delta_sq)
        local = [float(loss), decay, shadow, *self._kinetic_local]
        if self._world > 1:
            packed = torch.tensor([*local, 1.0], dtype=F64)
            if not self._sharded and self._rank != 0:
                packed[1:-1] = 0.0  # replicated parameters: count their energies once
            torch.distributed.all_reduce(packed)
            local = (
                packed[:-1] / torch.tensor([packed[-1]] + [1.0] * (len(local) - 1), dtype=F64)
            ).tolist()
        loss, decay, shadow, *kinetic_groups = local
        kinetic = sum(kinetic_groups)
        potential = loss + decay
        inertia = kinetic + potential
        if not math.isfinite(potential):
            flag = NONFINITE
            if self.on_nan == "raise":
                raise FloatingPointError(f"loss is {loss} at step {self.step}")
            warnings.warn(
                f"inertia: non-finite loss {loss} at step {self.step}; recorded and flagged",
                RuntimeWarning,
                stacklevel=3,
            )
        elif self._last_inertia is not None:
            dissipated = self._friction(kinetic_groups) if flag != SKIPPED else 0.0
            change = inertia - self._last_inertia
            _kahan(self._books, self._books_carry, (dissipated, 0.0, change + dissipated))
        if flag != NONFINITE:
            self._last_inertia = inertia
            self._last_kinetic = kinetic_groups
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
            flag,
        )
        self._rows.append(row)
        if self._rank == 0 and self.sinks:
            record = dict(zip(MONITOR_COLUMNS, row, strict=True))
            for sink in self.sinks:
                sink.write(record)

    def _friction(self, kinetic_now: list[float]) -> float:
        """Energy removed by friction since the last row (THEORY.md §4: (1 − μ²) of K a step)."""
        if self._maps is None:
            return 0.0
        total = 0.0
        for i, m in enumerate(self._maps):
            if self.every == 1:
                before = self._maps_before[i].h if self._maps_before else m.h
                mu_eff = m.momentum * (m.h / before if before > 0 else 1.0)
                total += (1.0 - mu_eff * mu_eff) * self._last_kinetic[i]
            else:
                mean_k = 0.5 * (self._last_kinetic[i] + kinetic_now[i])
                total += self.every * (1.0 - m.momentum**2) * mean_k
        return total
