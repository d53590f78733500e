"""FastAPI dependencies of the gateway: its state and the caller's API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from gateway.auth import KeyRing
from gateway.recognition import Gateway


def get_gateway(request: Request) -> Gateway:
    gw: Gateway = request.state.gateway  # from the lifespan (gateway.app.GatewayState)
    return gw


def get_keys(request: Request) -> KeyRing:
    keys: KeyRing = request.app.state.keys
    return keys


# A security scheme, not a plain header: the OpenAPI says which operations need a key, and
# a missing key is our own 401 (auto_error=False), in the error model.
API_KEY = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="the admin key, or a camera key that sees only its stores",
)


def api_key(key: Annotated[str | None, Security(API_KEY)]) -> str | None:
    return key


def require_admin(
    keys: Annotated[KeyRing, Depends(get_keys)], key: Annotated[str | None, Depends(api_key)]
) -> None:
    keys.require_admin(key)


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
KeysDep = Annotated[KeyRing, Depends(get_keys)]
ApiKey = Annotated[str | None, Depends(api_key)]
Admin = Depends(require_admin)
