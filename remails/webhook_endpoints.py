"""Registering webhook endpoints: check the URL, generate the signing secret, seal it under the
master key bound to the endpoint's id, store it — the one place that does this, for the API
and the CLI alike. The secret is returned once, to be shown to the customer, and never again.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID, uuid4

from remails.config import Settings
from remails.crypto import MasterKey
from remails.db import webhook_endpoints
from remails.db.rows import Executor
from remails.db.webhook_endpoints import Endpoint
from remails.webhook_signing import generate_webhook_secret
from remails.webhook_targets import check_target

__all__ = [
    "ROTATION_GRACE_SECONDS",
    "NewEndpoint",
    "create_endpoint",
    "open_secrets",
    "prepare_endpoint",
    "rotate_secret",
    "store_endpoint",
]

ROTATION_GRACE_SECONDS = 24 * 3600  # the previous secret keeps signing this long after a rotation


def _context(endpoint_id: UUID) -> str:
    """Binds a sealed secret to its endpoint: it cannot be moved to another row."""
    return f"webhook:{endpoint_id}"


def _seal(master_key: MasterKey, endpoint_id: UUID, secret: str) -> bytes:
    return master_key.seal(secret.encode(), context=_context(endpoint_id))


def open_secrets(master_key: MasterKey, endpoint_id: UUID, sealed: list[bytes]) -> list[str]:
    """The endpoint's secrets in use, to sign a delivery with."""
    return [master_key.open(s, context=_context(endpoint_id)).decode() for s in sealed]


@dataclass(frozen=True)
class NewEndpoint:
    """An endpoint ready to be stored: its URL was checked, its secret made and sealed."""

    id: UUID
    url: str
    secret: str
    sealed: bytes

    def __repr__(self) -> str:
        return f"NewEndpoint(id={self.id}, url=…)"


async def prepare_endpoint(settings: Settings, master_key: MasterKey, url: str) -> NewEndpoint:
    """The slow part (the target's DNS), done before any transaction. Raises `UnsafeTarget`
    for a URL we would refuse to call."""
    await check_target(settings, url)
    endpoint_id = uuid4()  # chosen here: the sealed secret is bound to the endpoint's id
    secret = generate_webhook_secret()
    return NewEndpoint(endpoint_id, url, secret, _seal(master_key, endpoint_id, secret))


async def store_endpoint(conn: Executor, new: NewEndpoint, project_id: UUID, events: list[str]) -> Endpoint:
    return await webhook_endpoints.create_endpoint(conn, new.id, project_id, new.url, events, new.sealed)


async def create_endpoint(
    pool: Executor,
    settings: Settings,
    master_key: MasterKey,
    project_id: UUID,
    url: str,
    events: list[str],
) -> tuple[Endpoint, str]:
    """(the endpoint, its secret). Raises `UnsafeTarget` for a URL we would refuse to call."""
    new = await prepare_endpoint(settings, master_key, url)
    return await store_endpoint(pool, new, project_id, events), new.secret


async def rotate_secret(pool: Executor, master_key: MasterKey, endpoint_id: UUID) -> str | None:
    """A new secret (None when the endpoint is gone); the previous one stays valid for
    `ROTATION_GRACE_SECONDS`."""
    secret = generate_webhook_secret()
    sealed = _seal(master_key, endpoint_id, secret)
    if not await webhook_endpoints.rotate_secret(pool, endpoint_id, sealed, ROTATION_GRACE_SECONDS):
        return None
    return secret
