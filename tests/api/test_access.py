"""Tenants never see each other's data; roles limit what a key may change; operator-only actions."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Api, text_message
from tests.support.db import as_dict


async def _acme_resources(api: Api) -> dict[str, Any]:
    """One of every resource in Acme's organization."""
    domain = (await api.call("GET", f"/v1/organizations/{api.acme.org_id}/domains", api.acme_admin)).json()[0]
    credential = (
        await api.call("GET", f"/v1/projects/{api.acme.project_id}/smtp-credentials", api.acme_admin)
    ).json()[0]
    key = (await api.call("GET", f"/v1/organizations/{api.acme.org_id}/api-keys", api.acme_admin)).json()[0]
    sent = await api.call(
        "POST", f"/v1/projects/{api.acme.project_id}/messages", api.acme_admin, json=text_message(api.acme)
    )
    await api.call(
        "POST",
        f"/v1/organizations/{api.acme.org_id}/suppressions",
        api.acme_admin,
        json={"address": "x@dest.test"},
    )
    return {
        "domain": domain["id"],
        "credential": credential["id"],
        "key": key["id"],
        "message": sent.json()["id"],
    }


async def test_another_organization_gets_404_on_every_resource(api: Api) -> None:
    r = await _acme_resources(api)
    org, project = api.acme.org_id, api.acme.project_id
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", f"/v1/organizations/{org}", None),
        ("PATCH", f"/v1/organizations/{org}", {"name": "mine now"}),
        ("GET", f"/v1/organizations/{org}/statistics", None),
        ("GET", f"/v1/organizations/{org}/projects", None),
        ("POST", f"/v1/organizations/{org}/projects", {"name": "sneaky"}),
        ("GET", f"/v1/projects/{project}", None),
        ("PATCH", f"/v1/projects/{project}", {"name": "x"}),
        ("DELETE", f"/v1/projects/{project}", None),
        ("GET", f"/v1/organizations/{org}/domains", None),
        (
            "POST",
            f"/v1/organizations/{org}/domains",
            {"domain": "sneaky.test", "project_ids": [str(project)]},
        ),
        ("GET", f"/v1/domains/{r['domain']}", None),
        ("POST", f"/v1/domains/{r['domain']}/verify", None),
        ("DELETE", f"/v1/domains/{r['domain']}", None),
        ("GET", f"/v1/projects/{project}/smtp-credentials", None),
        ("POST", f"/v1/projects/{project}/smtp-credentials", {}),
        ("DELETE", f"/v1/smtp-credentials/{r['credential']}", None),
        ("GET", f"/v1/organizations/{org}/api-keys", None),
        ("POST", f"/v1/organizations/{org}/api-keys", {"role": "admin"}),
        ("DELETE", f"/v1/api-keys/{r['key']}", None),
        ("POST", f"/v1/projects/{project}/messages", text_message(api.acme)),
        ("GET", f"/v1/messages/{r['message']}", None),
        ("POST", f"/v1/messages/{r['message']}/retry", None),
        ("GET", f"/v1/messages?organization_id={org}", None),
        ("GET", f"/v1/messages?project_id={project}", None),
        ("GET", f"/v1/organizations/{org}/suppressions", None),
        ("POST", f"/v1/organizations/{org}/suppressions", {"address": "y@dest.test"}),
        ("DELETE", f"/v1/organizations/{org}/suppressions/x@dest.test", None),
    ]
    for method, url, body in requests:
        response = await api.call(method, url, api.other_admin, json=body)
        assert response.status_code == 404, (method, url, response.status_code, response.text)
        assert response.json()["error"]["code"] == "not_found"
        assert str(org) not in response.text or url.endswith(str(org))  # nothing of Acme's leaks
    # Acme's data is untouched, and the other organization's own listing shows none of it.
    assert (await api.call("GET", f"/v1/projects/{project}", api.acme_admin)).json()["name"] == "main"
    listing = (await api.call("GET", "/v1/messages", api.other_admin)).json()
    assert listing["messages"] == []
    assert (await api.call("GET", "/v1/organizations", api.other_admin)).json()[0]["id"] == str(
        api.other.org_id
    )


async def test_read_only_cannot_write(api: Api) -> None:
    org, project = api.acme.org_id, api.acme.project_id
    writes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", f"/v1/projects/{project}/messages", text_message(api.acme)),
        ("POST", f"/v1/organizations/{org}/projects", {"name": "new"}),
        ("PATCH", f"/v1/projects/{project}", {"name": "renamed"}),
        ("POST", f"/v1/projects/{project}/smtp-credentials", {}),
        ("POST", f"/v1/organizations/{org}/api-keys", {"role": "read_only"}),
        ("POST", f"/v1/organizations/{org}/suppressions", {"address": "z@dest.test"}),
        ("POST", f"/v1/organizations/{org}/domains", {"domain": "new.test", "project_ids": [str(project)]}),
    ]
    for method, url, body in writes:
        response = await api.call(method, url, api.acme_reader, json=body)
        assert response.status_code == 403, (method, url, response.text)
        assert response.json()["error"]["code"] == "forbidden"
    assert (await api.call("GET", f"/v1/projects/{project}", api.acme_reader)).status_code == 200
    assert await api.pool.fetchval("SELECT count(*) FROM messages") == 0


async def test_maintainer_sends_but_does_not_manage_keys(api: Api) -> None:
    url = f"/v1/projects/{api.acme.project_id}/messages"
    assert (await api.call("POST", url, api.acme_maintainer, json=text_message(api.acme))).status_code == 202
    keys = await api.call(
        "POST", f"/v1/organizations/{api.acme.org_id}/api-keys", api.acme_maintainer, json={}
    )
    assert keys.status_code == 403


async def test_a_project_key_sees_only_its_project(api: Api) -> None:
    second = await api.call(
        "POST", f"/v1/organizations/{api.acme.org_id}/projects", api.acme_admin, json={"name": "two"}
    )
    scoped = await api.call(
        "POST",
        f"/v1/organizations/{api.acme.org_id}/api-keys",
        api.acme_admin,
        json={"role": "maintainer", "project_id": second.json()["id"]},
    )
    token = scoped.json()["token"]
    assert (await api.call("GET", f"/v1/projects/{api.acme.project_id}", token)).status_code == 404
    assert (await api.call("GET", f"/v1/projects/{second.json()['id']}", token)).status_code == 200
    sent = await api.call(
        "POST", f"/v1/projects/{api.acme.project_id}/messages", token, json=text_message(api.acme)
    )
    assert sent.status_code == 404


async def test_operator_only_actions(api: Api) -> None:
    created = await api.call(
        "POST", "/v1/organizations", api.admin_token, json={"name": "New Co", "monthly_quota": 7}
    )
    assert created.status_code == 201 and created.json()["monthly_quota"] == 7
    assert (
        await api.call("POST", "/v1/organizations", api.acme_admin, json={"name": "x"})
    ).status_code == 403
    quota = await api.call(
        "PATCH", f"/v1/organizations/{api.acme.org_id}", api.acme_admin, json={"monthly_quota": 10**6}
    )
    assert quota.status_code == 403
    pool = await api.call(
        "POST", "/v1/ip-pools", api.admin_token, json={"name": "dedicated", "ips": ["127.0.0.3"]}
    )
    assert pool.status_code == 201 and pool.json()["ips"] == ["127.0.0.3"]
    bad = await api.call("POST", "/v1/ip-pools", api.admin_token, json={"name": "bad", "ips": ["1.2.3"]})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "ips.0"
    assigned = await api.call(
        "PUT",
        f"/v1/organizations/{api.acme.org_id}/ip-pool",
        api.admin_token,
        json={"ip_pool_id": pool.json()["id"]},
    )
    assert assigned.status_code == 200 and assigned.json()["ip_pool_id"] == pool.json()["id"]
    assert (await api.call("GET", "/v1/ip-pools", api.acme_admin)).status_code == 403
    assert (await api.client.get("/v1/organizations")).status_code == 401
    assert (await api.call("GET", "/v1/organizations", "rmk_nonsense.token")).status_code == 401


async def test_management_flow_creates_answer_201_with_ids(api: Api) -> None:
    org = api.acme.org_id
    project = await api.call(
        "POST", f"/v1/organizations/{org}/projects", api.acme_admin, json={"name": "web"}
    )
    assert project.status_code == 201 and project.json()["id"]
    nul = await api.call("POST", f"/v1/organizations/{org}/projects", api.acme_admin, json={"name": "\u0000"})
    assert nul.status_code == 422 and nul.json()["error"]["field"] == "name"
    dup = await api.call("POST", f"/v1/organizations/{org}/projects", api.acme_admin, json={"name": "web"})
    assert dup.status_code == 409 and dup.json()["error"]["field"] == "name"
    domain = await api.call(
        "POST",
        f"/v1/organizations/{org}/domains",
        api.acme_admin,
        json={"domain": "mail.acme-two.test", "project_ids": [project.json()["id"]]},
    )
    assert domain.status_code == 201
    records = {(r["type"], r["name"]) for r in domain.json()["dns_records"]}
    assert {t for t, _ in records} == {"TXT", "MX"}  # SPF, DKIM, DMARC; the return path's MX
    assert ("MX", "rp.mail.acme-two.test") in records
    verify = await api.call("POST", f"/v1/domains/{domain.json()['id']}/verify", api.acme_admin)
    assert verify.status_code == 200 and verify.json()["verified"] is False
    credential = await api.call(
        "POST", f"/v1/projects/{project.json()['id']}/smtp-credentials", api.acme_admin, json={}
    )
    assert credential.status_code == 201 and credential.json()["password"]
    suppression = await api.call(
        "POST", f"/v1/organizations/{org}/suppressions", api.acme_admin, json={"address": "Gone@Dest.test"}
    )
    assert suppression.status_code == 201 and suppression.json()["address"] == "gone@dest.test"
    listed = await api.call("GET", f"/v1/organizations/{org}/suppressions", api.acme_reader)
    assert [s["address"] for s in listed.json()["suppressions"]] == ["gone@dest.test"]
    deleted = await api.call("DELETE", f"/v1/organizations/{org}/suppressions/gone@dest.test", api.acme_admin)
    assert deleted.status_code == 204
    stats = await api.call("GET", f"/v1/organizations/{org}/statistics", api.acme_reader)
    assert stats.status_code == 200 and stats.json()["rows"] == []


async def test_retry_sends_a_bounced_message_again_but_not_a_delivered_one(api: Api) -> None:
    from tests.factories import store_message

    bounced = await store_message(api.pool, api.acme, ["x@dest.test", "gone@dest.test"])
    await api.pool.execute(
        "UPDATE messages SET status = 'bounced', finished_at = now() WHERE id = $1", bounced
    )
    await api.pool.execute("UPDATE recipients SET status = 'bounced' WHERE message_id = $1", bounced)
    await api.pool.execute(
        "INSERT INTO suppressions (organization_id, address, reason)"
        " VALUES ($1, 'gone@dest.test', 'hard bounce')",
        api.acme.org_id,
    )
    response = await api.call("POST", f"/v1/messages/{bounced}/retry", api.acme_maintainer)
    assert response.status_code == 202 and response.json()["status"] == "admitted"
    statuses = await as_dict(
        api.pool, "SELECT address, status::text FROM recipients WHERE message_id = $1", bounced
    )
    assert statuses == {"x@dest.test": "pending", "gone@dest.test": "bounced"}  # suppression still wins
    assert [e["msgid"] for e in api.publisher.of_type("message.admitted")] == [str(bounced)]
    again = await api.call("POST", f"/v1/messages/{bounced}/retry", api.acme_maintainer)
    assert again.status_code == 409
    assert (await api.call("POST", f"/v1/messages/{bounced}/retry", api.acme_reader)).status_code == 403


async def test_statistics_count_messages_per_day_and_status(api: Api) -> None:
    from datetime import UTC, datetime

    from tests.factories import store_message

    first = await store_message(api.pool, api.acme, ["a@dest.test"])
    await store_message(api.pool, api.acme, ["b@dest.test"])
    await store_message(api.pool, api.other, ["c@dest.test"])  # another organization's
    await api.pool.execute("UPDATE messages SET status = 'delivered' WHERE id = $1", first)
    stats = (
        await api.call("GET", f"/v1/organizations/{api.acme.org_id}/statistics?days=7", api.acme_reader)
    ).json()
    today = datetime.now(UTC).date().isoformat()
    assert stats["days"] == 7
    assert sorted((r["day"], r["status"], r["count"]) for r in stats["rows"]) == [
        (today, "delivered", 1),
        (today, "received", 1),
    ]
