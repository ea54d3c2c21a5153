"""Test helpers and contract suites, for our tests and for third-party plugin authors."""
