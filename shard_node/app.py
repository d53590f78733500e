"""The shard node's app factory: one node group's stores, pipeline pool and feed follower."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TypedDict

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shard_node.api import CONFLICTS, router
from shard_node.index import IndexPolicy
from shard_node.node import Node, NodeOptions
from shard_node.runtime import group_embedder, node_group, open_runtime
from shard_node.settings import ShardSettings
from storeface.stores import WatchedStoresFile
from storeface.tasks import stop_tasks
from web.docs import install_docs
from web.errors import install_error_handlers
from web.metrics import instrument, stage_observer
from web.openapi import install_openapi


class ShardState(TypedDict):
    """What the lifespan hands each request (`request.state`)."""

    node: Node
    warm: asyncio.Task[None]  # the pool's workers loading their models


def node_options(settings: ShardSettings) -> NodeOptions:
    return NodeOptions(
        snapshot_dir=settings.snapshot_dir,
        policy=IndexPolicy(ivf_threshold=settings.ivf_threshold),
        register_lock_s=settings.register_lock_s,
        release_grace_s=settings.release_grace_s,
        handover_timeout_s=settings.handover_timeout_s,
        load_wait_s=settings.load_wait_s,
        group_index=settings.group_index,
        group_index_min_stores=settings.group_index_min_stores,
    )


def create_app(settings: ShardSettings) -> FastAPI:
    """Build a shard node for `settings.node_id`; resources open in the lifespan."""
    stores = WatchedStoresFile(settings.stores_file)
    group = node_group(settings, stores.config)
    group_embedder(group, settings)  # an unknown embedder or missing model fails here
    registry = CollectorRegistry()
    observe = stage_observer(registry, "shard")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[ShardState]:
        # Read at start: a replica added later does not restart this one to re-share the cores.
        workers = settings.workers or stores.config.workers_per_replica()
        async with open_runtime(settings, group, workers) as rt:
            node = Node(group.id, rt.info, rt.db, rt.pool, stores, node_options(settings), observe)
            node.embedder_note = rt.embedder_note
            registry.register(_VectorsCollector(node))
            warm = asyncio.create_task(rt.pool.warm_up())
            node.sync(stores.config)
            node.prune_snapshots()
            tasks = [
                asyncio.create_task(node.follow(settings.feed_block_ms)),
                asyncio.create_task(node.snapshot_every(settings.snapshot_interval_s)),
                asyncio.create_task(node.watch(settings.reload_interval_s)),
            ]
            try:
                yield {"node": node, "warm": warm}
            finally:
                await stop_tasks([warm, *tasks])
                await node.close()
                with contextlib.suppress(Exception):
                    await node.snapshot()

    app = FastAPI(
        title=f"Storeface shard node ({group.id})",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    install_error_handlers(app)
    instrument(app, registry, "shard")
    app.include_router(router)
    install_openapi(app, CONFLICTS)
    return app


class _VectorsCollector(Collector):
    """Vectors per hosted store, read at scrape time (stores come and go)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "storeface_shard_vectors", "vectors in this replica's index", labels=["store"]
        )
        for sid in self.node.store_ids():
            gauge.add_metric([sid], len(self.node.stores[sid].replica.index))
        yield gauge
