"""Every route of the served /openapi.json, called by callers who must not reach a victim's data.

The routes come from the document itself, so a route added later is covered without anyone
listing it. Path (and known query) parameters are filled with the victim's real ids; bodies
are built from the request schema (a few need a hand-written example, and a route whose
generated body is refused as invalid fails here until it gets one). Callers:

- another organization's admin key, and its read-only key: 404 on everything of the victim's;
- an admin key scoped to another project of the victim's own organization: 404 on the victim
  project's resources and on everything organization-wide;
- the victim organization's read-only key: 403 on every write.

Routes marked operator-only in the document (`x-remails-operator-only`) answer 403 to all of
them instead. No answer names any of the victim's ids or names, and nothing of the victim's
changes.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import pytest

from remails.config import Settings
from remails.db import Pool, credentials, orgs
from tests.api.conftest import Api, make_api, text_message

WRITE_METHODS = {"post", "put", "patch", "delete"}
SUPPRESSED = "victim-only@dest.test"
WEBHOOK_URL = "https://hooks.victim-only.test/remails"


@dataclass
class Victim:
    values: dict[str, str]  # parameter name → the victim's real value
    secrets: list[str]  # strings no other caller may ever see


@dataclass
class Attacker:
    name: str
    token: str
    same_organization: bool  # the victim organization's own read-only key: may read, not write


@pytest.fixture
async def api(pool: Pool, settings: Settings) -> AsyncIterator[Api]:
    made, client = await make_api(pool, settings, api_rate_per_second=10_000.0, api_rate_burst=10_000)
    yield made
    await client.aclose()


async def _victim(api: Api) -> Victim:
    """Acme, with one of every resource, each in its `main` project or organization-wide."""
    org, project = api.acme.org_id, api.acme.project_id
    pool = api.pool
    domain_id = await pool.fetchval("SELECT id FROM domains WHERE organization_id = $1", org)
    credential, _ = await credentials.create_smtp_credential(pool, project)
    org_key, _ = await credentials.create_api_key(pool, org, "admin")
    sent = await api.call(
        "POST", f"/v1/projects/{project}/messages", api.acme_admin, json=text_message(api.acme)
    )
    assert sent.status_code == 202, sent.text
    await pool.execute(
        "INSERT INTO suppressions (organization_id, address, reason) VALUES ($1, $2, 'test')", org, SUPPRESSED
    )
    webhook_id = await pool.fetchval(
        "INSERT INTO webhook_endpoints (project_id, url, events, secret_sealed)"
        " VALUES ($1, $2, ARRAY['message.delivered'], '\\x00'::bytea) RETURNING id",
        project,
        WEBHOOK_URL,
    )
    delivery_id = await pool.fetchval(
        "INSERT INTO webhook_deliveries (endpoint_id, event_type, payload, status)"
        " VALUES ($1, 'message.delivered', '{}'::jsonb, 'failed') RETURNING id",
        webhook_id,
    )
    organization = await orgs.get_organization(pool, org)
    assert organization is not None
    values = {
        "org_id": str(org),
        "organization_id": str(org),
        "project_id": str(project),
        "domain_id": str(domain_id),
        "credential_id": str(credential.id),
        "key_id": str(org_key.id),
        "message_id": sent.json()["id"],
        "address": SUPPRESSED,
        "webhook_id": str(webhook_id),
        "delivery_id": str(delivery_id),
    }
    secrets = [
        *{v for k, v in values.items()},
        api.acme.domain,
        credential.username,
        organization.name,
        WEBHOOK_URL,
    ]
    return Victim(values, secrets)


async def _snapshot(pool: Pool, org: UUID) -> list[Any]:
    """Everything of the victim organization that a write could change."""
    queries = [
        "SELECT id, name, monthly_quota, block_status, ip_pool_id FROM organizations WHERE id = $1",
        "SELECT id, name, retention_days FROM projects WHERE organization_id = $1 ORDER BY id",
        "SELECT id, name, verified_at, dkim_public_key FROM domains WHERE organization_id = $1 ORDER BY id",
        "SELECT dp.* FROM domain_projects dp JOIN domains d ON d.id = dp.domain_id"
        " WHERE d.organization_id = $1 ORDER BY 1, 2",
        "SELECT id, role, project_id FROM api_keys WHERE organization_id = $1 ORDER BY id",
        "SELECT c.id, c.secret_sha256 FROM smtp_credentials c JOIN projects p ON p.id = c.project_id"
        " WHERE p.organization_id = $1 ORDER BY 1",
        "SELECT id, status, attempts, reason FROM messages WHERE organization_id = $1 ORDER BY id",
        "SELECT address FROM suppressions WHERE organization_id = $1 ORDER BY 1",
        "SELECT e.id, e.url, e.events, e.enabled, e.secret_sealed FROM webhook_endpoints e"
        " JOIN projects p ON p.id = e.project_id WHERE p.organization_id = $1 ORDER BY 1",
        "SELECT d.id, d.status, d.attempts FROM webhook_deliveries d JOIN webhook_endpoints e"
        " ON e.id = d.endpoint_id JOIN projects p ON p.id = e.project_id"
        " WHERE p.organization_id = $1 ORDER BY 1",
    ]
    return [[tuple(r) for r in await pool.fetch(q, org)] for q in queries]


# Bodies the schema alone cannot make valid (patterns, cross-field rules), by schema name.
def _examples(api: Api, victim: Victim) -> dict[str, Any]:
    project = victim.values["project_id"]
    raw = base64.b64encode(
        f"From: app@{api.acme.domain}\r\nTo: user@dest.test\r\nSubject: hi\r\n\r\nhi\r\n".encode()
    ).decode()
    return {
        "SendRequest": text_message(api.acme),
        "RawSendRequest": {
            "mail_from": f"app@{api.acme.domain}",
            "recipients": ["user@dest.test"],
            "raw": raw,
        },
        "DomainCreate": {"domain": f"squat.{api.acme.domain}", "project_ids": [project]},
        "ApiKeyCreate": {"role": "admin", "project_id": project},
        "SuppressionCreate": {"address": "new-one@dest.test"},
        "IpPoolCreate": {"name": "stolen", "ips": ["127.0.0.9"]},
        "WebhookCreate": {"url": "https://hooks.elsewhere.test/x", "events": ["message.delivered"]},
        "OrganizationUpdate": {"name": "renamed by someone else"},
        "ProjectUpdate": {"name": "renamed by someone else"},
        "WebhookUpdate": {"enabled": False},
    }


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    ref = schema.get("$ref")
    if ref is None:
        return None, schema
    name = ref.rsplit("/", 1)[-1]
    return name, spec["components"]["schemas"][name]


def _example(
    spec: dict[str, Any], schema: dict[str, Any], victim: Victim, examples: dict[str, Any], key: str = ""
) -> Any:
    """A value for `schema`: a hand-written example, the victim's value for a known name, or
    the simplest value of the type."""
    name, schema = _resolve(spec, schema)
    if name in examples:
        return examples[name]
    if key in victim.values and schema.get("type") != "array":
        return victim.values[key]
    for union in ("anyOf", "oneOf"):
        if union in schema:
            options = [s for s in schema[union] if s.get("type") != "null"]
            return _example(spec, options[0], victim, examples, key) if options else None
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    if "default" in schema and schema["default"] is not None:
        return schema["default"]
    kind = schema.get("type")
    if kind == "object":
        return {
            prop: _example(spec, sub, victim, examples, prop)
            for prop, sub in schema.get("properties", {}).items()
            if prop in schema.get("required", ())
        }
    if kind == "array":
        item_key = key[:-1] if key.endswith("s") else key  # project_ids → project_id
        return [_example(spec, schema.get("items", {}), victim, examples, item_key)] * max(
            1, schema.get("minItems", 1)
        )
    if kind == "integer":
        return max(1, schema.get("minimum", 1))
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    if schema.get("format") == "uuid":
        return str(uuid4())
    return "x" * max(1, schema.get("minLength", 1))


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]


def _request(
    spec: dict[str, Any], path: str, op: dict[str, Any], victim: Victim, examples: dict[str, Any]
) -> tuple[str, dict[str, str], Any, bool]:
    """(url, query, body, aimed at the victim) for one operation."""
    url, query, aimed = path, {}, False
    for param in op.get("parameters", []):
        name, where = param["name"], param["in"]
        if where == "path":
            assert name in victim.values, f"{path}: no victim value for {{{name}}}; add one to _victim"
            url = url.replace("{" + name + "}", victim.values[name])
            aimed = True
        elif where == "query" and name in victim.values:
            query[name] = victim.values[name]
            aimed = True
    body = None
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        body = _example(spec, content["application/json"]["schema"], victim, examples)
    assert "{" not in url, url
    return url, query, body, aimed


def _leaks(text: str, victim: Victim) -> list[str]:
    return [s for s in victim.secrets if s.lower() in text.lower()]


async def test_every_route_refuses_other_tenants_and_leaks_nothing(api: Api) -> None:
    victim = await _victim(api)
    spec = (await api.client.get("/openapi.json")).json()
    examples = _examples(api, victim)
    other_reader = (await credentials.create_api_key(api.pool, api.other.org_id, "read_only"))[1]
    sibling = await orgs.create_project(api.pool, api.acme.org_id, "sibling")
    sibling_admin = (await credentials.create_api_key(api.pool, api.acme.org_id, "admin", sibling.id))[1]
    attackers = [
        Attacker("another organization's admin", api.other_admin, False),
        Attacker("another organization's read-only key", other_reader, False),
        Attacker("an admin key of another project", sibling_admin, False),
        Attacker("the organization's read-only key", api.acme_reader, True),
    ]
    operations = _operations(spec)
    assert len(operations) > 30  # the document really lists the API

    # The ids are real: the victim's own organization-wide admin reads each aimed GET route.
    for method, path, op in operations:
        url, query, _, aimed = _request(spec, path, op, victim, examples)
        if method == "get" and aimed and not op.get("x-remails-operator-only"):
            own = await api.call("GET", url, api.acme_admin, params=query)
            assert own.status_code == 200, (url, own.text)

    before = await _snapshot(api.pool, api.acme.org_id)
    failures: list[str] = []
    for method, path, op in operations:
        url, query, body, aimed = _request(spec, path, op, victim, examples)
        operator_only = bool(op.get("x-remails-operator-only"))
        for attacker in attackers:
            response = await api.call(method.upper(), url, attacker.token, params=query, json=body)
            where = (
                f"{method.upper()} {path} by {attacker.name}: {response.status_code} {response.text[:200]}"
            )
            status = response.status_code
            if operator_only:
                expected: set[int] = {403}
            elif attacker.same_organization:
                expected = {403} if method in WRITE_METHODS else {200, 403}  # some reads need admin
            elif aimed:
                expected = {404}
            else:
                expected = {200, 201}  # the caller's own listing, or a health check
            if status not in expected:
                failures.append(where)
            if status in (403, 404) and response.json()["error"]["code"] not in ("forbidden", "not_found"):
                failures.append(f"{where} (error code)")
            if not attacker.same_organization and _leaks(response.text, victim):
                failures.append(f"{where} leaks {_leaks(response.text, victim)}")
    assert not failures, "\n".join(failures)
    assert await _snapshot(api.pool, api.acme.org_id) == before


async def test_a_project_key_reaches_nothing_organization_wide(api: Api) -> None:
    """The reported case: an admin key of one project deleted an organization-wide key and a
    domain of another project, renamed the organization, read every key and the statistics."""
    org = api.acme.org_id
    victim = await _victim(api)
    project = await orgs.create_project(api.pool, org, "scoped")
    _, token = await credentials.create_api_key(api.pool, org, "admin", project.id)
    refused = [
        ("DELETE", f"/v1/api-keys/{victim.values['key_id']}", None),
        ("DELETE", f"/v1/domains/{victim.values['domain_id']}", None),
        ("PATCH", f"/v1/organizations/{org}", {"name": "renamed"}),
        ("GET", f"/v1/organizations/{org}/api-keys", None),
        ("GET", f"/v1/organizations/{org}/statistics", None),
        ("GET", f"/v1/organizations/{org}", None),
        ("POST", f"/v1/organizations/{org}/api-keys", {"role": "admin"}),  # an organization-wide key
        ("POST", f"/v1/organizations/{org}/projects", {"name": "another"}),
        ("GET", f"/v1/organizations/{org}/suppressions", None),
        ("GET", f"/v1/messages?project_id={api.acme.project_id}", None),
    ]
    for method, url, body in refused:
        response = await api.call(method, url, token, json=body)
        assert response.status_code == 404, (method, url, response.text)
    assert (await api.call("GET", "/v1/organizations", token)).json() == []
    # Its own project it still manages: keys for it, a domain on it, its messages.
    own_key = await api.call(
        "POST",
        f"/v1/organizations/{org}/api-keys",
        token,
        json={"role": "read_only", "project_id": str(project.id)},
    )
    assert own_key.status_code == 201, own_key.text
    domain = await api.call(
        "POST",
        f"/v1/organizations/{org}/domains",
        token,
        json={"domain": "scoped.acme-project.test", "project_ids": [str(project.id)]},
    )
    assert domain.status_code == 201, domain.text
    assert (await api.call("GET", f"/v1/domains/{domain.json()['id']}", token)).status_code == 200
    assert (await api.call("GET", f"/v1/organizations/{org}/domains", token)).status_code == 404
    assert (await api.call("GET", "/v1/messages", token)).json()["messages"] == []
    assert await api.pool.fetchval("SELECT name FROM organizations WHERE id = $1", org) == "org acme.test"
    assert (
        await api.pool.fetchval("SELECT count(*) FROM api_keys WHERE id = $1::uuid", victim.values["key_id"])
        == 1
    )


async def test_a_domain_shared_with_another_project_is_read_but_not_changed_by_a_project_key(
    api: Api,
) -> None:
    org = api.acme.org_id
    project = await orgs.create_project(api.pool, org, "scoped")
    domain_id = await api.pool.fetchval("SELECT id FROM domains WHERE organization_id = $1", org)
    await api.pool.execute(
        "INSERT INTO domain_projects (domain_id, project_id) VALUES ($1, $2)", domain_id, project.id
    )
    _, token = await credentials.create_api_key(api.pool, org, "admin", project.id)
    assert (await api.call("GET", f"/v1/domains/{domain_id}", token)).status_code == 200
    deleted = await api.call("DELETE", f"/v1/domains/{domain_id}", token)
    assert deleted.status_code == 403, deleted.text
    assert await api.pool.fetchval("SELECT count(*) FROM domains WHERE id = $1", domain_id) == 1
