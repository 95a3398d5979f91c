"""What an application needs to send: domains (with the DNS records to publish), SMTP
credentials and API keys. Every change goes through the API's own handler, so the rules (and
the role checks) are the API's."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from starlette.responses import Response

from remails.db import credentials, domains, orgs
from remails.domain_records import expected_records
from remails.errors import NotFound
from remails_functions.api import credentials as api_credentials
from remails_functions.api import domains as api_domains
from remails_functions.api.models import ApiKeyCreate, DomainCreate, DomainOut, SmtpCredentialCreate
from remails_functions.api.organizations import project_of
from remails_functions.web.render import PageRoute, page, redirect
from remails_functions.web.scope import OrgScope, org_action, org_page, parse_id

__all__ = ["router"]

router = APIRouter(route_class=PageRoute, include_in_schema=False)


@router.get("/orgs/{org_id}/domains")
async def domain_list(org_id: UUID, request: Request) -> Response:
    scope = await org_page(request, org_id)
    listed = await domains.list_domains(scope.ctx.pool, org_id)
    projects = await orgs.list_projects(scope.ctx.pool, org_id)
    values = scope.values("domains", domains=listed, projects=projects, title="Domains")
    return page(request, "domains.html", **values)


@router.post("/orgs/{org_id}/domains")
async def add_domain(org_id: UUID, request: Request) -> Response:
    scope, form = await org_action(request, org_id, "admin")
    body = DomainCreate(
        domain=form.text("domain", max_length=253),
        project_ids=[parse_id(form.get("project_id"), "project_id")],
    )
    added = await api_domains.add_domain(org_id, body, scope.ctx, scope.caller)
    return redirect(f"/orgs/{org_id}/domains/{added.id}")


def _records(shown: DomainOut, domain: domains.Domain, outbound_ips: list[str]) -> list[dict[str, Any]]:
    """The records the API shows for the domain, each with the result of its last check (by
    the kind of record at that name; the return-path records share their subdomain's)."""
    verification = domain.verification or {}
    checks = verification.get("checks") or {}
    return_path = verification.get("return_path") or {}
    kinds = {
        (r.type, r.name): r.kind
        for r in expected_records(domain.name, domain.dkim_selector, domain.dkim_public_key, outbound_ips)
    }
    out = []
    for record in shown.dns_records:
        kind = kinds.get((record.type, record.name))
        check: dict[str, Any] | None = checks.get(kind) if kind else None
        if kind is None and return_path and record.name == return_path.get("domain"):
            found = return_path.get("mx" if record.type == "MX" else "txt") or []
            check = {"ok": bool(return_path.get("verified")), "found": found}
        out.append({"type": record.type, "name": record.name, "value": record.value, "check": check})
    return out


@router.get("/orgs/{org_id}/domains/{domain_id}")
async def domain_page(org_id: UUID, domain_id: UUID, request: Request) -> Response:
    scope = await org_page(request, org_id)
    domain = await domains.get_domain(scope.ctx.pool, domain_id)
    if domain is None or domain.organization_id != org_id:
        raise NotFound("no such domain")
    shown = await api_domains.get_domain(domain_id, scope.ctx, scope.caller)
    records = _records(shown, domain, scope.ctx.settings.outbound_ips)
    values = scope.values("domains", domain=domain, records=records, title=domain.name)
    return page(request, "domain.html", **values)


@router.post("/orgs/{org_id}/domains/{domain_id}/verify")
async def verify_domain(org_id: UUID, domain_id: UUID, request: Request) -> Response:
    scope, _ = await org_action(request, org_id, "maintainer")
    domain = await domains.get_domain(scope.ctx.pool, domain_id)
    if domain is None or domain.organization_id != org_id:
        raise NotFound("no such domain")
    await api_domains.verify_domain(domain_id, scope.ctx, scope.caller)
    return redirect(f"/orgs/{org_id}/domains/{domain_id}")


@router.post("/orgs/{org_id}/domains/{domain_id}/delete")
async def delete_domain(org_id: UUID, domain_id: UUID, request: Request) -> Response:
    scope, _ = await org_action(request, org_id, "admin")
    domain = await domains.get_domain(scope.ctx.pool, domain_id)
    if domain is None or domain.organization_id != org_id:
        raise NotFound("no such domain")
    await api_domains.delete_domain(domain_id, scope.ctx, scope.caller)
    return redirect(f"/orgs/{org_id}/domains")


async def _credentials_page(request: Request, scope: OrgScope, status: int = 200, **more: Any) -> Response:
    projects = await orgs.list_projects(scope.ctx.pool, scope.org.id)
    listed = [(p, await credentials.list_smtp_credentials(scope.ctx.pool, p.id)) for p in projects]
    submission = scope.ctx.settings.smtp_submission_listen
    values = scope.values(
        "smtp-credentials",
        projects=projects,
        listed=listed,
        smtp_host=scope.ctx.settings.hostname,
        smtp_port=submission[1] if isinstance(submission, tuple) else 587,
        title="SMTP credentials",
        **more,
    )
    return page(request, "smtp_credentials.html", status, **values)


@router.get("/orgs/{org_id}/smtp-credentials")
async def smtp_credentials(org_id: UUID, request: Request) -> Response:
    return await _credentials_page(request, await org_page(request, org_id))


@router.post("/orgs/{org_id}/smtp-credentials")
async def create_smtp_credential(org_id: UUID, request: Request) -> Response:
    scope, form = await org_action(request, org_id, "admin")
    project_id = parse_id(form.get("project_id"), "project_id")
    project = await _project_of_org(scope, project_id)
    body = SmtpCredentialCreate(description=form.text("description", required=False, max_length=200))
    created = await api_credentials.create_smtp_credential(project.id, body, scope.ctx, scope.caller)
    return await _credentials_page(request, scope, 201, created=created)


@router.post("/orgs/{org_id}/smtp-credentials/{credential_id}/delete")
async def delete_smtp_credential(org_id: UUID, credential_id: UUID, request: Request) -> Response:
    scope, _ = await org_action(request, org_id, "admin")
    found = await credentials.get_smtp_credential(scope.ctx.pool, credential_id)
    if found is None or found[1] != org_id:
        raise NotFound("no such SMTP credential")
    await api_credentials.delete_smtp_credential(credential_id, scope.ctx, scope.caller)
    return redirect(f"/orgs/{org_id}/smtp-credentials")


async def _project_of_org(scope: OrgScope, project_id: UUID) -> orgs.Project:
    """A project of this organization (NotFound for another's, even for the operator here)."""
    project = await project_of(scope.ctx, scope.caller, project_id)
    if project.organization_id != scope.org.id:
        raise NotFound("no such project", field="project_id")
    return project


async def _keys_page(request: Request, scope: OrgScope, status: int = 200, **more: Any) -> Response:
    projects = await orgs.list_projects(scope.ctx.pool, scope.org.id)
    keys = await credentials.list_api_keys(scope.ctx.pool, scope.org.id) if scope.may("admin") else []
    names = {p.id: p.name for p in projects}
    values = scope.values("api-keys", projects=projects, keys=keys, names=names, title="API keys", **more)
    return page(request, "api_keys.html", status, **values)


@router.get("/orgs/{org_id}/api-keys")
async def api_keys(org_id: UUID, request: Request) -> Response:
    return await _keys_page(request, await org_page(request, org_id))


@router.post("/orgs/{org_id}/api-keys")
async def create_api_key(org_id: UUID, request: Request) -> Response:
    scope, form = await org_action(request, org_id, "admin")
    project = form.get("project_id") or None
    body = ApiKeyCreate.model_validate(
        {
            "role": form.text("role", max_length=20),
            "project_id": str(parse_id(project, "project_id")) if project else None,
            "description": form.text("description", required=False, max_length=200),
        }
    )
    created = await api_credentials.create_api_key(org_id, body, scope.ctx, scope.caller)
    return await _keys_page(request, scope, 201, created=created)


@router.post("/orgs/{org_id}/api-keys/{key_id}/delete")
async def delete_api_key(org_id: UUID, key_id: UUID, request: Request) -> Response:
    scope, _ = await org_action(request, org_id, "admin")
    key = await credentials.get_api_key(scope.ctx.pool, key_id)
    if key is None or key.organization_id != org_id:
        raise NotFound("no such API key")
    await api_credentials.delete_api_key(key_id, scope.ctx, scope.caller)
    return redirect(f"/orgs/{org_id}/api-keys")
