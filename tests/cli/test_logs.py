"""Logs a person reads: no ANSI copies of messages, no library deprecation noise on every AUTH,
DNS failures in words rather than dnspython class names."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import socket
from collections.abc import Iterator

import pytest
from aiosmtpd.smtp import Session

from remails.config import load_settings
from remails.dns import make_resolver
from remails.log import configure_logging
from remails_sender_node.mx import DeliveryDnsError, resolve_destination


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The logging `remails up` configures, written to a buffer instead of stderr."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    configure_logging()
    buffer = io.StringIO()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    yield buffer
    root.handlers[:] = saved
    root.setLevel(level)


def test_uvicorn_colour_copies_are_left_out(json_logs: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").info(
        "Started server process [%d]",
        1,
        extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
    )
    (line,) = json_logs.getvalue().strip().splitlines()
    entry = json.loads(line)
    assert entry["msg"] == "Started server process [1]" and "color_message" not in entry
    assert "\x1b" not in line


async def test_the_login_data_deprecation_warning_is_not_logged(json_logs: io.StringIO) -> None:
    session = Session(asyncio.get_running_loop())
    session.login_data = b"user"  # what aiosmtpd itself does on every successful AUTH
    logging.getLogger("mail.log").warning("a real warning")
    lines = json_logs.getvalue().strip().splitlines()
    assert [json.loads(line)["msg"] for line in lines] == ["a real warning"]


@pytest.fixture
def silent_dns() -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


async def test_a_dns_timeout_is_described_in_words(silent_dns: str) -> None:
    resolver = make_resolver(load_settings(dns_servers=silent_dns), timeout=0.3)
    with pytest.raises(DeliveryDnsError) as caught:
        await resolve_destination(resolver, "dest.test", "127.0.0.2", random.Random(1))
    assert (
        caught.value.text
        == "MX lookup for dest.test failed: the DNS servers did not answer in time (timeout)"
    )
    assert caught.value.enhanced == "4.4.3"
