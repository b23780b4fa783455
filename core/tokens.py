"""Bearer tokens (JWT). Algorithms are fixed by configuration, never taken from the token."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from core.config import Settings

ROLES = ("customer", "operator", "carrier")


class InvalidToken(Exception):
    """The token is missing, malformed, expired, not yet valid, or not for this API."""


@dataclass(frozen=True)
class Claims:
    subject: str
    role: str


def mint_token(settings: Settings, subject: str, role: str, ttl_s: int = 3600, now: float | None = None) -> str:
    """An HS256 token for development and tests (production uses the identity provider's)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not subject:
        raise ValueError("subject must not be empty")
    if ttl_s <= 0:
        raise ValueError("ttl must be positive")
    issued = int(now if now is not None else time.time())
    claims = {
        "sub": subject,
        "role": role,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_s,
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def verify_token(settings: Settings, token: str, *, key=None) -> Claims:
    """Check signature, expiry, not-before, issuer and audience; return subject and role."""
    try:
        claims = jwt.decode(
            token,
            key if key is not None else settings.jwt_secret,
            algorithms=settings.jwt_algorithms,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iss", "aud", "sub"]},
            leeway=5,
        )
    except jwt.PyJWTError as error:
        raise InvalidToken(str(error)) from error
    role = claims.get("role", "customer")
    if role not in ROLES:
        raise InvalidToken("unknown role")
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise InvalidToken("invalid subject")
    return Claims(subject=subject, role=role)
