"""The CLI's read-and-tidy commands: `list` for every kind of object, suppressions, `status`,
and the checks every command shares (argument values, is there a database to talk to).

Registered into the parser by `remails.cli`; each command returns one dict, shown by
`remails.cli_output` (or as JSON with `--json`).
"""

from __future__ import annotations

import argparse
import errno
import importlib.metadata
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from remails.config import Settings
from remails.db import (
    Database,
    audit,
    connect,
    credentials,
    dkim_keys,
    domains,
    inbound,
    messages,
    orgs,
    suppressions,
    webhook_endpoints,
)
from remails.db.operations import read_figures
from remails.db.rows import transaction
from remails.dmarc import summarise
from remails.errors import InvalidInput, NotFound
from remails.sending_domains import domain_view
from remails.types import MessageStatus, literal_values

__all__ = [
    "CREATES_DATABASE",
    "count_argument",
    "database_missing",
    "how_to_run",
    "id_argument",
    "name_argument",
    "port_in_use",
    "register",
    "version",
    "with_db",
]

Command = Callable[[argparse.Namespace, Settings], Awaitable[dict[str, Any]]]
Adder = Callable[[Any, str, Command, str], argparse.ArgumentParser]

# Only these may start from nothing: every other command works on the server's database, and
# one run from another directory must not quietly make an empty one of its own.
CREATES_DATABASE = frozenset({"up", "migrate", "serve", "restore"})


def version() -> str:
    return importlib.metadata.version("remails")


def how_to_run(argv0: str, on_path: str | None, cwd: Path) -> str:
    """How a person runs this CLI from `cwd`: `remails` when that name on PATH (`on_path`) is
    this very script, else the script's path (e.g. `.venv/bin/remails`), else `python -m`."""
    script = Path(argv0)
    if script.name != "remails":
        return f"{_relative(Path(sys.executable), cwd)} -m remails.cli"
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "remails"
    return _relative(script, cwd)


def _relative(path: Path, cwd: Path) -> str:
    absolute = path if path.is_absolute() else cwd / path
    try:
        return str(absolute.relative_to(cwd))
    except ValueError:
        return str(absolute)


def database_missing(settings: Settings) -> str | None:
    """Why there is no database to talk to (one line naming the data dir), or None."""
    if settings.database_url is not None:
        return None
    pgdata = (settings.data_dir / "postgres").resolve()
    if (pgdata / "PG_VERSION").is_file():
        return None
    return (
        f"no database in {pgdata} (REMAILS_DATA_DIR={settings.data_dir}): run this in the"
        " directory where `remails up` runs, or set REMAILS_DATA_DIR (or REMAILS_DATABASE_URL)"
        " to the server's"
    )


def port_in_use(exc: BaseException, settings: Settings) -> str | None:
    """`address already in use` as one line naming the setting, or None for other errors."""
    if not isinstance(exc, OSError) or exc.errno != errno.EADDRINUSE:
        return None
    listens = {
        f"REMAILS_{name.upper()}": value
        for name, value in settings.model_dump().items()
        if name.endswith("_listen") and isinstance(value, tuple)
    }
    text = str(exc)
    for name, (host, port) in listens.items():
        if port and (f", {port})" in text or f":{port}" in text):
            return (
                f"{name}: {host}:{port} is already in use (another remails up?); stop it or choose"
                f" another address with {name}"
            )
    return f"an address is already in use ({text}); see the REMAILS_*_LISTEN settings"


def count_argument(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse type: a whole number within bounds, refused in one line naming the bounds."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be from {minimum} to {maximum}, got {value}")
        return value

    return parse


def name_argument(text: str) -> str:
    """An argparse type: a name of 1 to 100 characters on one line."""
    name = text.strip()
    if not name:
        raise argparse.ArgumentTypeError("must not be empty")
    if len(name) > 100 or "\n" in name or "\r" in name:
        raise argparse.ArgumentTypeError("at most 100 characters, on one line")
    return name


def id_argument(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an id: {text!r}") from None


async def with_db(
    settings: Settings, work: Callable[[Database], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    db = await connect(settings, max_size=2)
    try:
        return await work(db)
    finally:
        await db.close()


async def _require_org(db: Database, org_id: UUID) -> None:
    if await orgs.get_organization(db.pool, org_id) is None:
        raise NotFound(f"no organization {org_id}")


async def cmd_org_list(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        columns = ("id", "name", "monthly_quota", "quota_used", "block_status", "ip_pool_id", "created_at")
        rows = [{c: vars(o)[c] for c in columns} for o in await orgs.list_organizations(db.pool)]
        return {"organizations": rows}

    return await with_db(settings, work)


async def cmd_project_list(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        await _require_org(db, args.org_id)
        return {"projects": [vars(p) for p in await orgs.list_projects(db.pool, args.org_id)]}

    return await with_db(settings, work)


async def cmd_domain_list(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        await _require_org(db, args.org_id)
        listed = await domains.list_domains(db.pool, args.org_id)
        rows = [
            {
                "id": d.id,
                "domain": d.name,
                "status": d.status,
                "verified_at": d.verified_at,
                "created_at": d.created_at,
            }
            for d in listed
        ]
        return {"domains": rows}

    return await with_db(settings, work)


async def cmd_domain_records(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        domain = await domains.get_domain_by_name(db.pool, args.domain, args.org)
        if domain is None:
            raise NotFound(f"no single claim on {args.domain!r}; name the organization with --org")
        return domain_view(
            domain,
            settings.outbound_ips,
            hostname=settings.hostname,
            reports_domain=settings.effective_reports_domain,
            other_keys=await dkim_keys.keys_of_domain(db.pool, domain.id),
        )

    return await with_db(settings, work)


async def cmd_credential_list(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        if await orgs.get_project(db.pool, args.project_id) is None:
            raise NotFound(f"no project {args.project_id}")
        listed = await credentials.list_smtp_credentials(db.pool, args.project_id)
        return {"smtp_credentials": [vars(c) for c in listed]}

    return await with_db(settings, work)


async def cmd_api_key_list(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        await _require_org(db, args.org_id)
        return {"api_keys": [vars(k) for k in await credentials.list_api_keys(db.pool, args.org_id)]}

    return await with_db(settings, work)


async def cmd_message_list(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        f = messages.MessageFilter(args.org, args.project, args.status, args.label, args.recipient)
        rows = await messages.list_messages(db.pool, f, before=None, limit=args.limit)
        columns = ("id", "status", "mail_from", "recipients", "label", "created_at", "reason")
        return {"messages": [{c: r[c] for c in columns} for r in rows]}

    return await with_db(settings, work)


async def cmd_suppression_list(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        await _require_org(db, args.org_id)
        listed = await suppressions.list_suppressions(db.pool, args.org_id, after=None, limit=args.limit)
        return {"suppressions": [asdict(s) for s in listed]}

    return await with_db(settings, work)


async def cmd_suppression_remove(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        await _require_org(db, args.org_id)
        address = args.address.strip().lower()
        async with db.pool.acquire() as conn, conn.transaction():
            if not await suppressions.delete_suppression(conn, args.org_id, address):
                raise NotFound(f"{address} is not on the suppression list of organization {args.org_id}")
            await audit.record(
                conn, audit.operator_cli(), "suppression.delete", organization_id=args.org_id, target=address
            )
        return {"removed": address, "organization_id": args.org_id}

    return await with_db(settings, work)


_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+$")


async def cmd_suppression_add(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    address = args.address.strip().lower()
    if not _ADDRESS.match(address) or len(address) > 320:
        raise InvalidInput(f"not an e-mail address: {args.address!r}", field="address")

    async def work(db: Database) -> dict[str, Any]:
        await _require_org(db, args.org_id)
        async with transaction(db.pool) as conn:
            added = await suppressions.add_suppression(conn, args.org_id, address, args.reason)
            details = {"reason": args.reason}
            await audit.record(
                conn,
                audit.operator_cli(),
                "suppression.create",
                organization_id=args.org_id,
                target=address,
                details=details,
            )
        return {**asdict(added), "organization_id": args.org_id}

    return await with_db(settings, work)


async def cmd_api_key_revoke(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        key = await credentials.get_api_key(db.pool, args.key_id)
        if key is None:
            raise NotFound(f"no API key {args.key_id}")
        if key.organization_id is None:
            raise InvalidInput("that is an operator token; use `remails admin-token rotate`")
        async with transaction(db.pool) as conn:
            await credentials.delete_api_key(conn, key.id)
            await audit.record(
                conn,
                audit.operator_cli(),
                "api_key.delete",
                organization_id=key.organization_id,
                target=key.id,
            )
        return {"revoked": key.id, "organization_id": key.organization_id}

    return await with_db(settings, work)


async def cmd_smtp_credential_revoke(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        found = await credentials.get_smtp_credential(db.pool, args.credential_id)
        if found is None:
            raise NotFound(f"no SMTP credential {args.credential_id}")
        credential, org_id = found
        async with transaction(db.pool) as conn:
            await credentials.delete_smtp_credential(conn, credential.id)
            details = {"username": credential.username}
            await audit.record(
                conn,
                audit.operator_cli(),
                "smtp_credential.delete",
                organization_id=org_id,
                target=credential.id,
                details=details,
            )
        return {"revoked": credential.id, "username": credential.username}

    return await with_db(settings, work)


async def cmd_domain_delete(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        domain = await domains.get_domain_by_name(db.pool, args.domain, args.org)
        if domain is None:
            raise NotFound(f"no single claim on {args.domain!r}; name the organization with --org")
        async with transaction(db.pool) as conn:
            await domains.delete_domain(conn, domain.id)
            await audit.record(
                conn,
                audit.operator_cli(),
                "domain.delete",
                organization_id=domain.organization_id,
                target=domain.id,
                details={"domain": domain.name},
            )
        return {"deleted": domain.id, "domain": domain.name}

    return await with_db(settings, work)


async def cmd_webhook_delete(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        endpoint = await webhook_endpoints.get_endpoint(db.pool, args.webhook_id)
        if endpoint is None:
            raise NotFound(f"no webhook {args.webhook_id}")
        async with transaction(db.pool) as conn:
            await webhook_endpoints.delete_endpoint(conn, endpoint.id)
            await audit.record(
                conn,
                audit.operator_cli(),
                "webhook.delete",
                organization_id=endpoint.organization_id,
                target=endpoint.id,
            )
        return {"deleted": endpoint.id}

    return await with_db(settings, work)


async def _server_answers(settings: Settings) -> str:
    host, port = settings.http_listen
    probe = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)  # noqa: S104
    url = f"http://{'[' + probe + ']' if ':' in probe else probe}:{port}/healthz"
    try:
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            response = await client.get(url)
    except httpx.HTTPError:
        return f"not answering at {url}"
    return f"up ({url} answered {response.status_code})"


async def cmd_status(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Is the server up, how many messages are in each unfinished state, the latest problems."""
    server = await _server_answers(settings)
    database = "REMAILS_DATABASE_URL" if settings.database_url else str(settings.data_dir.resolve())

    async def work(db: Database) -> dict[str, Any]:
        figures = await read_figures(db.pool)
        problems = await messages.recent_problems(db.pool, args.errors)
        return {
            "version": version(),
            "server": server,
            "database": database,
            "webhook_backlog": figures.webhook_backlog,
            "queue": figures.queue,
            "recent_problems": problems,
        }

    return await with_db(settings, work)


async def cmd_domain_dmarc_reports(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        domain = await domains.get_domain_by_name(db.pool, args.domain, args.org)
        if domain is None:
            raise NotFound(f"no single claim on {args.domain!r}; name the organization with --org")
        rows = await inbound.list_dmarc_reports(db.pool, domain.organization_id, domain.id, limit=args.limit)
        reports = [asdict(r) for r in rows]  # datetimes and ids printed by the CLI's JSON encoder
        summary = summarise(record for r in rows for record in r.records)
        return {"domain": domain.name, "reports": reports, "summary": summary}

    return await with_db(settings, work)


def register(sub: Any, add: Adder) -> None:
    """Add these commands to the `remails` parser (`sub`: its subparsers)."""
    groups: dict[str, Any] = {}
    for choice, action in sub.choices.items():
        nested = [a for a in action._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            groups[choice] = nested[0]

    def group(name: str, help_text: str) -> Any:
        if name not in groups:
            groups[name] = sub.add_parser(name, help=help_text).add_subparsers(dest="action", required=True)
        return groups[name]

    add(group("org", "organizations"), "list", cmd_org_list, "every organization")
    p = add(group("project", "projects"), "list", cmd_project_list, "an organization's projects")
    p.add_argument("org_id", type=id_argument)
    domain = group("domain", "sending domains")
    p = add(domain, "list", cmd_domain_list, "an organization's domains and their state")
    p.add_argument("org_id", type=id_argument)
    p = add(domain, "records", cmd_domain_records, "the DNS records to publish for a domain, again")
    p.add_argument("domain")
    p.add_argument("--org", type=id_argument, default=None, help="whose claim, when several claim it")
    p = add(domain, "dmarc-reports", cmd_domain_dmarc_reports, "DMARC aggregate reports of a domain")
    p.add_argument("domain")
    p.add_argument("--org", type=id_argument, default=None, help="whose claim, when several claim it")
    p.add_argument("--limit", type=count_argument(1, 1000), default=50)
    p = add(
        group("smtp-credential", "SMTP credentials"), "list", cmd_credential_list, "a project's credentials"
    )
    p.add_argument("project_id", type=id_argument)
    p = add(
        group("api-key", "API keys"), "list", cmd_api_key_list, "an organization's API keys (never tokens)"
    )
    p.add_argument("org_id", type=id_argument)
    p = add(group("message", "messages"), "list", cmd_message_list, "messages, newest first")
    p.add_argument("--org", type=id_argument, default=None, help="one organization's (default: all)")
    p.add_argument("--project", type=id_argument, default=None)
    p.add_argument("--status", choices=literal_values(MessageStatus), default=None)
    p.add_argument("--recipient", default=None, help="messages to this address")
    p.add_argument("--label", default=None)
    p.add_argument("--limit", type=count_argument(1, 1000), default=20)
    supp = group("suppression", "suppressed addresses")
    p = add(supp, "list", cmd_suppression_list, "an organization's suppressed addresses")
    p.add_argument("org_id", type=id_argument)
    p.add_argument("--limit", type=count_argument(1, 10000), default=100)
    p = add(supp, "remove", cmd_suppression_remove, "send to an address again")
    p.add_argument("org_id", type=id_argument)
    p.add_argument("address")
    p = add(supp, "add", cmd_suppression_add, "never send to an address")
    p.add_argument("org_id", type=id_argument)
    p.add_argument("address")
    p.add_argument("--reason", default="added by the operator", type=name_argument)
    p = add(group("api-key", "API keys"), "revoke", cmd_api_key_revoke, "an API key stops working at once")
    p.add_argument("key_id", type=id_argument)
    p = add(
        group("smtp-credential", "SMTP credentials"),
        "revoke",
        cmd_smtp_credential_revoke,
        "a credential stops working",
    )
    p.add_argument("credential_id", type=id_argument)
    p = add(domain, "delete", cmd_domain_delete, "remove a sending domain (its mail is refused)")
    p.add_argument("domain")
    p.add_argument("--org", type=id_argument, default=None, help="whose claim, when several claim it")
    p = add(group("webhook", "webhook endpoints"), "delete", cmd_webhook_delete, "remove a webhook endpoint")
    p.add_argument("webhook_id", type=id_argument)
    p = add(sub, "status", cmd_status, "is the server up; queue by status; latest problems")
    p.add_argument("--errors", type=count_argument(0, 100), default=5, help="how many problems to show")
