"""Control characters in a subject, header value or any other header-bound text are refused
with a 422 naming the field — never a 500 — while message bodies may carry them."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.api.conftest import Api, text_message

CONTROLS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x01", "\x7f", "\x9b"]


def _cases(api: Api, ch: str) -> list[tuple[dict[str, Any], str]]:
    return [
        (text_message(api.acme, subject=f"Your{ch}code"), "subject"),
        (text_message(api.acme, headers={"X-Campaign": f"spring{ch}sale"}), "headers"),
        (text_message(api.acme, **{"from": {"email": f"app@{api.acme.domain}", "name": f"A{ch}pp"}}), "from"),
        (text_message(api.acme, to=[{"email": "user@dest.test", "name": f"U{ch}"}]), "to"),
        (text_message(api.acme, label=f"l{ch}"), "label"),
        (text_message(api.acme, metadata={"k": f"v{ch}"}), "metadata"),
        (
            text_message(
                api.acme, attachments=[{"filename": f"a{ch}.txt", "content": base64.b64encode(b"x").decode()}]
            ),
            "attachments",
        ),
    ]


@pytest.mark.parametrize("ch", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
async def test_control_characters_in_header_text_are_a_422_naming_the_field(api: Api, ch: str) -> None:
    url = f"/v1/projects/{api.acme.project_id}/messages"
    for body, field in _cases(api, ch):
        response = await api.call("POST", url, api.acme_admin, json=body)
        assert response.status_code == 422, (field, response.text)
        error = response.json()["error"]
        assert error["field"].split(".")[0] == field, (field, error)
        assert "control characters" in error["message"]
    assert await api.pool.fetchval("SELECT count(*) FROM messages") == 0


async def test_bodies_may_hold_them_and_other_bodies_refuse_them(api: Api) -> None:
    url = f"/v1/projects/{api.acme.project_id}/messages"
    body = text_message(api.acme, text="page one\x0cpage two\u2028end", html="<p>a\x85b</p>")
    assert (await api.call("POST", url, api.acme_admin, json=body)).status_code == 202
    raw = await api.call(
        "POST",
        f"{url}/raw",
        api.acme_admin,
        json={"mail_from": f"app@{api.acme.domain}\x0b", "recipients": ["u@dest.test"], "raw": "eA=="},
    )
    assert raw.status_code == 422 and raw.json()["error"]["field"] == "mail_from"
    project = await api.call(
        "PATCH", f"/v1/projects/{api.acme.project_id}", api.acme_admin, json={"name": "a\u2028b"}
    )
    assert project.status_code == 422 and project.json()["error"]["field"] == "name"
