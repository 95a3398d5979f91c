"""Fixtures for real resources: PostgreSQL, DNS on loopback, TLS from a throw-away CA."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme

from remails.config import Settings, load_settings
from remails.db import Pool, create_pool
from tests.support.dnsserver import LocalDns
from tests.support.postgres import PostgresServer

# Nothing in the tests may fall back to the system resolver (it is not on loopback here):
# anything that forgets to point at its own DNS server gets a closed port and fails.
os.environ["REMAILS_DNS_SERVERS"] = "127.0.0.1:9"
for _name in list(os.environ):
    if _name.startswith("REMAILS_") and _name != "REMAILS_DNS_SERVERS":
        del os.environ[_name]


@pytest.fixture(scope="session")
async def postgres(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PostgresServer]:
    pg = PostgresServer(tmp_path_factory.mktemp("postgres"))
    await pg.prepare_template()
    yield pg
    pg.stop()


@pytest.fixture
async def dsn(postgres: PostgresServer) -> str:
    return await postgres.new_database()


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[Pool]:
    p = await create_pool(dsn, max_size=5)
    yield p
    await p.close()


@pytest.fixture
def local_dns() -> Iterator[LocalDns]:
    server = LocalDns()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def settings(tmp_path: Path, dsn: str, local_dns: LocalDns) -> Settings:
    return load_settings(
        database_url=dsn,
        data_dir=tmp_path / "data",
        hostname="mx.remails.test",
        dns_servers=local_dns.servers,
    )
