"""An authoritative DNS server on 127.0.0.1 (UDP and TCP) serving a zone its caller edits."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from dnslib import AAAA, MX, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class Zone(BaseResolver):  # type: ignore[misc]
    """Records by (name, type); names without the trailing dot, lower case."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[Any]] = defaultdict(list)
        self.lock = threading.Lock()

    def add(self, name: str, rtype: str, value: Any) -> None:
        with self.lock:
            self.records[(name.lower().rstrip("."), rtype)].append(value)

    def remove(self, name: str, rtype: str | None = None) -> None:
        with self.lock:
            for key in list(self.records):
                if key[0] == name.lower().rstrip(".") and rtype in (None, key[1]):
                    del self.records[key]

    def mx(self, domain: str, host: str, preference: int = 10) -> None:
        self.add(domain, "MX", (preference, host))

    def a(self, name: str, ip: str) -> None:
        self.add(name, "AAAA" if ":" in ip else "A", ip)

    def txt(self, name: str, text: str) -> None:
        self.add(name, "TXT", text)

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        qname = str(request.q.qname).lower().rstrip(".")
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            values = list(self.records.get((qname, qtype), []))
            exists = any(key[0] == qname for key in self.records)
        for value in values:
            if qtype == "MX":
                rdata: Any = MX(value[1], value[0])
            elif qtype == "A":
                rdata = A(value)
            elif qtype == "AAAA":
                rdata = AAAA(value)
            else:
                chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
                rdata = TXT(chunks)
            reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=rdata, ttl=60))
        if not values and not exists:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class LocalDns:
    def __init__(self) -> None:
        self.zone = Zone()
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        for _ in range(20):  # the UDP port's TCP twin may be taken by another process: try another
            self._udp = DNSServer(self.zone, address="127.0.0.1", port=0, logger=quiet)
            self.port: int = self._udp.server.server_address[1]
            try:
                self._tcp = DNSServer(self.zone, address="127.0.0.1", port=self.port, tcp=True, logger=quiet)
                break
            except OSError:
                self._udp.server.server_close()
        else:
            raise OSError("no free port for both UDP and TCP")

    @property
    def servers(self) -> str:
        """The value for REMAILS_DNS_SERVERS."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._udp.start_thread()
        self._tcp.start_thread()

    def stop(self) -> None:
        for server in (self._udp, self._tcp):
            server.stop()
            server.server.server_close()
