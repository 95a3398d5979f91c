"""Idempotency keys for the HTTP send: the same key and body within 24 h returns the first answer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from remails.db.rows import Executor, required

__all__ = ["IDEMPOTENCY_HOURS", "Remembered", "canonical_body", "claim_key"]

IDEMPOTENCY_HOURS = 24


def canonical_body(body: bytes) -> bytes:
    """The request body as its parsed JSON, re-serialised one way (sorted keys, no spaces): the
    same request sent again by another client library, with other spacing or key order, is the
    same request. A body that is not JSON stays as it is."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Remembered:
    request_sha256: bytes
    response: dict[str, Any]


# claim_key: take the key for this request, or return what it answered before. A key older
# than 24 h is taken over. Run inside the transaction that stores the message, so two
# concurrent requests with one key serialise on the primary key.
_CLAIM = f"""
INSERT INTO idempotency_keys (organization_id, key, request_sha256, response)
VALUES ($1, $2, $3, $4)
ON CONFLICT (organization_id, key) DO UPDATE
   SET request_sha256 = EXCLUDED.request_sha256, response = EXCLUDED.response, created_at = now()
 WHERE idempotency_keys.created_at < now() - interval '{IDEMPOTENCY_HOURS} hours'
RETURNING key
"""


async def claim_key(
    conn: Executor, org_id: UUID, key: str, request_sha256: bytes, response: dict[str, Any]
) -> Remembered | None:
    """None: the key is ours now (with `response` stored). Otherwise the earlier request."""
    if await conn.fetchval(_CLAIM, org_id, key, request_sha256, response) is not None:
        return None
    row = required(
        await conn.fetchrow(
            "SELECT request_sha256, response FROM idempotency_keys WHERE organization_id = $1 AND key = $2",
            org_id,
            key,
        )
    )
    return Remembered(row["request_sha256"], row["response"])
