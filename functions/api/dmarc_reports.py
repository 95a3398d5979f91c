"""DMARC aggregate reports received for a domain, with a pass/fail summary per source IP."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel

from remails.db import domains, inbound
from remails.dmarc import summarise
from remails.errors import NotFound
from remails_functions.api.auth import Caller, Ctx

router = APIRouter(tags=["domains"])


class DmarcRecordOut(BaseModel):
    source_ip: str
    count: int
    dkim: str
    spf: str
    disposition: str
    header_from: str = ""


class DmarcReportOut(BaseModel):
    id: UUID
    org_name: str
    report_id: str
    begin: datetime
    end: datetime
    policy_domain: str
    records: list[DmarcRecordOut]


class SourceSummary(BaseModel):
    source_ip: str
    messages: int
    dmarc_pass: int  # DKIM or SPF aligned and passing
    dmarc_fail: int


class DmarcReportsOut(BaseModel):
    domain: str
    reports: list[DmarcReportOut]
    summary: list[SourceSummary]


@router.get("/v1/domains/{domain_id}/dmarc-reports", response_model=DmarcReportsOut)
async def list_dmarc_reports(domain_id: UUID, ctx: Ctx, caller: Caller) -> DmarcReportsOut:
    domain = await domains.get_domain(ctx.pool, domain_id)
    if domain is None:
        raise NotFound("no such domain")
    caller.require(
        domain.organization_id, "read_only", await domains.project_ids_of_domain(ctx.pool, domain.id)
    )
    rows = await inbound.list_dmarc_reports(ctx.pool, domain.organization_id, domain.id)
    reports = [
        DmarcReportOut(
            id=r.id,
            org_name=r.org_name,
            report_id=r.report_id,
            begin=r.begin_at,
            end=r.end_at,
            policy_domain=r.policy_domain,
            records=[DmarcRecordOut.model_validate(x) for x in r.records],
        )
        for r in rows
    ]
    summary = summarise(record for r in rows for record in r.records)
    return DmarcReportsOut(
        domain=domain.name, reports=reports, summary=[SourceSummary.model_validate(x) for x in summary]
    )
