"""Webhook endpoints through the API: a disabled endpoint takes no test event and no resend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from remails.config import Settings
from remails.db import Pool
from tests.api.conftest import Api, make_api
from tests.support.receiver import Receiver
from tests.support.wait import wait_until


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def api(pool: Pool, settings: Settings) -> AsyncIterator[Api]:
    made, client = await make_api(pool, settings, webhooks_allow_private=True)
    yield made
    await client.aclose()


async def test_a_disabled_endpoint_refuses_test_and_resend_with_409(api: Api, receiver: Receiver) -> None:
    project = api.acme.project_id
    created = await api.call(
        "POST",
        f"/v1/projects/{project}/webhooks",
        api.acme_admin,
        json={"url": receiver.url, "events": ["message.delivered"]},
    )
    assert created.status_code == 201, created.text
    hook = created.json()["id"]
    sent = await api.call("POST", f"/v1/webhooks/{hook}/test", api.acme_maintainer)
    assert sent.status_code == 202, sent.text
    delivery = sent.json()["delivery_id"]
    await wait_until(lambda: len(receiver.calls) == 1)

    off = await api.call("PATCH", f"/v1/webhooks/{hook}", api.acme_admin, json={"enabled": False})
    assert off.status_code == 200 and off.json()["enabled"] is False
    for path in (f"/v1/webhooks/{hook}/test", f"/v1/webhooks/{hook}/deliveries/{delivery}/resend"):
        refused = await api.call("POST", path, api.acme_maintainer)
        assert refused.status_code == 409, (path, refused.text)
        assert refused.json()["error"]["code"] == "conflict"
    listed = (await api.call("GET", f"/v1/webhooks/{hook}/deliveries", api.acme_reader)).json()
    assert [d["id"] for d in listed] == [delivery]  # nothing was queued

    on = await api.call("PATCH", f"/v1/webhooks/{hook}", api.acme_admin, json={"enabled": True})
    assert on.status_code == 200
    again = await api.call("POST", f"/v1/webhooks/{hook}/deliveries/{delivery}/resend", api.acme_maintainer)
    assert again.status_code == 202, again.text
    await wait_until(lambda: len(receiver.calls) == 2)
    assert receiver.calls[0].headers["webhook-id"] == receiver.calls[1].headers["webhook-id"] == delivery


async def test_unsafe_urls_are_refused_naming_the_field(pool: Pool, settings: Settings) -> None:
    strict, client = await make_api(pool, settings)  # private targets not allowed
    try:
        for url in [
            "https://[2002:7f00:1::1]/hook",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[::ffff:10.0.0.1]/",
        ]:
            response = await strict.call(
                "POST",
                f"/v1/projects/{strict.acme.project_id}/webhooks",
                strict.acme_admin,
                json={"url": url, "events": ["message.delivered"]},
            )
            assert response.status_code == 422, (url, response.text)
            assert response.json()["error"]["field"] == "url"
            assert response.json()["error"]["code"] == "unsafe_target"
    finally:
        await client.aclose()
