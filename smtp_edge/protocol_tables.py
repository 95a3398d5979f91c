"""aiosmtpd's per-connection set-up, with its lookup tables computed once per class.

`SMTP.__init__` scans the protocol object and its handler with `inspect.getmembers` on every
connection to find the `smtp_*` commands, the `auth_*` mechanisms and the `handle_*` hooks
(and reads the EHLO hook's signature). The names only depend on the classes, so they are found
once per (protocol class, handler class, excluded mechanisms) and each connection just binds
them. `init_protocol` does what `SMTP.__init__` of the checked aiosmtpd version does, in the
same order and with the same results (`tests/unit/test_edge_protocol_tables.py` compares the
two); any other version, or a handler with hooks set on the instance, gets aiosmtpd's own
`__init__`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MethodType
from typing import Any

import aiosmtpd
from aiosmtpd.smtp import SMTP, _AuthMechAttr, login_always_fail, make_loop
from aiosmtpd.smtp import __ident__ as default_ident

__all__ = ["CHECKED_VERSION", "BoundCommands", "CommandWrapper", "init_protocol"]

CHECKED_VERSION = "1.4.6"  # the aiosmtpd whose __init__ this mirrors

_aiosmtpd_log = logging.getLogger("mail.log")  # aiosmtpd's logger

# Wraps an unbound `smtp_*` function (self, arg) into another: done once per class.
CommandWrapper = Callable[[Callable[[Any, str], Awaitable[None]]], Callable[[Any, str], Awaitable[None]]]


class BoundCommands(Mapping[str, Callable[[str], Awaitable[None]]]):
    """A session's `smtp_*` commands, bound on lookup: aiosmtpd only looks up the one it
    received (and all of them for HELP), so binding every command per connection is waste."""

    __slots__ = ("_functions", "_owner")

    def __init__(self, functions: dict[str, Callable[..., Any]], owner: SMTP) -> None:
        self._functions = functions
        self._owner = owner

    def __getitem__(self, command: str) -> Callable[[str], Awaitable[None]]:
        return MethodType(self._functions[command], self._owner)

    def __iter__(self) -> Iterator[str]:
        return iter(self._functions)

    def __len__(self) -> int:
        return len(self._functions)


@dataclass(frozen=True)
class _Tables:
    commands: dict[str, Callable[..., Any]]  # command -> function(self, arg); never changed
    auth: tuple[tuple[str, str, bool], ...]  # mechanism, attribute name, on the protocol (builtin)
    hooks: tuple[tuple[str, str], ...]  # hook name ("DATA") -> handler attribute ("handle_DATA")
    ehlo_hook_ver: str | None


_TABLES: dict[tuple[type, type, frozenset[str], CommandWrapper | None], _Tables | None] = {}


def _scan(
    cls: type[SMTP], handler: Any, excluded: frozenset[str], wrap: CommandWrapper | None
) -> _Tables | None:
    """The scan of `SMTP.__init__`, on the classes (None when a command is no plain function,
    so binding it would differ from `getattr`). Later entries win, as in its dict
    comprehension: the handler's mechanisms over the built-in ones."""
    names = [n for n in dir(cls) if n.startswith("smtp_")]
    if not all(inspect.isfunction(getattr(cls, n)) for n in names):
        return None
    auth: dict[str, tuple[str, bool]] = {}
    for owner, builtin in ((cls, True), (type(handler), False)):
        for name, member in inspect.getmembers(owner):
            if name.startswith("auth_"):
                default = name.replace("auth_", "").replace("__", "-")
                mechanism = getattr(member, "__auth_mechanism_name__", default)
                auth[mechanism] = (name, builtin)
    for mechanism in excluded:
        auth.pop(mechanism, None)
    _aiosmtpd_log.info(
        "Available AUTH mechanisms: "
        + " ".join(m + "(builtin)" if builtin else m for m, (_, builtin) in sorted(auth.items()))
    )
    hooks = tuple((m.replace("handle_", ""), m) for m in dir(handler) if m.startswith("handle_"))
    ehlo_hook_ver: str | None = None
    ehlo = getattr(handler, "handle_EHLO", None)
    if ehlo is not None:
        count = len(inspect.signature(ehlo).parameters)
        if count not in (4, 5):
            raise RuntimeError("Unsupported EHLO Hook")
        ehlo_hook_ver = "old" if count == 4 else "new"
    commands = []
    for name in names:
        function = getattr(cls, name)
        commands.append((name.replace("smtp_", ""), wrap(function) if wrap else function))
    return _Tables(
        dict(commands),
        tuple((m, name, builtin) for m, (name, builtin) in auth.items()),
        hooks,
        ehlo_hook_ver,
    )


def _cacheable(handler: Any, rest: dict[str, Any]) -> bool:
    if aiosmtpd.__version__ != CHECKED_VERSION:
        return False
    if rest.get("command_call_limit") is not None or rest.get("proxy_protocol_timeout") is not None:
        return False  # their checks are left to aiosmtpd
    # Hooks set on the instance are not in the class scan.
    return not any(k.startswith(("auth_", "handle_")) for k in getattr(handler, "__dict__", ()))


_checked_contexts: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()


def init_protocol(
    protocol: SMTP,
    handler: Any,
    *,
    wrap_command: CommandWrapper | None = None,
    data_size_limit: int | None = 2**25,
    enable_SMTPUTF8: bool = False,
    decode_data: bool = False,
    hostname: str | None = None,
    ident: str | None = None,
    tls_context: ssl.SSLContext | None = None,
    require_starttls: bool = False,
    timeout: float = 300,
    auth_required: bool = False,
    auth_require_tls: bool = True,
    auth_exclude_mechanism: Iterable[str] | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    **rest: Any,
) -> None:
    """`SMTP.__init__(protocol, handler, ...)`, with `smtp_*` commands passed through
    `wrap_command` (once per class) when given."""
    cls = type(protocol)
    excluded = frozenset(auth_exclude_mechanism or ())
    key = (cls, type(handler), excluded, wrap_command)
    cacheable = not (not auth_require_tls and auth_required) and _cacheable(handler, rest)
    if cacheable and key not in _TABLES:
        _TABLES[key] = _scan(cls, handler, excluded, wrap_command)
    tables = _TABLES.get(key) if cacheable else None
    if tables is None:
        SMTP.__init__(
            protocol,
            handler,
            data_size_limit=data_size_limit,
            enable_SMTPUTF8=enable_SMTPUTF8,
            decode_data=decode_data,
            hostname=hostname,
            ident=ident,
            tls_context=tls_context,
            require_starttls=require_starttls,
            timeout=timeout,
            auth_required=auth_required,
            auth_require_tls=auth_require_tls,
            auth_exclude_mechanism=auth_exclude_mechanism,
            loop=loop,
            **rest,
        )
        if wrap_command is not None:
            protocol._smtp_methods = {
                name: MethodType(wrap_command(method.__func__), protocol)
                for name, method in protocol._smtp_methods.items()
            }
        return

    # From here on, SMTP.__init__ of aiosmtpd 1.4.6, line by line, without the scans.
    p: Any = protocol
    p.__ident__ = ident or default_ident
    p.loop = loop if loop else make_loop()
    asyncio.StreamReaderProtocol.__init__(
        p,
        asyncio.StreamReader(loop=p.loop, limit=p.line_length_limit),
        client_connected_cb=p._cb_client_connected,
        loop=p.loop,
    )
    p.event_handler = handler
    if not (data_size_limit is None or isinstance(data_size_limit, int)):
        raise TypeError("data_size_limit must be an int or None")
    p.data_size_limit = data_size_limit
    p.enable_SMTPUTF8 = enable_SMTPUTF8
    p._decode_data = decode_data
    p.command_size_limits.clear()
    p.hostname = hostname if hostname else socket.getfqdn()
    p.tls_context = tls_context
    if tls_context and tls_context not in _checked_contexts:
        # aiosmtpd's checks of the context, once per context (its enum properties cost ~1 % of a
        # session's CPU when read on every connection).
        _checked_contexts.add(tls_context)
        if tls_context.verify_mode not in {ssl.CERT_NONE, ssl.CERT_OPTIONAL}:
            _aiosmtpd_log.warning(
                "tls_context.verify_mode not in {CERT_NONE, CERT_OPTIONAL}; "
                "this might cause client connection problems"
            )
        elif tls_context.check_hostname:
            _aiosmtpd_log.warning(
                "tls_context.check_hostname == True; this might cause client connection problems"
            )
    p.require_starttls = tls_context and require_starttls
    p._timeout_duration = timeout
    p._timeout_handle = None
    p._tls_handshake_okay = True
    p._tls_protocol = None
    p._original_transport = None
    p.session = None
    p.envelope = None
    p.transport = None
    p._handler_coroutine = None
    p._auth_require_tls = auth_require_tls
    p._proxy_timeout = None
    authenticator = rest.get("authenticator")
    if authenticator is not None:
        p._authenticator = authenticator
        p._auth_callback = None
    else:
        p._auth_callback = rest.get("auth_callback") or login_always_fail
        p._authenticator = None
    p._auth_required = auth_required
    p._auth_methods = {
        mechanism: _AuthMechAttr(getattr(protocol if builtin else handler, name), builtin)
        for mechanism, name, builtin in tables.auth
    }
    p._handle_hooks = {hook: getattr(handler, name) for hook, name in tables.hooks}
    p._ehlo_hook_ver = tables.ehlo_hook_ver
    p._smtp_methods = BoundCommands(tables.commands, protocol)
    p._enforce_call_limit = False
