"""Sending by HTTP: MIME that reads back identically, idempotency, field-named errors, limits."""

from __future__ import annotations

import base64
import logging
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from typing import Any

import pytest

from tests.api.conftest import Api, make_api, text_message
from tests.support.db import one_row

PDF = b"%PDF-1.4 not really a pdf \x00\x01\x02"
PNG = b"\x89PNG\r\n\x1a\n fake image bytes"


async def _stored(api: Api, message_id: str) -> EmailMessage:
    raw = await api.pool.fetchval("SELECT raw FROM messages WHERE id = $1::uuid", message_id)
    parsed = message_from_bytes(raw, policy=default)
    assert isinstance(parsed, EmailMessage)
    return parsed


async def test_text_html_attachment_and_inline_image_read_back_identically(api: Api) -> None:
    body = {
        "from": {"email": f"app@{api.acme.domain}", "name": "Acme Café"},
        "to": ["ada@dest.test", {"email": "bob@dest.test", "name": "Bob"}],
        "cc": "carol@dest.test",
        "bcc": ["secret@dest.test"],
        "reply_to": "help@acme.test",
        "subject": "Votre reçu ✓",
        "text": "Merci ✓\nLine two",
        "html": '<p>Merci ✓</p><img src="cid:logo@acme">',
        "headers": {"X-Entity-Ref-ID": "abc-123"},
        "attachments": [
            {
                "filename": "receipt.pdf",
                "content_type": "application/pdf",
                "content": base64.b64encode(PDF).decode(),
            },
            {
                "filename": "logo.png",
                "content_type": "image/png",
                "content": base64.b64encode(PNG).decode(),
                "content_id": "logo@acme",
            },
        ],
        "label": "receipts",
        "metadata": {"order": "42"},
    }
    response = await api.call(
        "POST", f"/v1/projects/{api.acme.project_id}/messages", api.acme_maintainer, json=body
    )
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["status"] == "received"
    assert answer["message_id"] == f"<{answer['id']}@mx.remails.test>"

    parsed = await _stored(api, answer["id"])
    assert str(parsed["From"]) == f"Acme Café <app@{api.acme.domain}>"
    assert str(parsed["To"]) == "ada@dest.test, Bob <bob@dest.test>"
    assert str(parsed["Cc"]) == "carol@dest.test"
    assert parsed["Bcc"] is None
    assert str(parsed["Reply-To"]) == "help@acme.test"
    assert str(parsed["Subject"]) == "Votre reçu ✓"
    assert parsed["Message-ID"] == answer["message_id"]
    assert parsed["X-Entity-Ref-ID"] == "abc-123"
    text_part = parsed.get_body(("plain",))
    html_part = parsed.get_body(("html",))
    assert text_part is not None and html_part is not None
    # Line ends are CRLF on the wire; the text is otherwise exactly what was sent.
    assert text_part.get_content().replace("\r\n", "\n") == "Merci ✓\nLine two\n"
    assert html_part.get_content().replace("\r\n", "\n") == '<p>Merci ✓</p><img src="cid:logo@acme">\n'
    attachments = {a.get_filename(): a for a in parsed.iter_attachments()}
    assert attachments["receipt.pdf"].get_content() == PDF
    related = [p for p in parsed.walk() if p.get("Content-ID") == "<logo@acme>"]
    assert len(related) == 1 and related[0].get_content() == PNG
    assert related[0].get_content_disposition() == "inline"
    raw = await api.pool.fetchval("SELECT raw FROM messages WHERE id = $1::uuid", answer["id"])
    assert all(b < 128 for b in raw), "the message is 7-bit clean"
    assert b"secret@dest.test" not in raw

    rows = await api.pool.fetch(
        "SELECT address FROM recipients WHERE message_id = $1::uuid ORDER BY id", answer["id"]
    )
    assert [r["address"] for r in rows] == [
        "ada@dest.test",
        "bob@dest.test",
        "carol@dest.test",
        "secret@dest.test",
    ]
    [event] = api.publisher.of_type("message.received")
    assert event["msgid"] == answer["id"]
    shown = (await api.call("GET", f"/v1/messages/{answer['id']}", api.acme_reader)).json()
    assert shown["label"] == "receipts" and shown["metadata"] == {"order": "42"}


async def test_idempotency_key_returns_the_first_answer_and_creates_nothing(api: Api) -> None:
    url = f"/v1/projects/{api.acme.project_id}/messages"
    body = text_message(api.acme)
    first = await api.call(
        "POST", url, api.acme_maintainer, json=body, headers={"Idempotency-Key": "order-42"}
    )
    again = await api.call(
        "POST", url, api.acme_maintainer, json=body, headers={"Idempotency-Key": "order-42"}
    )
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert await api.pool.fetchval("SELECT count(*) FROM messages") == 1
    other = await api.call(
        "POST",
        url,
        api.acme_maintainer,
        json={**body, "subject": "changed"},
        headers={"Idempotency-Key": "order-42"},
    )
    assert other.status_code == 409
    assert other.json()["error"]["field"] == "Idempotency-Key"
    assert await api.pool.fetchval("SELECT count(*) FROM messages") == 1
    # Keys belong to an organization: another one may use the same key.
    other_org = await api.call(
        "POST",
        f"/v1/projects/{api.other.project_id}/messages",
        api.other_admin,
        json=text_message(api.other),
        headers={"Idempotency-Key": "order-42"},
    )
    assert other_org.status_code == 202 and other_org.json()["id"] != first.json()["id"]


def _many(n: int) -> list[str]:
    return [f"u{i}@dest.test" for i in range(n)]


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"from": None}, "from", ""),
        ({"from": "not-an-address"}, "from.email", "valid email"),
        ({"to": ["bad address@dest.test"]}, "to.0.email", "valid email"),
        ({"to": [], "cc": [], "bcc": []}, "to", "at least one recipient"),
        ({"to": _many(30), "cc": _many(21)}, "to", "at most 50"),
        ({"text": None}, "text", "text or html"),
        ({"subject": "a\r\nBcc: victim@evil.test"}, "subject", "line breaks"),
        ({"headers": {"X-Ok": "a\r\nBcc: victim@evil.test"}}, "headers", "line breaks"),
        ({"headers": {"DKIM-Signature": "x"}}, "headers", "set by the service"),
        ({"headers": {"Content-Type": "text/plain"}}, "headers", "set by the service"),
        ({"headers": {"Bad Name": "x"}}, "headers", "not a valid header name"),
        ({"attachments": [{"filename": "a", "content": "%%%"}]}, "attachments.0.content", "base64"),
        ({"from": {"email": "a@acme.test", "name": "x\ny"}}, "from.name", "line breaks"),
        ({"surprise": 1}, "surprise", "Extra inputs"),
        ({"metadata": {"k": 5}}, "metadata.k", "string"),
        ({"subject": "nul\u0000byte"}, "subject", "NUL"),
    ],
)
async def test_every_validation_error_names_its_field(
    api: Api, change: dict[str, Any], field: str, says: str
) -> None:
    body = {k: v for k, v in {**text_message(api.acme), **change}.items() if v is not None}
    response = await api.call(
        "POST", f"/v1/projects/{api.acme.project_id}/messages", api.acme_maintainer, json=body
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["field"] == field
    assert says in error["message"]
    assert await api.pool.fetchval("SELECT count(*) FROM messages") == 0


async def test_malformed_json_is_400(api: Api) -> None:
    response = await api.call(
        "POST",
        f"/v1/projects/{api.acme.project_id}/messages",
        api.acme_maintainer,
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


async def test_sender_domain_must_be_verified_for_the_project(api: Api) -> None:
    body = text_message(api.acme, **{"from": "app@other.test"})
    response = await api.call(
        "POST", f"/v1/projects/{api.acme.project_id}/messages", api.acme_maintainer, json=body
    )
    assert response.status_code == 403
    assert response.json()["error"] == {
        "code": "sender_domain_not_allowed",
        "message": "Sender domain is not a verified domain of this project",
        "field": "from",
    }


async def test_raw_send_with_explicit_envelope(api: Api) -> None:
    raw = b"From: app@acme.test\nTo: user@dest.test\nSubject: raw\n\nbody\n"
    body = {
        "mail_from": "bounce@acme.test",
        "recipients": ["user@dest.test"],
        "raw": base64.b64encode(raw).decode(),
    }
    response = await api.call(
        "POST", f"/v1/projects/{api.acme.project_id}/messages/raw", api.acme_maintainer, json=body
    )
    assert response.status_code == 202, response.text
    stored = await one_row(api.pool, "SELECT raw, mail_from, message_id_header FROM messages")
    assert stored["mail_from"] == "bounce@acme.test"
    assert b"\r\nSubject: raw\r\n\r\nbody\r\n" in stored["raw"]  # line endings made CRLF
    assert stored["message_id_header"] == response.json()["message_id"]
    bad = await api.call(
        "POST",
        f"/v1/projects/{api.acme.project_id}/messages/raw",
        api.acme_maintainer,
        json={**body, "recipients": ["nobody"]},
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "recipients.0"


async def test_body_size_limit_is_413(pool: Any, settings: Any) -> None:
    small, client = await make_api(pool, settings, api_max_body_bytes=2048)
    try:
        body = text_message(small.acme, text="x" * 4096)
        response = await small.call(
            "POST", f"/v1/projects/{small.acme.project_id}/messages", small.acme_admin, json=body
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
    finally:
        await client.aclose()


async def test_rate_limit_answers_429_with_retry_after(pool: Any, settings: Any) -> None:
    limited, client = await make_api(pool, settings, api_rate_per_second=0.5, api_rate_burst=3)
    try:
        codes = [
            (
                await limited.call("GET", f"/v1/organizations/{limited.acme.org_id}", limited.acme_reader)
            ).status_code
            for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        response = await limited.call("GET", f"/v1/organizations/{limited.acme.org_id}", limited.acme_admin)
        assert response.status_code == 429  # the bucket is the organization's, not the key's
        assert int(response.headers["Retry-After"]) >= 1
        other = await limited.call("GET", f"/v1/organizations/{limited.other.org_id}", limited.other_admin)
        assert other.status_code == 200
    finally:
        await client.aclose()


async def test_tokens_never_appear_in_logs_or_later_responses(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await api.call(
        "POST", f"/v1/organizations/{api.acme.org_id}/api-keys", api.acme_admin, json={"role": "admin"}
    )
    assert created.status_code == 201
    token = created.json()["token"]
    secret = token.partition(".")[2]
    credential = await api.call(
        "POST", f"/v1/projects/{api.acme.project_id}/smtp-credentials", api.acme_admin, json={}
    )
    password = credential.json()["password"]
    later = [
        await api.call("GET", f"/v1/organizations/{api.acme.org_id}/api-keys", token),
        await api.call("GET", f"/v1/projects/{api.acme.project_id}/smtp-credentials", token),
        await api.call(
            "POST", f"/v1/projects/{api.acme.project_id}/messages", token, json=text_message(api.acme)
        ),
        await api.call("GET", "/v1/messages", token),
    ]
    assert all(r.status_code in (200, 202) for r in later)
    texts = [r.text for r in later] + [r.getMessage() + repr(r.__dict__) for r in caplog.records]
    for text in texts:
        assert secret not in text and password not in text


async def test_healthz_and_openapi(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    document = (await api.client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert "/v1/projects/{project_id}/messages" in document["paths"]
    assert (await api.client.get("/docs")).status_code == 200
