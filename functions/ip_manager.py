"""ip_manager: put each outbound IP on a live node, and keep one Knative Trigger per outbound IP
pointing at the sender node that holds it.

On UpCloud (credentials mounted at REMAILS_UPCLOUD_CREDENTIALS_DIR), every `tick` first makes
sure each floating IP of REMAILS_OUTBOUND_IPS is attached to a Ready node, moves those on a node
that died or is gone to the live node holding the fewest, and keeps each one's reverse DNS at
REMAILS_HOSTNAME (forward-confirmed reverse DNS: receivers check it). The sender on that node
then finds it can bind the address and registers it.

On every `tick` it reads which live sender node holds which IP (and where that node takes
events) and makes the Triggers labelled `remails.eu/role=egress-route` match: one per IP,
filtering `type=message.routed, outboundip=<ip>`, subscriber the node's URL. So a node gets
exactly the routed messages for its IPs, and an IP that moves to another node follows.

Each Trigger's delivery timeout covers a whole sender attempt (the node answers only when the
attempt is over), and only the fields set here are compared with the cluster's, so what the
server adds (`filter: {}`, defaults) does not make every tick patch every Trigger.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cloudevents.http import CloudEvent

from remails.context import Context
from remails.db.egress import EgressRoute, live_routes
from remails.events import EventType
from remails.log import log_event
from remails_functions.upcloud import FloatingIp, UpCloud, UpCloudError

__all__ = [
    "FILTERS",
    "KubeTriggers",
    "Move",
    "Plan",
    "attempt_timeout",
    "desired_triggers",
    "handle",
    "live_servers",
    "managed",
    "place_ips",
    "plan",
    "ptr_fixes",
    "reconcile_ips",
]

FILTERS = [{"exact": {"type": EventType.TICK.value}}]
LABEL = "remails.eu/role"
ROLE = "egress-route"
HEARTBEATS_TO_BE_LIVE = 3
# An attempt may walk several MX hosts, each through connect, EHLO, STARTTLS, MAIL, RCPT and
# DATA, every step bounded by the SMTP client timeout.
STEPS_PER_ATTEMPT = 10

logger = logging.getLogger("remails.ip_manager")


def trigger_name(ip: str) -> str:
    return "egress-" + ip.replace(".", "-").replace(":", "x")


def attempt_timeout(smtp_client_timeout_seconds: float) -> str:
    """The egress Triggers' delivery timeout (ISO 8601): longer than any sender attempt."""
    return f"PT{int(smtp_client_timeout_seconds * STEPS_PER_ATTEMPT) + 30}S"


def desired_triggers(
    routes: list[EgressRoute], broker: str, timeout: str = attempt_timeout(60.0)
) -> dict[str, dict[str, Any]]:
    """The Trigger spec for each IP held by a live node."""
    return {
        trigger_name(r.ip): {
            "broker": broker,
            "filters": [{"exact": {"type": EventType.MESSAGE_ROUTED.value, "outboundip": r.ip}}],
            "subscriber": {"uri": r.url},
            "delivery": {"timeout": timeout},
        }
        for r in routes
    }


def managed(existing: Any, desired: Any) -> Any:
    """`existing` cut down to the keys `desired` sets, at every level of nested objects."""
    if isinstance(existing, dict) and isinstance(desired, dict):
        return {k: managed(existing[k], v) for k, v in desired.items() if k in existing}
    return existing


@dataclass(frozen=True)
class Plan:
    create: dict[str, dict[str, Any]]
    update: dict[str, dict[str, Any]]
    delete: list[str]


def plan(existing: dict[str, dict[str, Any]], desired: dict[str, dict[str, Any]]) -> Plan:
    """What to change so the cluster's egress Triggers are exactly `desired` (pure)."""
    return Plan(
        create={n: s for n, s in desired.items() if n not in existing},
        update={n: s for n, s in desired.items() if n in existing and managed(existing[n], s) != s},
        delete=sorted(n for n in existing if n not in desired),
    )


@dataclass(frozen=True)
class Move:
    address: str
    server: str  # the UpCloud server (node) to attach it to


def place_ips(ips: Sequence[FloatingIp], wanted: Collection[str], live: Sequence[str]) -> list[Move]:
    """Where each wanted floating IP must go (pure). One on a live server stays; one detached or
    on a dead server goes to the live server holding the fewest wanted IPs (ties: the order of
    `live`). With no live server nothing moves: an IP is never taken from a node to nowhere."""
    if not live:
        return []
    mine = sorted((ip for ip in ips if ip.address in wanted), key=lambda ip: ip.address)
    load = {server: 0 for server in live}
    for ip in mine:
        if ip.server in load:
            load[ip.server] += 1
    moves = []
    for ip in mine:
        if ip.server in load:
            continue
        target = min(live, key=lambda server: load[server])
        load[target] += 1
        moves.append(Move(ip.address, target))
    return moves


def ptr_fixes(ips: Sequence[FloatingIp], wanted: Collection[str], hostname: str) -> list[str]:
    """The wanted IPs whose reverse DNS is not `hostname` (pure)."""

    def norm(name: str) -> str:
        return name.rstrip(".").lower()

    return sorted(ip.address for ip in ips if ip.address in wanted and norm(ip.ptr_record) != norm(hostname))


def live_servers(nodes: dict[str, Any]) -> list[str]:
    """The UpCloud server UUIDs of the Ready nodes in a Kubernetes NodeList (pure). UKS nodes
    carry `spec.providerID: upcloud:////<server uuid>`."""
    servers = []
    for node in nodes.get("items", []):
        provider = str(node.get("spec", {}).get("providerID", ""))
        if not provider.startswith("upcloud://"):
            continue
        conditions = node.get("status", {}).get("conditions", [])
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            servers.append(provider.removeprefix("upcloud://").strip("/"))
    return sorted(servers)


class KubeTriggers:
    """Triggers in one namespace through the Kubernetes API, with the pod's service account."""

    ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")

    def __init__(self, client: httpx.AsyncClient, namespace: str) -> None:
        self.client = client
        self.base = f"/apis/eventing.knative.dev/v1/namespaces/{namespace}/triggers"
        self.namespace = namespace

    @classmethod
    def in_cluster(cls, namespace: str) -> KubeTriggers:
        token = (cls.ACCOUNT / "token").read_text().strip()
        client = httpx.AsyncClient(
            base_url="https://kubernetes.default.svc",
            headers={"Authorization": f"Bearer {token}"},
            verify=str(cls.ACCOUNT / "ca.crt"),
            timeout=10,
        )
        return cls(client, namespace)

    async def nodes(self) -> dict[str, Any]:
        response = await self.client.get("/api/v1/nodes")
        response.raise_for_status()
        nodes: dict[str, Any] = response.json()
        return nodes

    async def existing(self) -> dict[str, dict[str, Any]]:
        response = await self.client.get(self.base, params={"labelSelector": f"{LABEL}={ROLE}"})
        response.raise_for_status()
        return {item["metadata"]["name"]: item["spec"] for item in response.json().get("items", [])}

    def _object(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": name, "namespace": self.namespace, "labels": {LABEL: ROLE}},
            "spec": spec,
        }

    async def apply(self, changes: Plan) -> None:
        for name, spec in changes.create.items():
            (await self.client.post(self.base, json=self._object(name, spec))).raise_for_status()
        for name, spec in changes.update.items():
            patch = {"spec": spec}
            headers = {"Content-Type": "application/merge-patch+json"}
            (await self.client.patch(f"{self.base}/{name}", json=patch, headers=headers)).raise_for_status()
        for name in changes.delete:
            response = await self.client.delete(f"{self.base}/{name}")
            if response.status_code != 404:
                response.raise_for_status()


async def reconcile_ips(
    upcloud: UpCloud, live: Sequence[str], wanted: Collection[str], hostname: str
) -> list[Move]:
    """Attach the wanted floating IPs to live servers and set their reverse DNS."""
    ips = await upcloud.floating_ips()
    moves = place_ips(ips, wanted, live)
    done = []
    for move in moves:
        mac = await upcloud.public_mac(move.server)
        if mac is None:
            log_event(logger, "no public interface", server=move.server, ip=move.address)
            continue
        await upcloud.attach(move.address, mac)
        done.append(move)
    for address in ptr_fixes(ips, wanted, hostname):
        try:
            await upcloud.set_ptr(address, hostname)
        except UpCloudError as exc:  # e.g. the A record does not point at it yet; next tick
            log_event(logger, "reverse dns refused", ip=address, status=exc.status, code=exc.code)
    if done:
        log_event(logger, "outbound ips moved", moves={m.address: m.server for m in done})
    return done


def _credentials(directory: Path | None) -> Path | None:
    if directory and ((directory / "token").exists() or (directory / "username").exists()):
        return directory
    return None


async def reconcile(ctx: Context, kube: KubeTriggers) -> Plan:
    routes = await live_routes(ctx.pipeline, ctx.settings.heartbeat_seconds * HEARTBEATS_TO_BE_LIVE)
    timeout = attempt_timeout(ctx.settings.smtp_client_timeout_seconds)
    changes = plan(await kube.existing(), desired_triggers(routes, ctx.settings.broker_name, timeout))
    await kube.apply(changes)
    if changes.create or changes.update or changes.delete:
        log_event(
            logger,
            "egress triggers",
            created=sorted(changes.create),
            updated=sorted(changes.update),
            deleted=changes.delete,
        )
    return changes


_kube: KubeTriggers | None = None
_upcloud: UpCloud | None = None


async def handle(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    global _kube, _upcloud
    if _kube is None:
        _kube = KubeTriggers.in_cluster(ctx.settings.namespace)
    credentials = _credentials(ctx.settings.upcloud_credentials_dir)
    if credentials is not None:
        if _upcloud is None:
            _upcloud = UpCloud.from_credentials(credentials, ctx.settings.upcloud_api_url)
        try:
            live = live_servers(await _kube.nodes())
            await reconcile_ips(_upcloud, live, ctx.settings.outbound_ips, ctx.settings.hostname)
        except (httpx.HTTPError, UpCloudError) as exc:  # the Triggers are still kept below
            log_event(logger, "outbound ip placement failed", logging.WARNING, error=str(exc))
    await reconcile(ctx, _kube)
    return None
