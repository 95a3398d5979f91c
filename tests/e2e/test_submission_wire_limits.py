"""What the HTTP API and the SMTP edge let in is what can go out: one bare envelope sender,
UTF-8 addresses (with SMTPUTF8 at the edge), no line over 998 octets, and our Received header
on every message, with the client's EHLO text reduced to RFC 5321 syntax."""

from __future__ import annotations

import base64
from email import message_from_bytes
from email.policy import SMTPUTF8
from typing import Any

import pytest

from remails.config import Settings
from remails.db import Pool
from tests.api.conftest import Api, make_api
from tests.smtp.conftest import EdgeFactory, edge_factory  # noqa: F401  (the edge fixture)
from tests.support.rawsmtp import RawSmtp


@pytest.fixture
async def api(pool: Pool, settings: Settings) -> Any:
    made, client = await make_api(pool, settings)
    yield made
    await client.aclose()


def _raw(api: Api, raw: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "mail_from": f"bounce@{api.acme.domain}",
        "recipients": ["user@dest.test"],
        "raw": base64.b64encode(raw).decode(),
        **extra,
    }


async def _post_raw(api: Api, body: dict[str, Any]) -> Any:
    return await api.call(
        "POST", f"/v1/projects/{api.acme.project_id}/messages/raw", api.acme_maintainer, json=body
    )


@pytest.mark.parametrize(
    "mail_from",
    [
        "ceo@other.test,bounce@acme.test",
        "ceo@other.test>bounce@acme.test",
        "a b@acme.test",
        "<bounce@acme.test>",
        "Bounce <bounce@acme.test>",
        "bounce@acme.test (comment)",
    ],
)
async def test_raw_mail_from_must_be_exactly_one_bare_address(api: Api, mail_from: str) -> None:
    response = await _post_raw(api, _raw(api, b"From: app@acme.test\r\n\r\nbody\r\n", mail_from=mail_from))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "mail_from"
    assert await api.pool.fetchval("SELECT count(*) FROM messages") == 0


async def test_raw_line_over_998_octets_is_refused_naming_raw(api: Api) -> None:
    long_line = b"From: app@acme.test\r\n\r\n" + b"x" * 999 + b"\r\n"
    response = await _post_raw(api, _raw(api, long_line))
    assert response.status_code == 422 and response.json()["error"]["field"] == "raw", response.text
    fits = await _post_raw(api, _raw(api, b"From: app@acme.test\r\n\r\n" + b"x" * 998 + b"\r\n"))
    assert fits.status_code == 202, fits.text


async def test_utf8_addresses_are_accepted_and_stored_as_given(api: Api) -> None:
    response = await _post_raw(
        api,
        _raw(api, b"From: app@acme.test\r\n\r\nbody\r\n", recipients=["jörg@exämple.test"]),
    )
    assert response.status_code == 202, response.text
    composed = await api.call(
        "POST",
        f"/v1/projects/{api.acme.project_id}/messages",
        api.acme_maintainer,
        json={"from": "app@acme.test", "to": ["jörg@dest.test", "ada@exämple.test"], "text": "hi"},
    )
    assert composed.status_code == 202, composed.text
    rows = await api.pool.fetch("SELECT address FROM recipients ORDER BY id")
    assert [r["address"] for r in rows] == ["jörg@exämple.test", "jörg@dest.test", "ada@exämple.test"]
    raw = await api.pool.fetchval("SELECT raw FROM messages WHERE id = $1::uuid", composed.json()["id"])
    # A UTF-8 mailbox is written as UTF-8 (RFC 6532); an ASCII one with an IDN domain as A-labels.
    headers = message_from_bytes(raw, policy=SMTPUTF8)
    assert headers["To"] == "jörg@dest.test, ada@xn--exmple-cua.test"


async def test_composed_long_lines_are_encoded_to_fit_998_octets(api: Api) -> None:
    response = await api.call(
        "POST",
        f"/v1/projects/{api.acme.project_id}/messages",
        api.acme_maintainer,
        json={
            "from": "app@acme.test",
            "to": ["user@dest.test"],
            "subject": "s" * 998,
            "text": ("a" * 600 + "\x0b") * 3,  # one 1,803-octet line, though splitlines() sees three
            "html": "<p>" + "c" * 3000 + "</p>",
            "headers": {"X-Long": "d" * 998},
        },
    )
    assert response.status_code == 202, response.text
    raw = await api.pool.fetchval("SELECT raw FROM messages WHERE id = $1::uuid", response.json()["id"])
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


async def test_http_messages_get_our_received_header(api: Api) -> None:
    response = await _post_raw(api, _raw(api, b"From: app@acme.test\r\nSubject: x\r\n\r\nbody\r\n"))
    composed = await api.call(
        "POST",
        f"/v1/projects/{api.acme.project_id}/messages",
        api.acme_maintainer,
        json={"from": "app@acme.test", "to": ["user@dest.test"], "text": "hi"},
    )
    for answer in (response, composed):
        raw = await api.pool.fetchval("SELECT raw FROM messages WHERE id = $1::uuid", answer.json()["id"])
        first = raw.split(b"\r\n", 1)[0].decode()
        assert first.startswith("Received: by mx.remails.test with HTTP id " + answer.json()["id"] + "; ")


async def _edge_session(edge_factory: EdgeFactory, ehlo: str) -> tuple[Any, RawSmtp]:  # noqa: F811
    """A raw session on the implicit-TLS port, logged in as the tenant."""
    edge = await edge_factory()
    raw = await RawSmtp.connect(edge.implicit, tls=edge.client_tls)
    await raw.reply()
    await raw.command(f"EHLO {ehlo}")
    token = base64.b64encode(f"\0{edge.tenant.username}\0{edge.tenant.password}".encode()).decode()
    assert (await raw.command(f"AUTH PLAIN {token}")).startswith("235")
    return edge, raw


async def test_edge_takes_a_utf8_address_only_with_smtputf8(edge_factory: EdgeFactory) -> None:  # noqa: F811
    _, raw = await _edge_session(edge_factory, "client.test")
    assert (await raw.command("MAIL FROM:<app@example.test>")).startswith("250")
    assert (await raw.command("RCPT TO:<jörg@dest.test>")).startswith("553 5.6.7")
    assert (await raw.command("RSET")).startswith("250")
    assert (await raw.command("MAIL FROM:<jörg@example.test>")).startswith("553 5.6.7")
    assert (await raw.command("MAIL FROM:<jörg@example.test> SMTPUTF8")).startswith("250")
    assert (await raw.command("RCPT TO:<jörg@dest.test>")).startswith("250")
    await raw.close()


async def test_edge_reduces_the_ehlo_text_in_received(edge_factory: EdgeFactory, pool: Pool) -> None:  # noqa: F811
    _, raw = await _edge_session(edge_factory, "odd host; x=(y")
    assert (await raw.command("MAIL FROM:<app@example.test>")).startswith("250")
    assert (await raw.command("RCPT TO:<user@dest.test>")).startswith("250")
    assert (await raw.command("DATA")).startswith("354")
    await raw.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
    assert (await raw.reply()).startswith("250")
    await raw.close()
    stored = await pool.fetchval("SELECT raw FROM messages")
    first = stored.split(b"\r\n", 1)[0].decode()
    assert first.startswith("Received: from unknown by "), first
