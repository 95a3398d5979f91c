"""Listing everything from the CLI, as tables a person reads and as JSON a script reads."""

from __future__ import annotations

import re
from pathlib import Path

from remails.config import load_settings
from remails.db import Pool
from tests.cli.conftest import Cli
from tests.factories import make_tenant, store_message


async def test_every_kind_of_object_can_be_listed(cli: Cli, pool: Pool) -> None:
    org = await cli.json("org", "create", "Acme", "--monthly-quota", "500")
    other = await cli.json("org", "create", "Other")
    project = await cli.json("project", "create", org["id"], "main")
    await cli.json("domain", "add", project["id"], "acme.test")
    credential = await cli.json("smtp-credential", "create", project["id"])
    key = await cli.json("api-key", "create", org["id"], "--role", "read_only")

    orgs = (await cli.json("org", "list"))["organizations"]
    assert {o["name"] for o in orgs} == {"Acme", "Other"}
    assert [p["id"] for p in (await cli.json("project", "list", org["id"]))["projects"]] == [project["id"]]
    assert (await cli.json("project", "list", other["id"]))["projects"] == []
    listed_domains = (await cli.json("domain", "list", org["id"]))["domains"]
    assert [(d["domain"], d["status"]) for d in listed_domains] == [("acme.test", "pending")]
    creds = (await cli.json("smtp-credential", "list", project["id"]))["smtp_credentials"]
    assert [c["username"] for c in creds] == [credential["username"]]
    keys = await cli.json("api-key", "list", org["id"])
    assert [k["id"] for k in keys["api_keys"]] == [key["id"]]
    assert key["token"] not in str(keys) and credential["password"] not in str(creds)  # never again

    # The same as a table: a header row, one row per object, no Python reprs.
    table = await cli.text("org", "list")
    header, *rows = table.strip().splitlines()
    assert header.split() == [
        "ID",
        "NAME",
        "MONTHLY_QUOTA",
        "QUOTA_USED",
        "BLOCK_STATUS",
        "IP_POOL_ID",
        "CREATED_AT",
    ]
    assert len(rows) == 2 and any(r.split()[:3] == [org["id"], "Acme", "500"] for r in rows)
    assert "None" not in table and "True" not in table and "{" not in table
    unknown = await cli.refused("project", "list", "00000000-0000-0000-0000-000000000000")
    assert unknown == "remails: no organization 00000000-0000-0000-0000-000000000000"


async def test_messages_are_listed_with_filters(cli: Cli, pool: Pool) -> None:
    settings = load_settings(data_dir=cli.env["REMAILS_DATA_DIR"])
    acme = await make_tenant(pool, settings, "acme.test")
    other = await make_tenant(pool, settings, "other.test")
    first = await store_message(pool, acme, ["a@dest.test"])
    second = await store_message(pool, acme, ["b@dest.test"])
    theirs = await store_message(pool, other, ["a@dest.test"])
    await pool.execute("UPDATE messages SET status = 'bounced' WHERE id = $1", second)

    every = (await cli.json("message", "list"))["messages"]
    assert {m["id"] for m in every} == {str(first), str(second), str(theirs)}
    acme_only = (await cli.json("message", "list", "--org", str(acme.org_id)))["messages"]
    assert [m["id"] for m in acme_only] == [str(second), str(first)]  # newest first
    bounced = (await cli.json("message", "list", "--status", "bounced"))["messages"]
    assert [m["id"] for m in bounced] == [str(second)]
    to_a = (await cli.json("message", "list", "--recipient", "A@dest.test"))["messages"]
    assert {m["id"] for m in to_a} == {str(first), str(theirs)}
    assert len((await cli.json("message", "list", "--limit", "1"))["messages"]) == 1
    bad = await cli.refused("message", "list", "--status", "lost")
    assert "argument --status: invalid choice: 'lost'" in bad


async def test_status_says_whether_the_server_answers_and_what_is_queued(
    cli: Cli, pool: Pool, tmp_path: Path
) -> None:
    from remails.context import Context
    from remails.crypto import load_master_key
    from remails.http_server import HttpServer
    from remails_functions.api import create_app
    from tests.support.recording import RecordingPublisher

    settings = load_settings(data_dir=cli.env["REMAILS_DATA_DIR"])
    acme = await make_tenant(pool, settings, "acme.test")
    deferred = await store_message(pool, acme, ["a@dest.test"])
    await store_message(pool, acme, ["b@dest.test"])
    await pool.execute(
        "UPDATE messages SET status = 'deferred', reason = '1 deferred' WHERE id = $1", deferred
    )
    down = await cli.json("status", env={"REMAILS_HTTP_LISTEN": "127.0.0.1:9"})
    assert down["server"] == "not answering at http://127.0.0.1:9/healthz"
    assert down["queue"]["received"] == 1 and down["queue"]["deferred"] == 1
    assert [p["id"] for p in down["recent_problems"]] == [str(deferred)]

    ctx = Context(settings, pool, RecordingPublisher(), load_master_key(None, settings.data_dir))
    server = HttpServer(create_app(ctx), "127.0.0.1", 0)
    await server.start()
    try:
        host, port = server.address
        up = await cli.run("status", env={"REMAILS_HTTP_LISTEN": f"{host}:{port}"})
    finally:
        await server.stop()
    assert up.returncode == 0, up.stderr
    assert re.search(rf"^server +up \(http://127\.0\.0\.1:{port}/healthz answered 200\)$", up.stdout, re.M)
    assert re.search(r"^ +deferred +1$", up.stdout, re.M)
