"""The alert rules and the Grafana dashboard in infra/observability: promtool accepts the rules
and their unit tests pass, and every remails_* series they name is one the service exports."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import yaml

from remails import metrics
from remails.db.operations import Figures

FOLDER = Path(__file__).parents[2] / "infra" / "observability"
SERIES = re.compile(r"\bremails_[a-z_]+\b")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # promtool comes from Debian's prometheus package (`make debian-tools` installs it).
    return subprocess.run(["promtool", *args], cwd=FOLDER, capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_rules() -> None:
    checked = promtool("check", "rules", "alerts.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_the_rules_unit_tests_pass() -> None:
    tested = promtool("test", "rules", "alerts_test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def exported_series() -> set[str]:
    names: set[str] = set()
    for family in metrics._FAMILIES:
        for sample_family in family.collect():
            names |= {s.name for s in sample_family.samples} | {sample_family.name}
    names |= {f"{n}_total" for n in list(names)}
    names |= {f"{metrics.ACCEPT_TO_FINAL._name}_{s}" for s in ("bucket", "sum", "count")}
    collector = metrics.DatabaseCollector()
    collector.up = True
    now = datetime.now(UTC)
    collector.figures = Figures({}, 0, {"verified": 0, "unverified": 0}, now, now)
    names |= {family.name for family in collector.collect()}
    return names


def test_rules_and_dashboard_name_only_exported_series() -> None:
    exported = exported_series()
    rules = yaml.safe_load((FOLDER / "alerts.yaml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((FOLDER / "grafana-dashboard.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = set().union(*(SERIES.findall(e) for e in exprs))
    assert used, "no remails series named"
    assert used <= exported, sorted(used - exported)
    alerts = {rule.get("alert") for group in rules["groups"] for rule in group["rules"]}
    for wanted in (
        "RemailsQueueBacklogGrowing",
        "RemailsDeadLetters",
        "RemailsDeliveryFailureRatioHigh",
        "RemailsWebhookBacklog",
        "RemailsDomainTurnedInvalid",
        "RemailsBackupTooOld",
    ):
        assert wanted in alerts
