"""The bytes of one message as they go out: DKIM-signed, as written or converted to 7-bit for
an MX without 8BITMIME. Each form is signed once, when an MX first needs it, so what is
signed is exactly what is sent."""

from __future__ import annotations

from remails.message_headers import header_block
from remails_sender_node.dkim_signer import DigestSigner, DkimSigner, SignerSet
from remails_sender_node.seven_bit import to_seven_bit

__all__ = ["Payload"]


class Payload:
    def __init__(
        self, message: bytes, signer: DkimSigner | SignerSet | None, sign: DigestSigner | None = None
    ) -> None:
        """`sign` makes the private-key operation (the signing process); None: here."""
        self._message = message  # CRLF line endings
        self._signer = signer
        self._sign = sign
        self.eight_bit = not message.isascii()
        # RFC 6532 header fields (UTF-8 addresses, unencoded UTF-8 text) need SMTPUTF8.
        self.utf8_headers = not header_block(message).isascii()
        self._forms: dict[bool, bytes] = {}

    async def data(self, *, seven_bit: bool) -> bytes:
        """The signed message; `seven_bit` converts 8-bit body parts first."""
        seven_bit = seven_bit and self.eight_bit
        form = self._forms.get(seven_bit)
        if form is None:
            body = to_seven_bit(self._message) if seven_bit else self._message
            header = await self._header(body)
            # Two destinations may have signed at once: all send the first form kept.
            form = self._forms.setdefault(seven_bit, header + body)
        return form

    async def _header(self, body: bytes) -> bytes:
        if self._signer is None:
            return b""
        if self._sign is None:
            return self._signer.signature_header(body)
        return await self._signer.signature_header_by(self._sign, body)
