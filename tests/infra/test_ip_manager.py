"""ip_manager's decisions about the egress Triggers (pure: no cluster needed)."""

from __future__ import annotations

import copy

from remails.db.egress import EgressRoute
from remails_functions.ip_manager import attempt_timeout, desired_triggers, managed, plan

ROUTES = [EgressRoute(ip="203.0.113.7", node_name="node-a", url="http://10.0.0.5:8090/")]


def test_the_delivery_timeout_outlasts_a_whole_sender_attempt() -> None:
    spec = desired_triggers(ROUTES, "default", attempt_timeout(60.0))["egress-203-0-113-7"]
    assert spec["delivery"] == {"timeout": "PT630S"}
    # Ten SMTP steps at the client timeout each fit inside it.
    assert int(spec["delivery"]["timeout"][2:-1]) > 10 * 60


def test_what_the_server_adds_does_not_cause_an_update() -> None:
    desired = desired_triggers(ROUTES, "default")
    stored = copy.deepcopy(desired)
    # As the API server returns it: defaults added, an empty legacy filter, a delivery default.
    stored["egress-203-0-113-7"]["filter"] = {}
    stored["egress-203-0-113-7"]["delivery"]["backoffPolicy"] = "exponential"
    assert plan(stored, desired).update == {}


def test_a_changed_field_we_set_is_updated_and_strays_are_deleted() -> None:
    desired = desired_triggers(ROUTES, "default")
    stored = copy.deepcopy(desired)
    stored["egress-203-0-113-7"]["subscriber"] = {"uri": "http://10.0.0.6:8090/"}
    stored["egress-198-51-100-1"] = {"broker": "default"}
    changes = plan(stored, desired)
    assert list(changes.update) == ["egress-203-0-113-7"]
    assert changes.delete == ["egress-198-51-100-1"]
    assert changes.create == {}


def test_managed_keeps_only_the_keys_desired_sets() -> None:
    assert managed({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 0}}) == {"a": {"b": 1}}
    assert managed([1, 2], [1]) == [1, 2]
