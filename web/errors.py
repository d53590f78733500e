"""The exception hierarchy mapped to JSON HTTP responses, in one place for both services."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from storeface.errors import StorageUnavailable, StorefaceError
from storeface.redis_client import NotReplicated

log = logging.getLogger("storeface.http")


def model_response(model: BaseModel, status_code: int = 200) -> Response:
    """A pydantic model as JSON, serialised once: FastAPI would validate it all over again
    against `response_model` (which stays on the route for the OpenAPI docs)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


RETRY_AFTER_S = 1  # a 503 here is a replica, worker pool or Redis coming back: seconds


def error_response(exc: StorefaceError) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.status_code == 503 else None
    return JSONResponse(
        status_code=exc.status_code, content={"error": exc.to_dict()}, headers=headers
    )


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as `{"error": {"code", "message", "details"?}}`."""

    @app.exception_handler(StorefaceError)
    async def _storeface(_: Request, exc: StorefaceError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("%s: %s", exc.code, exc.message)
        return error_response(exc)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    @app.exception_handler(NotReplicated)
    async def _storage(_: Request, exc: Exception) -> JSONResponse:
        # Retried on fresh connections already (storeface.redis_client): Redis is down.
        log.warning("redis unavailable: %s", exc)
        return error_response(StorageUnavailable(error=str(exc)[:200]))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")}
            for e in exc.errors()
        ]
        missing = [e for e in exc.errors() if e.get("type") == "missing"]
        code = "missing_field" if missing else "invalid_request"
        body = {
            "code": code,
            "message": "the request is missing fields or has invalid ones",
            "details": {"errors": errors},
        }
        return JSONResponse(status_code=422, content={"error": body})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"code": code, "message": str(exc.detail)}
        return JSONResponse(status_code=exc.status_code, content={"error": body})
