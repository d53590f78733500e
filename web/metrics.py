"""Prometheus metrics with a registry per app, so several apps can live in one process."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def stage_observer(registry: CollectorRegistry, service: str) -> Callable[[dict[str, float]], None]:
    """A callback that records a response's `timings` (ms per stage) as a histogram."""
    stages = Histogram(
        "storeface_stage_seconds",
        "time per pipeline stage",
        ["service", "stage"],
        registry=registry,
        buckets=LATENCY_BUCKETS,
    )

    def observe(timings: dict[str, float]) -> None:
        for stage, ms in timings.items():
            stages.labels(service, stage.removesuffix("_ms")).observe(ms / 1000)

    return observe


def instrument(app: FastAPI, registry: CollectorRegistry, service: str) -> Histogram:
    """Time every request by route template and status; serve GET /metrics."""
    requests = Histogram(
        "storeface_http_request_seconds",
        "HTTP request latency",
        ["service", "method", "route", "status"],
        registry=registry,
        buckets=LATENCY_BUCKETS,
    )

    @app.middleware("http")
    async def _timed(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        requests.labels(service, request.method, path, str(response.status_code)).observe(
            time.perf_counter() - t0
        )
        return response

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return requests
