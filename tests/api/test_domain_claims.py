"""Domain claims: adding a domain blocks nobody; the first organization to prove control by DNS
owns it; later claims get 409 `domain_taken`, which names no one; the database enforces it."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from remails.db import Pool, credentials, domains, orgs
from tests.api.conftest import Api
from tests.support.dnsserver import LocalDns

NAME = "shared-name.test"


async def _add(api: Api, token: str, org: Any, project: Any, name: str = NAME) -> Any:
    return await api.call(
        "POST",
        f"/v1/organizations/{org}/domains",
        token,
        json={"domain": name, "project_ids": [str(project)]},
    )


def _publish(dns: LocalDns, domain: dict[str, Any]) -> None:
    for record in domain["dns_records"]:
        dns.zone.txt(record["name"], record["value"])


async def test_a_pending_claim_blocks_nobody_and_the_first_to_verify_owns_the_domain(
    api: Api, local_dns: LocalDns
) -> None:
    squatter = await _add(api, api.other_admin, api.other.org_id, api.other.project_id)
    assert squatter.status_code == 201, squatter.text
    owner = await _add(api, api.acme_admin, api.acme.org_id, api.acme.project_id)
    assert owner.status_code == 201, owner.text  # the squatter's unverified claim is no obstacle

    _publish(local_dns, owner.json())
    verified = await api.call("POST", f"/v1/domains/{owner.json()['id']}/verify", api.acme_admin)
    assert verified.status_code == 200 and verified.json()["verified"] is True, verified.text

    # Even with records of its own published, the later claim cannot verify.
    _publish(local_dns, squatter.json())
    late = await api.call("POST", f"/v1/domains/{squatter.json()['id']}/verify", api.other_admin)
    assert late.status_code == 409, late.text
    assert late.json()["error"]["code"] == "domain_taken"
    third = await orgs.create_organization(api.pool, "third")
    project = await orgs.create_project(api.pool, third.id, "main")
    _, token = await credentials.create_api_key(api.pool, third.id, "admin")
    again = await _add(api, token, third.id, project.id)
    assert again.status_code == 409 and again.json()["error"]["code"] == "domain_taken"
    for answer in (late, again):
        assert str(api.acme.org_id) not in answer.text
        assert "acme" not in answer.text.lower()
    verified_rows = await api.pool.fetch(
        "SELECT organization_id FROM domains WHERE name = $1 AND verified_at IS NOT NULL", NAME
    )
    assert [r["organization_id"] for r in verified_rows] == [api.acme.org_id]


async def test_several_organizations_may_claim_and_an_organization_claims_a_name_once(api: Api) -> None:
    assert (await _add(api, api.acme_admin, api.acme.org_id, api.acme.project_id)).status_code == 201
    assert (await _add(api, api.other_admin, api.other.org_id, api.other.project_id)).status_code == 201
    twice = await _add(api, api.acme_admin, api.acme.org_id, api.acme.project_id)
    assert twice.status_code == 409 and twice.json()["error"]["field"] == "domain"
    assert await api.pool.fetchval("SELECT count(*) FROM domains WHERE name = $1", NAME) == 2
    # By name alone (the CLI's `domain verify NAME`) two pending claims are ambiguous.
    assert await domains.get_domain_by_name(api.pool, NAME) is None
    mine = await domains.get_domain_by_name(api.pool, NAME, api.other.org_id)
    assert mine is not None and mine.organization_id == api.other.org_id


async def test_the_database_allows_one_verified_claim_per_name(api: Api, pool: Pool) -> None:
    await _add(api, api.acme_admin, api.acme.org_id, api.acme.project_id)
    await _add(api, api.other_admin, api.other.org_id, api.other.project_id)
    await pool.execute(
        "UPDATE domains SET verified_at = now() WHERE name = $1 AND organization_id = $2",
        NAME,
        api.acme.org_id,
    )
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute(
            "UPDATE domains SET verified_at = now() WHERE name = $1 AND organization_id = $2",
            NAME,
            api.other.org_id,
        )
