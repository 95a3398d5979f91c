"""Commands a client pipelines (RFC 2920) behind a message's final dot are read and answered:
the DATA reader takes the socket's data in chunks and leaves what follows the dot."""

from __future__ import annotations

from tests.smtp.conftest import EdgeFactory
from tests.support.rawsmtp import RawSmtp

MESSAGE = b"From: app@example.test\r\nTo: user@dest.test\r\nSubject: code\r\n\r\n..dotted\r\n"


async def test_commands_in_the_same_segment_as_the_final_dot_are_answered(edge_factory: EdgeFactory) -> None:
    edge = await edge_factory(trusted_cidr="127.0.0.0/8")
    raw = await RawSmtp.connect(edge.submission)
    await raw.reply()
    assert "PIPELINING" in await raw.command("EHLO client.test")
    await raw.send(b"MAIL FROM:<app@example.test>\r\nRCPT TO:<one@dest.test>\r\nDATA\r\n")
    replies = [await raw.reply() for _ in range(3)]
    assert [r[:3] for r in replies] == ["250", "250", "354"]
    # The end of one message, and the next transaction up to its DATA, in one write.
    await raw.send(MESSAGE + b".\r\nMAIL FROM:<app@example.test>\r\nRCPT TO:<two@dest.test>\r\nDATA\r\n")
    replies = [await raw.reply() for _ in range(4)]
    assert replies[0].startswith("250 2.0.0 Ok: queued as")
    assert [r[:3] for r in replies[1:]] == ["250", "250", "354"]
    await raw.send(MESSAGE + b".\r\nQUIT\r\n")
    assert (await raw.reply()).startswith("250 2.0.0 Ok: queued as")
    assert (await raw.reply()).startswith("221")
    await raw.close()
    rows = await edge.pool.fetch(
        "SELECT r.address, m.raw FROM messages m JOIN recipients r ON r.message_id = m.id ORDER BY r.address"
    )
    assert [r["address"] for r in rows] == ["one@dest.test", "two@dest.test"]
    assert all(bytes(r["raw"]).endswith(b"\r\n.dotted\r\n") for r in rows)
