"""What happened to a message, in words: suppressed recipients shown wherever their fate is,
a retry that could do nothing refused with the reason, a deferred message's next try."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from remails.db import Pool
from tests.api.conftest import Api
from tests.cli.conftest import Cli
from tests.factories import Tenant, store_message


async def _bounced(pool: Pool, tenant: Tenant, addresses: list[str]) -> str:
    message = await store_message(pool, tenant, addresses)
    await pool.execute("UPDATE messages SET status = 'bounced', finished_at = now() WHERE id = $1", message)
    await pool.execute(
        "UPDATE recipients SET status = 'bounced', last_code = 550, last_enhanced = '5.1.1',"
        " last_text = 'no such user' WHERE message_id = $1",
        message,
    )
    for address in addresses:
        await pool.execute(
            "INSERT INTO suppressions (organization_id, address, reason) VALUES ($1, $2, 'hard bounce')",
            tenant.org_id,
            address,
        )
    return str(message)


async def test_suppressed_recipients_are_shown_and_a_useless_retry_is_refused(api: Api, cli: Cli) -> None:
    message = await _bounced(api.pool, api.acme, ["gone@dest.test"])
    shown = await api.call("GET", f"/v1/messages/{message}", api.acme_reader)
    assert shown.status_code == 200
    (recipient,) = shown.json()["recipients"]
    assert recipient["suppressed"] is True and recipient["suppression_reason"] == "hard bounce"
    assert "On the suppression list: gone@dest.test." in shown.json()["explanation"]

    retry = await api.call("POST", f"/v1/messages/{message}/retry", api.acme_maintainer)
    assert retry.status_code == 409
    assert retry.json()["error"]["message"] == (
        "cannot retry: every undelivered recipient is on the suppression list (gone@dest.test);"
        " remove them from it first"
    )
    assert api.publisher.events == []  # nothing was fired

    # The CLI shows the same, lists the suppressions and removes one; then the retry works.
    human = await cli.text("message", "show", message)
    assert human.startswith(
        "Bounced (refused permanently): gone@dest.test: the recipient's server answered 550"
    )
    assert re.search(r"gone@dest\.test +bounced .* yes +hard bounce", human), human
    assert "None" not in human and "True" not in human
    org = str(api.acme.org_id)
    listed = (await cli.json("suppression", "list", org))["suppressions"]
    assert [(s["address"], s["reason"]) for s in listed] == [("gone@dest.test", "hard bounce")]
    assert "gone@dest.test" in await cli.text("suppression", "list", org)
    removed = await cli.json("suppression", "remove", org, "Gone@dest.test")
    assert removed["removed"] == "gone@dest.test"
    assert (await cli.json("suppression", "list", org))["suppressions"] == []
    again = await cli.refused("suppression", "remove", org, "gone@dest.test")
    assert again == f"remails: gone@dest.test is not on the suppression list of organization {org}"
    assert (await cli.json("message", "show", message))["recipients"][0]["suppressed"] is False
    retried = await api.call("POST", f"/v1/messages/{message}/retry", api.acme_maintainer)
    assert retried.status_code == 202 and retried.json()["status"] == "admitted"


async def test_a_retry_of_a_delivered_message_says_why(api: Api) -> None:
    message = await store_message(api.pool, api.acme, ["a@dest.test"])
    await api.pool.execute("UPDATE messages SET status = 'delivered' WHERE id = $1", message)
    retry = await api.call("POST", f"/v1/messages/{message}/retry", api.acme_maintainer)
    assert retry.status_code == 409
    assert (
        retry.json()["error"]["message"]
        == "cannot retry: the message was delivered; there is nothing to retry"
    )


async def test_a_deferred_message_says_why_and_when_it_is_tried_again(api: Api, cli: Cli) -> None:
    message = await store_message(api.pool, api.acme, ["late@dest.test"])
    next_try = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    await api.pool.execute(
        "UPDATE messages SET status = 'deferred', next_attempt_at = $2, expires_at = $3 WHERE id = $1",
        message,
        next_try,
        next_try + timedelta(hours=20),
    )
    await api.pool.execute(
        "UPDATE recipients SET status = 'deferred', last_code = NULL, last_enhanced = '4.4.1',"
        " last_text = 'no MX host answered: connection refused' WHERE message_id = $1",
        message,
    )
    expected = (
        "Deferred: late@dest.test: the recipient's server did not answer (no MX host answered:"
        " connection refused). Next try at 2031-05-06 07:08:09 UTC; it gives up at 2031-05-07 03:08:09 UTC."
    )
    shown = await api.call("GET", f"/v1/messages/{message}", api.acme_reader)
    assert shown.json()["explanation"] == expected
    assert (await cli.json("message", "show", str(message)))["explanation"] == expected
    assert (await cli.text("message", "show", str(message))).startswith(f"{expected}\n\n")


async def test_a_pool_no_sender_node_can_send_from_is_said_at_set_pool_and_on_the_message(
    api: Api, cli: Cli
) -> None:
    from remails.db import egress

    await cli.json("ip-pool", "create", "dedicated", "--ips", "127.0.0.5")
    org = str(api.acme.org_id)
    assigned = await cli.run("org", "set-pool", org, "dedicated")
    assert assigned.returncode == 0, assigned.stderr
    warning = assigned.stdout.strip().splitlines()[-1]
    assert warning.startswith("warning: no live sender node holds an IP of pool 'dedicated' (127.0.0.5)")
    message = await store_message(api.pool, api.acme, ["a@dest.test"])
    await api.pool.execute("UPDATE messages SET status = 'admitted' WHERE id = $1", message)
    waiting = (await api.call("GET", f"/v1/messages/{message}", api.acme_reader)).json()["explanation"]
    assert waiting.startswith("Waiting: no live sender node holds an IP of this organization's IP pool")
    assert (await cli.json("message", "show", str(message)))["explanation"] == waiting

    await egress.register_node(api.pool, "node-a", ["127.0.0.5"])  # a live node with the pool's IP
    again = await cli.json("org", "set-pool", org, "dedicated")
    assert "hint" not in again
    moving = (await api.call("GET", f"/v1/messages/{message}", api.acme_reader)).json()["explanation"]
    assert moving == "Admitted; waiting to be routed to an outbound IP."

    cleared = await cli.json("org", "set-pool", org, "none")
    assert cleared["ip_pool_id"] is None
    assert (
        await api.pool.fetchval("SELECT ip_pool_id FROM organizations WHERE id = $1", api.acme.org_id) is None
    )
