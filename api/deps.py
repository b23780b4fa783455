"""Dependencies of the routes: the caller (from the bearer token), role checks and the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiProblem
from core.config import Settings
from core.domain import DependencyUnavailable
from core.order_service import Caller, OrderService
from core.tokens import InvalidSubject, InvalidToken, SigningKeysUnavailable

_bearer = HTTPBearer(auto_error=False, description="JWT from `orders token` (HS256) or your identity provider")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="orders"'}


# Async on purpose: FastAPI runs a plain `def` dependency in a worker thread, one thread hop per
# request for a dictionary lookup.
async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_service(request: Request) -> OrderService:
    return request.app.state.service


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiProblem(401, "Unauthorized", "a bearer token is required", slug="unauthorized", headers=_CHALLENGE)
    # The rate limiter has usually verified the token already (it counts by subject).
    claims = getattr(request.state, "claims", None)
    if claims is None:
        try:
            claims = await request.app.state.verifier.verify(credentials.credentials)
        except InvalidToken as error:
            raise ApiProblem(
                401,
                "Unauthorized",
                str(error) if isinstance(error, InvalidSubject) else "the bearer token is invalid or expired",
                slug="unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="orders", error="invalid_token"'},
            ) from None
        except SigningKeysUnavailable as error:
            raise DependencyUnavailable("identity provider") from error
    caller = Caller(subject=claims.subject, role=claims.role)
    request.state.caller = caller
    return caller


def require_role(*roles: str):
    async def check(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
        if caller.role not in roles:
            raise ApiProblem(403, "Forbidden", f"this action needs the role {' or '.join(roles)}", slug="forbidden")
        return caller

    return check


CallerDep = Annotated[Caller, Depends(get_caller)]
CustomerOrOperator = Annotated[Caller, Depends(require_role("customer", "operator"))]
Customer = Annotated[Caller, Depends(require_role("customer"))]
Operator = Annotated[Caller, Depends(require_role("operator"))]
Carrier = Annotated[Caller, Depends(require_role("carrier"))]
Service = Annotated[OrderService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
