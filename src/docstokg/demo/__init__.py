"""A loopback artifact server for the ``docstokg demo`` command, tests and benchmarks."""
