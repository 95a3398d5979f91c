"""The way a newcomer tries the service on a laptop, by the CLI as a subprocess: a sandbox
project, a domain verified by force, an SMTP credential, a message submitted by swaks (as the
README says) that ends delivered without any MX, and its signed bytes printed by
`message show --raw`."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys

import dkim
import dns.resolver
import pytest

from remails.db import Pool
from tests.cli.conftest import Cli
from tests.e2e.conftest import World, message_status
from tests.e2e.conftest import world as world  # the fixture, for this module
from tests.support.wait import wait_until


def _dns_txt(world: World):  # type: ignore[no-untyped-def]
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = world.dns.port

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(answer[0].strings)

    return lookup


async def _stdout_bytes(cli: Cli, *args: str) -> bytes:
    """A command's standard output as bytes, untranslated (the message keeps its CRLFs)."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "remails.cli", *args],
        env=cli.env,
        cwd=cli.cwd,
        capture_output=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def _swaks(host: str, port: int, username: str, password: str) -> str:
    """The README's swaks command; the id of the queued message."""
    result = await asyncio.to_thread(
        subprocess.run,
        [
            *("swaks", "--server", f"{host}:{port}", "--tls"),
            *("--auth-user", username, "--auth-password", password),
            *("--from", "app@acme.test", "--to", "someone@dest.test"),
            *("--header", "Subject: Hello", "--body", "Your code is 123456."),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"<~  250 2\.0\.0 Ok: queued as (\S+)", result.stdout)
    assert found, result.stdout
    return found.group(1)


async def _delivered(pool: Pool, message_id: str) -> bool:
    return await message_status(pool, message_id) == "delivered"


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is installed by `make test`")
async def test_from_a_sandbox_project_to_the_signed_bytes(world: World, cli: Cli) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    runtime = await world.runtime()
    assert runtime.db is not None

    org = await cli.json("org", "create", "Acme")
    project = await cli.json("project", "create", org["id"], "try", "--sandbox")
    assert project["sandbox"] is True
    listed = await cli.json("project", "list", org["id"])
    assert [p["sandbox"] for p in listed["projects"]] == [True]
    added = await cli.json("domain", "add", project["id"], "acme.test")
    for record in added["dns_records"]:
        if record["type"] == "TXT" and "._domainkey." in record["name"]:
            world.dns.zone.txt(record["name"], record["value"])
    verified = await cli.run("domain", "verify", "acme.test", "--force")
    assert verified.returncode == 0, verified.stderr
    credential = await cli.json("smtp-credential", "create", project["id"])

    host, port = runtime.edge.submission_address  # type: ignore[union-attr]
    message_id = await _swaks(host, port, credential["username"], credential["password"])
    await wait_until(lambda: _delivered(runtime.db.pool, message_id))  # type: ignore[union-attr]
    assert sink.received == []

    shown = await cli.text("message", "show", message_id)
    assert shown.startswith("Delivered.")
    assert "sandbox: not sent" in shown

    raw = await _stdout_bytes(cli, "message", "show", message_id, "--raw")
    assert raw.startswith(b"DKIM-Signature:")
    assert b"\r\n\r\nYour code is 123456.\r\n" in raw and b"\r\nSubject: Hello\r\n" in raw
    assert dkim.verify(raw, dnsfunc=_dns_txt(world))
    as_json = await cli.json("message", "show", message_id, "--raw")
    assert as_json["form"] == "signed"


async def test_raw_of_an_unknown_message_is_one_line(cli: Cli) -> None:
    line = await cli.refused("message", "show", "00000000-0000-0000-0000-000000000000", "--raw")
    assert line == "remails: no message 00000000-0000-0000-0000-000000000000"
