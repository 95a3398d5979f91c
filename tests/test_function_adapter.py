"""remails.function under functions-framework's own app and test client, as a broker calls it."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import from_http
from functions_framework import create_app

from remails.events import EventType, MessageEvent, make_event

SOURCE = str(Path(__file__).parent / "support" / "sample_functions.py")


async def _post(target: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    app = create_app(target=target, source=SOURCE)  # type: ignore[no-untyped-call]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://function") as client:
        return await client.post("/", headers=headers, content=body)


def _received() -> tuple[dict[str, str], bytes, MessageEvent]:
    data = MessageEvent(message_id=uuid4(), organization_id=uuid4(), project_id=uuid4())
    headers, body = to_binary(make_event(EventType.MESSAGE_RECEIVED, data))
    return {**headers, "Prefer": "reply"}, body, data


async def test_no_reply_is_202_with_an_empty_body() -> None:
    headers, body, _ = _received()
    response = await _post("ack", headers, body)
    assert response.status_code == 202
    assert response.content == b""


async def test_a_reply_is_200_with_a_binary_mode_event() -> None:
    headers, body, data = _received()
    response = await _post("reply", headers, body)
    assert response.status_code == 200
    assert response.headers["ce-type"] == "message.validated"
    assert response.headers["ce-msgid"] == str(data.message_id)
    event = from_http(dict(response.headers), response.content)
    assert event.data["message_id"] == str(data.message_id)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"content-type": "application/json"}, b'{"hello": 1}'),
        ({"content-type": "text/plain"}, b"x"),
    ],
)
async def test_not_a_cloudevent_is_400(headers: dict[str, str], body: bytes) -> None:
    assert (await _post("ack", headers, body)).status_code == 400


async def test_a_crash_is_500_so_the_broker_retries() -> None:
    headers, body, _ = _received()
    response = await _post("crash", headers, body)
    assert response.status_code == 500
    assert b"boom" not in response.content
