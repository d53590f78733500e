"""FastAPI dependencies of the gateway: its state and the caller's API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from gateway.auth import KeyRing
from gateway.recognition import Gateway


def get_gateway(request: Request) -> Gateway:
    gw: Gateway = request.state.gateway  # from the lifespan (gateway.app.GatewayState)
    return gw


def get_keys(request: Request) -> KeyRing:
    keys: KeyRing = request.app.state.keys
    return keys


def api_key(x_api_key: Annotated[str | None, Header()] = None) -> str | None:
    return x_api_key


def require_admin(
    keys: Annotated[KeyRing, Depends(get_keys)], key: Annotated[str | None, Depends(api_key)]
) -> None:
    keys.require_admin(key)


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
KeysDep = Annotated[KeyRing, Depends(get_keys)]
ApiKey = Annotated[str | None, Depends(api_key)]
Admin = Depends(require_admin)
