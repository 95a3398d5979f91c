"""The Terraform against the real schemas, offline: every kubernetes_manifest rendered by
Terraform and checked against its CRD in the provider's closed-object mode, every argument of
every kubernetes_* and upcloud_* resource against its provider's schema (block or attribute),
env references after their definitions, function Services cluster-local. Each check is also run
on a copy of the module broken on purpose, and must report it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hcl2.utils import SerializationOptions

from tests.infra import schemas

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "infra" / "terraform"
UPCLOUD = MODULE / "modules" / "upcloud"
RENDERED_FILES = ["variables.tf", "locals.tf"]
# Locals computed from resources (resource files); rendering gives them a plausible value.
RESOURCE_LOCALS = {"broker_url": "http://broker-ingress.knative-eventing.svc.cluster.local/remails/default"}
VARIABLES = {
    "image": "registry.example.com/remails@sha256:" + "0" * 64,
    "database_url": "postgresql://remails:secret@db.example.com:5432/remails",
    "master_key": "A" * 43 + "=",
    "hostname": "mail.example.com",
    "outbound_ips": '["203.0.113.7","203.0.113.8"]',
}

pytestmark = pytest.mark.skipif(
    not schemas.CLOUDCOIL.exists() or not schemas.CDKTF_KUBERNETES.exists(),
    reason="make test installs the schema packages into .infra-schemas",
)


def _parse(path: Path) -> dict[str, Any]:
    with path.open() as fh:
        parsed: dict[str, Any] = hcl2.load(
            fh, serialization_options=SerializationOptions(strip_string_quotes=True)
        )
    return parsed


def _resources(module: Path) -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path in sorted(module.glob("*.tf")):
        for entry in _parse(path).get("resource", []):
            for kind, named in entry.items():
                for name, body in named.items():
                    if not name.startswith("__"):
                        found.append((kind, name, body))
    return found


def _copy(tmp_path: Path, module: Path = MODULE) -> Path:
    target = tmp_path / module.name
    shutil.copytree(module, target, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}: the broken copy would not be broken"
    path.write_text(text.replace(old, new, 1))


# ---------------------------------------------------------------- kubernetes_manifest vs CRDs


def manifest_locals(module: Path) -> list[str]:
    """The local each kubernetes_manifest takes its object from (so all of them get rendered)."""
    names = []
    for kind, name, body in _resources(module):
        if kind != "kubernetes_manifest":
            continue
        manifest = body["manifest"]
        if manifest == "${each.value}":
            manifest = body["for_each"]
        assert isinstance(manifest, str) and manifest.startswith("${local."), (
            f"kubernetes_manifest.{name} must take its object from a local in locals.tf"
        )
        names.append(manifest[len("${local.") : -1])
    return names


def rendered(module: Path, **variables: str) -> dict[str, Any]:
    names = manifest_locals(module)
    return schemas.render_locals(module, RENDERED_FILES, names, {**VARIABLES, **variables}, RESOURCE_LOCALS)


def objects(module: Path, **variables: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for value in rendered(module, **variables).values():
        out.extend(value.values() if "apiVersion" not in value else [value])
    return out


def crd_errors(module: Path, **variables: str) -> list[str]:
    models = schemas.crd_models()
    return [
        f"{o['kind']} {o['metadata']['name']}: {e}"
        for o in objects(module, **variables)
        for e in models.validate(o)
    ]


@pytest.mark.parametrize("broker_class", ["Kafka", "MTChannelBasedBroker"])
def test_every_kubernetes_manifest_fits_its_crd_as_a_closed_object(broker_class: str) -> None:
    rendered_objects = objects(MODULE, broker_class=broker_class)
    kinds = {(o["apiVersion"], o["kind"]) for o in rendered_objects}
    assert kinds == {
        ("eventing.knative.dev/v1", "Broker"),
        ("eventing.knative.dev/v1", "Trigger"),
        ("sources.knative.dev/v1", "PingSource"),
        ("serving.knative.dev/v1", "Service"),
        ("cert-manager.io/v1", "Certificate"),
    }
    assert crd_errors(MODULE, broker_class=broker_class) == []
    broker = next(o for o in rendered_objects if o["kind"] == "Broker")
    # The Kafka Broker requires spec.config; the channel-based one has none.
    assert ("config" in broker["spec"]) is (broker_class == "Kafka")


def test_the_crd_check_reports_a_key_the_schema_does_not_list(tmp_path: Path) -> None:
    broken = _copy(tmp_path)
    _edit(
        broken / "locals.tf",
        'backoffDelay  = "PT0.5S"',
        'backoffDelay  = "PT0.5S"\n          timeout = "PT60S"',
    )
    assert crd_errors(broken) == [
        "Broker default: /spec/delivery/timeout: not in the schema (closed object BrokerSpecDelivery)"
    ]


def test_the_crd_check_reports_a_wrong_type_and_a_missing_required_field(tmp_path: Path) -> None:
    broken = _copy(tmp_path)
    _edit(
        broken / "locals.tf", "ports   = [{ containerPort = 8080 }]", 'ports   = [{ containerPort = "http" }]'
    )
    _edit(broken / "locals.tf", "secretName  = local.tls_secret\n", "")
    errors = crd_errors(broken)
    assert (
        "Service remails-validate: /spec/template/spec/containers/0/ports/0/containerPort:"
        " expected int, got 'http'" in errors
    )
    assert "Certificate remails-smtp: /spec/secretName: required" in errors


def test_a_manifest_written_inline_is_refused_so_none_escapes_rendering(tmp_path: Path) -> None:
    broken = _copy(tmp_path)
    _edit(broken / "eventing.tf", "manifest   = local.ping_manifest", 'manifest   = { apiVersion = "v1" }')
    with pytest.raises(AssertionError, match=r"kubernetes_manifest\.ping must take its object from a local"):
        manifest_locals(broken)


# ---------------------------------------------------------------- provider schemas


def argument_errors(module: Path) -> list[str]:
    providers = {"kubernetes": schemas.kubernetes_provider(), "upcloud": schemas.upcloud_provider()}
    errors = []
    for kind, name, body in _resources(module):
        schema = providers[kind.split("_")[0]].get(kind)
        if schema is None:
            errors.append(f"{kind}: no such resource in its provider")
            continue
        errors += [e.replace(kind, f"{kind}.{name}", 1) for e in schemas.check_arguments(kind, body, schema)]
    return errors


@pytest.mark.parametrize("module", [MODULE, UPCLOUD], ids=lambda p: p.name)
def test_every_resource_argument_is_in_its_provider_schema(module: Path) -> None:
    kinds = {kind for kind, _, _ in _resources(module)}
    assert kinds and all(k.startswith(("kubernetes_", "upcloud_")) for k in kinds)
    assert argument_errors(module) == []


def test_the_argument_check_reports_unknown_names_and_block_attribute_mixups(tmp_path: Path) -> None:
    broken = _copy(tmp_path)
    _edit(broken / "sender.tf", "host_network                     = true", "host_networking = true")
    _edit(
        broken / "edge.tf",
        "          env_from {\n"
        "            secret_ref { name = kubernetes_secret_v1.remails.metadata[0].name }\n          }",
        "          env_from = [{ secret_ref = { name = kubernetes_secret_v1.remails.metadata[0].name } }]",
    )
    _edit(broken / "main.tf", "wait_for_completion = true", "wait_for_completion { value = true }")
    assert sorted(argument_errors(broken)) == [
        "kubernetes_daemon_set_v1.sender.spec.template.spec.host_networking: not an argument",
        "kubernetes_deployment_v1.edge.spec.template.spec.container.env_from:"
        " a block, written as `env_from = ...`",
        "kubernetes_job_v1.migrate.wait_for_completion: an attribute, written as a block",
    ]


def test_the_argument_check_reads_dynamic_blocks_and_upcloud_blocks(tmp_path: Path) -> None:
    broken = _copy(tmp_path)
    _edit(broken / "network.tf", "namespace_selector {", "namespace_chooser {")
    up = _copy(tmp_path, UPCLOUD)
    _edit(up / "main.tf", "  ip_network {\n", "  ip_networks {\n")
    _edit(
        up / "main.tf",
        'zone   = var.zone\n  access = "public"',
        'zone   = var.zone\n  ip_address = "203.0.113.9"\n  access = "public"',
    )
    assert argument_errors(broken) == [
        "kubernetes_network_policy_v1.functions.spec.ingress.from.namespace_chooser: not an argument"
    ]
    assert sorted(argument_errors(up)) == [
        "upcloud_floating_ip_address.outbound.ip_address: read-only, set by the provider",
        "upcloud_network.remails.ip_networks: not an argument",
    ]


# ---------------------------------------------------------------- env order, visibility


def env_errors(module: Path) -> list[str]:
    errors = []
    for path in sorted(module.glob("*.tf")):
        for address, container in schemas.containers(path.read_text()):
            errors += [f"{address}: {e}" for e in schemas.env_order_errors(container)]
    for o in objects(module):
        errors += schemas.manifest_env_order_errors(o)
    return errors


def test_env_variables_are_referenced_only_after_they_are_defined(tmp_path: Path) -> None:
    assert env_errors(MODULE) == []
    broken = _copy(tmp_path)
    text = (broken / "sender.tf").read_text()
    node_env = text[
        text.index('          env {\n            name = "NODE_NAME"') : text.index(
            "          # After NODE_NAME"
        )
    ]
    dynamic = text[text.index("          # After NODE_NAME") : text.index("          env_from {")]
    (broken / "sender.tf").write_text(text.replace(node_env + dynamic, dynamic + node_env))
    assert env_errors(broken) == [
        "kubernetes_daemon_set_v1.sender: $(HOST_IP) used before HOST_IP is defined",
        "kubernetes_daemon_set_v1.sender: $(NODE_NAME) used before NODE_NAME is defined",
    ]
    _edit(broken / "locals.tf", 'REMAILS_BROKER_NAME = "default"', 'REMAILS_BROKER_NAME = "$(POD_NAME)"')
    assert "remails-validate: $(POD_NAME) used before it is defined" in env_errors(broken)


def visibility_errors(module: Path) -> list[str]:
    errors = []
    for o in objects(module):
        if o["kind"] != "Service":
            continue
        local = o["metadata"].get("labels", {}).get("networking.knative.dev/visibility") == "cluster-local"
        if local is (o["metadata"]["name"] == "remails-api"):
            errors.append(f"{o['metadata']['name']}: {'cluster-local' if local else 'public'}")
    return errors


def test_only_the_api_is_public_every_function_is_cluster_local(tmp_path: Path) -> None:
    assert visibility_errors(MODULE) == []
    broken = _copy(tmp_path)
    _edit(
        broken / "locals.tf", '"networking.knative.dev/visibility" = "cluster-local"', '"remails.eu/x" = "y"'
    )
    services = [o for o in objects(broken) if o["kind"] == "Service"]
    assert len(visibility_errors(broken)) == len(services) - 1  # every function, not the API


def test_upcloud_load_balancer_speaks_tcp_with_proxy_v2_on_the_service_ports() -> None:
    values = schemas.render_locals(
        MODULE, RENDERED_FILES, ["load_balancer_annotations", "proxy_protocol"], VARIABLES, RESOURCE_LOCALS
    )
    config = json.loads(
        values["load_balancer_annotations"]["service.beta.kubernetes.io/upcloud-load-balancer-config"]
    )
    service = next(b for k, n, b in _resources(MODULE) if k == "kubernetes_service_v1" and n == "smtp")
    port_names = sorted(p["name"] for p in service["spec"][0]["port"])
    assert sorted(f["name"] for f in config["frontends"]) == port_names == ["smtp", "smtps", "submission"]
    assert {f["mode"] for f in config["frontends"]} == {"tcp"}
    assert sorted(b["name"] for b in config["backends"]) == port_names
    assert {b["properties"]["outbound_proxy_protocol"] for b in config["backends"]} == {"v2"}
    assert values["proxy_protocol"] is True
    other = schemas.render_locals(
        MODULE,
        RENDERED_FILES,
        ["load_balancer_annotations", "proxy_protocol"],
        {**VARIABLES, "load_balancer": "other"},
        RESOURCE_LOCALS,
    )
    assert other == {"load_balancer_annotations": {}, "proxy_protocol": False}


def test_the_network_keeps_the_router_uks_attaches() -> None:
    network = next(b for k, n, b in _resources(UPCLOUD) if k == "upcloud_network")
    assert network["lifecycle"][0]["ignore_changes"] == ["router"]


def test_the_api_and_the_edge_know_the_outbound_ips_for_the_spf_records_they_print() -> None:
    api = rendered(MODULE)["api_manifest"]
    env = {e["name"]: e["value"] for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["REMAILS_OUTBOUND_IPS"] == "203.0.113.7,203.0.113.8"
    # The edge (where `kubectl exec … remails domain add` runs) gets the same common env.
    edge = (MODULE / "edge.tf").read_text()
    assert "for_each = merge(local.common_env, {" in edge


def test_every_role_gets_k_sink_from_terraform_not_from_a_sinkbinding() -> None:
    # A SinkBinding's webhook edits the bound workloads after apply: the provider then reports
    # an inconsistent result. So none is declared, and every workload names the Broker itself.
    services = [o for o in objects(MODULE) if o["kind"] == "Service"]
    assert all(o["kind"] != "SinkBinding" for o in objects(MODULE))
    for o in services:
        env = {e["name"]: e["value"] for e in o["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["K_SINK"] == RESOURCE_LOCALS["broker_url"], o["metadata"]["name"]
    for name in ("edge.tf", "sender.tf"):
        assert "K_SINK" in (MODULE / name).read_text() and "SinkBinding" not in (MODULE / name).read_text()
