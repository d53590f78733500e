"""The gateway's app factory: stateless, async, one httpx pool per process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TypedDict

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.analytics import Analytics
from gateway.api import CONFLICTS, router
from gateway.auth import KeyRing
from gateway.dashboard import install_dashboard
from gateway.recognition import Gateway
from gateway.retention import run_schedule
from gateway.routing import StoreMap
from gateway.settings import GatewaySettings
from gateway.shards import ShardClient
from storeface.facedb import FaceDB
from storeface.redis_client import connect
from storeface.tasks import stop_tasks
from web.docs import install_docs
from web.errors import install_error_handlers
from web.metrics import instrument, stage_observer
from web.openapi import install_openapi


class GatewayState(TypedDict):
    """What the lifespan hands each request (`request.state`)."""

    gateway: Gateway


def _secret(value: object) -> str | None:
    get = getattr(value, "get_secret_value", None)
    return get() if get else None


def create_app(
    settings: GatewaySettings, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """Build a gateway; an invalid stores.yaml or keys file fails here, naming the problem.

    `transport` replaces the network under the shard client (tests: in-process shard apps)."""
    stores = StoreMap(settings.stores_file, settings.shard_proxy, settings.handover_timeout_s)
    keys = KeyRing.from_sources(
        _secret(settings.admin_key), _secret(settings.camera_keys), settings.keys_file
    )
    registry = CollectorRegistry()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[GatewayState]:
        redis = connect(
            settings.redis_url,
            settings.redis_sentinels,
            settings.redis_service,
            settings.redis_wait_timeout_ms,
        )
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(limits=limits, transport=transport) as client:
            gw = Gateway(
                stores=stores,
                shards=ShardClient(client, settings.shard_timeout_s),
                db=FaceDB(redis, audit_maxlen=settings.audit_maxlen),
                analytics=Analytics(redis, settings.visit_window_s),
                fanout_deadline_s=settings.fanout_deadline_ms / 1000,
                observe=stage_observer(registry, "gateway"),
            )
            _export_counters(gw, registry)
            watcher = asyncio.create_task(
                stores.watch(settings.reload_interval_s, confirm=gw.db.is_hosted)
            )
            sweeper = asyncio.create_task(
                run_schedule(gw, settings.retention_interval_s, settings.retention_check_s)
            )
            try:
                yield {"gateway": gw}
            finally:
                await stop_tasks([watcher, sweeper, *gw.learning])
                await redis.aclose()

    app = FastAPI(
        title="Storeface gateway", version="1", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    install_docs(app)
    install_dashboard(app)
    app.state.settings = settings
    app.state.keys = keys
    install_error_handlers(app)
    instrument(app, registry, "gateway")
    app.include_router(router)
    install_openapi(app, CONFLICTS)
    return app


class _CountersCollector(Collector):
    """Exports the gateway's plain counters at scrape time."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def collect(self) -> Iterator[Metric]:
        c = self.gw.counters
        yield CounterMetricFamily(
            "storeface_fallback", "recognitions that fanned out to other stores", value=c.fallbacks
        )
        yield CounterMetricFamily(
            "storeface_registrations", "new visitor FaceIds", value=c.registrations
        )
        yield CounterMetricFamily(
            "storeface_learned_views", "views recognitions added to a FaceId", value=c.learned_views
        )
        yield GaugeMetricFamily(
            "storeface_learning",
            "views being learned after their recognition was answered",
            value=len(self.gw.learning),
        )
        yield CounterMetricFamily(
            "storeface_learns_dropped",
            "views not learned: too many were being learned already",
            value=c.learns_dropped,
        )
        degraded = CounterMetricFamily(
            "storeface_degraded", "fan-outs a store missed", labels=["store"]
        )
        for store, n in sorted(c.degraded.items()):
            degraded.add_metric([store], n)
        yield degraded


def _export_counters(gw: Gateway, registry: CollectorRegistry) -> None:
    registry.register(_CountersCollector(gw))
