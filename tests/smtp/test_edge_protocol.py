"""The edge's protocol objects: aiosmtpd's state, with its per-connection scans done once."""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Mapping
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, _AuthMechAttr

from remails_smtp_edge.server import EdgeSMTP, MxSMTP
from tests.smtp.conftest import Edge


def _normal(value: Any, owners: dict[int, str]) -> Any:
    """A comparable picture of one attribute: bound methods by function and owner, readers by
    limit, futures and weak references by what they hold."""
    if inspect.ismethod(value):
        function = value.__func__
        return ("method", getattr(function, "__wrapped__", function), owners.get(id(value.__self__), "?"))
    if isinstance(value, _AuthMechAttr):
        return ("auth", _normal(value.method, owners), value.is_builtin)
    if isinstance(value, Mapping):
        return {k: _normal(v, owners) for k, v in value.items()}
    if isinstance(value, asyncio.StreamReader):
        return ("reader", value._limit)  # type: ignore[attr-defined]
    if isinstance(value, asyncio.Future):
        return ("future", value.done())
    if isinstance(value, weakref.ref):
        return ("weakref", _normal(value(), owners))
    if isinstance(value, SMTP):
        return owners.get(id(value), "?")
    return value


def _state(protocol: SMTP, handler: Any) -> dict[str, Any]:
    owners = {id(protocol): "protocol", id(handler): "handler"}
    skip = {"edge", "implicit_tls", "in_data", "commands_without_message", "_admitted", "_continued"}
    return {k: _normal(v, owners) for k, v in vars(protocol).items() if k not in skip}


def _aiosmtpd_made(cls: type[EdgeSMTP], handler: Any, options: dict[str, Any]) -> SMTP:
    protocol = cls.__new__(cls)
    SMTP.__init__(protocol, handler, **options)
    return protocol


async def test_a_session_gets_aiosmtpds_state_without_scanning_per_connection(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = edge.server
    server._factory(False)  # the first connection of each kind fills the tables
    server._factory(True)
    server._mx_factory()
    cases: list[tuple[type[EdgeSMTP], Any, dict[str, Any]]] = [
        (EdgeSMTP, server.handler, server.submission_options(False)),
        (EdgeSMTP, server.handler, server.submission_options(True)),
        (MxSMTP, server.inbound, server.mx_options()),
    ]
    expected = [_state(_aiosmtpd_made(cls, handler, options), handler) for cls, handler, options in cases]

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("inspect.getmembers called for a new connection")

    monkeypatch.setattr(inspect, "getmembers", no_scan)
    monkeypatch.setattr(inspect, "signature", no_scan)
    made = [server._factory(False), server._factory(True), server._mx_factory()]
    for protocol, (_, handler, _), want in zip(made, cases, expected, strict=True):
        assert _state(protocol, handler) == want
    submission, _, mx = made
    assert sorted(submission._auth_methods) == ["LOGIN", "PLAIN"]
    assert not any(impl.is_builtin for impl in submission._auth_methods.values())  # the handler's
    assert mx._auth_methods == {}
    assert "DATA" in submission._handle_hooks and submission._ehlo_hook_ver == "new"
    # Every command still counts towards the junk limit and keeps the syntax HELP shows.
    for command in submission._smtp_methods.values():
        assert command.__func__.__wrapped__ is getattr(EdgeSMTP, command.__name__)
    assert submission._smtp_methods["MAIL"].__smtp_syntax__ == "MAIL FROM: <address>"
    assert mx._smtp_methods["AUTH"].__func__.__wrapped__ is MxSMTP.smtp_AUTH


async def test_a_multi_line_reply_is_written_at_once(edge: Edge, monkeypatch: pytest.MonkeyPatch) -> None:
    """EHLO's lines go out in one write (one send() call), not one write a line; what the
    client reads is the same reply."""
    from tests.support.rawsmtp import RawSmtp

    writes: list[bytes] = []
    write = asyncio.StreamWriter.write

    def counted(self: asyncio.StreamWriter, data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        write(self, data)

    raw = await RawSmtp.connect(edge.submission)
    assert (await raw.reply()).startswith("220 ")
    monkeypatch.setattr(asyncio.StreamWriter, "write", counted)
    ehlo = await raw.command("EHLO client.test")
    monkeypatch.undo()
    lines = ehlo.split("\n")
    assert len(lines) > 3 and lines[-1] == "250 HELP"
    assert all(line[3] == "-" for line in lines[:-1])
    replies = [w for w in writes if w.startswith(b"250")]
    assert replies == [("\r\n".join(lines) + "\r\n").encode()]
    await raw.close()
