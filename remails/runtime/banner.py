"""What `remails up` tells the person who started it: where everything listens, how to run the
CLI against it, where the operator token is."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from remails.cli_commands import how_to_run
from remails.config import HostPort, Settings

__all__ = ["Listening", "notification_mail", "show_token", "welcome"]


@dataclass(frozen=True)
class Listening:
    """Where a started runtime listens (the ports the OS gave for `:0` included)."""

    submission: HostPort
    tls: HostPort
    mx: HostPort
    api: HostPort


def welcome(settings: Settings, listening: Listening) -> str:
    sub_host, sub_port = listening.submission
    api_host, api_port = listening.api
    tls_host, tls_port = listening.tls
    mx_host, mx_port = listening.mx
    database = (
        settings.database_url and not settings.database_embedded and "REMAILS_DATABASE_URL"
    ) or f"embedded, {(settings.data_dir / 'postgres').resolve()}"
    cli = how_to_run(sys.argv[0], shutil.which("remails"), Path.cwd())
    return "\n".join(
        [
            "remails is up",
            f"  SMTP submission (STARTTLS)  {sub_host}:{sub_port}",
            f"  SMTP submission (TLS)       {tls_host}:{tls_port}",
            f"  SMTP inbound MX (bounces)   {mx_host}:{mx_port}",
            f"  HTTP API                    http://{api_host}:{api_port}  (docs at /docs)",
            "  metrics                     http://{}:{}/metrics".format(*settings.metrics_listen),
            f"  database                    {database}",
            f"  outbound IPs                {', '.join(settings.outbound_ips)}",
            f"  notification e-mail         {notification_mail(settings)}",
            f"  operator API token          in {(settings.data_dir / 'admin-token').resolve()}",
            "get going (in another terminal, in this directory and with the same REMAILS_* settings:",
            "the CLI works on this server's database and reads its settings from its own environment):",
            f"  {cli} org create Acme",
            f"  {cli} project create ORG_ID main",
            f"  {cli} domain add PROJECT_ID example.com   # then publish the printed DNS records",
            f"  {cli} domain verify example.com",
            f"  {cli} smtp-credential create PROJECT_ID   # SMTP username and password",
            f"  {cli} status                              # is it up, what is queued",
        ]
    )


def notification_mail(settings: Settings) -> str:
    if settings.system_mail:
        return f"from {settings.system_from} (project {settings.system_project_id})"
    return "off: set REMAILS_SYSTEM_PROJECT_ID and REMAILS_SYSTEM_FROM (notifications are only recorded)"


def show_token(settings: Settings, token: str | None) -> None:
    if token:
        print(
            f"operator API token (shown once; also in {settings.data_dir / 'admin-token'}):\n  {token}",
            file=sys.stderr,
            flush=True,
        )
