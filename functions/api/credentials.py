"""SMTP credentials per project and API keys per organization; secrets are shown once."""

from __future__ import annotations

from dataclasses import asdict
from uuid import UUID

from fastapi import APIRouter, Response

from remails.db import audit, credentials
from remails.errors import NotFound
from remails_functions.api.audit_log import actor_of, changing
from remails_functions.api.auth import Caller, Ctx
from remails_functions.api.models import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    SmtpCredentialCreate,
    SmtpCredentialCreated,
    SmtpCredentialOut,
)
from remails_functions.api.organizations import organization_of, project_of

router = APIRouter(tags=["credentials"])


@router.post(
    "/v1/projects/{project_id}/smtp-credentials", status_code=201, response_model=SmtpCredentialCreated
)
async def create_smtp_credential(
    project_id: UUID, body: SmtpCredentialCreate, ctx: Ctx, caller: Caller
) -> SmtpCredentialCreated:
    project = await project_of(ctx, caller, project_id, "admin")
    async with ctx.pool.acquire() as conn, conn.transaction():
        credential, password = await credentials.create_smtp_credential(conn, project_id, body.description)
        details = {"project_id": project_id, "username": credential.username}
        await audit.record(
            conn,
            actor_of(caller),
            "smtp_credential.create",
            organization_id=project.organization_id,
            target=credential.id,
            details=details,
        )
    return SmtpCredentialCreated(**asdict(credential), password=password)


@router.get("/v1/projects/{project_id}/smtp-credentials", response_model=list[SmtpCredentialOut])
async def list_smtp_credentials(project_id: UUID, ctx: Ctx, caller: Caller) -> list[SmtpCredentialOut]:
    await project_of(ctx, caller, project_id)
    return [
        SmtpCredentialOut(**asdict(c)) for c in await credentials.list_smtp_credentials(ctx.pool, project_id)
    ]


@router.delete("/v1/smtp-credentials/{credential_id}", status_code=204, response_class=Response)
async def delete_smtp_credential(credential_id: UUID, ctx: Ctx, caller: Caller) -> Response:
    found = await credentials.get_smtp_credential(ctx.pool, credential_id)
    if found is None:
        raise NotFound("no such SMTP credential")
    credential, org_id = found
    caller.require(org_id, "admin", credential.project_id)
    async with changing(ctx, caller, "smtp_credential.delete", org_id, credential_id) as conn:
        await credentials.delete_smtp_credential(conn, credential_id)
    return Response(status_code=204)


@router.post("/v1/organizations/{org_id}/api-keys", status_code=201, response_model=ApiKeyCreated)
async def create_api_key(org_id: UUID, body: ApiKeyCreate, ctx: Ctx, caller: Caller) -> ApiKeyCreated:
    """An organization-wide key, or one limited to `project_id` (all a project-scoped key may make)."""
    if body.project_id is None:
        await organization_of(ctx, caller, org_id, "admin")
    else:
        caller.require(org_id, "admin", body.project_id)
        project = await project_of(ctx, caller, body.project_id, "admin")
        if project.organization_id != org_id:
            raise NotFound("no such project", field="project_id")
    async with ctx.pool.acquire() as conn, conn.transaction():
        key, token = await credentials.create_api_key(
            conn, org_id, body.role, body.project_id, body.description
        )
        details = {"role": body.role, "project_id": body.project_id}
        await audit.record(
            conn, actor_of(caller), "api_key.create", organization_id=org_id, target=key.id, details=details
        )
    return ApiKeyCreated(**asdict(key), token=token)


@router.get("/v1/organizations/{org_id}/api-keys", response_model=list[ApiKeyOut])
async def list_api_keys(org_id: UUID, ctx: Ctx, caller: Caller) -> list[ApiKeyOut]:
    await organization_of(ctx, caller, org_id, "admin")
    return [ApiKeyOut(**asdict(k)) for k in await credentials.list_api_keys(ctx.pool, org_id)]


@router.delete("/v1/api-keys/{key_id}", status_code=204, response_class=Response)
async def delete_api_key(key_id: UUID, ctx: Ctx, caller: Caller) -> Response:
    key = await credentials.get_api_key(ctx.pool, key_id)
    if key is None or key.organization_id is None:
        raise NotFound("no such API key")
    caller.require(key.organization_id, "admin", key.project_id)
    async with changing(ctx, caller, "api_key.delete", key.organization_id, key_id) as conn:
        await credentials.delete_api_key(conn, key_id)
    return Response(status_code=204)
