"""The all-in-one runtime wires intake in validate's place (quota and route stay subscribed
for the sweep's events) and gives the batching steps their batch handlers."""

from __future__ import annotations

from remails.bus import matches
from remails.config import Settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import Pool
from remails.runtime.wiring import function_triggers
from tests.support.recording import RecordingPublisher


def _names(settings: Settings, pool: Pool, *, fuse: bool) -> dict[str, bool]:
    ctx = Context(
        settings, pool, RecordingPublisher(), load_master_key(settings.secret_key, settings.data_dir)
    )
    by_type = {}
    for kind in ("message.received", "message.validated", "message.admitted", "delivery.attempted"):
        (trigger,) = [t for t in function_triggers(ctx, fuse=fuse) if matches(t.filters, {"type": kind})]
        by_type[f"{kind} → {trigger.name.split(':')[0]}"] = trigger.batch_handler is not None
    return by_type


async def test_intake_takes_received_messages_in_batches_and_the_other_steps_stay(
    settings: Settings, pool: Pool
) -> None:
    assert _names(settings, pool, fuse=True) == {
        "message.received → intake": True,
        "message.validated → quota": False,
        "message.admitted → route": False,
        "delivery.attempted → retry": True,
    }
    assert _names(settings, pool, fuse=False) == {
        "message.received → validate": False,
        "message.validated → quota": False,
        "message.admitted → route": False,
        "delivery.attempted → retry": False,
    }
