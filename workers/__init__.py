"""Composition root of the workers. Nothing imports this package but the CLI and the tests."""
