"""The `orders` command: one-line errors for what a user can fix."""

from __future__ import annotations

import subprocess
import sys

import jwt

from core.config import Settings
from core.tokens import verify_token


def orders(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_token_prints_a_verifiable_token_with_the_asked_ttl():
    result = orders("token", "--sub", "alice", "--role", "operator", "--ttl", "120")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    claims = verify_token(Settings(), token)
    assert (claims.subject, claims.role) == ("alice", "operator")
    raw = jwt.decode(token, options={"verify_signature": False})
    assert raw["exp"] - raw["iat"] == 120


def test_token_with_a_bad_ttl_is_one_line():
    result = orders("token", "--sub", "alice", "--ttl", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "orders: error: ttl must be positive"


def test_commands_that_need_a_database_say_so_in_one_line():
    result = orders("worker", env={"ORDERS_DATABASE_URL": ""})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "ORDERS_DATABASE_URL is not set" in result.stderr


def test_invalid_settings_are_one_line():
    result = orders("token", "--sub", "a", env={"ORDERS_ENVIRONMENT": "production"})
    assert result.returncode == 2
    assert result.stderr.startswith("orders: error: invalid settings:") and result.stderr.count("\n") == 1
