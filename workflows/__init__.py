"""Workflows: pure orchestration, deterministic, no I/O."""
