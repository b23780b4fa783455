"""Bearer tokens (JWT). Algorithms are fixed by configuration, never taken from the token.

Development and tests use HS256 with ``ORDERS_JWT_SECRET`` (:func:`mint_token`). Production points
``ORDERS_JWT_JWKS_URL`` at the identity provider's key set; tokens are then verified with RS256/ES256
public keys chosen by the token's ``kid``, and the shared secret is never accepted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
import jwt
import structlog

from core.config import Settings
from core.domain import CONTROL_CHARACTERS, has_control_characters

ROLES = ("customer", "operator", "carrier")
LEEWAY_S = 5

log = structlog.get_logger(__name__)


class InvalidToken(Exception):
    """The token is missing, malformed, expired, not yet valid, or not for this API."""


class InvalidSubject(InvalidToken):
    """The token is genuine but its ``sub`` cannot name a customer; ``str(error)`` is safe to show."""


class SigningKeysUnavailable(Exception):
    """The identity provider's key set could not be fetched and no cached copy exists."""


@dataclass(frozen=True)
class Claims:
    subject: str
    role: str


def mint_token(settings: Settings, subject: str, role: str, ttl_s: int = 3600, now: float | None = None) -> str:
    """An HS256 token for development and tests (production uses the identity provider's)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not subject or len(subject) > 255 or has_control_characters(subject):
        raise ValueError(f"subject must be 1-255 characters and {CONTROL_CHARACTERS}")
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
    """Check signature, expiry, not-before, issuer and audience; return subject and role.

    ``key`` defaults to the shared secret; the accepted algorithms are always
    ``settings.jwt_algorithms``, whatever the token's header says.
    """
    try:
        claims = jwt.decode(
            token,
            key if key is not None else settings.jwt_secret,
            algorithms=settings.jwt_algorithms,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iss", "aud", "sub"]},
            leeway=LEEWAY_S,
        )
    except jwt.PyJWTError as error:
        raise InvalidToken(str(error)) from error
    role = claims.get("role", "customer")
    if role not in ROLES:
        raise InvalidToken("unknown role")
    subject = claims["sub"]
    # The subject is the customer id the gateway stores and filters by (PostgreSQL text: no NUL).
    if not isinstance(subject, str) or not subject or len(subject) > 255 or has_control_characters(subject):
        raise InvalidSubject(f"the token's subject (sub) must be 1-255 characters and {CONTROL_CHARACTERS}")
    return Claims(subject=subject, role=role)


class JwksCache:
    """The identity provider's public keys, fetched over HTTP and kept for ``ttl_s``.

    A token naming an unknown ``kid`` triggers one refetch (at most every ``min_refresh_s``), so
    key rotation works without a restart while garbage ``kid`` values cannot hammer the provider.
    When a refetch fails the previous keys stay in use.
    """

    def __init__(self, url: str, *, ttl_s: float, timeout_s: float, min_refresh_s: float = 10.0) -> None:
        self._url = url
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._min_refresh_s = min_refresh_s
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        if self._fetched_at is None or now - self._fetched_at > self._ttl_s:
            await self._refresh(force=True)
        elif self._lookup(kid) is None and now - self._fetched_at > self._min_refresh_s:
            await self._refresh(force=False)
        key = self._lookup(kid)
        if key is None:
            raise InvalidToken("no signing key matches the token's kid")
        return key

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:  # allowed only when the provider publishes a single key
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self, *, force: bool) -> None:
        fetched_before = self._fetched_at
        async with self._lock:
            if self._fetched_at != fetched_before:
                return  # another request refreshed while this one waited
            try:
                async with httpx.AsyncClient(timeout=self._timeout_s) as http:
                    response = await http.get(self._url, headers={"Accept": "application/json"})
                    response.raise_for_status()
                    key_set = jwt.PyJWKSet.from_dict(response.json())
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as error:
                log.warning("could not fetch the JWKS", url=self._url, error=repr(error))
                if not self._keys:
                    raise SigningKeysUnavailable(self._url) from error
                self._fetched_at = time.monotonic()  # keep the old keys; retry after min_refresh_s
                return
            self._keys = {key.key_id: key for key in key_set.keys if key.public_key_use in (None, "sig")}
            self._fetched_at = time.monotonic()


class TokenVerifier:
    """Verifies bearer tokens with the shared secret (development) or the JWKS (production)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._jwks = (
            JwksCache(settings.jwt_jwks_url, ttl_s=settings.jwt_jwks_cache_s, timeout_s=settings.jwt_jwks_timeout_s)
            if settings.jwt_jwks_url
            else None
        )

    async def verify(self, token: str) -> Claims:
        """Claims of a valid token; raises InvalidToken, or SigningKeysUnavailable (retry later)."""
        if self._jwks is None:
            return verify_token(self._settings, token)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from error
        if header.get("alg") not in self._settings.jwt_algorithms:
            raise InvalidToken("algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("invalid kid")
        key = await self._jwks.key_for(kid)
        return verify_token(self._settings, token, key=key)
