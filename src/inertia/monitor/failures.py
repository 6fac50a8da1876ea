"""The monitor's own failures inside the optimizer's step: with on_error="warn" each kind is
one `RuntimeWarning` and training goes on; with "raise" it propagates."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any


class Failures:
    """Runs the monitor's work under `on_error` and remembers which kinds were reported."""

    def __init__(self, on_error: str):
        self.on_error = on_error
        self._seen = set[str]()
        self.failed_at = -1  # the step of the last failure

    def guard(
        self, work: Callable[..., None], *args: Any, undo: Callable[[], None], step: int
    ) -> None:
        """`work(*args)`; a failure (but FloatingPointError, the on_nan="raise" contract) calls
        `undo`, which leaves the step unbooked, and is warned about once per kind."""
        try:
            work(*args)
        except FloatingPointError:
            raise
        except Exception as error:
            if self.on_error == "raise":
                raise
            self.failed_at = step
            undo()
            kind = f"{type(error).__name__}: {error}"
            if kind not in self._seen:
                self._seen.add(kind)
                warnings.warn(
                    f"inertia: the monitor failed at step {step} ({kind}); the step is left "
                    "unbooked and training goes on (on_error='raise' raises instead)",
                    RuntimeWarning,
                    stacklevel=4,
                )
