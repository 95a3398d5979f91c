"""The signing worker: a child process of the sender node that does DKIM's private-key
operations, so they cost the sender's event loop a pipe write and read instead of the
signature itself (see signing_process.py). It reads frames from stdin and answers on stdout;
it never logs and exits at the first frame it does not understand (the parent restarts it).

Frames in: kind (1 byte), id (u32), length (u32), then the payload:
  K  id = key id, payload = the key in PKCS#8 DER
  S  id = request id, payload = key id (u32) + the SHA-256 digest to sign
  C  forget every key
Frames out: request id (u32), status (0 signed, 1 refused), length (u32), then the signature
or the reason."""

from __future__ import annotations

import struct
import sys
from typing import BinaryIO

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

__all__ = ["HEADER_IN", "HEADER_OUT", "Key", "main", "serve", "sign_digest"]

HEADER_IN = struct.Struct(">cII")
HEADER_OUT = struct.Struct(">IBI")
KEY_ID = struct.Struct(">I")

Key = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def sign_digest(key: Key, digest: bytes) -> bytes:
    """DKIM's private-key operation on the SHA-256 hash of the header (here and in DkimSigner)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    return key.sign(digest)  # RFC 8463 §3: Ed25519 over the SHA-256 hash


def _read(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def serve(incoming: BinaryIO, outgoing: BinaryIO) -> None:
    """Answer frames until the input ends or a frame is malformed."""
    keys: dict[int, Key] = {}
    while (header := _read(incoming, HEADER_IN.size)) is not None:
        kind, ident, length = HEADER_IN.unpack(header)
        payload = _read(incoming, length)
        if payload is None:
            return
        if kind == b"K":
            key = serialization.load_der_private_key(
                payload, password=None, unsafe_skip_rsa_key_validation=True
            )
            if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
                return
            keys[ident] = key
        elif kind == b"S":
            (key_id,) = KEY_ID.unpack_from(payload)
            known = keys.get(key_id)
            if known is None:
                answer, status = b"unknown key", 1
            else:
                answer, status = sign_digest(known, payload[KEY_ID.size :]), 0
            outgoing.write(HEADER_OUT.pack(ident, status, len(answer)) + answer)
            outgoing.flush()
        elif kind == b"C":
            keys.clear()
        else:
            return


def main() -> None:
    serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
