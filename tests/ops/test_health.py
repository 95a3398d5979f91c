"""`/healthz` says the process is alive; `/readyz` says it can serve: the database answers and
has every migration this code knows."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from tests.e2e.conftest import World


async def test_readyz_follows_the_database_and_its_migrations(world: World) -> None:
    runtime = await world.runtime()
    assert runtime.api is not None and runtime.db is not None
    host, port = runtime.api.address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).json() == {"status": "ready"}

        latest = await runtime.db.pool.fetchval("SELECT max(version) FROM schema_migrations")
        await runtime.db.pool.execute("DELETE FROM schema_migrations WHERE version = $1", latest)
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["error"] == {
            "code": "not_ready",
            "message": f"the database lacks migrations {latest}",
            "field": None,
        }
        await runtime.db.pool.execute("INSERT INTO schema_migrations (version) VALUES ($1)", latest)
        assert (await client.get("/readyz")).status_code == 200

        dsn = str(runtime.settings.database_url)
        name = urlsplit(dsn).path.lstrip("/")
        admin = await asyncpg.connect(urlunsplit(urlsplit(dsn)._replace(path="/postgres")))
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # its connections end too
        finally:
            await admin.close()
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["error"]["message"] == "the database is not reachable"
        assert (await client.get("/healthz")).status_code == 200  # alive all the same
