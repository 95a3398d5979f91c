"""The operations tests run the whole service like the end-to-end tests do."""

from __future__ import annotations

from tests.e2e.conftest import world

__all__ = ["world"]
