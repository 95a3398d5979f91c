"""The `remails` command: run the service and manage it as an operator.

Every command takes `--json` and then prints exactly one JSON object; `create`/`add` commands
print the new object with its `id`. Secrets (passwords, tokens) are printed once, here.
Without `--json`, results are tables and `key  value` lines (`remails.cli_output`).

The CLI works on the server's database and reads its own REMAILS_* settings: run it with the
same environment as `remails up` (the same REMAILS_DATA_DIR or REMAILS_DATABASE_URL, and
settings such as REMAILS_WEBHOOKS_ALLOW_PRIVATE). It refuses to start a database of its own,
except for `up`, `migrate`, `serve` and `restore`.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any, NoReturn
from uuid import UUID

import uvloop

from remails import cli_commands, webhook_endpoints
from remails.cli_commands import id_argument, with_db
from remails.cli_output import render
from remails.config import ConfigError, Settings, load_settings
from remails.crypto import load_master_key
from remails.db import Database, audit, connect, credentials, dkim_keys, domains, egress, messages, orgs
from remails.db import suppressions as suppressions_db
from remails.db import webhook_endpoints as webhook_endpoints_db
from remails.db.audit import url_origin
from remails.db.migrate import migrate
from remails.db.rows import Executor, transaction
from remails.dkim_rotation import prepare_rotation, start_prepared
from remails.dns import DnsFailure, make_resolver
from remails.errors import RemailsError, UnsafeTarget
from remails.message_view import HEARTBEATS_TO_BE_LIVE, explain, with_suppressions
from remails.runtime.readiness import report_failure
from remails.sending_domains import (
    check_sending_domain,
    domain_view,
    prepare_sending_domain,
    store_check,
    store_sending_domain,
)
from remails.types import WebhookEventType, literal_values

__all__ = ["main"]

WEBHOOK_EVENTS = literal_values(WebhookEventType)

Command = Callable[[argparse.Namespace, Settings], Awaitable[dict[str, Any]]]


class CliError(Exception):
    """A user error: printed as one line, exit status 1."""


class Unsuccessful(Exception):
    """The command ran and its result is printed, but it did not succeed: exit status 1."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__("unsuccessful")
        self.result = result


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line naming the argument (argparse prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(_jsonable(result)))
        return
    print(render(result))


async def cmd_migrate(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    db = await connect(settings, max_size=2, run_migrations=False)
    try:
        return {"applied": await migrate(db.pool), "up_to_date": True}
    finally:
        await db.close()


async def cmd_org_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        quota = settings.default_monthly_quota if args.monthly_quota is None else args.monthly_quota
        async with transaction(db.pool) as conn:
            org = await orgs.create_organization(conn, args.name, quota)
            details = {"name": org.name, "monthly_quota": org.monthly_quota}
            await _audit(conn, "organization.create", org.id, org.id, details)
        return vars(org)

    return await with_db(settings, work)


async def _audit(
    conn: Executor,
    action: str,
    organization_id: UUID | None,
    target: UUID | str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """The operator's entry for a change, in the change's transaction (never a secret)."""
    await audit.record(
        conn, audit.operator_cli(), action, organization_id=organization_id, target=target, details=details
    )


async def _set_pool(db: Database, org_id: UUID, ip_pool_id: UUID | None, name: str | None) -> None:
    async with transaction(db.pool) as conn:
        if not await orgs.set_ip_pool(conn, org_id, ip_pool_id):
            raise CliError(f"no organization {org_id}")
        await _audit(
            conn, "organization.ip_pool", org_id, org_id, {"ip_pool_id": ip_pool_id, "ip_pool": name}
        )


async def cmd_org_set_pool(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        if args.pool == "none":  # back to the shared pool
            await _set_pool(db, args.org_id, None, None)
            return {"id": args.org_id, "ip_pool_id": None, "ip_pool": None}
        ip_pool = await egress.get_ip_pool_by_name(db.pool, args.pool)
        if ip_pool is None:
            raise CliError(f"no IP pool named {args.pool!r}")
        await _set_pool(db, args.org_id, ip_pool.id, ip_pool.name)
        result: dict[str, Any] = {"id": args.org_id, "ip_pool_id": ip_pool.id, "ip_pool": ip_pool.name}
        fresh = settings.heartbeat_seconds * HEARTBEATS_TO_BE_LIVE
        if not await egress.live_pool_ips(db.pool, ip_pool.id, fresh):
            result["hint"] = (
                f"warning: no live sender node holds an IP of pool {ip_pool.name!r}"
                f" ({', '.join(ip_pool.ips)}); this organization's mail waits until one does"
                f" (`remails org set-pool {args.org_id} none` returns it to the shared pool)"
            )
        return result

    return await with_db(settings, work)


_BLOCK_LEVELS = {"sending": "no_sending", "full": "full_freeze"}


async def cmd_org_block(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """sending: nothing of the organization is accepted or sent; full: also no API writes."""
    block_status = _BLOCK_LEVELS[args.level]

    async def work(db: Database) -> dict[str, Any]:
        async with db.pool.acquire() as conn, conn.transaction():
            if not await orgs.set_block_status(conn, args.org_id, block_status, args.reason):
                raise CliError(f"no organization {args.org_id}")
            details = {"level": args.level, "reason": args.reason}
            await _audit(conn, "organization.block", args.org_id, args.org_id, details)
        return {"id": args.org_id, "block_status": block_status, "reason": args.reason}

    return await with_db(settings, work)


async def cmd_org_unblock(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Held messages resume where they stopped at the next sweep (`tick`)."""

    async def work(db: Database) -> dict[str, Any]:
        async with db.pool.acquire() as conn, conn.transaction():
            if not await orgs.set_block_status(conn, args.org_id, "not_blocked"):
                raise CliError(f"no organization {args.org_id}")
            await _audit(conn, "organization.unblock", args.org_id, args.org_id)
        return {"id": args.org_id, "block_status": "not_blocked"}

    return await with_db(settings, work)


def _org_or_operator(text: str) -> UUID | None:
    """An organization's id, or `operator` (None): the entries that belong to no organization."""
    return None if text == "operator" else id_argument(text)


async def cmd_audit_log(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    kind, _, actor_id = (args.actor or "").partition(":")
    if args.actor is not None and kind not in ("api_key", "user", "operator"):
        raise CliError("--actor: api_key[:ID], user[:ID] or operator[:ID]")

    async def work(db: Database) -> dict[str, Any]:
        try:
            page = await audit.list_entries(
                db.pool,
                args.org_id,
                limit=args.limit,
                cursor=args.cursor,
                action=args.action,
                actor_kind=kind or None,
                actor_id=actor_id or None,
            )
        except ValueError:
            raise CliError("--cursor: not a cursor this command printed") from None
        return {"entries": [vars(e) for e in page.entries], "next_cursor": page.next_cursor}

    return await with_db(settings, work)


async def cmd_project_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        if await orgs.get_organization(db.pool, args.org_id) is None:
            raise CliError(f"no organization {args.org_id}")
        if any(p.name == args.name for p in await orgs.list_projects(db.pool, args.org_id)):
            raise CliError(f"name: organization {args.org_id} already has a project named {args.name!r}")
        async with transaction(db.pool) as conn:
            project = await orgs.create_project(
                conn, args.org_id, args.name, args.retention_days, sandbox=args.sandbox
            )
            details = {"name": project.name, "sandbox": project.sandbox}
            await _audit(conn, "project.create", args.org_id, project.id, details)
        return vars(project)

    return await with_db(settings, work)


async def cmd_domain_add(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        project = await orgs.get_project(db.pool, args.project_id)
        if project is None:
            raise CliError(f"no project {args.project_id}")
        master_key = load_master_key(settings.secret_key, settings.data_dir)
        new = await prepare_sending_domain(master_key, args.domain)  # the key, before the transaction
        async with transaction(db.pool) as conn:
            domain = await store_sending_domain(conn, project.organization_id, [project.id], new)
            details = {"domain": domain.name, "project_ids": [project.id]}
            await _audit(conn, "domain.create", project.organization_id, domain.id, details)
        return domain_view(
            domain,
            settings.outbound_ips,
            hostname=settings.hostname,
            reports_domain=settings.effective_reports_domain,
        )

    return await with_db(settings, work)


async def cmd_domain_verify(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        domain = await domains.get_domain_by_name(db.pool, args.domain, args.org)
        if domain is None:
            raise CliError(f"no single claim on {args.domain!r}; name the organization with --org")
        try:
            check = await check_sending_domain(
                make_resolver(settings),
                domain,
                settings.outbound_ips,
                force=args.force,
                hostname=settings.hostname,
            )
        except DnsFailure as exc:
            raise CliError(
                f"{exc.message} (servers: REMAILS_DNS_SERVERS, else the system resolver);"
                " `--force` marks the domain verified by operator decision"
            ) from None
        result = check.result
        async with transaction(db.pool) as conn:
            await store_check(conn, check)
            details = {"domain": domain.name, "verified": check.verified, "force": args.force}
            await _audit(conn, "domain.verify", domain.organization_id, domain.id, details)
        if not result["verified"]:
            missing = [k for k, c in result["checks"].items() if not c["ok"] and k != "dmarc"]
            result["hint"] = (
                f"not verified ({', '.join(missing)} missing or wrong): publish the records of"
                f" `remails domain records {domain.name}`, wait for DNS, run this again;"
                " `--force` marks it verified by operator decision"
            )
            raise Unsuccessful(result)
        return result

    return await with_db(settings, work)


async def cmd_domain_rotate_key(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        domain = await domains.get_domain_by_name(db.pool, args.domain, args.org)
        if domain is None:
            raise CliError(f"no single claim on {args.domain!r}; name the organization with --org")
        master_key = load_master_key(settings.secret_key, settings.data_dir)
        new = await prepare_rotation(db.pool, master_key, domain, ed25519=args.ed25519)
        async with transaction(db.pool) as conn:
            started = await start_prepared(conn, domain, new)
            details = {"domain": domain.name, "selectors": [k.selector for k in started]}
            await _audit(conn, "domain.rotate_key", domain.organization_id, domain.id, details)
        view = domain_view(
            domain,
            settings.outbound_ips,
            hostname=settings.hostname,
            reports_domain=settings.effective_reports_domain,
            other_keys=await dkim_keys.keys_of_domain(db.pool, domain.id),
        )
        view["hint"] = (
            "publish the record of "
            + ", ".join(f"{k.selector}._domainkey.{domain.name}" for k in started)
            + "; it signs once DNS holds it, and the old key stays listed for its grace period"
        )
        return view

    return await with_db(settings, work)


async def cmd_smtp_credential_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        project = await orgs.get_project(db.pool, args.project_id)
        if project is None:
            raise CliError(f"no project {args.project_id}")
        async with transaction(db.pool) as conn:
            credential, password = await credentials.create_smtp_credential(conn, args.project_id)
            details = {"project_id": project.id, "username": credential.username}
            await _audit(conn, "smtp_credential.create", project.organization_id, credential.id, details)
        return {**vars(credential), "password": password}

    return await with_db(settings, work)


async def cmd_api_key_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        if await orgs.get_organization(db.pool, args.org_id) is None:
            raise CliError(f"no organization {args.org_id}")
        if args.project is not None:
            project = await orgs.get_project(db.pool, args.project)
            if project is None or project.organization_id != args.org_id:
                raise CliError(f"no project {args.project} in organization {args.org_id}")
        async with transaction(db.pool) as conn:
            key, token = await credentials.create_api_key(
                conn, args.org_id, args.role, args.project, args.description
            )
            details = {"role": args.role, "project_id": args.project}
            await _audit(conn, "api_key.create", args.org_id, key.id, details)
        return {**vars(key), "token": token}

    return await with_db(settings, work)


async def cmd_ip_pool_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    ips = [ip.strip() for ip in args.ips.split(",") if ip.strip()]
    try:
        load_settings(outbound_ips=ips)  # the same address validation as the setting
    except ConfigError as exc:
        raise CliError(str(exc).replace("REMAILS_OUTBOUND_IPS", "--ips")) from None

    async def work(db: Database) -> dict[str, Any]:
        async with transaction(db.pool) as conn:
            created = await egress.create_ip_pool(conn, args.name, ips)
            await _audit(conn, "ip_pool.create", None, created.name, {"ips": created.ips})
        return vars(created)

    return await with_db(settings, work)


async def _message_raw(args: argparse.Namespace, db: Database) -> dict[str, Any]:
    """The stored bytes, written as they are (a delivered sandbox message: signed)."""
    found = await messages.get_message_raw(db.pool, args.message_id)
    if found is None:
        raise CliError(f"no message {args.message_id}")
    if not found.raw:
        raise CliError(f"the bytes of message {args.message_id} are gone (removed after retention)")
    form = "signed" if found.signed else "received"
    if args.json:
        return {"id": args.message_id, "form": form, "raw_base64": base64.b64encode(found.raw).decode()}
    sys.stdout.buffer.write(found.raw)
    sys.stdout.buffer.flush()
    return {}


async def cmd_message_show(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        if args.raw:
            return await _message_raw(args, db)
        detail = await messages.get_message_detail(db.pool, args.message_id)
        if detail is None:
            raise CliError(f"no message {args.message_id}")
        addresses = [r["address"] for r in detail["recipients"]]
        suppressed = await suppressions_db.suppressed_among(db.pool, detail["organization_id"], addresses)
        recipients = with_suppressions(detail["recipients"], suppressed)
        live_ips = None
        org = await orgs.get_organization(db.pool, detail["organization_id"])
        if detail["status"] == "admitted" and org is not None:
            fresh = settings.heartbeat_seconds * HEARTBEATS_TO_BE_LIVE
            live_ips = await egress.live_pool_ips(db.pool, org.ip_pool_id, fresh)
        explanation = explain(detail, suppressed, live_ips)
        return {"explanation": explanation, **detail, "recipients": recipients}

    return await with_db(settings, work)


async def cmd_webhook_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    events = [e.strip() for e in args.events.split(",") if e.strip()]
    unknown = sorted(set(events) - set(WEBHOOK_EVENTS))
    if unknown or not events:
        raise CliError(f"--events: unknown {unknown}; choose from {', '.join(WEBHOOK_EVENTS)}")

    async def work(db: Database) -> dict[str, Any]:
        project = await orgs.get_project(db.pool, args.project_id)
        if project is None:
            raise CliError(f"no project {args.project_id}")
        master_key = load_master_key(settings.secret_key, settings.data_dir)
        try:  # the target's DNS, before the transaction
            new = await webhook_endpoints.prepare_endpoint(settings, master_key, args.url)
        except UnsafeTarget as exc:
            raise CliError(f"URL {exc}") from None
        async with transaction(db.pool) as conn:
            endpoint = await webhook_endpoints.store_endpoint(conn, new, project.id, events)
            details = {"project_id": project.id, "url": url_origin(endpoint.url), "events": endpoint.events}
            await _audit(conn, "webhook.create", project.organization_id, endpoint.id, details)
        return {**vars(endpoint), "secret": new.secret}

    return await with_db(settings, work)


async def cmd_webhook_list(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        listed = await webhook_endpoints_db.list_endpoints(db.pool, args.project_id)
        return {"webhooks": [vars(e) for e in listed]}

    return await with_db(settings, work)


async def cmd_admin_token_rotate(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from remails.admin_token import rotate_admin_token

    async def work(db: Database) -> dict[str, Any]:
        async with transaction(db.pool) as conn:
            key, token = await rotate_admin_token(conn)
            await _audit(conn, "admin_token.rotate", None, key.id)
        return {"id": key.id, "created_at": key.created_at, "token": token}

    return await with_db(settings, work)


async def cmd_admin_token_show_hint(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from remails.admin_token import admin_keys

    async def work(db: Database) -> dict[str, Any]:
        return {"admin_keys": [vars(k) for k in await admin_keys(db.pool)]}

    return await with_db(settings, work)


async def cmd_backup(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from remails.backup import BackupError, backup

    try:
        result = await backup(settings, args.destination, without_bodies=args.without_bodies)
    except BackupError as exc:
        raise CliError(str(exc)) from None
    return {"backup": result.location, "bytes": result.size, "without_bodies": result.without_bodies}


async def cmd_restore(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from remails.backup import BackupError, restore

    try:
        return await restore(settings, args.file, args.identity)
    except BackupError as exc:
        raise CliError(str(exc)) from None


async def cmd_user_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from remails.accounts import generate_password, hash_password, normalise_email
    from remails.db import users

    email = normalise_email(args.email)
    if "@" not in email or len(email) > 254:
        raise CliError(f"not an e-mail address: {args.email!r}")
    if (args.org is None) != (args.role is None):
        raise CliError("--org and --role go together")

    async def work(db: Database) -> dict[str, Any]:
        if args.org is not None and await orgs.get_organization(db.pool, args.org) is None:
            raise CliError(f"no organization {args.org}")
        password = generate_password()
        async with db.pool.acquire() as conn, conn.transaction():
            user = await users.create_user(conn, email, hash_password(password), operator=args.operator)
            if args.org is not None:
                await users.set_membership(conn, args.org, user.id, args.role)
            details = {"email": email, "operator": args.operator, "role": args.role}
            await _audit(conn, "user.create", args.org, user.id, details)
        return {"id": user.id, "email": user.email, "password": password}

    return await with_db(settings, work)


async def cmd_user_reset_password(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from remails.accounts import generate_password, hash_password
    from remails.db import users

    async def work(db: Database) -> dict[str, Any]:
        user = await users.get_user_by_email(db.pool, args.email)
        if user is None:
            raise CliError(f"no user {args.email!r}")
        password = generate_password()
        async with transaction(db.pool) as conn:
            await users.set_password(conn, user.id, hash_password(password))
            await audit.record_for_user(
                conn, audit.operator_cli(), "user.password_reset", user.id, target=user.id
            )
        return {"id": user.id, "email": user.email, "password": password}

    return await with_db(settings, work)


async def cmd_up(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from remails.runtime import run_all_in_one

    await run_all_in_one(settings)
    return {}


async def cmd_serve(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from remails.runtime import serve_role

    await serve_role(settings, args.role, args.name)
    return {}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object")
    parser = _Parser(prog="remails", description=__doc__, parents=[common])
    parser.add_argument("--version", action="version", version=f"remails {cli_commands.version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(parent: Any, name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_text, parents=[common])
        p.set_defaults(func=func)
        return p

    add(sub, "up", cmd_up, "run every role in one process (embedded PostgreSQL by default)")
    add(sub, "migrate", cmd_migrate, "apply database migrations")
    serve = add(sub, "serve", cmd_serve, "run one long-lived role")
    serve.add_argument("role", choices=["edge", "sender", "api", "function"])
    serve.add_argument("name", nargs="?", help="function name, for `serve function`")
    p = add(sub, "backup", cmd_backup, "write an encrypted backup of the database to DEST")
    p.add_argument("destination", metavar="DEST", help="a directory or s3://bucket/prefix")
    p.add_argument("--without-bodies", action="store_true", help="leave finished messages' bodies out")
    p = add(sub, "restore", cmd_restore, "restore a backup into an empty database")
    p.add_argument("file", metavar="FILE", help="a backup file or s3://bucket/key")
    p.add_argument("--identity", type=Path, required=True, metavar="KEYFILE", help="age identity file")

    org = sub.add_parser("org", help="organizations").add_subparsers(dest="action", required=True)
    p = add(org, "create", cmd_org_create, "create an organization")
    p.add_argument("name", type=cli_commands.name_argument)
    p.add_argument("--monthly-quota", type=cli_commands.count_argument(0, 1_000_000_000), default=None)
    p = add(org, "block", cmd_org_block, "block an organization (sending: no mail; full: also no changes)")
    p.add_argument("org_id", type=id_argument)
    p.add_argument("--level", choices=sorted(_BLOCK_LEVELS), required=True)
    p.add_argument("--reason", required=True, help="why (kept with the block and in the audit log)")
    p = add(org, "unblock", cmd_org_unblock, "lift a block; held messages resume")
    p.add_argument("org_id", type=id_argument)
    p = add(sub, "audit-log", cmd_audit_log, "an organization's audit log, newest first")
    p.add_argument(
        "org_id",
        type=_org_or_operator,
        metavar="ORG_ID|operator",
        help="an organization, or `operator`: the entries of none (IP pools, admin token, users)",
    )
    p.add_argument("--action", default=None, help="one action, or a prefix like domain.")
    p.add_argument("--actor", default=None, help="api_key[:ID], user[:ID] or operator[:ID]")
    p.add_argument("--limit", type=int, default=50, choices=range(1, 1001), metavar="1..1000")
    p.add_argument("--cursor", default=None, help="next_cursor of the previous page")
    p = add(org, "set-pool", cmd_org_set_pool, "give an organization a dedicated IP pool")
    p.add_argument("org_id", type=id_argument)
    p.add_argument("pool", help="IP pool name; `none`: back to the shared pool")

    project = sub.add_parser("project", help="projects").add_subparsers(dest="action", required=True)
    p = add(project, "create", cmd_project_create, "create a project")
    p.add_argument("org_id", type=id_argument)
    p.add_argument("name", type=cli_commands.name_argument)
    p.add_argument("--retention-days", type=cli_commands.count_argument(1, 3650), default=None)
    p.add_argument(
        "--sandbox", action="store_true", help="sign and record messages delivered, never send them"
    )

    domain = sub.add_parser("domain", help="sending domains").add_subparsers(dest="action", required=True)
    p = add(domain, "add", cmd_domain_add, "add a domain; prints the DNS records to publish")
    p.add_argument("project_id", type=id_argument)
    p.add_argument("domain")
    p = add(domain, "verify", cmd_domain_verify, "check the domain's DNS records")
    p.add_argument("domain")
    p.add_argument("--force", action="store_true", help="mark verified by operator decision")
    p.add_argument("--org", type=id_argument, default=None, help="whose claim, when several claim it")
    p = add(domain, "rotate-key", cmd_domain_rotate_key, "start a DKIM key rotation (a new selector)")
    p.add_argument("domain")
    p.add_argument("--ed25519", action="store_true", help="also an Ed25519 key signing beside RSA")
    p.add_argument("--org", type=id_argument, default=None, help="whose claim, when several claim it")

    cred = sub.add_parser("smtp-credential", help="SMTP credentials").add_subparsers(
        dest="action", required=True
    )
    p = add(cred, "create", cmd_smtp_credential_create, "create a credential (password shown once)")
    p.add_argument("project_id", type=id_argument)

    key = sub.add_parser("api-key", help="API keys").add_subparsers(dest="action", required=True)
    p = add(key, "create", cmd_api_key_create, "create an API key (token shown once)")
    p.add_argument("org_id", type=id_argument)
    p.add_argument("--role", choices=["read_only", "maintainer", "admin"], default="maintainer")
    p.add_argument("--project", type=id_argument, default=None)
    p.add_argument("--description", default="", help="a name for the key, shown when listed")

    pool = sub.add_parser("ip-pool", help="dedicated IP pools").add_subparsers(dest="action", required=True)
    p = add(pool, "create", cmd_ip_pool_create, "create a pool of outbound IPs")
    p.add_argument("name", type=cli_commands.name_argument)
    p.add_argument("--ips", required=True, help="comma list of IPs")

    hook = sub.add_parser("webhook", help="webhook endpoints").add_subparsers(dest="action", required=True)
    p = add(hook, "create", cmd_webhook_create, "add an endpoint (its signing secret is shown once)")
    p.add_argument("project_id", type=id_argument)
    p.add_argument("url")
    p.add_argument("--events", default=",".join(WEBHOOK_EVENTS), help="comma list of event types")
    p = add(hook, "list", cmd_webhook_list, "a project's endpoints")
    p.add_argument("project_id", type=id_argument)

    admin = sub.add_parser("admin-token", help="the operator's super-admin API token").add_subparsers(
        dest="action", required=True
    )
    add(admin, "rotate", cmd_admin_token_rotate, "a new operator token (shown once); older ones stop working")
    add(admin, "show-hint", cmd_admin_token_show_hint, "which operator tokens exist (ids, never secrets)")

    user = sub.add_parser("user", help="dashboard users").add_subparsers(dest="action", required=True)
    p = add(user, "create", cmd_user_create, "create a user (a generated password, shown once)")
    p.add_argument("email")
    p.add_argument("--operator", action="store_true", help="sees and manages every organization")
    p.add_argument(
        "--org",
        type=id_argument,
        default=None,
        help="make the user a member of this organization",
    )
    p.add_argument("--role", choices=["admin", "maintainer", "read_only"], default=None)
    p = add(user, "reset-password", cmd_user_reset_password, "a new generated password; ends all sessions")
    p.add_argument("email")

    message = sub.add_parser("message", help="messages").add_subparsers(dest="action", required=True)
    p = add(message, "show", cmd_message_show, "a message's status, recipients and attempts")
    p.add_argument("message_id", type=id_argument)
    p.add_argument("--raw", action="store_true", help="print its bytes (a sandbox message's: as signed)")
    cli_commands.register(sub, add)  # the list commands, suppressions, status
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings: Settings | None = None
    try:
        settings = load_settings()
        if args.command not in cli_commands.CREATES_DATABASE:
            missing = cli_commands.database_missing(settings)
            if missing is not None:
                raise CliError(missing)
        result = uvloop.run(args.func(args, settings))
    except (ConfigError, CliError) as exc:
        _fail(str(exc), args.json)
        return 1
    except RemailsError as exc:
        _fail(exc.message, args.json)
        return 1
    except Unsuccessful as exc:
        _print(exc.result, args.json)
        return 1
    except (OSError, SystemExit) as exc:
        # uvicorn logs a bind error and exits: the OSError is the exit's context.
        cause = exc.__context__ if isinstance(exc, SystemExit) else exc
        in_use = cli_commands.port_in_use(cause, settings) if cause and settings else None
        if in_use is None:
            raise
        _fail(in_use, args.json)
        return 1
    except Exception as exc:
        # A value the database's constraints refused (SQLSTATE class 23) that no check above
        # caught: one line, not a driver traceback.
        if not str(getattr(exc, "sqlstate", "")).startswith("23"):
            raise
        _fail(f"the database refused the change: {str(exc).splitlines()[0]}", args.json)
        return 1
    except KeyboardInterrupt:
        return 130
    if result:
        _print(result, args.json)
    return 0


def _fail(message: str, as_json: bool) -> None:
    if report_failure(message):  # a worker of `remails up`: its supervisor prints it, last
        return
    if as_json:
        print(json.dumps({"error": message}))
    else:
        print(f"remails: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
