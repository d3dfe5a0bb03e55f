"""Tools shared by the test suite, the benches and the demo: a loopback artifact server."""
