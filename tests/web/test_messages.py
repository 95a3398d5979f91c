"""The message log's filters and the message page, over HTTP, on a real database."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from tests.factories import store_message
from tests.web.conftest import Site, add_user


def _listed(html: str) -> set[str]:
    return set(re.findall(r'href="/orgs/[0-9a-f-]+/messages/([0-9a-f-]{36})"', html))


async def test_filters_find_exactly_the_matching_messages(site: Site) -> None:
    await add_user(site.pool, "ann@acme.test", org=site.acme)
    await site.login("ann@acme.test")
    first = str(await store_message(site.pool, site.acme, ["Anna@dest.test"]))
    second = str(await store_message(site.pool, site.acme, ["anna@dest.test", "bob@dest.test"]))
    third = str(await store_message(site.pool, site.acme, ["bob@dest.test"]))
    theirs = str(await store_message(site.pool, site.other, ["anna@dest.test"]))
    await site.pool.execute("UPDATE messages SET status = 'bounced' WHERE id = $1::uuid", second)
    base = f"/orgs/{site.acme.org_id}/messages"
    today = datetime.now(UTC).date()

    everything = await site.client.get(base)
    assert _listed(everything.text) == {first, second, third}
    by_recipient = await site.client.get(base, params={"recipient": "ANNA@dest.test"})
    assert _listed(by_recipient.text) == {first, second}
    by_status = await site.client.get(base, params={"status": "bounced"})
    assert _listed(by_status.text) == {second}
    both = await site.client.get(base, params={"status": "bounced", "recipient": "bob@dest.test"})
    assert _listed(both.text) == {second}
    dated = await site.client.get(base, params={"from": today.isoformat(), "to": today.isoformat()})
    assert _listed(dated.text) == {first, second, third}
    before = await site.client.get(base, params={"to": (today - timedelta(days=1)).isoformat()})
    assert _listed(before.text) == set() and "No message matches these filters." in before.text
    project = await site.client.get(base, params={"project": str(site.acme.project_id)})
    assert _listed(project.text) == {first, second, third}
    foreign = await site.client.get(base, params={"project": str(site.other.project_id)})
    assert foreign.status_code == 404
    bad = await site.client.get(base, params={"status": "lost"})
    assert bad.status_code == 422 and "status" in bad.text

    page = await site.client.get(f"{base}/{second}")
    assert page.status_code == 200
    assert "bob@dest.test" in page.text and "Subject: hi" in page.text
    assert (await site.client.get(f"{base}/{theirs}")).status_code == 404
    assert (await site.client.get(f"/orgs/{site.other.org_id}/messages/{theirs}")).status_code == 404
