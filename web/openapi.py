"""The OpenAPI document says every status an operation can answer, in the real error model.

FastAPI documents only the success and a 422 shaped `{"detail": [...]}`; every error here
leaves as `{"error": {"code", "message", "details"}}` (web/errors.py), with stable codes
from storeface/errors.py. This fills in the rest, from what each operation takes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from storeface.errors import StorefaceError

ERROR_SCHEMA: dict[str, Any] = {
    "title": "ErrorResponse",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "description": "what went wrong",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "stable: switch on this, not on text"},
                "message": {"type": "string", "description": "for people; may change"},
                "details": {"type": "object", "description": "what the code is about"},
            },
        }
    },
}
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}

# Statuses that are not a StorefaceError subclass's: the request's own shape (FastAPI's
# validation and routing, mapped in web/errors.py) and nginx's (deploy/nginx.py).
EXTRA_CODES = {
    404: ["not_found"],
    405: ["method_not_allowed"],
    422: ["missing_field", "invalid_request"],
}


def codes_by_status() -> dict[int, list[str]]:
    """Every stable error code, by the HTTP status it is sent with."""
    out: dict[int, set[str]] = {s: set(c) for s, c in EXTRA_CODES.items()}
    todo: list[type[StorefaceError]] = [StorefaceError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        status = getattr(cls, "status_code", None)
        if isinstance(status, int) and status >= 400 and "code" in vars(cls):
            out.setdefault(status, set()).add(cls.code)
    return {s: sorted(c) for s, c in sorted(out.items())}


def _error(status: int, codes: list[str], why: str) -> dict[str, Any]:
    listed = ", ".join(f"`{c}`" for c in codes)
    response: dict[str, Any] = {
        "description": f"{why}. Codes: {listed}." if codes else why,
        "content": {
            "application/json": {
                "schema": ERROR_REF,
                "example": {"error": {"code": codes[0] if codes else "error", "message": why}},
            }
        },
    }
    if status == 503:
        response["headers"] = {
            "Retry-After": {
                "description": "seconds to wait before trying again",
                "schema": {"type": "integer"},
            }
        }
    return response


def _fields(op: dict[str, Any], schemas: dict[str, Any]) -> set[str]:
    """The names an operation takes: its parameters and its body's top-level fields."""
    names = {p.get("name", "") for p in op.get("parameters", [])}
    for media in op.get("requestBody", {}).get("content", {}).values():
        body = media.get("schema", {})
        if "$ref" in body:
            body = schemas.get(body["$ref"].rsplit("/", 1)[-1], {})
        names |= set(body.get("properties", {}))
    return names


def _statuses(op: dict[str, Any], path: str, schemas: dict[str, Any]) -> dict[int, str]:
    """The error statuses an operation can answer, from what it takes."""
    out = {503: "a dependency (Redis, a shard node, the face pipeline) is unavailable"}
    if op.get("security"):
        out[401] = "no API key, or an unknown one"
        out[403] = "the key may not do this (a camera key outside its stores, or not admin)"
    if op.get("parameters") or op.get("requestBody"):
        out[422] = "a field is missing or invalid"
    content = op.get("requestBody", {}).get("content", {})
    if "multipart/form-data" in content:
        out[400] = "the photo is empty, truncated, or has no usable face"
        out[413] = "the upload is too large, or a decompression bomb"
        out[415] = "the upload is not an image"
    if "{" in path or any(name.endswith("_id") for name in _fields(op, schemas)):
        out[404] = "no such store or FaceId"
    return out


def document_errors(schema: dict[str, Any], conflicts: set[tuple[str, str]]) -> dict[str, Any]:
    """Add every error status to every operation; `conflicts` are (method, path) that can
    answer 409."""
    codes = codes_by_status()
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["ErrorResponse"] = ERROR_SCHEMA
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            responses = op.setdefault("responses", {})
            statuses = _statuses(op, path, schemas)
            if (method, path) in conflicts:
                statuses[409] = "it conflicts with what is stored"
            for status, why in statuses.items():
                responses[str(status)] = _error(status, codes.get(status, []), why)
    return schema


def install_openapi(app: FastAPI, conflicts: set[tuple[str, str]] | None = None) -> None:
    """Serve the OpenAPI document with every error documented (built once, on first ask)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = document_errors(schema, conflicts or set())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
