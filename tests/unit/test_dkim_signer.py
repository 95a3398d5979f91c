import dkim
import pytest

from remails.crypto import generate_dkim_key
from sender_node.dkim_signer import DkimSigner

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
