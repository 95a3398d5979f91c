import dkim
import pytest

from remails.crypto import generate_dkim_key
from remails_sender_node.dkim_signer import DkimSigner

KEY = generate_dkim_key()
RECORD = f"v=DKIM1; k=rsa; p={KEY.public_b64}".encode()


def _verify(message: bytes) -> bool:
    return bool(dkim.verify(message, dnsfunc=lambda name, timeout=5: RECORD))


@pytest.mark.parametrize(
    "message",
    [
        b"From: a@example.test\r\nTo: b@dest.test\r\nSubject: hi\r\n\r\nbody\r\n",
        # every signed header present: a long h= tag that must fold between names, not inside one
        b"From: A <a@example.test>\r\nTo: b@dest.test\r\nCc: c@dest.test\r\n"
        b"Subject: hello  there\r\n folded\r\nDate: Sun, 29 Nov 2026 12:00:00 +0000\r\n"
        b"Message-ID: <x@example.test>\r\nReply-To: r@example.test\r\n"
        b"In-Reply-To: <y@x>\r\nReferences: <y@x>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: 7bit\r\nList-Unsubscribe: <mailto:u@example.test>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nbody\r\n\r\n\r\n",
    ],
)
def test_signatures_verify_with_dkimpy(message: bytes) -> None:
    signed = DkimSigner("example.test", "rm1", KEY.private_pem).signature_header(message) + message
    assert _verify(signed)
    header = signed.split(b"\r\n\r\n")[0]
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))


def test_a_changed_body_or_signed_header_fails() -> None:
    message = b"From: a@example.test\r\nTo: b@dest.test\r\nSubject: hi\r\n\r\nbody\r\n"
    signed = DkimSigner("example.test", "rm1", KEY.private_pem).signature_header(message) + message
    assert not _verify(signed.replace(b"body", b"b0dy"))
    assert not _verify(signed.replace(b"Subject: hi", b"Subject: ho"))
    assert _verify(signed.replace(b"Subject: hi", b"Subject:   hi"))  # relaxed: whitespace only


def test_ed25519_signs_alongside_rsa_and_both_verify_with_dkimpy() -> None:
    from remails.crypto import generate_ed25519_dkim_key
    from remails_sender_node.dkim_signer import SignerSet

    ed = generate_ed25519_dkim_key()
    records = {
        b"rm1._domainkey.example.test.": RECORD,
        b"rme1._domainkey.example.test.": f"v=DKIM1; k=ed25519; p={ed.public_b64}".encode(),
    }
    signers = SignerSet(
        [
            DkimSigner("example.test", "rme1", ed.private_pem),
            DkimSigner("example.test", "rm1", KEY.private_pem),
        ]
    )
    message = b"From: a@example.test\r\nTo: b@dest.test\r\nSubject: hi\r\n\r\nbody\r\n"
    signed = signers.signature_header(message) + message
    assert signed.count(b"DKIM-Signature:") == 2
    assert b"a=ed25519-sha256" in signed and b"a=rsa-sha256" in signed
    verifier = dkim.DKIM(signed)
    dnsfunc = lambda name, timeout=5: records.get(name, b"")  # noqa: E731
    algorithms = set()
    for index in range(2):
        assert verifier.verify(idx=index, dnsfunc=dnsfunc), index
        algorithms.add(verifier.signature_fields[b"a"])
    assert algorithms == {b"rsa-sha256", b"ed25519-sha256"}
    tampered = signed.replace(b"body", b"b0dy")
    with pytest.raises(dkim.ValidationError, match="body hash"):
        dkim.DKIM(tampered).verify(idx=1, dnsfunc=dnsfunc)


def test_the_body_canonicalisation_is_dkimpys() -> None:
    """canonical_body skips dkimpy's whitespace substitutions only where they change nothing."""
    import random

    from remails_sender_node.dkim_signer import _CANON, canonical_body

    pieces = [b"a", b"b", b" ", b"  ", b"\t", b"\r\n", b"\r", b"\n", b" \r\n"]
    rng = random.Random(6376)
    bodies = [b"", b"\r\n", b"\r\n\r\n", b"a", b"a ", b"a\r\n\r\n", b" ", b"a \r\nb", b"a\t\r\n"]
    bodies += [b"".join(rng.choices(pieces, k=rng.randint(0, 40))) for _ in range(20_000)]
    for body in bodies:
        assert canonical_body(body) == _CANON.canonicalize_body(body), body


def test_the_message_parse_is_dkimpys() -> None:
    """parse_message gives dkimpy's rfc822_parse result, or its error, for every message."""
    import random

    from remails_sender_node.dkim_signer import parse_message

    pieces = [b"From: a@b\r\n", b"To: c\r\n", b" folded\r\n", b"\tfold\r\n", b"X-A:b\r\n", b"\r\n"]
    pieces += [b"body\r\n", b"\n", b"\r", b"From x\r\n", b"bad line\r\n", b"a", b":", b" "]
    rng = random.Random(822)
    for _ in range(20_000):
        message = b"".join(rng.choices(pieces, k=rng.randint(0, 12)))
        try:
            expected: object = dkim.rfc822_parse(message)
        except Exception as exc:  # the same error is what is compared
            expected = type(exc)
        try:
            got: object = parse_message(message)
        except Exception as exc:  # the same error is what is compared
            got = type(exc)
        assert got == expected, message


def test_signing_only_the_signed_fields_hashes_what_dkimpy_would() -> None:
    """Repeated, mixed-case, folded and empty fields among unsigned ones: the header hash is the
    one of dkimpy's whole-header canonicalisation."""
    import hashlib

    from remails_sender_node.dkim_signer import _CANON, SIGNED_HEADERS

    message = (
        b"Received: from a by b\r\nTO: first@dest.test\r\nFrom: a@example.test\r\nX-Tag:\r\n"
        b"Subject: hello\r\n  folded  there\r\nto: second@dest.test\r\nSubject:\r\n"
        b"X-Other: x\r\n\r\nbody\r\n"
    )
    signer = DkimSigner("example.test", "rm1", KEY.private_pem)
    unsigned, digest = signer._unsigned(message, 1_700_000_000)
    headers, _ = dkim.rfc822_parse(message)
    include = [h for h in SIGNED_HEADERS if h in {name.lower() for name, _ in headers}]
    hasher = hashlib.sha256()
    everything = _CANON.canonicalize_headers(headers)
    dkim.hash_headers(hasher, _CANON, everything, include, (b"DKIM-Signature", b" " + unsigned), {})
    assert digest == hasher.digest()
    assert _verify(signer.signature_header(message) + message)
