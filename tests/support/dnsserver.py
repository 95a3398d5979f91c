"""The loopback DNS server lives with the benchmarks (which may not import the tests)."""

from bench.dnsserver import LocalDns

__all__ = ["LocalDns"]
