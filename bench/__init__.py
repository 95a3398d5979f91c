"""Benchmarks and fault tests: Remails and Postfix under the same load, on loopback only."""
