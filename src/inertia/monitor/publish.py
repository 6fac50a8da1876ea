"""Where a booked row goes: memory (the last `history` rows), the sinks (rank 0), and the
warnings and callbacks it triggers: a non-finite loss (flagged, or raised with on_nan="raise")
and the stability alarm firing."""

from __future__ import annotations

import math
import warnings
from collections import deque
from typing import Any

from .alarm import AlarmReading
from .options import Options
from .row import NONFINITE, NoLoss, Row

#: What a loop that observed no loss for a step should do.
OBSERVE = (
    "call monitor.observe(loss) after loss.backward(), before optimizer.step(), or pass"
    " optimizer.step a closure that returns the loss"
)
#: A step with no loss on purpose.
SKIPPED_BATCH = "a batch skipped on purpose (as by a Lightning training_step returning None) is one"


class Publisher:
    """Keeps and sends out the rows under the monitor's `Options`."""

    def __init__(self, options: Options):
        self.sinks, self.on_nan, self.on_alarm = options.sinks, options.on_nan, options.on_alarm
        self.on_error = options.on_error
        self.rows: deque[Row] = deque(maxlen=options.history)
        self._run: bool | None = None  # the last row's loss: None finite, else unobserved?

    def flag(self, flag: int, loss: float, potential: float, step: int) -> int:
        """The row's flag: NONFINITE where the potential (the loss plus a coupled decay's
        penalty) is not finite, warned about once per run of such rows (FloatingPointError
        with on_nan="raise"), `flag` otherwise. A loss that was not observed at all (`NoLoss`,
        on every rank if on any) is told from an observed non-finite one, with what to call and
        under torch.distributed on how many ranks; each kind is a run."""
        if math.isfinite(potential):
            self._run = None
            return flag
        unobserved = isinstance(loss, NoLoss)
        if isinstance(loss, NoLoss):  # `unobserved`, spelled for the type checker
            what, advice = f"no loss was observed for step {step}", OBSERVE
            if loss.world > 1:
                what += f" on {loss.ranks} of {loss.world} ranks"
                advice = f"on every rank, {OBSERVE}"
            raised = f"{what}: {advice}; {SKIPPED_BATCH}, which on_nan='flag' records"
            warned = (
                f"inertia: {what}, so its row is recorded with a NaN loss and flagged (as are"
                f" the rows after it without one): {advice}; {SKIPPED_BATCH}, and needs no call"
            )
        else:
            value = f"loss {loss}" if not math.isfinite(loss) else f"potential {potential}"
            raised = f"non-finite {value} at step {step}"
            warned = (
                f"inertia: {raised}; recorded and flagged (and so are the non-finite rows that"
                " follow it)"
            )
        if self.on_nan == "raise":
            raise FloatingPointError(raised)
        if self._run is not unobserved:  # the first row of a run of its kind
            warnings.warn(warned, RuntimeWarning, stacklevel=4)
        self._run = unobserved
        return NONFINITE

    def publish(self, row: Row, reading: AlarmReading, *, writes: bool) -> None:
        """Keep `row`; to the sinks if `writes` (rank 0); the alarm's warning and callback when
        it fires."""
        self.rows.append(row)
        writes = writes and bool(self.sinks)
        record = row.as_dict() if writes or reading.fired else {}
        if reading.fired:
            warnings.warn(
                f"inertia: the run is diverging at step {row.step}: the stability margin "
                f"exceeds 1 (now {row.margin:.3g}) and the energy keeps growing",
                RuntimeWarning,
                stacklevel=5,
            )
            if self.on_alarm is not None:
                self.on_alarm(record)
        if writes:
            self._write(record, row.step)

    def _write(self, record: dict[str, Any], step: int) -> None:
        """`record` to each sink; one that raises OSError (a closed service, a custom sink: the
        file sinks keep failed rows and retry them themselves) is dropped with a warning,
        unless on_error="raise"."""
        for sink in list(self.sinks):
            try:
                sink.write(record)
            except OSError as error:
                if self.on_error == "raise":
                    raise
                self.sinks.remove(sink)
                warnings.warn(
                    f"inertia: {type(sink).__name__} could not write step {step} ({error}); it "
                    "is dropped and the rows stay in monitor.ledger",
                    RuntimeWarning,
                    stacklevel=6,
                )
