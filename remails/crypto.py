"""Secrets: generated tokens stored as SHA-256 digests, the master key, DKIM keys at rest.

Generated secrets have ≥128 bits of entropy, so a fast digest is enough (no password
stretching); comparisons are constant-time. DKIM private keys are sealed with AES-256-GCM
under the master key, bound to their domain name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from remails.config import ConfigError

__all__ = [
    "DkimKeyPair",
    "MasterKey",
    "digest",
    "digest_matches",
    "generate_dkim_key",
    "generate_ed25519_dkim_key",
    "generate_secret",
    "load_master_key",
]

_NONCE_BYTES = 12


def generate_secret(nbytes: int = 24) -> str:
    """A URL-safe random secret (24 bytes = 192 bits by default)."""
    return secrets.token_urlsafe(nbytes)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def digest_matches(secret: str, stored: bytes) -> bool:
    return hmac.compare_digest(digest(secret), stored)


class MasterKey:
    """AES-256-GCM under the service's master key; `context` binds a ciphertext to its owner."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("master key must be 32 bytes")
        self._aead = AESGCM(key)
        self._key = key

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], context.encode())
        except InvalidTag:
            raise ValueError("cannot decrypt: wrong master key or tampered data") from None

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for one purpose (HKDF-SHA256), so the master key itself signs nothing."""
        info = purpose.encode()
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(self._key)

    def __repr__(self) -> str:
        return "MasterKey(<hidden>)"


def load_master_key(secret_key: str | None, data_dir: Path) -> MasterKey:
    """From REMAILS_SECRET_KEY (base64 of 32 bytes), else `<data dir>/master.key`, made once."""
    if secret_key:
        try:
            raw = base64.b64decode(secret_key, validate=True)
            return MasterKey(raw)
        except ValueError:
            raise ConfigError("REMAILS_SECRET_KEY: expected base64 of 32 random bytes") from None
    path = data_dir / "master.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64encode(os.urandom(32)) + b"\n")
    return MasterKey(base64.b64decode(path.read_bytes().strip()))


@dataclass(frozen=True)
class DkimKeyPair:
    private_pem: bytes
    public_b64: str  # SubjectPublicKeyInfo DER, base64, as published in the p= tag

    def __repr__(self) -> str:
        return f"DkimKeyPair(public_b64={self.public_b64[:16]}…)"


def generate_dkim_key(bits: int = 2048) -> DkimKeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return DkimKeyPair(private_pem, base64.b64encode(public_der).decode())


def generate_ed25519_dkim_key() -> DkimKeyPair:
    """An Ed25519 DKIM key (RFC 8463): p= is the raw 32-byte public key, not SubjectPublicKeyInfo."""
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return DkimKeyPair(private_pem, base64.b64encode(public_raw).decode())
