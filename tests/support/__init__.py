"""Real peers for the tests: a DNS server, SMTP sinks, PostgreSQL databases, all on loopback."""
