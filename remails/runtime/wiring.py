"""Which handler serves which events when every function shares one process.

Each function subscribes as it would over Knative, except where sharing a process lets steps
go faster: `intake` takes message.received through validate, quota and route in one
statement (quota and route stay subscribed for what reaches them on their own: the sweep's
re-emitted, released or resumed messages), and the steps that can take a batch get the
events pending for them at once.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence

from cloudevents.http import CloudEvent

from remails.bus import Trigger
from remails.context import Context
from remails_functions import HANDLERS, FunctionHandler, intake, retry

__all__ = ["FUSED_INTO_INTAKE", "function_triggers"]

FUSED_INTO_INTAKE = "validate"  # its events go to intake when validate, quota and route share a process

BatchFunction = Callable[[Context, Sequence[CloudEvent]], Awaitable[Sequence[CloudEvent]]]

_BATCHES: dict[FunctionHandler, BatchFunction] = {retry.handle_attempted: retry.handle_attempted_batch}


def function_triggers(ctx: Context, *, fuse: bool = True) -> list[Trigger]:
    """The in-process triggers of every function (with `fuse`, intake in validate's place)."""
    triggers = []
    for sub in HANDLERS:
        if fuse and sub.function == FUSED_INTO_INTAKE:
            triggers.append(
                Trigger(
                    f"intake:{intake.FILTERS}",
                    intake.FILTERS,
                    functools.partial(intake.handle, ctx),
                    functools.partial(intake.handle_batch, ctx),
                )
            )
            continue
        batch = _BATCHES.get(sub.handler)
        triggers.append(
            Trigger(
                f"{sub.function}:{sub.filters}",
                sub.filters,
                functools.partial(sub.handler, ctx),
                functools.partial(batch, ctx) if batch is not None and fuse else None,
            )
        )
    return triggers
