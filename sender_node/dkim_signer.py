"""DKIM signing (RFC 6376): dkimpy's canonicalisation and header selection, with the RSA
operation done by `cryptography` (OpenSSL), which is about five times faster than dkimpy's own
pure-Python RSA. dkimpy itself is left untouched for everyone else in the process.

Ed25519 keys (RFC 8463, `a=ed25519-sha256`) sign the same SHA-256 header hash with PureEdDSA;
a `SignerSet` adds one DKIM-Signature per key, so receivers that know only RSA still verify.

The sender makes the private-key operation elsewhere (`signature_header_by`, with the signing
process of signing_process.py); everything else here runs in the caller."""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import time
from collections.abc import Awaitable, Callable

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from remails.message_headers import has_bare_line_ending
from remails_sender_node.signing_worker import sign_digest

__all__ = ["SIGNED_HEADERS", "DigestSigner", "DkimSigner", "SignerSet", "canonical_body", "parse_message"]

# Sign what a receiver shows or threads on, when present.
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)
_CANON = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_SERIALS = itertools.count(1)
_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")  # dkimpy's own


# Makes the private-key operation of a signer on a digest (the signing process's `sign`).
DigestSigner = Callable[["DkimSigner", bytes], Awaitable[bytes]]


class DkimSigner:
    """Signs for one domain and selector; holds the parsed key (parse once, sign many)."""

    def __init__(self, domain: str, selector: str, private_pem: bytes) -> None:
        # The key's consistency checks cost ~30 ms of CPU per RSA key (every cold cache, every
        # new domain stalled the event loop that long). They guard against keys from untrusted
        # input; ours are generated here and reach us only sealed under the master key (AEAD),
        # so nobody else's key can arrive.
        key = serialization.load_pem_private_key(
            private_pem, password=None, unsafe_skip_rsa_key_validation=True
        )
        if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise ValueError("DKIM key is neither RSA nor Ed25519")
        self._key = key
        self.algorithm = b"rsa-sha256" if isinstance(key, rsa.RSAPrivateKey) else b"ed25519-sha256"
        self.domain = domain.encode()
        self.selector = selector.encode()
        self.serial = next(_SERIALS)  # tells this key from any other in this process

    def __repr__(self) -> str:
        return f"DkimSigner(domain={self.domain!r}, selector={self.selector!r})"

    def signature_header(self, message: bytes, now: int | None = None) -> bytes:
        """The `DKIM-Signature: …\\r\\n` header to prepend to `message` (CRLF line endings)."""
        unsigned, digest = self._unsigned(message, now)
        return _signed(unsigned, self.sign_digest(digest))

    async def signature_header_by(self, sign: DigestSigner, message: bytes, now: int | None = None) -> bytes:
        """signature_header, with the private-key operation made by `sign`."""
        unsigned, digest = self._unsigned(message, now)
        return _signed(unsigned, await sign(self, digest))

    def sign_digest(self, digest: bytes) -> bytes:
        """The private-key operation on the SHA-256 hash of the header."""
        return sign_digest(self._key, digest)

    def private_der(self) -> bytes:
        """The key in PKCS#8 DER, for the signing process."""
        return self._key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def _unsigned(self, message: bytes, now: int | None) -> tuple[bytes, bytes]:
        """The header as it is sent, with an empty b=, and the SHA-256 hash to sign."""
        headers, body = parse_message(message)
        present = {name.lower() for name, _ in headers}
        include = [h for h in SIGNED_HEADERS if h in present]
        # Only the fields that are signed are canonicalised (the selection keeps their order).
        wanted = set(include)
        signed = [h for h in headers if h[0].lower() in wanted]
        body_hash = base64.b64encode(hashlib.sha256(canonical_body(body)).digest())
        tags = [
            b"v=1",
            b"a=" + self.algorithm,
            b"c=relaxed/relaxed",
            b"d=" + self.domain,
            b"s=" + self.selector,
            b"t=" + str(int(now if now is not None else time.time())).encode(),
            b"h=" + b" : ".join(include),
            b"bh=" + body_hash,
        ]
        # Hash exactly the folded header that is sent, with an empty b=; relaxed
        # canonicalisation then agrees with any verifier about the whitespace.
        unsigned = _fold(tags) + b";\r\n b="
        hasher = hashlib.sha256()
        dkim.hash_headers(
            hasher,
            _CANON,
            _CANON.canonicalize_headers(signed),
            include,
            (b"DKIM-Signature", b" " + unsigned),
            {},
        )
        return unsigned, hasher.digest()


class SignerSet:
    """Several keys of one domain (RSA and Ed25519): one DKIM-Signature header each, RSA first."""

    def __init__(self, signers: list[DkimSigner]) -> None:
        if not signers:
            raise ValueError("a signer set needs at least one signer")
        self.signers = sorted(signers, key=lambda s: s.algorithm != b"rsa-sha256")

    def __repr__(self) -> str:
        return f"SignerSet({self.signers!r})"

    def signature_header(self, message: bytes, now: int | None = None) -> bytes:
        # Each signature leaves DKIM-Signature out of h=, so the order does not matter to verifiers.
        return b"".join(s.signature_header(message, now) for s in self.signers)

    async def signature_header_by(self, sign: DigestSigner, message: bytes, now: int | None = None) -> bytes:
        return b"".join([await s.signature_header_by(sign, message, now) for s in self.signers])


def _signed(unsigned: bytes, raw: bytes) -> bytes:
    """The header with its b= value, folded at 72 columns."""
    signature = base64.b64encode(raw)
    folded_signature = b"\r\n ".join(signature[i : i + 72] for i in range(0, len(signature), 72))
    return b"DKIM-Signature: " + unsigned + folded_signature + b"\r\n"


def parse_message(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's rfc822_parse (header fields and body), without splitting the body into lines
    when every line ends in CRLF, as the sender's messages do (58 -> 10 us for 4 KB); any
    other message, or a header block dkimpy refuses, is left to dkimpy."""
    if has_bare_line_ending(message):
        return _dkimpy_parse(message)
    if message.startswith(b"\r\n"):
        return [], message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return _dkimpy_parse(message)
    headers: list[list[bytes]] = []
    for line in message[:end].split(b"\r\n"):
        if line[:1] in (b"\t", b" ") and headers:
            headers[-1][1] += line + b"\r\n"
            continue
        field = _FIELD_NAME.match(line)
        if field is not None:
            headers.append([field.group(1), line[field.end(0) :] + b"\r\n"])
        elif not line.startswith(b"From "):  # what dkimpy refuses, it refuses itself
            return _dkimpy_parse(message)
    return headers, message[end + 4 :]


def _dkimpy_parse(message: bytes) -> tuple[list[list[bytes]], bytes]:
    parsed: tuple[list[list[bytes]], bytes] = dkim.rfc822_parse(message)
    return parsed


def canonical_body(body: bytes) -> bytes:
    """The relaxed body canonicalisation (RFC 6376 §3.4.4), dkimpy's own, with its two
    whitespace substitutions skipped when a body has nothing they would change: no tab, no run
    of spaces and no space before a line end (the common case; the substitutions were a
    third of the signing's cost)."""
    canonical: bytes
    if b"\t" in body or b"  " in body or b" \r\n" in body:
        canonical = _CANON.canonicalize_body(body)
    else:
        canonical = dkim.canonicalization.correct_empty_body(dkim.canonicalization.strip_trailing_lines(body))
    return canonical


def _fold(tags: list[bytes], width: int = 76) -> bytes:
    """Join tags with "; ", breaking lines only where whitespace is allowed: between tags,
    and around the ':' separators of h= (RFC 6376 §3.5 permits FWS there)."""
    lines: list[bytes] = []
    line = b""
    for i, tag in enumerate(tags):
        piece = tag + (b";" if i < len(tags) - 1 else b"")
        words = piece.split(b" ")  # h= is "h=a : b : c"; every other tag is one word
        for word in words:
            candidate = word if not line else line + b" " + word
            if line and len(candidate) + (len(b"DKIM-Signature: ") if not lines else 1) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
    lines.append(line)
    return b"\r\n ".join(lines)
