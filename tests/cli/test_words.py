"""The pure decisions behind what the CLI and API say: how to run the CLI, why a message waits,
whether a retry can do anything."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from remails.cli_commands import how_to_run
from remails.message_view import explain, retry_refusal


def test_how_to_run_the_cli(tmp_path: Path) -> None:
    script = tmp_path / ".venv" / "bin" / "remails"
    script.parent.mkdir(parents=True)
    script.touch()
    assert how_to_run(str(script), str(script), tmp_path) == "remails"  # this one is on PATH
    assert how_to_run(str(script), None, tmp_path) == ".venv/bin/remails"
    assert how_to_run(".venv/bin/remails", "/usr/bin/remails", tmp_path) == ".venv/bin/remails"  # another one
    assert how_to_run(str(script), None, tmp_path / "elsewhere") == str(script)
    assert how_to_run("/x/remails/cli.py", None, tmp_path).endswith(
        f"{Path(sys.executable).name} -m remails.cli"
    )


def _message(status: str, *recipients: dict[str, Any], **fields: Any) -> dict[str, Any]:
    expires = datetime(2030, 1, 2, tzinfo=UTC)
    return {"status": status, "reason": None, "recipients": list(recipients), "expires_at": expires, **fields}


def _rcpt(address: str, status: str, code: int | None = None, text: str | None = None) -> dict[str, Any]:
    return {"address": address, "status": status, "last_code": code, "last_enhanced": None, "last_text": text}


def test_explanations() -> None:
    rejected = _message(
        "rejected", _rcpt("a@x.test", "suppressed"), reason="every recipient is on the suppression list"
    )
    assert explain(rejected, {"a@x.test": "hard bounce"}) == (
        "Rejected: every recipient is on the suppression list. On the suppression list: a@x.test."
    )
    held = _message("held", reason="monthly quota used up")
    assert explain(held, {}) == "Held: monthly quota used up."
    answered = _message("deferred", _rcpt("a@x.test", "deferred", 451, "try later"))
    assert explain(answered, {}).startswith(
        "Deferred: a@x.test: the recipient's server answered 451 try later."
    )
    assert "Next try at the next sweep" in explain(answered, {})


def test_retry_refusals() -> None:
    bounced = _message("bounced", _rcpt("a@x.test", "bounced"), _rcpt("b@x.test", "bounced"))
    assert retry_refusal(bounced, {"a@x.test": "hard bounce"}) is None  # b can still be tried
    assert "suppression list (a@x.test, b@x.test)" in str(
        retry_refusal(bounced, {"a@x.test": "", "b@x.test": ""})
    )
    assert retry_refusal(_message("routed"), {}) == "the message is still in progress (routed)"
    assert retry_refusal(_message("held"), {}) is None
    assert (
        retry_refusal(_message("failed", _rcpt("a@x.test", "delivered")), {})
        == "no recipient is left to deliver to"
    )


def test_a_dns_failure_is_not_called_a_silent_server() -> None:
    looked = _message(
        "deferred",
        {
            **_rcpt("a@x.test", "deferred", None, "MX lookup for x.test failed: timeout"),
            "last_enhanced": "4.4.3",
        },
    )
    assert explain(looked, {}).startswith(
        "Deferred: a@x.test: the recipient's domain could not be looked up"
        " (MX lookup for x.test failed: timeout)."
    )
