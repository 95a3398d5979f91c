"""Failed API authentication is rate limited per client address (invalid tokens, guessed or
sprayed), and good tokens of the same address are not charged."""

from __future__ import annotations

import asyncio

import httpx

from remails.config import Settings
from remails.db import Pool
from tests.api.conftest import make_api


async def test_invalid_tokens_are_limited_per_client_address(pool: Pool, settings: Settings) -> None:
    api, client = await make_api(
        pool, settings, api_auth_failure_burst=5, api_auth_failure_rate_per_second=0.01
    )
    try:
        statuses = []
        for i in range(8):
            response = await api.client.get("/v1/organizations", headers=api.auth(f"rk_guess{i}"))
            statuses.append(response.status_code)
        assert statuses == [401] * 5 + [429] * 3
        assert int(response.headers["Retry-After"]) >= 1
        # Another address is not blocked by this one.
        other = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=client._transport.app, client=("192.0.2.9", 4000)),
            base_url="http://api.test",
        )
        async with other:
            assert (await other.get("/v1/organizations", headers=api.auth("rk_nope"))).status_code == 401
    finally:
        await client.aclose()


async def test_concurrent_guesses_reach_the_lookup_at_most_the_burst(pool: Pool, settings: Settings) -> None:
    api, client = await make_api(
        pool, settings, api_auth_failure_burst=5, api_auth_failure_rate_per_second=0.01
    )
    try:
        responses = await asyncio.gather(
            *(api.client.get("/v1/organizations", headers=api.auth(f"rk_guess{i}")) for i in range(100))
        )
        statuses = [r.status_code for r in responses]
        assert statuses.count(401) <= 5 and statuses.count(429) >= 95
    finally:
        await client.aclose()


async def test_good_tokens_are_not_charged(pool: Pool, settings: Settings) -> None:
    api, client = await make_api(
        pool, settings, api_auth_failure_burst=2, api_auth_failure_rate_per_second=0.01
    )
    try:
        for _ in range(10):
            assert (await api.call("GET", "/v1/organizations", api.acme_admin)).status_code == 200
        assert (await api.client.get("/v1/organizations", headers=api.auth("rk_bad"))).status_code == 401
    finally:
        await client.aclose()
