"""Sending domains: add (with the DNS records to publish), list, verify, delete."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Response

from remails.context import Context
from remails.db import audit, dkim_keys, domains, orgs
from remails.dkim_rotation import prepare_rotation, start_prepared
from remails.dns import make_resolver
from remails.errors import NotFound
from remails.sending_domains import (
    check_sending_domain,
    domain_view,
    prepare_sending_domain,
    store_check,
    store_sending_domain,
)
from remails_functions.api.audit_log import actor_of, changing
from remails_functions.api.auth import Caller, Ctx, Principal
from remails_functions.api.models import DomainCreate, DomainOut, DomainVerification
from remails_functions.api.organizations import organization_of

router = APIRouter(tags=["domains"])


async def _out(ctx: Context, domain: domains.Domain) -> DomainOut:
    settings = ctx.settings
    view = domain_view(
        domain,
        settings.outbound_ips,
        hostname=settings.hostname,
        reports_domain=settings.effective_reports_domain,
        other_keys=await dkim_keys.keys_of_domain(ctx.pool, domain.id),
    )
    view["project_ids"] = await domains.project_ids_of_domain(ctx.pool, domain.id)
    view["status"] = domain.status
    return DomainOut.model_validate(view)


async def _domain_of(
    ctx: Context, caller: Principal, domain_id: UUID, role: str = "read_only"
) -> domains.Domain:
    domain = await domains.get_domain(ctx.pool, domain_id)
    if domain is None:
        raise NotFound("no such domain")
    caller.require(domain.organization_id, role, await domains.project_ids_of_domain(ctx.pool, domain.id))
    return domain


@router.post("/v1/organizations/{org_id}/domains", status_code=201, response_model=DomainOut)
async def add_domain(org_id: UUID, body: DomainCreate, ctx: Ctx, caller: Caller) -> DomainOut:
    caller.require(org_id, "admin", body.project_ids)  # a project key adds for its project only
    for project_id in body.project_ids:
        project = await orgs.get_project(ctx.pool, project_id)
        if project is None or project.organization_id != org_id:
            raise NotFound(f"no project {project_id} in this organization", field="project_ids")
    new = await prepare_sending_domain(ctx.master_key, body.domain)  # the key, before the transaction
    project_ids = list(dict.fromkeys(body.project_ids))
    async with ctx.pool.acquire() as conn, conn.transaction():
        domain = await store_sending_domain(conn, org_id, project_ids, new)
        details = {"domain": domain.name, "project_ids": project_ids}
        await audit.record(
            conn, actor_of(caller), "domain.create", organization_id=org_id, target=domain.id, details=details
        )
    return await _out(ctx, domain)


@router.get("/v1/organizations/{org_id}/domains", response_model=list[DomainOut])
async def list_domains(org_id: UUID, ctx: Ctx, caller: Caller) -> list[DomainOut]:
    await organization_of(ctx, caller, org_id)
    return [await _out(ctx, d) for d in await domains.list_domains(ctx.pool, org_id)]


@router.get("/v1/domains/{domain_id}", response_model=DomainOut)
async def get_domain(domain_id: UUID, ctx: Ctx, caller: Caller) -> DomainOut:
    return await _out(ctx, await _domain_of(ctx, caller, domain_id))


@router.post("/v1/domains/{domain_id}/verify", response_model=DomainVerification)
async def verify_domain(domain_id: UUID, ctx: Ctx, caller: Caller) -> DomainVerification:
    domain = await _domain_of(ctx, caller, domain_id, "maintainer")
    check = await check_sending_domain(  # the DNS lookups, before the transaction
        make_resolver(ctx.settings), domain, ctx.settings.outbound_ips, hostname=ctx.settings.hostname
    )
    details = {"domain": domain.name, "verified": check.verified}
    async with changing(ctx, caller, "domain.verify", domain.organization_id, domain.id, details) as conn:
        await store_check(conn, check)
    return DomainVerification.model_validate(check.result)


@router.post("/v1/domains/{domain_id}/rotate-key", response_model=DomainOut)
async def rotate_key(domain_id: UUID, ctx: Ctx, caller: Caller, ed25519: bool = False) -> DomainOut:
    """Start a DKIM key rotation: the new selector's record is listed at once and signs once DNS
    holds it; `ed25519=true` adds an Ed25519 key (RFC 8463) signing beside RSA. 409 while a
    rotation waits for DNS."""
    domain = await _domain_of(ctx, caller, domain_id, "admin")
    new = await prepare_rotation(ctx.pool, ctx.master_key, domain, ed25519=ed25519)  # keys first
    async with ctx.pool.acquire() as conn, conn.transaction():
        started = await start_prepared(conn, domain, new)
        details = {"domain": domain.name, "selectors": [k.selector for k in started]}
        await audit.record(
            conn,
            actor_of(caller),
            "domain.rotate_key",
            organization_id=domain.organization_id,
            target=domain.id,
            details=details,
        )
    return await _out(ctx, domain)


@router.delete("/v1/domains/{domain_id}", status_code=204, response_class=Response)
async def delete_domain(domain_id: UUID, ctx: Ctx, caller: Caller) -> Response:
    domain = await _domain_of(ctx, caller, domain_id, "admin")
    details = {"domain": domain.name}
    async with changing(ctx, caller, "domain.delete", domain.organization_id, domain_id, details) as conn:
        await domains.delete_domain(conn, domain_id)
    return Response(status_code=204)
