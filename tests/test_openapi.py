"""The gateway's OpenAPI document is complete for a client developer: every field and
parameter is described, every operation has an example (fast: no servers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.app import create_app
from gateway.settings import GatewaySettings

METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    settings = GatewaySettings(stores_file=Path("config/stores.yaml"), admin_key=SecretStr("k"))
    return create_app(settings).openapi()


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def _schema(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        found: dict[str, Any] = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        return found
    return schema


def _has_example(spec: dict[str, Any], media: dict[str, Any]) -> bool:
    if media.get("example") is not None or media.get("examples"):
        return True
    schema = _schema(spec, media.get("schema", {}))
    return bool(schema.get("examples") or schema.get("example") is not None)


def test_every_schema_property_is_described(spec: dict[str, Any]) -> None:
    missing = []
    for name, schema in spec["components"]["schemas"].items():
        for prop, sub in schema.get("properties", {}).items():
            if not sub.get("description"):
                missing.append(f"{name}.{prop}")
            for inner, leaf in sub.get("properties", {}).items():  # the error envelope's
                if not leaf.get("description"):
                    missing.append(f"{name}.{prop}.{inner}")
    assert not missing, f"schema properties without a description: {missing}"


def test_every_parameter_is_described(spec: dict[str, Any]) -> None:
    missing = []
    for method, path, op in _operations(spec):
        for param in op.get("parameters", []):
            if not param.get("description"):
                missing.append(f"{method.upper()} {path}: {param['in']} {param['name']}")
        # form fields are the body schema's properties
        for media in op.get("requestBody", {}).get("content", {}).values():
            body = _schema(spec, media.get("schema", {}))
            for prop, sub in body.get("properties", {}).items():
                if not sub.get("description"):
                    missing.append(f"{method.upper()} {path}: body {prop}")
    assert not missing, f"parameters without a description: {missing}"


def test_every_operation_has_examples(spec: dict[str, Any]) -> None:
    missing = []
    for method, path, op in _operations(spec):
        success = [s for s in op.get("responses", {}) if s.startswith("2")]
        assert success, f"{method.upper()} {path} documents no success"
        for status in success:
            content = op["responses"][status].get("content", {})
            if not any(_has_example(spec, media) for media in content.values()):
                missing.append(f"{method.upper()} {path}: response {status}")
        body = op.get("requestBody")
        if body and not any(_has_example(spec, m) for m in body.get("content", {}).values()):
            missing.append(f"{method.upper()} {path}: request body")
    assert not missing, f"operations without an example: {missing}"
