"""The plumbing of the optimizer's step hooks: finding a closure among a step's arguments and
wrapping it so that the row is booked once the loss and gradients at θ_k exist."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

StepArgs = tuple[tuple[Any, ...], dict[str, Any]]


def wrap_closure(
    args: tuple[Any, ...], kwargs: dict[str, Any], first: Callable[[Any], None]
) -> StepArgs | None:
    """The step's arguments with its closure (if any; args = (optimizer, closure?, …)) wrapped
    so that `first(loss)` runs after its first evaluation (LBFGS evaluates it again at other
    points); None when the step has no closure."""
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
    if closure is None:
        return None
    evaluated = False

    def wrapped() -> Any:
        nonlocal evaluated
        loss = closure()
        if not evaluated:
            evaluated = True
            first(loss)
        return loss

    if "closure" in kwargs:
        return args, {**kwargs, "closure": wrapped}
    return (args[0], wrapped, *args[2:]), kwargs
