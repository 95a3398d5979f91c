"""`remails backup` and `remails restore` as an operator runs them, on the embedded PostgreSQL:
backup → drop everything → restore brings every row back, the DKIM keys still sign, the old
SMTP password still works; the file holds no plaintext; wrong keys and full databases are
refused with one line; S3 against a local S3-compatible server (moto)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import boto3
import dkim
import pyrage
import pytest
from moto.server import ThreadedMotoServer

from remails.backup import _libpq
from remails.config import Settings
from remails.crypto import load_master_key
from remails.db import Pool, create_pool, credentials, domains
from remails.db.messages import NewMessage, insert_message
from remails.db.operations import read_figures
from remails_sender_node.dkim_signer import DkimSigner
from tests.factories import Tenant, make_tenant

ORG_DOMAIN = "zebrafinch.test"  # the organization is called "org zebrafinch.test"
BODY_MARKER = "Kestrel-body-7781"


@dataclass
class Keys:
    recipient: str
    identity: Path


def _keyfile(path: Path) -> Keys:
    identity = pyrage.x25519.Identity.generate()
    path.write_text(f"# public key: {identity.to_public()}\n{identity}\n")
    return Keys(str(identity.to_public()), path)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return _keyfile(tmp_path / "backup.key")


def cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "REMAILS_DATABASE_URL": str(settings.database_url),
        "REMAILS_DATA_DIR": str(settings.data_dir),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "remails.cli", *args], env=full, capture_output=True, text=True, timeout=120
    )


async def fill(pool: Pool, settings: Settings) -> Tenant:
    """A tenant with a verified domain and a credential, one message delivered and one still
    deferred, with their recipients' outcomes."""
    tenant = await make_tenant(pool, settings, ORG_DOMAIN)
    for rcpt, status in (("a@dest.test", "delivered"), ("b@dest.test", "deferred")):
        raw = f"From: app@{ORG_DOMAIN}\r\nTo: {rcpt}\r\nSubject: s\r\n\r\n{BODY_MARKER} {status}\r\n".encode()
        new = NewMessage(tenant.org_id, tenant.project_id, f"app@{ORG_DOMAIN}", [rcpt], raw, f"<{status}@x>")
        message_id = await insert_message(pool, new, 3600)
        finished = "now()" if status == "delivered" else "NULL"
        await pool.execute(
            f"UPDATE messages SET status = $2, reason = 'test', finished_at = {finished} WHERE id = $1",
            message_id,
            status,
        )
        await pool.execute(
            "UPDATE recipients SET status = $2, last_code = 250, last_text = 'ok' WHERE message_id = $1",
            message_id,
            status,
        )
    return tenant


async def digests(dsn: str) -> dict[str, str]:
    """Every table's whole content, as a digest (schema_migrations and backup_runs aside; the
    audit log without the restore's own entry)."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            if r["tablename"] not in ("schema_migrations", "backup_runs")
        ]
        return {
            t: await conn.fetchval(
                f"SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM \"{t}\" x"
                + (" WHERE action <> 'backup.restore'" if t == "audit_log" else "")
            )
            for t in sorted(tables)
        }
    finally:
        await conn.close()


def _other_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


async def empty_database(dsn: str) -> None:
    """Drop the database and make it again, empty (no template, no migrations)."""
    name = urlsplit(dsn).path.lstrip("/")
    conn = await asyncpg.connect(_other_database(dsn, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def is_empty(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")) == 0
    finally:
        await conn.close()


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def listed(folder: Path) -> list[Path]:
    return list(folder.iterdir())


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


async def test_backup_drop_restore_brings_everything_back(
    pool: Pool, settings: Settings, keys: Keys, tmp_path: Path
) -> None:
    tenant = await fill(pool, settings)
    before = await digests(str(settings.database_url))
    folder = tmp_path / "backups"
    folder.mkdir()

    made = cli(settings, "backup", str(folder), "--json", REMAILS_BACKUP_RECIPIENTS=keys.recipient)
    assert made.returncode == 0, made.stderr
    path = Path(json.loads(made.stdout)["backup"])
    assert path.parent == folder and [p.name for p in folder.iterdir()] == [path.name]
    data = read_bytes(path)
    assert os.stat(path).st_mode & 0o077 == 0  # only its owner may read it
    assert data.startswith(b"age-encryption.org/v1\n")
    for plaintext in (ORG_DOMAIN, BODY_MARKER, "org zebrafinch", tenant.username):
        assert plaintext.encode() not in data
        assert base64.b64encode(plaintext.encode())[:12] not in data
    figures = await read_figures(pool)
    assert figures.backup_last_success is not None and figures.backup_last_failure is None
    await pool.close()

    dsn = str(settings.database_url)
    await empty_database(dsn)
    assert await is_empty(dsn)

    stranger = _keyfile(tmp_path / "stranger.key")
    line = one_line_error(cli(settings, "restore", str(path), "--identity", str(stranger.identity)))
    assert "cannot decrypt the backup with this identity" in line
    other_master = base64.b64encode(os.urandom(32)).decode()
    line = one_line_error(
        cli(settings, "restore", str(path), "--identity", str(keys.identity), REMAILS_SECRET_KEY=other_master)
    )
    assert "another master key" in line
    assert await is_empty(dsn)  # neither refusal wrote anything

    restored = cli(settings, "restore", str(path), "--identity", str(keys.identity), "--json")
    assert restored.returncode == 0, restored.stderr
    summary = json.loads(restored.stdout)
    assert summary["organizations"] == 1 and summary["messages"] == 2 and summary["domains"] == 1
    assert await digests(dsn) == before

    again = await create_pool(dsn, max_size=2)
    try:
        # The restore is the operator's entry, after everything it brought back.
        last = await again.fetchrow("SELECT * FROM audit_log ORDER BY id DESC LIMIT 1")
        assert last is not None
        assert (last["action"], last["actor_kind"], last["organization_id"]) == (
            "backup.restore",
            "operator",
            None,
        )
        assert last["details"]["source"] == str(path) and last["details"]["organizations"] == 1
        assert await credentials.authenticate_smtp(again, tenant.username, tenant.password) is not None
        key = await domains.signing_key(again, tenant.org_id, ORG_DOMAIN)
        assert key is not None
        public = await again.fetchval("SELECT dkim_public_key FROM domains WHERE name = $1", ORG_DOMAIN)
    finally:
        await again.close()
    master_key = load_master_key(settings.secret_key, settings.data_dir)
    signer = DkimSigner(ORG_DOMAIN, key.selector, master_key.open(key.private_sealed, context=ORG_DOMAIN))
    message = f"From: app@{ORG_DOMAIN}\r\nTo: a@dest.test\r\nSubject: s\r\n\r\nhello\r\n".encode()
    signed = signer.signature_header(message) + message
    record = f"v=DKIM1; k=rsa; p={public}".encode()
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record)

    line = one_line_error(cli(settings, "restore", str(path), "--identity", str(keys.identity)))
    assert "not empty" in line


async def test_without_bodies_leaves_finished_bodies_out(
    pool: Pool, settings: Settings, keys: Keys, tmp_path: Path
) -> None:
    await fill(pool, settings)
    made = cli(
        settings,
        "backup",
        str(tmp_path),
        "--without-bodies",
        "--json",
        REMAILS_BACKUP_RECIPIENTS=keys.recipient,
    )
    assert made.returncode == 0, made.stderr
    await pool.close()
    dsn = str(settings.database_url)
    await empty_database(dsn)
    restored = cli(settings, "restore", json.loads(made.stdout)["backup"], "--identity", str(keys.identity))
    assert restored.returncode == 0, restored.stderr
    conn = await asyncpg.connect(dsn)
    try:
        rows = {
            r["status"]: bytes(r["raw"]) for r in await conn.fetch("SELECT status::text, raw FROM messages")
        }
    finally:
        await conn.close()
    assert rows["delivered"] == b""  # finished: its body stayed out
    assert BODY_MARKER.encode() in rows["deferred"]  # still to be delivered: kept


@pytest.fixture
def s3() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "test-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret",
    "AWS_DEFAULT_REGION": "eu-central-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


async def test_s3_round_trip_and_a_failure_moves_the_metric(
    pool: Pool, settings: Settings, keys: Keys, s3: str
) -> None:
    await fill(pool, settings)
    before = await digests(str(settings.database_url))
    client = boto3.client(
        "s3",
        endpoint_url=s3,
        region_name="eu-central-1",
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
    )
    client.create_bucket(
        Bucket="remails-backups", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )
    env = {**S3_ENV, "REMAILS_BACKUP_S3_ENDPOINT": s3, "REMAILS_BACKUP_RECIPIENTS": keys.recipient}

    failed = cli(settings, "backup", "s3://no-such-bucket/daily", **env)
    assert "no-such-bucket" in one_line_error(failed)
    figures = await read_figures(pool)
    assert figures.backup_last_failure is not None and figures.backup_last_success is None

    made = cli(settings, "backup", "s3://remails-backups/daily/", "--json", **env)
    assert made.returncode == 0, made.stderr
    location = json.loads(made.stdout)["backup"]
    listed = client.list_objects_v2(Bucket="remails-backups", Prefix="daily/")["Contents"]
    assert [f"s3://remails-backups/{o['Key']}" for o in listed] == [location]
    body = client.get_object(Bucket="remails-backups", Key=listed[0]["Key"])["Body"].read()
    assert body.startswith(b"age-encryption.org/v1\n") and BODY_MARKER.encode() not in body
    assert (await read_figures(pool)).backup_last_success is not None
    await pool.close()

    dsn = str(settings.database_url)
    await empty_database(dsn)
    restored = cli(settings, "restore", location, "--identity", str(keys.identity), **env)
    assert restored.returncode == 0, restored.stderr
    assert await digests(dsn) == before


async def test_backup_needs_recipients(settings: Settings, tmp_path: Path) -> None:
    line = one_line_error(cli(settings, "backup", str(tmp_path)))
    assert "REMAILS_BACKUP_RECIPIENTS" in line
    line = one_line_error(cli(settings, "backup", str(tmp_path), REMAILS_BACKUP_RECIPIENTS="ssh-rsa AAAA"))
    assert "REMAILS_BACKUP_RECIPIENTS" in line
    assert not listed(tmp_path)


def on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """Run the CLI with its stderr on a pseudo-terminal; return what the terminal showed."""
    primary, secondary = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "remails.cli", *args],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
            timeout=120,
        )
        os.close(secondary)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal is drained
            while chunk := os.read(primary, 4096):
                shown += chunk
    finally:
        os.close(primary)
    return result, shown


async def test_a_terminal_sees_a_progress_line(
    pool: Pool, settings: Settings, keys: Keys, tmp_path: Path
) -> None:
    await fill(pool, settings)
    env = {
        "REMAILS_DATABASE_URL": str(settings.database_url),
        "REMAILS_DATA_DIR": str(settings.data_dir),
        "REMAILS_BACKUP_RECIPIENTS": keys.recipient,
    }
    result, shown = on_a_terminal(["backup", str(tmp_path), "--json"], env)
    assert result.returncode == 0
    assert re.search(rb"\rbackup: [0-9.,]+ MB, done", shown), shown
    assert json.loads(result.stdout)["bytes"] > 0  # stdout stays one JSON object


def test_the_database_password_goes_to_the_environment_not_the_command_line() -> None:
    for dsn, password in (
        ("postgresql://remails:s%40cret@db:5432/remails?sslmode=require", "s@cret"),
        ("postgresql://remails@db/remails?password=s3cret&sslmode=require", "s3cret"),
    ):
        shown, env = _libpq(dsn)
        assert env["PGPASSWORD"] == password
        assert (
            "cret" not in shown and "sslmode=require" in shown and shown.startswith("postgresql://remails@db")
        )
    shown, _ = _libpq("postgresql://postgres:@/postgres?host=/run/pg")
    assert shown == "postgresql://postgres@/postgres?host=/run/pg"
