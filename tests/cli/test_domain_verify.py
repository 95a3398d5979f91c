"""`domain verify` says why a domain is not verified — no such name, no TXT record, a wrong
value, a DNS timeout — mentions `--force`, and exits non-zero until it is verified."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests.cli.conftest import Cli
from tests.support.dnsserver import LocalDns


async def _domain(cli: Cli, name: str) -> dict[str, str]:
    org = await cli.json("org", "create", "Acme")
    project = await cli.json("project", "create", org["id"], "main")
    added = await cli.json("domain", "add", project["id"], name)
    return {r["name"]: r["value"] for r in added["dns_records"] if r["type"] == "TXT"} | {
        "selector": added["dkim_selector"]
    }


async def test_unpublished_wrong_and_missing_records_are_named(cli: Cli, local_dns: LocalDns) -> None:
    records = await _domain(cli, "acme.test")
    dkim = f"{records['selector']}._domainkey.acme.test"
    local_dns.zone.txt("acme.test", "v=spf1 ip4:192.0.2.1 ~all")  # exists, but names the wrong IP
    local_dns.zone.a("_dmarc.acme.test", "192.0.2.1")  # exists, without a TXT record
    result = await cli.run("domain", "verify", "acme.test", "--json")
    assert result.returncode == 1
    checks = json.loads(result.stdout)["checks"]
    assert checks["dkim"]["reason"] == f"no TXT record at {dkim}: the name does not exist (NXDOMAIN)"
    assert checks["spf"]["reason"] == "the SPF record at acme.test does not name every outbound IP"
    assert (
        checks["dmarc"]["reason"] == "no TXT record at _dmarc.acme.test: the name has no record of that type"
    )

    human = await cli.run("domain", "verify", "acme.test")
    assert human.returncode == 1 and "Traceback" not in human.stderr
    assert "(NXDOMAIN)" in human.stdout and "None" not in human.stdout
    last = human.stdout.strip().splitlines()[-1]
    assert last.startswith("not verified (dkim, spf missing or wrong)") and "`--force`" in last
    assert "remails domain records acme.test" in last

    local_dns.zone.remove("acme.test")
    local_dns.zone.txt("acme.test", records["acme.test"])
    local_dns.zone.txt(dkim, records[dkim])
    ok = await cli.json("domain", "verify", "acme.test")
    assert ok["verified"] is True and ok["checks"]["dkim"]["reason"] is None


@pytest.fixture
def silent_dns() -> Iterator[str]:
    """A UDP port that takes queries and never answers (a resolver that is down)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


async def test_a_dns_timeout_is_said_in_words_with_force(cli: Cli, silent_dns: str) -> None:
    await _domain(cli, "slow.test")
    line = await cli.refused("domain", "verify", "slow.test", env={"REMAILS_DNS_SERVERS": silent_dns})
    assert "the DNS servers did not answer in time (timeout)" in line
    assert "REMAILS_DNS_SERVERS" in line and "`--force`" in line
    assert "Timeout" not in line.replace("timeout", "")  # no dnspython class names
    # The operator's decision does not wait for DNS: --force works while the servers are down.
    forced = await cli.json(
        "domain", "verify", "slow.test", "--force", env={"REMAILS_DNS_SERVERS": silent_dns}
    )
    assert forced["verified"] is True and forced["forced"] is True
    assert "did not answer in time" in forced["checks"]["dkim"]["reason"]


async def test_domain_records_prints_the_records_again_one_per_block(cli: Cli) -> None:
    records = await _domain(cli, "again.test")
    dkim = f"{records['selector']}._domainkey.again.test"
    shown = await cli.text("domain", "records", "again.test")
    lines = [line.strip() for line in shown.splitlines()]
    # Each name and each value on a line of its own, whole: copied as they are.
    assert f"name   {dkim}" in lines and f"value  {records[dkim]}" in lines
    assert "value  v=spf1 ip4:127.0.0.2 ~all" in lines
