"""Building blocks for tests: an organization with a project, a verified domain, a credential."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID, uuid4

from remails.config import Settings
from remails.crypto import load_master_key
from remails.db import Pool, credentials, domains, orgs
from remails.db.messages import NewMessage, insert_message
from remails.sending_domains import add_sending_domain


@dataclass
class Tenant:
    org_id: UUID
    project_id: UUID
    domain: str
    username: str
    password: str


async def make_tenant(
    pool: Pool, settings: Settings, domain: str = "example.test", *, quota: int | None = None
) -> Tenant:
    org = await orgs.create_organization(pool, f"org {domain}", quota)
    project = await orgs.create_project(pool, org.id, "main")
    master_key = load_master_key(settings.secret_key, settings.data_dir)
    added = await add_sending_domain(pool, master_key, org.id, [project.id], domain)
    await domains.record_verification(pool, added.id, {"forced": True}, True)
    cred, password = await credentials.create_smtp_credential(pool, project.id)
    return Tenant(org.id, project.id, domain, cred.username, password)


async def store_message(pool: Pool, tenant: Tenant, recipients: list[str]) -> UUID:
    raw = (
        f"From: a@{tenant.domain}\r\nTo: {', '.join(recipients)}\r\nSubject: hi\r\n"
        f"Message-ID: <t-{uuid4()}@{tenant.domain}>\r\n\r\nbody\r\n"
    ).encode()
    new = NewMessage(
        tenant.org_id,
        tenant.project_id,
        f"a@{tenant.domain}",
        recipients,
        raw,
        f"<t@{tenant.domain}>",
    )
    return await insert_message(pool, new, 3600)
