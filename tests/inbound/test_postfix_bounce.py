"""A real Postfix as the recipient's MX accepts a message for an unknown user, then bounces it:
its own DSN goes to our VERP return path through our inbound MX (Postfix's transport for the
return-path domain points at REMAILS_SMTP_MX_LISTEN). The recipient ends bounced with
Postfix's status code, is suppressed, and the signed webhook says `async: true`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from standardwebhooks.webhooks import Webhook

from tests.e2e.conftest import World, message_status
from tests.inbound.conftest import start_receiving
from tests.support.db import one_row
from tests.support.postfix import Listener, PostfixMx
from tests.support.receiver import Receiver
from tests.support.sink import free_port
from tests.support.wait import wait_until

POSTFIX_IP = "127.0.0.33"
DOMAIN = "accepting.test"  # Postfix takes any address here at RCPT and bounces unknown ones later


@pytest.fixture
def postfix(ca: trustme.CA) -> Iterator[PostfixMx]:
    cert = ca.issue_cert("mx-accepting.test")
    mx = PostfixMx(
        free_port(POSTFIX_IP),
        [f"known@{DOMAIN}"],
        [Listener("accepting", POSTFIX_IP, {"smtpd_reject_unlisted_recipient": "no"})],
        cert.cert_chain_pems[0].bytes(),
        cert.private_key_pem.bytes(),
    )
    yield mx
    mx.stop()


async def test_postfix_bounces_after_acceptance_to_our_return_path(
    world: World, postfix: PostfixMx, receiver: Receiver
) -> None:
    world.dns.zone.mx(DOMAIN, "mx-accepting.test")
    world.dns.zone.a("mx-accepting.test", POSTFIX_IP)
    r = await start_receiving(world, receiver, delivery_port=postfix.port)
    assert r.runtime.edge is not None and r.runtime.db is not None
    pool = r.runtime.db.pool
    mx_host, mx_port = r.runtime.edge.mx_address
    # Postfix sends mail for our return-path domain to our inbound MX (what the rp MX record does).
    transport = postfix.dir / "etc" / "transport"
    transport.write_text(f"rp.example.test smtp:[{mx_host}]:{mx_port}\n")
    with (postfix.dir / "etc" / "main.cf").open("a") as main_cf:
        main_cf.write(f"transport_maps = texthash:{transport}\n")
    postfix.start()
    r.publish_return_path(r.tenant.domain)
    assert (await r.verify())["return_path"]["verified"]
    secret = await r.webhook(["message.delivered", "message.bounced"])

    message_id = await r.world.submit(r.runtime, r.tenant, [f"ghost@{DOMAIN}"])

    async def bounced() -> bool:
        status = await pool.fetchval(
            "SELECT status::text FROM recipients WHERE message_id = $1::uuid", message_id
        )
        return bool(status == "bounced")

    await wait_until(bounced, bound=60, interval=0.1)
    row = await one_row(
        pool,
        "SELECT last_code, last_enhanced, last_text FROM recipients WHERE message_id = $1::uuid",
        message_id,
    )
    assert row["last_enhanced"] == "5.1.1", dict(row)  # Postfix's status for an unknown user
    assert "unknown user" in row["last_text"]
    inbound = await one_row(pool, "SELECT kind, mail_from, status FROM inbound_messages")
    assert (inbound["kind"], inbound["mail_from"], inbound["status"]) == ("bounce", "", "processed")
    assert await message_status(pool, message_id) == "bounced"
    reason = await pool.fetchval(
        "SELECT reason FROM suppressions WHERE organization_id = $1 AND address = $2",
        r.tenant.org_id,
        f"ghost@{DOMAIN}",
    )
    assert reason is not None and "5.1.1" in reason

    def events() -> list[dict[str, Any]]:
        hook = Webhook(secret)
        return [
            hook.verify(c.body, {k: v for k, v in c.headers.items() if k.startswith("webhook-")})
            for c in receiver.calls
        ]

    await wait_until(lambda: any(e["type"] == "message.bounced" for e in events()), bound=15)
    types = [e["type"] for e in events()]
    assert types[0] == "message.delivered"  # Postfix's 250 first, the bounce after
    [bounce] = [e for e in events() if e["type"] == "message.bounced"]
    assert bounce["data"]["async"] is True
    assert bounce["data"]["recipient"] == f"ghost@{DOMAIN}"
