"""Moderation by the operator's CLI, end to end: `remails org block --level sending` holds an
already deferred message (never delivered while blocked), the API refuses its retry, and
`remails org unblock` lets the sweep deliver it; both are in the audit log as the operator."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import World, message_status, world  # noqa: F401  (the fixture)
from tests.support.wait import wait_until
from tests.test_cli import Cli


async def test_a_cli_block_holds_a_deferred_message_refuses_its_retry_and_unblock_delivers_it(
    world: World,  # noqa: F811
) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    sink.handler.data_replies.append("451 4.3.0 try later")
    runtime = await world.runtime(retry_first_seconds=1.5, retry_max_seconds=1.5)
    tenant = await world.tenant(runtime, "example.test")
    assert runtime.db is not None and runtime.api is not None and runtime.new_admin_token
    pool = runtime.db.pool
    cli = Cli(str(world.base["database_url"]), world.settings().data_dir, world.dns)
    message_id = await world.submit(runtime, tenant, ["user@dest.test"])

    async def status_is(status: str) -> bool:
        return await message_status(pool, message_id) == status

    await wait_until(lambda: status_is("deferred"), bound=20)
    blocked = await cli.json("org", "block", str(tenant.org_id), "--level", "sending", "--reason", "spam run")
    assert blocked["block_status"] == "no_sending"
    host, port = runtime.api.address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        headers = {"Authorization": f"Bearer {runtime.new_admin_token}"}
        retry = await client.post(f"/v1/messages/{message_id}/retry", headers=headers)
        assert retry.status_code == 409 and retry.json()["error"]["code"] == "organization_blocked"
        await wait_until(lambda: status_is("held"), bound=20)  # due again: the sweep → route → held
        assert sink.received == []
        assert await pool.fetchval("SELECT attempts FROM messages WHERE id = $1::uuid", message_id) == 1

        await cli.json("org", "unblock", str(tenant.org_id))
        await wait_until(lambda: status_is("delivered"), bound=20)
        assert len(sink.received) == 1
        log = await client.get(f"/v1/organizations/{tenant.org_id}/audit-log", headers=headers)
    actions = [(e["action"], e["actor"]) for e in log.json()["entries"]]
    operator = {"kind": "operator", "id": "cli"}
    assert actions == [("organization.unblock", operator), ("organization.block", operator)]
