"""PIPELINING on the wire (RFC 2920), against a server on a real socket that offers it and
answers nothing until MAIL, every RCPT and DATA have arrived — so a client that waits for each
reply never gets one. Scripted refusals show each recipient keeps its own reply, a refused MAIL
or no accepted recipient sends no message, and a server that still says 354 gets a lone dot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiosmtplib
import pytest

from remails_sender_node.payload import Payload
from remails_sender_node.smtp_client import Envelope, _transaction

MESSAGE = b"From: app@example.test\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n"


@dataclass
class Scripted:
    """An MX that holds its replies until the whole pipelined block has arrived."""

    mail: bytes = b"250 2.1.0 Ok"
    rcpt: dict[str, bytes] = field(default_factory=dict)  # address -> reply (else 250)
    data: bytes | None = None  # reply to DATA (else 354 when a recipient was taken, 554 if none)
    blocks: list[list[bytes]] = field(default_factory=list)  # the command lines of each block
    messages: list[bytes] = field(default_factory=list)  # what came after a 354, up to the dot
    port: int = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx.test ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n")
        while line := await reader.readline():
            if line.upper().startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
                break
            if line.upper().startswith(b"RSET"):
                writer.write(b"250 Ok\r\n")
                continue
            block = [line]
            while not block[-1].upper().startswith(b"DATA"):
                block.append(await reader.readline())
            self.blocks.append(block)
            replies, taken = [self.mail], 0
            for rcpt in block[1:-1]:
                address = rcpt.decode().split("<", 1)[1].split(">", 1)[0]
                reply = self.rcpt.get(address, b"250 2.1.5 Ok")
                taken += self.mail.startswith(b"250") and reply.startswith(b"250")
                replies.append(reply if self.mail.startswith(b"250") else b"503 5.5.1 MAIL first")
            data = self.data or (b"354 go on" if taken else b"554 5.5.1 no valid recipients")
            replies.append(data)
            writer.write(b"".join(r + b"\r\n" for r in replies))
            if data.startswith(b"354"):
                body = b""
                while (chunk := await reader.readline()) != b".\r\n":
                    body += chunk
                self.messages.append(body)
                writer.write(b"250 2.0.0 queued\r\n")
        writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    mx = Scripted()
    server = await asyncio.start_server(mx.session, "127.0.0.1", 0)
    mx.port = server.sockets[0].getsockname()[1]
    yield mx
    server.close()


async def _send(mx: Scripted, rcpts: list[str]) -> tuple[dict[str, tuple[int | None, str | None, str]], int]:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=mx.port, timeout=5, start_tls=False)
    await client.connect()
    await client.ehlo()
    try:
        replies, final = await _transaction(
            client, Envelope("app@example.test", rcpts, Payload(MESSAGE, None))
        )
    finally:
        client.close()
    return replies, int(final[0] or 0)


async def test_mail_rcpt_and_data_go_in_one_block_and_the_message_follows(scripted: Scripted) -> None:
    replies, final = await _send(scripted, ["a@dest.test", "b@dest.test"])
    assert final == 250
    assert {a: r[0] for a, r in replies.items()} == {"a@dest.test": 250, "b@dest.test": 250}
    (block,) = scripted.blocks
    assert [line.split(b" ", 1)[0] for line in block] == [b"MAIL", b"RCPT", b"RCPT", b"DATA\r\n"]
    assert scripted.messages == [MESSAGE.replace(b"\r\n.leading", b"\r\n..leading")]  # dot-stuffed


async def test_each_recipient_keeps_its_own_refusal(scripted: Scripted) -> None:
    scripted.rcpt = {"gone@dest.test": b"550 5.1.1 no such user", "full@dest.test": b"452 4.2.2 full"}
    replies, final = await _send(scripted, ["gone@dest.test", "ok@dest.test", "full@dest.test"])
    assert final == 250
    assert replies["gone@dest.test"] == (550, "5.1.1", "no such user")
    assert replies["full@dest.test"] == (452, "4.2.2", "full")
    assert replies["ok@dest.test"][0] == 250
    assert len(scripted.messages) == 1


async def test_a_refused_mail_refuses_everyone_and_sends_no_message(scripted: Scripted) -> None:
    scripted.mail = b"550 5.7.1 sender refused"
    replies, final = await _send(scripted, ["a@dest.test", "b@dest.test"])
    assert final == 550
    assert set(replies.values()) == {(550, "5.7.1", "sender refused")}
    assert scripted.messages == []


async def test_no_recipient_taken_sends_no_message_even_when_the_server_says_354(scripted: Scripted) -> None:
    scripted.rcpt = {"a@dest.test": b"550 5.1.1 no"}
    scripted.data = b"354 go on anyway"  # a server that answers DATA regardless (RFC 2920 3.1)
    replies, final = await _send(scripted, ["a@dest.test"])
    assert final == 550 and replies["a@dest.test"] == (550, "5.1.1", "no")
    assert scripted.messages == [b""]  # only the lone dot went out


async def test_a_refused_data_is_every_taken_recipients_reply(scripted: Scripted) -> None:
    scripted.data = b"451 4.3.0 try later"
    replies, final = await _send(scripted, ["a@dest.test"])
    assert final == 451 and replies["a@dest.test"] == (451, "4.3.0", "try later")
    assert scripted.messages == []
