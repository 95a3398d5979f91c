"""A real Postfix (the Debian package) as a receiving MX on loopback, for interoperability tests.

Its whole configuration, queue and mail live in one temp dir: a private main.cf and master.cf,
one smtpd per `Listener` (an address on the shared port, with its own `-o` overrides, so one
instance can be a modern MX, an old 7-bit MX and a broken-TLS MX at once), and virtual(8)
delivering each of `mailboxes` into a maildir `mail/<domain>/<local part>/` (other addresses
of their domains are unknown users, refused at RCPT).
Started and stopped with `postfix -c`, like bench/harness.py does with the relay.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.wait import wait_until

__all__ = ["Listener", "PostfixMx"]

_MAIN_CF = """compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-mx
maillog_file = {d}/postfix.log
maillog_file_prefixes = {d}
myhostname = mx.postfix.test
mydomain = postfix.test
myorigin = $myhostname
mydestination =
# The listeners bind their own 127.0.0.x in master.cf; Postfix only checks this one exists.
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks =
smtpd_relay_restrictions = reject_unauth_destination
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
alias_maps =
alias_database =
local_recipient_maps =
message_size_limit = 30000000
smtputf8_enable = yes
virtual_mailbox_domains = {domains}
virtual_mailbox_base = {d}/mail
virtual_mailbox_maps = texthash:{d}/etc/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_loglevel = 1
# Log every command our client sends (MAIL parameters, RCPT forms) so tests can read the wire.
debug_peer_list = 127.0.0.0/8
debug_peer_level = 1
"""


@dataclass(frozen=True)
class Listener:
    name: str  # its log lines say postfix-mx/<name>/smtpd
    ip: str
    options: dict[str, str] = field(default_factory=dict)  # smtpd -o overrides


class PostfixMx:
    def __init__(
        self, port: int, mailboxes: list[str], listeners: list[Listener], cert: bytes, key: bytes
    ) -> None:
        # Postfix's daemons run as `postfix` and `nobody`: the tree must be theirs to walk.
        self.dir = Path(tempfile.mkdtemp(prefix="remails-postfix-"))
        os.chmod(self.dir, 0o755)
        for sub in ("etc", "queue", "data", "mail"):
            (self.dir / sub).mkdir()
        shutil.chown(self.dir / "data", "postfix")
        uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        os.chown(self.dir / "mail", uid, gid)
        (self.dir / "etc" / "cert.pem").write_bytes(cert)
        (self.dir / "etc" / "key.pem").write_bytes(key)
        os.chmod(self.dir / "etc" / "key.pem", 0o600)
        lines = []
        for address in mailboxes:
            local, _, domain = address.rpartition("@")
            lines.append(f"{address} {domain}/{local}/\n")
        (self.dir / "etc" / "vmailbox").write_text("".join(lines), encoding="utf-8")
        domains = sorted({address.rpartition("@")[2] for address in mailboxes})
        main_cf = _MAIN_CF.format(
            d=self.dir,
            domains=", ".join(domains),
            uid=uid,
            gid=gid,
            cert=self.dir / "etc" / "cert.pem",
            key=self.dir / "etc" / "key.pem",
        )
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
        for listener in listeners:
            master.append(f"{listener.ip}:{port} inet n - n - - smtpd")
            options = {"syslog_name": f"postfix-mx/{listener.name}", **listener.options}
            master += [f"  -o {{ {name} = {value} }}" for name, value in options.items()]
        (self.dir / "etc" / "master.cf").write_text("\n".join(master) + "\n")
        self.port = port
        self.listeners = listeners

    def _postfix(self, action: str) -> None:
        done = subprocess.run(
            ["postfix", "-c", str(self.dir / "etc"), action], timeout=60, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"postfix {action} failed: {done.stderr.strip()[-2000:]}")

    def start(self, bound: float = 30.0) -> None:
        self._postfix("check")
        self._postfix("start")
        deadline = time.monotonic() + bound
        for listener in self.listeners:  # master binds them at once; wait until they accept
            while True:
                with socket.socket() as s:
                    if s.connect_ex((listener.ip, self.port)) == 0:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"postfix does not listen on {listener.ip}:{self.port}")
                time.sleep(0.05)

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._postfix("stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def maildir(self, address: str) -> Path:
        local, _, domain = address.rpartition("@")
        return self.dir / "mail" / domain / local / "new"

    def delivered(self, address: str) -> list[bytes]:
        """The messages in `address`'s maildir, as delivered (Postfix adds Return-Path and
        Delivered-To on top)."""
        folder = self.maildir(address)
        if not folder.is_dir():
            return []
        return [p.read_bytes() for p in sorted(folder.iterdir())]

    async def wait_delivered(self, address: str, count: int = 1, bound: float = 10) -> list[bytes]:
        """The maildir's messages once it holds `count`: Postfix's smtpd says 250 when the
        message is in its queue, and local delivery writes the maildir a moment later."""
        await wait_until(lambda: len(self.delivered(address)) >= count, bound=bound)
        return self.delivered(address)

    def log(self, listener: str | None = None) -> list[str]:
        """Postfix's log lines, or only those of one listener's smtpd."""
        path = self.dir / "postfix.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        if listener is None:
            return lines
        return [line for line in lines if f" postfix-mx/{listener}/smtpd[" in line]

    def commands(self, listener: str) -> list[str]:
        """The SMTP commands one listener received (debug_peer_list logs them: "< client: …")."""
        return [line.split("]: ", 2)[-1] for line in self.log(listener) if "]: < " in line]
