"""Dedicated IP pools (operator only); assignment lives with the organization."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict

from fastapi import APIRouter

from remails.db import egress
from remails.errors import InvalidInput
from remails_functions.api.audit_log import changing
from remails_functions.api.auth import OPERATOR_ONLY, Caller, Ctx
from remails_functions.api.models import IpPoolCreate, IpPoolOut

router = APIRouter(tags=["ip pools"])


@router.post("/v1/ip-pools", status_code=201, response_model=IpPoolOut, openapi_extra=OPERATOR_ONLY)
async def create_ip_pool(body: IpPoolCreate, ctx: Ctx, caller: Caller) -> IpPoolOut:
    caller.require_super_admin()
    for i, ip in enumerate(body.ips):
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise InvalidInput(f"{ip!r} is not an IP address", field=f"ips.{i}") from None
    ips = list(dict.fromkeys(body.ips))
    async with changing(ctx, caller, "ip_pool.create", None, body.name, {"ips": ips}) as conn:
        created = await egress.create_ip_pool(conn, body.name, ips)
    return IpPoolOut(**asdict(created))


@router.get("/v1/ip-pools", response_model=list[IpPoolOut], openapi_extra=OPERATOR_ONLY)
async def list_ip_pools(ctx: Ctx, caller: Caller) -> list[IpPoolOut]:
    caller.require_super_admin()
    return [IpPoolOut(**asdict(p)) for p in await egress.list_ip_pools(ctx.pool)]
