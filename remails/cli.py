"""The `remails` command: run the service and manage it as an operator.

Every command takes `--json` and then prints exactly one JSON object; `create`/`add` commands
print the new object with its `id`. Secrets (passwords, tokens) are printed once, here.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Any
from uuid import UUID

import uvloop

from remails.config import ConfigError, Settings, load_settings
from remails.crypto import load_master_key
from remails.db import Database, connect, credentials, domains, egress, messages, orgs, webhooks
from remails.db.migrate import migrate
from remails.dns import make_resolver
from remails.errors import RemailsError
from remails.sending_domains import add_sending_domain, domain_view, verify_sending_domain
from remails.types import WebhookEventType, literal_values

__all__ = ["main"]

WEBHOOK_EVENTS = literal_values(WebhookEventType)

Command = Callable[[argparse.Namespace, Settings], Awaitable[dict[str, Any]]]


class CliError(Exception):
    """A user error: printed as one line, exit status 1."""


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
    result = _jsonable(result)
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        print(f"{key}: {shown}")


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an id: {text!r}") from None


async def _with_db(
    settings: Settings, work: Callable[[Database], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    db = await connect(settings, max_size=2)
    try:
        return await work(db)
    finally:
        await db.close()


async def cmd_migrate(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    db = await connect(settings, max_size=2, run_migrations=False)
    try:
        return {"applied": await migrate(db.pool), "up_to_date": True}
    finally:
        await db.close()


async def cmd_org_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        org = await orgs.create_organization(db.pool, args.name, args.monthly_quota)
        return vars(org)

    return await _with_db(settings, work)


async def cmd_org_set_pool(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        ip_pool = await egress.get_ip_pool_by_name(db.pool, args.pool)
        if ip_pool is None:
            raise CliError(f"no IP pool named {args.pool!r}")
        if not await orgs.set_ip_pool(db.pool, args.org_id, ip_pool.id):
            raise CliError(f"no organization {args.org_id}")
        return {"id": args.org_id, "ip_pool_id": ip_pool.id, "ip_pool": ip_pool.name}

    return await _with_db(settings, work)


async def cmd_project_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        if await orgs.get_organization(db.pool, args.org_id) is None:
            raise CliError(f"no organization {args.org_id}")
        project = await orgs.create_project(db.pool, args.org_id, args.name, args.retention_days)
        return vars(project)

    return await _with_db(settings, work)


async def cmd_domain_add(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        project = await orgs.get_project(db.pool, args.project_id)
        if project is None:
            raise CliError(f"no project {args.project_id}")
        master_key = load_master_key(settings.secret_key, settings.data_dir)
        domain = await add_sending_domain(
            db.pool, master_key, project.organization_id, [project.id], args.domain
        )
        return domain_view(domain, settings.outbound_ips)

    return await _with_db(settings, work)


async def cmd_domain_verify(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        domain = await domains.get_domain_by_name(db.pool, args.domain)
        if domain is None:
            raise CliError(f"no domain {args.domain!r}")
        _, result = await verify_sending_domain(
            db.pool, make_resolver(settings), domain, settings.outbound_ips, force=args.force
        )
        return result

    return await _with_db(settings, work)


async def cmd_smtp_credential_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        if await orgs.get_project(db.pool, args.project_id) is None:
            raise CliError(f"no project {args.project_id}")
        credential, password = await credentials.create_smtp_credential(db.pool, args.project_id)
        return {**vars(credential), "password": password}

    return await _with_db(settings, work)


async def cmd_api_key_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        if await orgs.get_organization(db.pool, args.org_id) is None:
            raise CliError(f"no organization {args.org_id}")
        if args.project is not None:
            project = await orgs.get_project(db.pool, args.project)
            if project is None or project.organization_id != args.org_id:
                raise CliError(f"no project {args.project} in organization {args.org_id}")
        key, token = await credentials.create_api_key(db.pool, args.org_id, args.role, args.project)
        return {**vars(key), "token": token}

    return await _with_db(settings, work)


async def cmd_ip_pool_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    ips = [ip.strip() for ip in args.ips.split(",") if ip.strip()]
    try:
        load_settings(outbound_ips=ips)  # the same address validation as the setting
    except ConfigError as exc:
        raise CliError(str(exc).replace("REMAILS_OUTBOUND_IPS", "--ips")) from None

    async def work(db: Database) -> dict[str, Any]:
        return vars(await egress.create_ip_pool(db.pool, args.name, ips))

    return await _with_db(settings, work)


async def cmd_message_show(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        detail = await messages.get_message_detail(db.pool, args.message_id)
        if detail is None:
            raise CliError(f"no message {args.message_id}")
        return detail

    return await _with_db(settings, work)


async def cmd_webhook_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from uuid import uuid4

    from functions.webhooks import UnsafeTarget, check_target
    from remails.webhook_signing import generate_webhook_secret

    events = [e.strip() for e in args.events.split(",") if e.strip()]
    unknown = sorted(set(events) - set(WEBHOOK_EVENTS))
    if unknown or not events:
        raise CliError(f"--events: unknown {unknown}; choose from {', '.join(WEBHOOK_EVENTS)}")
    try:
        await check_target(settings, args.url)
    except UnsafeTarget as exc:
        raise CliError(f"URL {exc}") from None

    async def work(db: Database) -> dict[str, Any]:
        if await orgs.get_project(db.pool, args.project_id) is None:
            raise CliError(f"no project {args.project_id}")
        master_key = load_master_key(settings.secret_key, settings.data_dir)
        secret, endpoint_id = generate_webhook_secret(), uuid4()
        sealed = master_key.seal(secret.encode(), context=f"webhook:{endpoint_id}")
        endpoint = await webhooks.create_endpoint(
            db.pool, endpoint_id, args.project_id, args.url, events, sealed
        )
        return {**vars(endpoint), "secret": secret}

    return await _with_db(settings, work)


async def cmd_webhook_list(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async def work(db: Database) -> dict[str, Any]:
        return {"webhooks": [vars(e) for e in await webhooks.list_endpoints(db.pool, args.project_id)]}

    return await _with_db(settings, work)


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
    parser = argparse.ArgumentParser(prog="remails", description=__doc__, parents=[common])
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

    org = sub.add_parser("org", help="organizations").add_subparsers(dest="action", required=True)
    p = add(org, "create", cmd_org_create, "create an organization")
    p.add_argument("name")
    p.add_argument("--monthly-quota", type=int, default=None)
    p = add(org, "set-pool", cmd_org_set_pool, "give an organization a dedicated IP pool")
    p.add_argument("org_id", type=_uuid)
    p.add_argument("pool", help="IP pool name")

    project = sub.add_parser("project", help="projects").add_subparsers(dest="action", required=True)
    p = add(project, "create", cmd_project_create, "create a project")
    p.add_argument("org_id", type=_uuid)
    p.add_argument("name")
    p.add_argument("--retention-days", type=int, default=None)

    domain = sub.add_parser("domain", help="sending domains").add_subparsers(dest="action", required=True)
    p = add(domain, "add", cmd_domain_add, "add a domain; prints the DNS records to publish")
    p.add_argument("project_id", type=_uuid)
    p.add_argument("domain")
    p = add(domain, "verify", cmd_domain_verify, "check the domain's DNS records")
    p.add_argument("domain")
    p.add_argument("--force", action="store_true", help="mark verified by operator decision")

    cred = sub.add_parser("smtp-credential", help="SMTP credentials").add_subparsers(
        dest="action", required=True
    )
    p = add(cred, "create", cmd_smtp_credential_create, "create a credential (password shown once)")
    p.add_argument("project_id", type=_uuid)

    key = sub.add_parser("api-key", help="API keys").add_subparsers(dest="action", required=True)
    p = add(key, "create", cmd_api_key_create, "create an API key (token shown once)")
    p.add_argument("org_id", type=_uuid)
    p.add_argument("--role", choices=["read_only", "maintainer", "admin"], default="maintainer")
    p.add_argument("--project", type=_uuid, default=None)

    pool = sub.add_parser("ip-pool", help="dedicated IP pools").add_subparsers(dest="action", required=True)
    p = add(pool, "create", cmd_ip_pool_create, "create a pool of outbound IPs")
    p.add_argument("name")
    p.add_argument("--ips", required=True, help="comma list of IPs")

    hook = sub.add_parser("webhook", help="webhook endpoints").add_subparsers(dest="action", required=True)
    p = add(hook, "create", cmd_webhook_create, "add an endpoint (its signing secret is shown once)")
    p.add_argument("project_id", type=_uuid)
    p.add_argument("url")
    p.add_argument("--events", default=",".join(WEBHOOK_EVENTS), help="comma list of event types")
    p = add(hook, "list", cmd_webhook_list, "a project's endpoints")
    p.add_argument("project_id", type=_uuid)

    message = sub.add_parser("message", help="messages").add_subparsers(dest="action", required=True)
    p = add(message, "show", cmd_message_show, "a message's status, recipients and attempts")
    p.add_argument("message_id", type=_uuid)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        result = uvloop.run(args.func(args, settings))
    except (ConfigError, CliError) as exc:
        _fail(str(exc), args.json)
        return 1
    except RemailsError as exc:
        _fail(exc.message, args.json)
        return 1
    except KeyboardInterrupt:
        return 130
    if result:
        _print(result, args.json)
    return 0


def _fail(message: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"error": message}))
    else:
        print(f"remails: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
