"""The shard node's app factory: one node group's stores, pipeline pool and feed follower."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import faiss
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from shard_node.api import router
from shard_node.faces.pool import FacePool
from shard_node.faces.registry import embedder_info
from shard_node.index import IndexPolicy
from shard_node.node import Node, NodeOptions
from shard_node.settings import ShardSettings
from storeface.errors import ConfigError
from storeface.facedb import FaceDB
from storeface.images import ImageLimits
from storeface.stores import NodeGroup, WatchedStoresFile
from web.errors import install_error_handlers
from web.metrics import instrument, stage_observer


def node_group(settings: ShardSettings, stores: WatchedStoresFile) -> NodeGroup:
    group = stores.config.group(settings.node_id)
    if group is None:
        known = ", ".join(g.id for g in stores.config.groups())
        raise ConfigError(
            f"node {settings.node_id!r} is not in {settings.stores_file} (node groups: {known})"
        )
    return group


def embedder_options(group: NodeGroup, settings: ShardSettings) -> dict[str, object]:
    return {"models_dir": str(settings.models_dir), **group.embedder_options}


def create_app(settings: ShardSettings) -> FastAPI:
    """Build a shard node for `settings.node_id`; resources open in the lifespan."""
    stores = WatchedStoresFile(settings.stores_file)
    group = node_group(settings, stores)
    options = embedder_options(group, settings)
    info = embedder_info(group.embedder, options)
    registry = CollectorRegistry()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        faiss.omp_set_num_threads(settings.search_threads)
        redis = Redis.from_url(settings.redis_url)
        pool = FacePool(
            group.embedder,
            options,
            workers=settings.workers or None,
            limits=ImageLimits(settings.max_image_bytes, settings.max_pixels, settings.max_side),
            max_faces=settings.max_faces,
        )
        node = Node(
            group.id,
            info,
            FaceDB(redis),
            pool,
            stores,
            NodeOptions(
                snapshot_dir=settings.snapshot_dir,
                policy=IndexPolicy(ivf_threshold=settings.ivf_threshold),
                register_lock_s=settings.register_lock_s,
                release_grace_s=settings.release_grace_s,
                load_wait_s=settings.load_wait_s,
                group_index=settings.group_index,
                group_index_min_stores=settings.group_index_min_stores,
            ),
            observe=stage_observer(registry, "shard"),
        )
        app.state.node = node
        registry.register(_VectorsCollector(node))
        warm = asyncio.create_task(pool.warm_up())
        app.state.warm = warm
        node.sync(stores.config)
        node.prune_snapshots()
        tasks = [
            asyncio.create_task(node.follow(settings.feed_block_ms)),
            asyncio.create_task(node.snapshot_every(settings.snapshot_interval_s)),
            asyncio.create_task(node.watch(settings.reload_interval_s)),
        ]
        try:
            yield
        finally:
            for t in [warm, *tasks]:
                t.cancel()
            await asyncio.gather(warm, *tasks, return_exceptions=True)
            await node.close()
            with contextlib.suppress(Exception):
                await node.snapshot()
            pool.close()
            await redis.aclose()

    app = FastAPI(title=f"Storeface shard node ({group.id})", version="1", lifespan=lifespan)
    install_error_handlers(app)
    instrument(app, registry, "shard")
    app.include_router(router)
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
