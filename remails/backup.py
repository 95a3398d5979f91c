"""Backups: one age-encrypted file holding a consistent dump of the whole database, and its
restore into an empty database.

The plaintext never touches a disk: pg_dump and psql write into pipes, the stream is
compressed and encrypted to the `REMAILS_BACKUP_RECIPIENTS` in memory, and only ciphertext
is written (to a directory, or to a private temporary file uploaded to S3). Inside:

    remails-backup 1\\n            the format line
    {manifest JSON}\\n              when, which migrations, with or without bodies, key check
    zlib(SQL script)               pg_dump's pre-data and data sections (messages apart),
                                   the messages as one COPY, then the post-data section

All parts come from one exported snapshot, so they agree with each other. The restore runs
the script in one transaction (`psql --single-transaction`): it lands whole or not at all.

The master key (REMAILS_SECRET_KEY or the data directory's master.key) is never in the
backup. The manifest carries a value sealed under it, so a restore under another key stops
with one line before it writes anything, instead of leaving DKIM keys nobody can open.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import pyrage

from remails.config import Settings
from remails.crypto import MasterKey, load_master_key
from remails.db import Database, audit, connect
from remails.db.embedded import PG_BIN_DIR
from remails.db.migrate import migrate
from remails.db.operations import (
    Snapshot,
    database_is_empty,
    exported_snapshot,
    record_backup,
    restored_counts,
)

__all__ = ["BackupError", "BackupResult", "backup", "restore"]

FORMAT_LINE = b"remails-backup 1\n"
_KEY_CHECK = b"remails backup key check"
_KEY_CHECK_CONTEXT = "backup-key-check"
_FINISHED = "('delivered', 'bounced', 'failed', 'rejected')"
_CHUNK = 1 << 20


class BackupError(Exception):
    """A backup or restore that cannot go on; the message is one line for the operator."""


@dataclass(frozen=True)
class BackupResult:
    location: str
    size: int
    without_bodies: bool


# -- destinations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3(url: str) -> S3Location:
    """`s3://bucket/prefix/...` → bucket and key (the key may be empty)."""
    rest = url.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise BackupError(f"{url}: expected s3://bucket/prefix")
    return S3Location(bucket, key)


def _s3_client(settings: Settings) -> Any:
    import boto3

    # Credentials and region come from the usual AWS variables, files or roles.
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("s3", endpoint_url=settings.backup_s3_endpoint or None, region_name=region)


def _s3_error(exc: Exception, location: S3Location) -> BackupError:
    return BackupError(f"{location}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


# -- progress ---------------------------------------------------------------------------------


class _Progress:
    """A progress line on a terminal (stderr), nothing otherwise."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.bytes = 0
        self.shown = 0
        self.tty = sys.stderr.isatty()

    def add(self, n: int) -> None:
        self.bytes += n
        if self.tty and self.bytes - self.shown >= _CHUNK:
            self.shown = self.bytes
            print(f"\r{self.verb}: {self.bytes / 1e6:,.1f} MB", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty:
            print(f"\r{self.verb}: {self.bytes / 1e6:,.1f} MB, done", file=sys.stderr, flush=True)


class _CountingWriter:
    def __init__(self, out: IO[bytes], progress: _Progress) -> None:
        self.out = out
        self.progress = progress

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.progress.add(len(data))
        return len(data)

    def flush(self) -> None:
        self.out.flush()


# -- backup -----------------------------------------------------------------------------------


def _recipients(settings: Settings) -> list[Any]:
    if not settings.backup_recipients:
        raise BackupError("REMAILS_BACKUP_RECIPIENTS: set at least one age public key (age1…)")
    try:
        return [pyrage.x25519.Recipient.from_str(key) for key in settings.backup_recipients]
    except pyrage.RecipientError as exc:
        raise BackupError(f"REMAILS_BACKUP_RECIPIENTS: {exc}") from None


def _manifest(snapshot: Snapshot, master_key: MasterKey, without_bodies: bool) -> bytes:
    manifest = {
        "created_at": datetime.now(UTC).isoformat(),
        "migrations": snapshot.migrations,
        "without_bodies": without_bodies,
        "key_check": base64.b64encode(master_key.seal(_KEY_CHECK, _KEY_CHECK_CONTEXT)).decode(),
    }
    return json.dumps(manifest).encode() + b"\n"


def _libpq(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password, and an environment carrying it (PGPASSWORD): a command
    line is visible to every local user, the environment is not."""
    parts = urlsplit(dsn)
    env = dict(os.environ)
    query = parse_qsl(parts.query, keep_blank_values=True)
    for key, value in query:
        if key == "password":
            env["PGPASSWORD"] = value
    netloc = parts.netloc
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
        userinfo, _, hostinfo = netloc.rpartition("@")
        netloc = userinfo.split(":", 1)[0] + "@" + hostinfo
    kept = urlencode([(k, v) for k, v in query if k != "password"], safe="/")
    return urlunsplit(parts._replace(netloc=netloc, query=kept)), env


def _run_streaming(argv: list[str], env: dict[str, str]) -> Iterator[bytes]:
    """The stdout of a command, chunk by chunk; BackupError with its last stderr line on failure."""
    with tempfile.TemporaryFile() as errors:
        # argv: our own PostgreSQL binaries and options, no shell.
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, env=env)  # noqa: S603
        if process.stdout is None:
            raise BackupError("pg_dump started without its output pipe")
        try:
            while chunk := process.stdout.read(_CHUNK):
                yield chunk
        finally:
            process.stdout.close()
            code = process.wait()
        if code != 0:
            errors.seek(0)
            lines = errors.read().decode(errors="replace").strip().splitlines()
            raise BackupError(f"{Path(argv[0]).name} failed: {lines[-1] if lines else f'exit {code}'}")


def _script(dsn_with_password: str, snapshot: Snapshot, without_bodies: bool) -> Iterator[bytes]:
    """The SQL script of the whole database at `snapshot`, as pg_dump and psql write it."""
    dsn, env = _libpq(dsn_with_password)

    def dump(*options: str) -> Iterator[bytes]:
        return _run_streaming(
            [
                str(PG_BIN_DIR / "pg_dump"),
                "--no-owner",
                "--no-privileges",
                f"--snapshot={snapshot.name}",
                *options,
                "--dbname",
                dsn,
            ],
            env,
        )

    yield from dump("--section=pre-data")
    yield from dump("--section=data", "--exclude-table-data=public.messages")
    columns = ", ".join(f'"{c}"' for c in snapshot.message_columns)
    selected = ", ".join(
        f"CASE WHEN status IN {_FINISHED} THEN ''::bytea ELSE raw END AS raw"
        if c == "raw" and without_bodies
        else f'"{c}"'
        for c in snapshot.message_columns
    )
    yield f"\nCOPY public.messages ({columns}) FROM stdin;\n".encode()
    yield from _run_streaming(
        [
            str(PG_BIN_DIR / "psql"),
            "--no-psqlrc",
            "--quiet",
            "--set=ON_ERROR_STOP=1",
            "--command=BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            f"--command=SET TRANSACTION SNAPSHOT '{snapshot.name}'",
            # our own column list and the snapshot name pg_export_snapshot() gave us
            f"--command=COPY (SELECT {selected} FROM public.messages) TO STDOUT",  # noqa: S608
            "--command=COMMIT",
            "--dbname",
            dsn,
        ],
        env,
    )
    yield b"\\.\n\n"
    yield from dump("--section=post-data")


class _PlaintextReader:
    """What pyrage encrypts: the format line, the manifest, then the compressed script."""

    def __init__(self, head: bytes, script: Iterator[bytes]) -> None:
        self._pending = head
        self._offset = 0  # into _pending: slicing off the front each read would copy it again
        self._script = script
        self._compress = zlib.compressobj(1)  # fast: the bodies are mostly text or base64
        self._ended = False

    def read(self, size: int = -1) -> bytes:
        while self._offset >= len(self._pending) and not self._ended:
            chunk = next(self._script, None)
            if chunk is None:
                self._pending = self._compress.flush()
                self._ended = True
            else:
                self._pending = self._compress.compress(chunk)
            self._offset = 0
        n = len(self._pending) - self._offset if size is None or size < 0 else size
        out = self._pending[self._offset : self._offset + n]
        self._offset += len(out)
        return out


def _write_encrypted(out: IO[bytes], reader: _PlaintextReader, recipients: list[Any]) -> int:
    progress = _Progress("backup")
    pyrage.encrypt_io(reader, _CountingWriter(out, progress), recipients)
    progress.done()
    return progress.bytes


def backup_file_name(now: datetime) -> str:
    return f"remails-{now:%Y%m%dT%H%M%SZ}.backup.age"


async def backup(settings: Settings, destination: str, *, without_bodies: bool = False) -> BackupResult:
    """Write one encrypted backup to `destination` (a directory or s3://bucket/prefix) and
    record the run in the database (the backup metrics read it)."""
    recipients = _recipients(settings)
    master_key = load_master_key(settings.secret_key, settings.data_dir)
    name = backup_file_name(datetime.now(UTC))
    db = await connect(settings, max_size=2)
    try:
        try:
            result = await _backup(db, settings, destination, name, master_key, recipients, without_bodies)
        except BackupError as exc:
            await record_backup(db.pool, ok=False, destination=destination, size=None, error=str(exc)[:500])
            raise
        await record_backup(db.pool, ok=True, destination=result.location, size=result.size, error=None)
        return result
    finally:
        await db.close()


async def _backup(
    db: Database,
    settings: Settings,
    destination: str,
    name: str,
    master_key: MasterKey,
    recipients: list[Any],
    without_bodies: bool,
) -> BackupResult:
    async with exported_snapshot(db.pool) as snapshot:
        reader = _PlaintextReader(
            FORMAT_LINE + _manifest(snapshot, master_key, without_bodies),
            _script(db.dsn, snapshot, without_bodies),
        )
        if destination.startswith("s3://"):
            location = parse_s3(destination)
            key = f"{location.key.rstrip('/')}/{name}" if location.key else name
            target = S3Location(location.bucket, key)
            size = await asyncio.to_thread(_backup_to_s3, settings, target, reader, recipients)
            return BackupResult(str(target), size, without_bodies)
        path = Path(destination) / name
        size = await asyncio.to_thread(_backup_to_file, path, reader, recipients)
        return BackupResult(str(path), size, without_bodies)


def _backup_to_file(path: Path, reader: _PlaintextReader, recipients: list[Any]) -> int:
    if not path.parent.is_dir():
        raise BackupError(f"{path.parent}: not a directory")
    partial = path.with_name(path.name + ".partial")
    try:
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            size = _write_encrypted(out, reader, recipients)
            out.flush()
            os.fsync(out.fileno())
        partial.rename(path)  # a file under the final name is always a whole backup
    finally:
        partial.unlink(missing_ok=True)
    return size


def _backup_to_s3(
    settings: Settings, target: S3Location, reader: _PlaintextReader, recipients: list[Any]
) -> int:
    client = _s3_client(settings)
    with tempfile.TemporaryFile() as spool:  # ciphertext only
        size = _write_encrypted(spool, reader, recipients)
        spool.seek(0)
        try:
            client.upload_fileobj(spool, target.bucket, target.key)
        except Exception as exc:  # botocore's errors: no credentials, no bucket, refused
            raise _s3_error(exc, target) from None
    return size


# -- restore ----------------------------------------------------------------------------------


def _identities(keyfile: Path) -> list[Any]:
    try:
        text = keyfile.read_text()
    except OSError as exc:
        raise BackupError(f"--identity {keyfile}: {exc.strerror}") from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    try:
        identities = [pyrage.x25519.Identity.from_str(key) for key in keys]
    except pyrage.IdentityError:
        raise BackupError(f"--identity {keyfile}: not an age identity file (AGE-SECRET-KEY-1…)") from None
    if not identities:
        raise BackupError(f"--identity {keyfile}: no identity in the file")
    return identities


class _RestoreWriter:
    """Receives the decrypted stream: checks the format line and the manifest before anything
    is written, then feeds the decompressed script to psql."""

    def __init__(self, start: Callable[[dict[str, Any]], IO[bytes]], progress: _Progress) -> None:
        self._start = start
        self._head = b""
        self._sink: IO[bytes] | None = None
        self._decompress = zlib.decompressobj()
        self.progress = progress
        self.manifest: dict[str, Any] | None = None

    def write(self, data: bytes) -> int:
        written = len(data)  # all of it, always: a short count would make pyrage write it again
        self.progress.add(written)
        if self._sink is None:
            self._head += bytes(data)
            if not self._head.startswith(FORMAT_LINE[: len(self._head)]):
                raise BackupError("not a remails backup")
            if self._head.count(b"\n") < 2:
                if len(self._head) > 1 << 20:
                    raise BackupError("not a remails backup")
                return written
            _, manifest_line, rest = self._head.split(b"\n", 2)
            self.manifest = json.loads(manifest_line)
            self._sink = self._start(self.manifest)
            data = rest
        self._sink.write(self._decompress.decompress(data))
        return written

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        if self._sink is None or not self._decompress.eof:
            raise BackupError("the backup file is truncated")


def _psql_error(errors: IO[bytes], code: int) -> str:
    """The line of psql's output that names the error (not the caret under it)."""
    errors.seek(0)
    lines = errors.read().decode(errors="replace").strip().splitlines()
    named = [line for line in lines if "ERROR:" in line or "FATAL:" in line or "error:" in line]
    return (named or lines or [f"exit {code}"])[0].strip()


def _check_key(manifest: dict[str, Any], master_key: MasterKey) -> None:
    try:
        master_key.open(base64.b64decode(manifest["key_check"]), _KEY_CHECK_CONTEXT)
    except (ValueError, KeyError):
        raise BackupError(
            "this backup was made under another master key: restore with that service's"
            " REMAILS_SECRET_KEY (or its data directory's master.key)"
        ) from None


def _restore_stream(
    source: IO[bytes], identities: list[Any], master_key: MasterKey, dsn: str
) -> dict[str, Any]:
    with tempfile.TemporaryFile() as errors:
        return _restore_into_psql(source, identities, master_key, dsn, errors)


def _restore_into_psql(
    source: IO[bytes], identities: list[Any], master_key: MasterKey, dsn: str, errors: IO[bytes]
) -> dict[str, Any]:
    psql: list[subprocess.Popen[bytes]] = []
    dsn, env = _libpq(dsn)

    def start(manifest: dict[str, Any]) -> IO[bytes]:
        _check_key(manifest, master_key)
        process = subprocess.Popen(  # noqa: S603  # our own psql, no shell
            [
                str(PG_BIN_DIR / "psql"),
                "--no-psqlrc",
                "--quiet",
                "--set=ON_ERROR_STOP=1",
                "--single-transaction",
                "--file=-",
                "--dbname",
                dsn,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env=env,
        )
        psql.append(process)
        if process.stdin is None:
            raise BackupError("psql started without its input pipe")
        return process.stdin

    progress = _Progress("restore")
    writer = _RestoreWriter(start, progress)
    try:
        try:
            pyrage.decrypt_io(source, writer, identities)
        except pyrage.DecryptError as exc:
            raise BackupError(f"cannot decrypt the backup with this identity: {exc}") from None
        except BrokenPipeError:
            pass  # psql stopped early: its exit status and message say why
        writer.finish()
    finally:
        for process in psql:
            if process.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()
            code = process.wait()
            if code != 0:
                errors.seek(0)
                raise BackupError(f"restore failed, nothing was written: {_psql_error(errors, code)}")
    progress.done()
    if writer.manifest is None:
        raise BackupError("the backup has no manifest: not a Remails backup, or cut short")
    return writer.manifest


async def restore(settings: Settings, source: str, identity: Path) -> dict[str, Any]:
    """Restore `source` (a file or s3://bucket/key) into the configured database, which must
    be empty; then apply the migrations this version has on top."""
    identities = _identities(identity)
    if not settings.secret_key and not (settings.data_dir / "master.key").exists():
        # load_master_key would make a new one, which cannot open the backup's DKIM keys.
        raise BackupError(
            "no master key: set REMAILS_SECRET_KEY, or put the master.key of the service the"
            f" backup came from into {settings.data_dir}"
        )
    master_key = load_master_key(settings.secret_key, settings.data_dir)
    db = await connect(settings, max_size=2, run_migrations=False)
    try:
        if not await database_is_empty(db.pool):
            raise BackupError("the database is not empty: restore only into a new, empty database")
        if source.startswith("s3://"):
            manifest = await asyncio.to_thread(
                _restore_from_s3, settings, parse_s3(source), identities, master_key, db.dsn
            )
        else:
            manifest = await asyncio.to_thread(_restore_file, Path(source), identities, master_key, db.dsn)
        await migrate(db.pool)
        counts = await restored_counts(db.pool)
        # After the restored log's last entry: who brought this data back, from where.
        where = source if source.startswith("s3://") else await asyncio.to_thread(os.path.abspath, source)
        details = {"source": where, "created_at": manifest.get("created_at"), **counts}
        await audit.record(
            db.pool, audit.operator_cli(), "backup.restore", organization_id=None, details=details
        )
    finally:
        await db.close()
    return {
        "restored": source,
        "created_at": manifest.get("created_at"),
        "without_bodies": manifest.get("without_bodies"),
        **counts,
    }


def _restore_file(path: Path, identities: list[Any], master_key: MasterKey, dsn: str) -> dict[str, Any]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise BackupError(f"{path}: {exc.strerror}") from None
    with handle:
        return _restore_stream(handle, identities, master_key, dsn)


def _restore_from_s3(
    settings: Settings, location: S3Location, identities: list[Any], master_key: MasterKey, dsn: str
) -> dict[str, Any]:
    client = _s3_client(settings)
    with tempfile.TemporaryFile() as spool:  # ciphertext only
        try:
            client.download_fileobj(location.bucket, location.key, spool)
        except Exception as exc:
            raise _s3_error(exc, location) from None
        spool.seek(0)
        return _restore_stream(spool, identities, master_key, dsn)
