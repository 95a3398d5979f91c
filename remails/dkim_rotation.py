"""DKIM key rotation: a new selector is published, signs only once its record is seen in DNS,
and the key it replaces keeps its record (and the domain's records list shows it) for a grace
period before it is retired.

    rotate (CLI, API, or the sweep every REMAILS_DKIM_ROTATION_DAYS)
      → pending (listed, not signing) → record found in DNS → signing; the old key retiring
      → after REMAILS_DKIM_ROTATION_GRACE_DAYS → retired (unlisted, private key erased)
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import dns.asyncresolver

from remails.crypto import MasterKey, generate_dkim_key, generate_ed25519_dkim_key
from remails.db import Pool, dkim_keys, domains
from remails.db.rows import Executor
from remails.dns import DnsFailure, txt_lookup
from remails.domain_records import DnsRecord, dkim_published, dkim_record
from remails.errors import Conflict
from remails.log import log_event

__all__ = [
    "RotationSweep",
    "key_records",
    "new_selector",
    "prepare_rotation",
    "rotate",
    "start_prepared",
    "sweep_rotations",
]

logger = logging.getLogger("remails.dkim_rotation")
DAY = 86400.0
BATCH = 50


def new_selector(algorithm: str, today: datetime, taken: set[str]) -> str:
    """`rm<date>` for RSA, `rme<date>` for Ed25519, with a letter when the date is taken."""
    base = ("rme" if algorithm == dkim_keys.ED25519 else "rm") + today.strftime("%Y%m%d")
    if base not in taken:
        return base
    for letter in "abcdefghijklmnopqrstuvwxyz":
        if base + letter not in taken:
            return base + letter
    raise ValueError(f"no free DKIM selector for {today:%Y-%m-%d}")


def key_records(domain: domains.Domain, keys: list[dkim_keys.DkimKey]) -> list[DnsRecord]:
    """The records of the domain's other keys (next, Ed25519, previous) to publish beside its own."""
    return [dkim_record(k.selector, domain.name, k.public_key, k.algorithm) for k in keys]


async def rotate(
    pool: Pool, master_key: MasterKey, domain: domains.Domain, *, ed25519: bool = False
) -> list[dkim_keys.DkimKey]:
    """Start a rotation: a new RSA key, and a new Ed25519 key when asked or when the domain
    already signs with one. Conflict while another rotation waits for DNS."""
    new = await prepare_rotation(pool, master_key, domain, ed25519=ed25519)
    return await start_prepared(pool, domain, new)


async def prepare_rotation(
    pool: Executor, master_key: MasterKey, domain: domains.Domain, *, ed25519: bool = False
) -> list[dkim_keys.NewKey]:
    """The slow part of a rotation (key generation), done before any transaction."""
    existing = await dkim_keys.keys_of_domain(pool, domain.id)
    ed25519 = ed25519 or any(k.algorithm == dkim_keys.ED25519 and k.state == "active" for k in existing)
    taken = {domain.dkim_selector, *(k.selector for k in existing)}
    today = datetime.now(UTC)
    new: list[dkim_keys.NewKey] = []
    algorithms = [dkim_keys.RSA] + ([dkim_keys.ED25519] if ed25519 else [])
    for algorithm in algorithms:
        pair = await asyncio.to_thread(
            generate_dkim_key if algorithm == dkim_keys.RSA else generate_ed25519_dkim_key
        )
        selector = new_selector(algorithm, today, taken)
        taken.add(selector)
        sealed = master_key.seal(pair.private_pem, context=domain.name)  # bound to the domain, as today
        new.append(dkim_keys.NewKey(selector, algorithm, sealed, pair.public_b64))
    return new


async def start_prepared(
    conn: Executor, domain: domains.Domain, new: list[dkim_keys.NewKey]
) -> list[dkim_keys.DkimKey]:
    """Store prepared keys as pending (in the caller's transaction, if any)."""
    started = await dkim_keys.start_rotation(conn, domain.id, new)
    log_event(logger, "dkim rotation started", domain=domain.name, selectors=[k.selector for k in started])
    return started


@dataclass
class RotationSweep:
    started: int = 0
    promoted: int = 0
    retired: int = 0


async def sweep_rotations(
    pool: Pool,
    master_key: MasterKey,
    resolver: dns.asyncresolver.Resolver,
    *,
    rotation_days: float | None,
    grace_days: float,
) -> RotationSweep:
    """One pass of the tick: retire keys past their grace, start due rotations, and promote
    pending keys whose record DNS now holds. A failed lookup proves nothing: tried next tick."""
    done = RotationSweep()
    done.retired = len(await dkim_keys.retire_overdue(pool, grace_days * DAY, BATCH))
    if rotation_days is not None:
        for domain_id, _ in await dkim_keys.due_rotations(pool, rotation_days * DAY, BATCH):
            domain = await domains.get_domain(pool, domain_id)
            if domain is None:
                continue
            try:
                await rotate(pool, master_key, domain)
            except Conflict:  # another worker started it first
                continue
            done.started += 1
    for key in await dkim_keys.pending_keys(pool, BATCH):
        record = dkim_record(key.selector, key.domain, key.public_key, key.algorithm)
        try:
            found, _ = await txt_lookup(resolver, record.name)
        except DnsFailure:
            continue
        if dkim_published(record, found) and await dkim_keys.promote(pool, key):
            log_event(logger, "dkim key signing", domain=key.domain, selector=key.selector)
            done.promoted += 1
    return done
