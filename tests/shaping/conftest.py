"""The shaping tests run the whole service against loopback peers, like the end-to-end ones."""

from tests.e2e.conftest import world

__all__ = ["world"]
