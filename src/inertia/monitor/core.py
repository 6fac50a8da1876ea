"""`InertiaMonitor`: the energy ledger of a real training run (docs/theory.md §4).

Attached to any `torch.optim.Optimizer` through its step hooks. Row k of the ledger describes
the parameters θ_k the k-th step starts from:

    kinetic   K_k = Σ_groups ½ ‖θ_k − θ_{k−1}‖²_M / h²   (0 at k = 0)
    potential L_k = observed loss at θ_k + Σ_groups (wd/2) ‖θ_k‖²
    shadow    H̃_k = K_k + L_k − ½ ⟨θ_k − θ_{k−1}, ∇L_k + wd θ_k⟩   (the modified energy; exact
              for momentum 1 on a quadratic, O(h²) otherwise)

and the books (`books`) keep I − I₀ = −dissipated − decay + injected + schedule + residual in
float64. One data flow per row: these hooks → a probe of the parameters or the optimizer's
report (`probe`) → the noise estimate (`noise`) → one all-reduce under torch.distributed
(`ranks`) → the alarm (`alarm`) → the books → a `Row` (`row`) → the sinks (`sinks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..energy import Ledger
from ..reporting import ReportsEnergy
from . import checkpoint
from .alarm import AlarmReading, StabilityAlarm, alarm_mode
from .books import BOOKS, Books
from .estimate import NoiseEstimate, Weighing, weighing
from .failures import Failures
from .floor import noise_floor
from .hooks import StepArgs, wrap_closure
from .layout import F64, Segments, layouts_of
from .maps import GroupMap, MapHistory, map_reader
from .noise import estimator
from .noise_scale import NoiseScale
from .options import observation, options
from .probe import make_probe
from .publish import Publisher
from .ranks import Ranks
from .row import OK, SKIPPED, LossMean, Pack, ledger_of, make_row, row_values
from .scaler import ScalerWatch
from .sharpness import Sharpness
from .sinks import Sink

NO_ALARM = AlarmReading(math.nan, raised=False, fired=False)


class InertiaMonitor:
    """Books the energy ledger of training driven by `optimizer`, with no change to it.

    In the loop: ``loss.backward(); monitor.observe(loss); optimizer.step()`` (`observe` may
    also come before `backward`). Rows go to `monitor.ledger` and to the sinks (a CSV file in
    `log_dir`, if given). See `inertia.monitor.maps` for each optimizer's map.

    Args (docs/monitor.md has the details):
        optimizer: any `torch.optim.Optimizer`.
        every: book a row every `every` steps (exact friction needs 1; between rows friction
            and schedule energy are estimated from the two rows).
        log_dir: folder for `ledger.csv`, streamed and flushed per row.
        sinks: more `Sink`s (CSV, JSONL, TensorBoard, W&B, MLflow).
        on_nan: "flag" a non-finite loss and carry on, or "raise" FloatingPointError.
        on_error: "warn": a failure of the monitor's own work inside the optimizer's step is
            one `RuntimeWarning` per kind, the step goes unbooked (a sink that cannot write is
            dropped) and training goes on; "raise" raises it.
        history: rows kept in memory (`monitor.ledger`); default the last 10 000 when a file
            sink streams them, else the last 100 000 (about 70 MB without per-layer books).
        noise: None, "per_sample", "microbatch", "fluctuation" or "ranks" (DDP, with `model`):
            the gradient-noise estimate (`inertia.monitor.noise`) behind `noise_trace`,
            `noise_scale`, the injected heat ½h²·tr(M⁻¹C)/B and `noise_floor()`.
        alarm: the stability margin in the map's metric, the `regime` (stable, edge,
            diverging) and the alarm (a `RuntimeWarning` and `on_alarm(row)`) once the run has
            been diverging for `alarm_patience` rows (`inertia.monitor.alarm`). Without a
            `noise` estimate gradients are taken as exact: with minibatches pass one.
        sharpness: with `alarm`, a closure returning a probe loss with its graph: the margin
            from the top Hessian eigenvalue in the map's metric every `sharpness_every` steps
            (`inertia.monitor.sharpness`).
        by: per-layer books, "module" (each module of `model` owning parameters) or "group":
            columns `kinetic/<layer>`, `step_size/<layer>` and `noise_trace/<layer>`.
        model: the model `by="module"` names; with noise="ranks", the DDP module.
        params: the parameters the per-layer books watch (default: all).
        scaler: the `torch.amp.GradScaler` of a mixed-precision run: gradients are unscaled
            and the iterations it skips are flagged.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        every: int = 1,
        log_dir: str | Path | None = None,
        sinks: list[Sink] | None = None,
        on_nan: str = "flag",
        on_error: str = "warn",
        history: int | None = None,
        noise: str | None = None,
        alarm: bool = False,
        alarm_patience: int = 1,
        on_alarm: Callable[[dict[str, float | int]], None] | None = None,
        sharpness: Callable[[], Tensor] | None = None,
        sharpness_every: int = 10,
        by: str | None = None,
        model: torch.nn.Module | None = None,
        params: Iterable[Tensor] | None = None,
        scaler: Any = None,
    ):
        o = options(
            optimizer,
            every=every,
            log_dir=log_dir,
            sinks=sinks,
            on_nan=on_nan,
            on_error=on_error,
            history=history,
            noise=noise,
            alarm=alarm,
            alarm_patience=alarm_patience,
            on_alarm=on_alarm,
            sharpness=sharpness,
            sharpness_every=sharpness_every,
        )
        self.every, self.sinks, self.noise, self.alarm = o.every, o.sinks, o.noise, o.alarm
        self.sharpness_every, self._failures = o.sharpness_every, Failures(o.on_error)
        layouts = layouts_of(optimizer.param_groups)
        segments = Segments.of(by, layouts, model, params, optimizer.param_groups)
        self.optimizer, self._scaler = optimizer, ScalerWatch.of(scaler, optimizer)
        self._groups, self._layers = len(layouts), [] if segments is None else segments.names
        device = self._device = layouts[0].device if layouts else torch.device("cpu")
        self._reports = isinstance(optimizer, ReportsEnergy)  # its maps are read after the step
        mode = alarm_mode(self.alarm, noise)
        self._probe = make_probe(optimizer, layouts, mode, noise, segments)
        replicated = self._probe.books_after_step or not any(x.sharded for x in layouts)
        self._ranks = Ranks.here(device, replicated=replicated, own_batch=noise != "fluctuation")
        self._noise = estimator(noise, layouts, segments, model=model, weigh=self._weighing)
        sharp = None if sharpness is None else Sharpness(sharpness, layouts)
        watch = StabilityAlarm(layouts, mode, o.alarm_patience, sharpness=sharp) if mode else None
        self._alarm = watch
        self._books, self._noise_scale = Books(self._groups), NoiseScale()
        self._nan = [torch.full((), math.nan, dtype=F64, device=device)] * self._groups
        self._no_estimate = NoiseEstimate(self._nan, self._nan, self._nan)
        self._maps, self._read_maps = MapHistory(), map_reader(optimizer)
        self._loss, self._out = LossMean(device), Publisher(o)
        # optimizer steps seen; the step of the last row; a closure evaluated in this step
        self.step, self._last_row, self._evaluated = 0, 0, False
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    def observe(
        self,
        loss: Tensor | float,
        *,
        accumulate: bool = False,
        per_sample: Tensor | None = None,
        batch_size: int | None = None,
    ) -> None:
        """Record the loss at the current parameters (the mean over micro-batches when
        `accumulate` is true). An earlier loss that no optimizer step consumed marks that
        iteration as skipped (as GradScaler does on overflow; with `scaler=`, under
        accumulation too). With noise="per_sample", pass the unreduced losses as `per_sample`,
        before `backward`; with noise="microbatch", call this after each micro-batch's
        `backward`, with its `batch_size` for the noise scale."""
        if not self._handles:
            raise ValueError("observe: the monitor is detached from its optimizer")
        batch_size = observation(loss, batch_size)
        if not self._evaluated:  # a closure's later evaluations (LBFGS) are at other points
            self._guard(partial(self._observe, loss, accumulate, per_sample, batch_size))

    def _observe(
        self,
        loss: Tensor | float,
        accumulate: bool,
        per_sample: Tensor | None,
        batch_size: int | None,
    ) -> None:
        ended = self._scaler is not None and self._scaler.iteration_ended()
        if ended or not accumulate:  # a new iteration: a failure in the last one is past
            self._failures.failed_at = -1
            if self._loss.count:  # the last iteration's loss, which no step consumed
                self._book_row(self._read_maps(), SKIPPED)
        booked = self.step % self.every == 0 and self._failures.failed_at != self.step
        if (self._noise or self._alarm) and booked:  # a booked step's, not one that failed
            steps = self._probe.steps() if self._probe.measured else None
            if self._noise is not None:
                unscale = None if self._scaler is None else self._scaler.unscale()
                metrics = self._weighing()
                self._noise.observe(per_sample, steps, metrics, batch=batch_size, unscale=unscale)
            if self._alarm is not None:
                self._alarm.observe(per_sample, steps)
        self._loss.add(loss)

    def noise_floor(self, last: int | None = None) -> dict[str, float | int | str]:
        """Predicted and measured stationary excess loss and kinetic energy, last `last` rows."""
        if self.noise is None:
            raise ValueError("noise_floor needs a noise estimate: InertiaMonitor(..., noise=...)")
        return noise_floor(self.ledger, last)

    @property
    def reads_report(self) -> bool:
        """Whether rows come from the optimizer's own report (`ReportsEnergy`): no buffers."""
        return self._probe.books_after_step

    @property
    def ledger(self) -> Ledger:
        """The rows kept in memory as a `Ledger` (1-D float64 columns against `step`)."""
        return ledger_of(self._out.rows)

    def detach(self) -> None:
        """Remove the hooks, close the sinks and give attention back its kernels."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._alarm is not None:
            self._alarm.close()
        for sink in self.sinks:
            sink.close()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the same ledger after a restart: the step, and the
        state of each part (layout `checkpoint.VERSION`; loads with weights_only=True)."""
        return checkpoint.save(self.step, self.every, self._last_row, self._parts())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the ledger saved by `state_dict` (same parameter groups and sizes; a
        checkpoint of an earlier release is upgraded): the sinks drop what they hold from the
        checkpoint's step on, which is booked again."""
        step, every, last, parts = checkpoint.load(state, self._parts(), self._groups)
        self.step, self.every, self._last_row, self._failures.failed_at = step, every, last, -1
        self._books, self._maps, _, self._alarm, self._noise_scale = parts
        self._out.rows.clear()
        for sink in self.sinks:  # rows booked after the checkpoint are booked again
            sink.truncate(self.step)

    def _parts(self) -> checkpoint.Parts:
        parts = self._books, self._maps, self._probe, self._alarm, self._noise_scale
        return checkpoint.Parts(*parts)

    def _weighing(self) -> list[Weighing]:
        return weighing(self.optimizer, self._read_maps())

    def _before_step(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> StepArgs | None:
        """Open the step, or, with a closure, once the closure has computed the loss at θ_k."""
        wrapped = wrap_closure(args, kwargs, partial(self._guard, self._after_closure))
        if wrapped is None:
            self._guard(self._open_step)
        return wrapped

    def _guard(self, work: Callable[..., None], *args: Any) -> None:
        """`work(*args)` inside the optimizer's step, under `on_error` (`failures`)."""
        self._failures.guard(work, *args, undo=self._unbook, step=self.step)

    def _unbook(self) -> None:
        """Leave the step under way unbooked, its partial estimates forgotten."""
        self._loss.reset()
        self._maps.under_way = None
        for part in (p for p in (self._noise, self._alarm) if p is not None):
            part.discard()

    def _after_closure(self, loss: Any) -> None:
        if not self._loss.count and loss is not None:
            self.observe(loss)
        self._open_step()
        self._evaluated = True

    def _open_step(self) -> None:
        """Book row `step` (at θ_step) if it is due, and snapshot θ_step if the step is measured."""
        if (groups := len(self.optimizer.param_groups)) != self._groups:
            attached = f"the monitor was attached to {self._groups}: attach a new InertiaMonitor"
            raise RuntimeError(f"the optimizer has {groups} parameter groups, {attached}")
        if self._probe.books_after_step:  # booked after the step, from the optimizer's report
            return
        measured = (self.step + 1) % self.every == 0
        self._probe.measured = measured  # between steps, the buffers then hold the step's −Δθ
        booked = self.step % self.every == 0 and self._failures.failed_at != self.step
        if not (booked or measured):  # a step between rows consumes its loss unbooked
            self._maps.under_way = None
            self._loss.reset()
            return
        # the maps of a booked or measured step, read before it (Adam's h depends on its count)
        maps = self._maps.under_way = self._read_maps()
        if booked:
            self._book_row(maps, OK, snapshot=measured)
        else:
            self._loss.reset()
            self._probe.snapshot(maps)

    def _after_step(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._guard(self._close_step, optimizer)
        self._maps.advance()
        self.step, self._evaluated = self.step + 1, False

    def _close_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After the step: its velocity, or its row from the optimizer's report."""
        maps = self._maps.under_way
        if self._reports and (self._probe.books_after_step or maps is not None):
            maps = self._maps.under_way = self._read_maps()  # h and μ are decided in the step
            self._books.reread(self._maps, booked=self._last_row == self.step)
        if maps is not None:
            if not self._probe.books_after_step:
                if self._probe.measured:
                    self._probe.after_step(optimizer, maps)
            elif self.step % self.every == 0:
                self._book_row(maps, OK)
            else:
                self._loss.reset()

    def _book_row(self, now: list[GroupMap], flag: int, *, snapshot: bool = False) -> None:
        """Close row `self.step`: energies at θ_step and the books since the last row, computed
        on the device and brought to the host once; with `snapshot`, leave θ_step in the
        buffers for the step's velocity."""
        measured = self._probe.measure(now, snapshot=snapshot, after_step=flag != SKIPPED)
        noise, alarm, nan = self._noise, self._alarm, self._nan
        estimate = noise.take(weighing(self.optimizer, now)) if noise else self._no_estimate
        spread, curvature = alarm.take(self._groups, self._device) if alarm else (nan, nan)
        if self._alarm is not None and self.step % self.sharpness_every == 0 and flag == OK:
            self._alarm.measure_sharpness(self.optimizer, now)
        pack = Pack(
            self._loss.take(), row_values(measured, estimate, spread, curvature, self._layers)
        )
        if self._ranks.world > 1:
            pack.tensor = self._ranks.reduce(pack.tensor, pack.layout)
        last_noise = self._books.last_noise  # the alarm's secant reads the last row's
        steps, self._last_row = self.step - self._last_row, self.step
        values = pack.fetch()  # the row's one transfer; the books are kept on the host
        potential = values["loss"][0] + values["penalty"][0]
        inertia = math.fsum(values["kinetic"]) + potential
        finite = math.isfinite(potential)
        totals = self._books.book(values, inertia, self._maps, finite=finite, steps=steps)
        host = [inertia, potential, *totals, *last_noise]
        reading = NO_ALARM
        if self._alarm is not None:
            last = self._maps.last if self._probe.has_delta else None
            injected = host[2 + BOOKS.index("injected")]
            reading = self._alarm.update(
                now, last, values, host[2 + len(BOOKS) :], (host[0], injected)
            )
        flag = self._out.flag(flag, values["loss"][0], potential, self.step)
        batch = estimate.batch and estimate.batch * self._ranks.world
        scale = self._noise_scale
        row = make_row(self.step, now, values, host, reading, flag, self._layers, scale, batch)
        self._out.publish(row, reading, writes=self._ranks.rank == 0)
