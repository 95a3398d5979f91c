"""ip_manager: keep one Knative Trigger per outbound IP, pointing at the sender node that holds it.

On every `tick` it reads which live sender node holds which IP (and where that node takes
events) and makes the Triggers labelled `remails.eu/role=egress-route` match: one per IP,
filtering `type=message.routed, outboundip=<ip>`, subscriber the node's URL. So a node gets
exactly the routed messages for its IPs, and an IP that moves to another node follows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cloudevents.http import CloudEvent

from remails.context import Context
from remails.db.egress import EgressRoute, live_routes
from remails.events import EventType
from remails.log import log_event

__all__ = ["FILTERS", "KubeTriggers", "Plan", "desired_triggers", "handle", "plan"]

FILTERS = [{"exact": {"type": EventType.TICK.value}}]
LABEL = "remails.eu/role"
ROLE = "egress-route"
HEARTBEATS_TO_BE_LIVE = 3

logger = logging.getLogger("remails.ip_manager")


def trigger_name(ip: str) -> str:
    return "egress-" + ip.replace(".", "-").replace(":", "x")


def desired_triggers(routes: list[EgressRoute], broker: str) -> dict[str, dict[str, Any]]:
    """The Trigger spec for each IP held by a live node."""
    return {
        trigger_name(r.ip): {
            "broker": broker,
            "filters": [{"exact": {"type": EventType.MESSAGE_ROUTED.value, "outboundip": r.ip}}],
            "subscriber": {"uri": r.url},
        }
        for r in routes
    }


@dataclass(frozen=True)
class Plan:
    create: dict[str, dict[str, Any]]
    update: dict[str, dict[str, Any]]
    delete: list[str]


def plan(existing: dict[str, dict[str, Any]], desired: dict[str, dict[str, Any]]) -> Plan:
    """What to change so the cluster's egress Triggers are exactly `desired` (pure)."""
    return Plan(
        create={n: s for n, s in desired.items() if n not in existing},
        update={n: s for n, s in desired.items() if n in existing and existing[n] != s},
        delete=sorted(n for n in existing if n not in desired),
    )


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


async def reconcile(ctx: Context, kube: KubeTriggers) -> Plan:
    routes = await live_routes(ctx.pipeline, ctx.settings.heartbeat_seconds * HEARTBEATS_TO_BE_LIVE)
    changes = plan(await kube.existing(), desired_triggers(routes, ctx.settings.broker_name))
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


async def handle(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    global _kube
    if _kube is None:
        _kube = KubeTriggers.in_cluster(ctx.settings.namespace)
    await reconcile(ctx, _kube)
    return None
