"""Settings: every `REMAILS_*` environment variable, parsed once at start-up into a frozen object.

A bad value fails with one line naming the variable and what is wrong (`ConfigError`).
The README's settings table documents each field; keep the two in step.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from remails.errors import ConfigError
from remails.webhook_policy import DEFAULT_SCHEDULE, parse_schedule

__all__ = [
    "ConfigError",
    "HostPort",
    "Settings",
    "check_proxy_settings",
    "load_settings",
    "parse_host_port",
]

MiB = 1024 * 1024


HostPort = tuple[str, int]


def parse_host_port(value: str, default_port: int | None = None) -> HostPort:
    """`host:port`, `[v6]:port`, or a bare host when `default_port` is given."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"unclosed '[' in {value!r}")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"missing host in {value!r}")
    if not port_text:
        if default_port is None:
            raise ValueError(f"missing port in {value!r} (expected host:port)")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad port in {value!r}")
    return host, int(port_text)


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]
Listen = Annotated[HostPort, NoDecode]


class Settings(BaseSettings):
    """All settings of every role; each role reads the ones it needs."""

    model_config = SettingsConfigDict(env_prefix="REMAILS_", frozen=True, extra="ignore")

    database_url: str | None = None
    data_dir: Path = Path("./.remails")
    hostname: str = "localhost"
    smtp_submission_listen: Listen = ("127.0.0.1", 2587)
    smtp_tls_listen: Listen = ("127.0.0.1", 2465)
    smtp_mx_listen: Listen = ("127.0.0.1", 2525)  # the inbound MX: bounces, complaints, reports
    reports_domain: str | None = None  # DMARC report and feedback addresses; default: hostname
    http_listen: Listen = ("127.0.0.1", 8080)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    outbound_ips: CommaList = Field(default_factory=lambda: ["127.0.0.1"])
    dns_servers: Annotated[list[HostPort], NoDecode] = Field(default_factory=list)
    delivery_port: int = Field(default=25, ge=1, le=65535)
    secret_key: str | None = None
    bus: Literal["inprocess", "knative"] = "inprocess"
    tick_seconds: float = Field(default=10.0, gt=0)
    workers: int = Field(default=1, ge=1, le=64)
    worker_index: int | None = Field(default=None, ge=0)  # set by `remails up` in its workers
    # The sender node in a process of its own, linked to the one that accepts and routes: a
    # second core for Python. Unset: on when this process may run on two CPUs or more. The
    # role and the link are set by `remails up` in its workers.
    sender_process: bool | None = None
    worker_role: Literal["all", "front", "sender"] = "all"
    database_embedded: bool = False  # in a worker: the supervisor's URL is its embedded server
    sender_link: str | None = None
    db_pool_size: int = Field(default=10, ge=2, le=200)
    db_pipeline_pool_size: int = Field(default=20, ge=2, le=200)
    bus_workers: int = Field(default=32, ge=1, le=1024)
    bus_queue_size: int = Field(default=100_000, ge=100)
    bus_dead_letters_kept: int = Field(default=1000, ge=1)
    bus_batch_max: int = Field(default=64, ge=1, le=10_000)
    bus_batch_wait_seconds: float = Field(default=0.0, ge=0, le=1)

    # Operations: metrics, embedded PostgreSQL supervision, backups
    metrics_listen: Listen = ("127.0.0.1", 9464)
    embedded_postgres_check_seconds: float = Field(default=1.0, gt=0)
    embedded_postgres_restart_seconds: float = Field(default=30.0, gt=0)
    backup_recipients: CommaList = Field(default_factory=list)
    backup_s3_endpoint: str | None = None

    # SMTP edge
    smtp_max_message_size: int = Field(default=25 * MiB, ge=1024)
    smtp_max_recipients: int = Field(default=50, ge=1, le=1000)
    trusted_networks: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    proxy_protocol: bool = False
    proxy_trusted_networks: CommaList = Field(default_factory=list)
    auth_max_failures: int = Field(default=5, ge=1)
    auth_failure_window_seconds: float = Field(default=300.0, gt=0)
    smtp_max_connections: int = Field(default=1000, ge=1)
    smtp_max_connections_per_ip: int = Field(default=50, ge=1)
    smtp_junk_command_limit: int = Field(default=100, ge=1)
    smtp_session_timeout_seconds: float = Field(default=300.0, gt=0)
    smtp_proxy_timeout_seconds: float = Field(default=5.0, gt=0)
    smtp_store_budget_bytes: int = Field(default=64 * MiB, ge=1)
    # Group commit: messages of several sessions stored in one commit (1: a commit each)
    smtp_accept_batch_max: int = Field(default=32, ge=1)
    smtp_accept_batch_wait_ms: float = Field(default=0.0, ge=0, le=1000)
    tls_reload_seconds: float = Field(default=30.0, gt=0)

    # HTTP API
    api_max_body_bytes: int = Field(default=36 * MiB, ge=1024)
    api_rate_per_second: float = Field(default=20.0, gt=0)
    api_rate_burst: int = Field(default=100, ge=1)
    api_auth_failure_rate_per_second: float = Field(default=1.0, gt=0)
    api_auth_failure_burst: int = Field(default=20, ge=1)
    http_header_timeout_seconds: float = Field(default=10.0, gt=0)
    http_max_concurrency: int = Field(default=1000, ge=1)
    # Reverse proxies whose X-Forwarded-For (and -Proto) names the client: the browser's address
    # the audit log and the sign-in throttle see. Behind an ingress that is not on loopback,
    # every browser would otherwise be the ingress — one client, throttled for everyone.
    http_trusted_proxies: CommaList = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])

    # Dashboard accounts
    signup: Literal["closed", "open"] = "closed"
    session_seconds: float = Field(default=12 * 3600.0, gt=0)
    # Where users reach the dashboard, for the links in mails (password reset, invitation):
    # never taken from a request's Host header, which whoever asks for a reset chooses.
    public_url: str | None = Field(default=None, pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$")
    # Each invitation may mail a stranger through the operator's system mail, with a subject the
    # inviting organization names: a bound on how much of that one organization can send.
    invitations_per_day: int = Field(default=50, ge=1)
    login_max_failures: int = Field(default=5, ge=1)
    login_failure_window_seconds: float = Field(default=900.0, gt=0)

    # Notifications, system mail, quota plans, retention
    system_project_id: UUID | None = None
    system_from: str | None = None
    default_monthly_quota: int = Field(default=3000, ge=0)
    dns_recheck_seconds: float = Field(default=72000.0, gt=0)
    metadata_retention_days: int = Field(default=90, ge=1)
    audit_retention_days: int = Field(default=365, ge=1)

    # Webhooks
    webhooks_allow_private: bool = False
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: parse_schedule(DEFAULT_SCHEDULE)
    )
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_disable_after_seconds: float = Field(default=5 * 86400.0, gt=0)
    webhook_response_max_bytes: int = Field(default=64 * 1024, ge=0)

    # Delivery and retries
    node_name: str | None = None
    node_url: str | None = None
    outbound_ips_discover: bool = False
    broker_name: str = "default"
    namespace: str = "remails"
    retry_first_seconds: float = Field(default=60.0, gt=0)
    retry_max_seconds: float = Field(default=1800.0, gt=0)
    message_lifetime_seconds: float = Field(default=86400.0, gt=0)
    stuck_after_seconds: float = Field(default=120.0, gt=0)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    require_verified_tls: bool = False
    dkim_rotation_days: float | None = Field(default=None, gt=0)  # off unless set
    dkim_rotation_grace_days: float = Field(default=7.0, ge=0)
    dkim_signing_process: bool = True  # the sender signs in a child process (signing_process.py)
    tls_ca_file: Path | None = None  # PEM bundle trusted beside the system CAs for outbound TLS
    mta_sts: bool = True  # honour the destinations' MTA-STS policies (RFC 8461)
    mta_sts_port: int = Field(default=443, ge=1, le=65535)  # for tests and private deployments
    smtp_client_timeout_seconds: float = Field(default=60.0, gt=0)
    # Per-site shaping (sender_node/shaping.py): defaults per (egress IP, destination site)
    shaping_file: Path | None = None  # a TOML file of per-site overrides, over the shipped one
    shaping_max_connections: int = Field(default=10, ge=1)
    shaping_max_messages_per_connection: int = Field(default=100, ge=1)
    shaping_max_deliveries_per_minute: int = Field(default=60_000, ge=1)
    shaping_idle_seconds: float = Field(default=5.0, gt=0)
    shaping_queue_max: int = Field(default=10_000, ge=1)  # destinations waiting per (IP, site)
    shaping_max_wait_seconds: float = Field(default=300.0, gt=0)
    shaping_window_seconds: float = Field(default=60.0, gt=0)  # the rate's window (tests shorten it)
    sender_max_in_flight: int = Field(default=5000, ge=1)  # messages a sender node holds at once
    # ... of which one organization may hold this many: a burst leaves room for the others
    sender_max_in_flight_per_organization: int = Field(default=1000, ge=1)
    upcloud_credentials_dir: Path | None = None
    upcloud_api_url: str = "https://api.upcloud.com/1.3"

    @field_validator(
        "smtp_submission_listen",
        "smtp_tls_listen",
        "smtp_mx_listen",
        "http_listen",
        "metrics_listen",
        mode="before",
    )
    @classmethod
    def _listen(cls, value: Any) -> Any:
        return parse_host_port(value) if isinstance(value, str) else value

    @field_validator("node_name")
    @classmethod
    def _node_name(cls, value: str | None) -> str | None:
        # A sending lease is named "node#attempt": a '#' in a node's name could make one node's
        # restart release another's leases.
        if value is not None and "#" in value:
            raise ValueError("a node name cannot contain '#'")
        return value

    @field_validator("outbound_ips", mode="before")
    @classmethod
    def _ips(cls, value: Any) -> Any:
        ips = _split_commas(value)
        for ip in ips:
            ipaddress.ip_address(ip)  # raises ValueError naming the address
        return ips

    @field_validator("dns_servers", mode="before")
    @classmethod
    def _dns(cls, value: Any) -> Any:
        servers = [parse_host_port(s, 53) if isinstance(s, str) else s for s in _split_commas(value)]
        for host, _ in servers:
            ipaddress.ip_address(host)
        return servers

    @field_validator("trusted_networks", mode="before")
    @classmethod
    def _trusted(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        networks: dict[str, str] = {}
        for item in _split_commas(value):
            cidr, sep, project = item.partition("=")
            if not sep or not project.strip():
                raise ValueError(f"expected CIDR=PROJECT_ID, got {item!r}")
            networks[str(ipaddress.ip_network(cidr.strip(), strict=False))] = project.strip()
        return networks

    @field_validator("proxy_trusted_networks", "http_trusted_proxies", mode="before")
    @classmethod
    def _proxy_networks(cls, value: Any) -> Any:
        return [str(ipaddress.ip_network(cidr, strict=False)) for cidr in _split_commas(value)]

    @field_validator("backup_recipients", mode="before")
    @classmethod
    def _recipients(cls, value: Any) -> Any:
        keys = _split_commas(value)
        for key in keys:
            if not (isinstance(key, str) and key.startswith("age1")):
                raise ValueError(f"expected age public keys (age1…), got {str(key)[:12]!r}")
        return keys

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        return parse_schedule(value) if isinstance(value, str) else value

    @field_validator("reports_domain")
    @classmethod
    def _reports_domain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.strip().rstrip(".").lower()
        if "." not in name or any(c in name for c in " @/:"):
            raise ValueError(f"expected a domain name like reports.example.com, got {value!r}")
        return name

    @field_validator("system_project_id", "system_from", "public_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value  # Terraform sets them, empty when unused

    @field_validator("system_from")
    @classmethod
    def _system_from(cls, value: str | None) -> str | None:
        local, at, domain = (value or "").rpartition("@")
        if value is not None and (not at or not local or "." not in domain or " " in value):
            raise ValueError(f"expected an address like notifications@example.com, got {value!r}")
        return value

    @property
    def system_mail(self) -> bool:
        """Notifications are mailed only when both the system project and sender are set."""
        return self.system_project_id is not None and self.system_from is not None

    @property
    def effective_reports_domain(self) -> str:
        return (self.reports_domain or self.hostname).lower().rstrip(".")

    @property
    def uses_sender_process(self) -> bool:
        if self.sender_process is not None:
            return self.sender_process
        return self.workers == 1 and len(os.sched_getaffinity(0)) >= 2

    @property
    def effective_node_name(self) -> str:
        return self.node_name or self.hostname

    @property
    def effective_public_url(self) -> str:
        """The dashboard's public address without a trailing slash; unset, the address it
        listens on (its host name when it listens on every address)."""
        if self.public_url is not None:
            return self.public_url.rstrip("/")
        host, port = self.http_listen
        if _is_ip(host) and ipaddress.ip_address(host).is_unspecified:
            host = self.hostname
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (plus explicit overrides); raise ConfigError naming the variable."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "REMAILS_" + str(first["loc"][0]).upper() if first["loc"] else "REMAILS_*"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{name}: {message}") from None
    check_proxy_settings(settings)
    return settings


def check_proxy_settings(settings: Settings) -> None:
    """PROXY protocol lets the peer name the client: only the load balancers may do that."""
    if settings.proxy_protocol and not settings.proxy_trusted_networks:
        raise ConfigError(
            "REMAILS_PROXY_TRUSTED_NETWORKS: list the load balancers' networks (CIDR,…)"
            " when REMAILS_PROXY_PROTOCOL is on"
        )
