"""The API as a newcomer meets it: webhook refusals say how to allow a development target,
`events` defaults to all, idempotency compares the parsed body, the operator lists messages."""

from __future__ import annotations

import json

from remails.config import Settings
from remails.db import Pool
from remails.types import WebhookEventType, literal_values
from tests.api.conftest import Api, make_api, text_message
from tests.cli.conftest import Cli
from tests.factories import store_message


async def test_webhook_refusals_name_the_setting_and_localhost_is_loopback(api: Api, cli: Cli) -> None:
    url = f"/v1/projects/{api.acme.project_id}/webhooks"
    for target, says in [
        ("http://hooks.example.test/in", "must use https"),
        ("https://127.0.0.1/in", "points at a private or internal address"),
        ("https://localhost/in", "localhost is this machine (loopback)"),
        ("https://app.localhost:8443/in", "app.localhost is this machine (loopback)"),
    ]:
        response = await api.call("POST", url, api.acme_admin, json={"url": target})
        assert response.status_code == 422, target
        error = response.json()["error"]
        assert error["field"] == "url" and says in error["message"]
        assert "REMAILS_WEBHOOKS_ALLOW_PRIVATE=true" in error["message"]
        assert "does not resolve" not in error["message"]
    org = await cli.json("org", "create", "Acme")
    project = await cli.json("project", "create", org["id"], "main")
    line = await cli.refused("webhook", "create", project["id"], "https://localhost/hook")
    assert "localhost is this machine (loopback)" in line and "REMAILS_WEBHOOKS_ALLOW_PRIVATE=true" in line


async def test_api_webhook_without_events_subscribes_to_every_event(pool: Pool, settings: Settings) -> None:
    api, client = await make_api(pool, settings, webhooks_allow_private=True)
    try:
        response = await api.call(
            "POST",
            f"/v1/projects/{api.acme.project_id}/webhooks",
            api.acme_admin,
            json={"url": "http://127.0.0.1:9/h"},
        )
    finally:
        await client.aclose()
    assert response.status_code == 201, response.text
    assert response.json()["events"] == list(literal_values(WebhookEventType))


async def test_idempotency_compares_the_parsed_body(api: Api) -> None:
    url = f"/v1/projects/{api.acme.project_id}/messages"
    body = text_message(api.acme)
    key = {"Idempotency-Key": "order-7", "Content-Type": "application/json"}
    first = await api.call("POST", url, api.acme_maintainer, content=json.dumps(body), headers=key)
    # The same JSON from another client library: other key order, other spacing.
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2)
    again = await api.call("POST", url, api.acme_maintainer, content=reordered, headers=key)
    assert first.status_code == again.status_code == 202, again.text
    assert first.json() == again.json()
    changed = json.dumps({**body, "subject": "another"})
    other = await api.call("POST", url, api.acme_maintainer, content=changed, headers=key)
    assert other.status_code == 409
    assert await api.pool.fetchval("SELECT count(*) FROM messages") == 1


async def test_the_operator_token_lists_every_organizations_messages(api: Api) -> None:
    ours = await store_message(api.pool, api.acme, ["a@dest.test"])
    theirs = await store_message(api.pool, api.other, ["b@dest.test"])
    every = await api.call("GET", "/v1/messages", api.admin_token)
    assert every.status_code == 200, every.text
    assert {m["id"] for m in every.json()["messages"]} == {str(ours), str(theirs)}
    one = await api.call("GET", f"/v1/messages?organization_id={api.acme.org_id}", api.admin_token)
    assert [m["id"] for m in one.json()["messages"]] == [str(ours)]
    by_project = await api.call("GET", f"/v1/messages?project_id={api.other.project_id}", api.admin_token)
    assert [m["id"] for m in by_project.json()["messages"]] == [str(theirs)]
    # A tenant's key still sees only its own.
    acme = await api.call("GET", "/v1/messages", api.acme_reader)
    assert [m["id"] for m in acme.json()["messages"]] == [str(ours)]


async def test_a_json_body_without_its_content_type_is_told_to_say_so(api: Api) -> None:
    url = f"/v1/projects/{api.acme.project_id}/messages"
    body = json.dumps(text_message(api.acme))
    response = await api.call("POST", url, api.acme_maintainer, content=body, headers={"Content-Type": ""})
    assert response.status_code == 415
    assert response.json()["error"]["message"] == "send the body as JSON, with Content-Type: application/json"
    assert "dictionary" not in response.text
    missing = await api.call(
        "POST", url, api.acme_maintainer, content=b"", headers={"Content-Type": "application/json"}
    )
    assert missing.status_code != 415  # a JSON request with a bad body keeps its own message


async def test_api_keys_carry_a_name_in_the_api_and_the_cli(api: Api, cli: Cli) -> None:
    url = f"/v1/organizations/{api.acme.org_id}/api-keys"
    created = await api.call(
        "POST", url, api.acme_admin, json={"role": "read_only", "description": "billing"}
    )
    assert created.status_code == 201 and created.json()["description"] == "billing"
    listed = (await api.call("GET", url, api.acme_admin)).json()
    assert {k["id"]: k["description"] for k in listed}[created.json()["id"]] == "billing"
    org = await cli.json("org", "create", "Acme")
    key = await cli.json("api-key", "create", org["id"], "--description", "deploy bot")
    assert key["description"] == "deploy bot"
    assert [k["description"] for k in (await cli.json("api-key", "list", org["id"]))["api_keys"]] == [
        "deploy bot"
    ]
