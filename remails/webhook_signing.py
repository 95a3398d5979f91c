"""Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 over
`{webhook-id}.{webhook-timestamp}.{body}` with a `whsec_` secret, sent as `v1,<base64>`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["generate_webhook_secret", "sign", "signature_header"]

PREFIX = "whsec_"


def generate_webhook_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()


def signature_header(secrets_in_use: list[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """One signature per valid secret (the new and, during a rotation, the previous one),
    separated by spaces, so receivers verify with either."""
    return " ".join(sign(s, webhook_id, timestamp, body) for s in secrets_in_use)
