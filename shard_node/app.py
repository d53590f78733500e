"""The shard node's app factory: one store's pipeline, index and feed follower."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import faiss
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Gauge
from redis.asyncio import Redis

from shard_node.api import router
from shard_node.faces.pool import FacePool
from shard_node.faces.registry import embedder_info
from shard_node.gallery import ingest_folder
from shard_node.index import IndexPolicy
from shard_node.replica import Replica
from shard_node.service import ShardState
from shard_node.settings import ShardSettings
from storeface.errors import ConfigError, EmbedderMismatch
from storeface.facedb import FaceDB
from storeface.http import install_error_handlers
from storeface.images import ImageLimits
from storeface.metrics import instrument, stage_observer
from storeface.stores import StoreConfig, load_stores

log = logging.getLogger("shard_node")


def store_config(settings: ShardSettings) -> StoreConfig:
    stores = load_stores(settings.stores_file)
    store = stores.store(settings.store_id)
    if store is None:
        raise ConfigError(f"store {settings.store_id!r} is not in {settings.stores_file}")
    return store


def embedder_options(store: StoreConfig, settings: ShardSettings) -> dict[str, object]:
    return {"models_dir": str(settings.models_dir), **store.embedder_options}


def create_app(settings: ShardSettings, store: StoreConfig | None = None) -> FastAPI:
    """Build a shard node for `settings.store_id`; resources open in the lifespan."""
    store = store or store_config(settings)
    options = embedder_options(store, settings)
    info = embedder_info(store.embedder, options)
    registry = CollectorRegistry()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        faiss.omp_set_num_threads(settings.search_threads)
        redis = Redis.from_url(settings.redis_url)
        db = FaceDB(redis)
        recorded = await db.claim_embedder(store.id, info.name)
        if recorded != info.name:
            await redis.aclose()
            raise EmbedderMismatch(
                f"store {store.id} holds {recorded} embeddings; this node runs {info.name}"
            )
        pool = FacePool(
            store.embedder,
            options,
            workers=settings.workers or None,
            limits=ImageLimits(settings.max_image_bytes, settings.max_pixels, settings.max_side),
            max_faces=settings.max_faces,
        )
        replica = Replica(
            store.id,
            info,
            db,
            settings.snapshot_dir,
            IndexPolicy(ivf_threshold=settings.ivf_threshold),
        )
        state = ShardState(
            store=store,
            replica=replica,
            pool=pool,
            db=db,
            threshold=store.threshold or info.threshold,
            register_lock_s=settings.register_lock_s,
            observe=stage_observer(registry, "shard"),
        )
        app.state.shard = state
        Gauge(
            "storeface_shard_vectors",
            "vectors in this replica's index",
            ["store"],
            registry=registry,
        ).labels(store.id).set_function(lambda: len(replica.index))
        tasks: list[asyncio.Task[object]] = []

        async def start() -> None:
            await asyncio.gather(pool.warm_up(), replica.load())
            tasks.append(asyncio.create_task(replica.tail(settings.feed_block_ms)))
            tasks.append(asyncio.create_task(replica.snapshot_every(settings.snapshot_interval_s)))
            if store.gallery:
                tasks.append(asyncio.create_task(_gallery_at_start(state, Path(store.gallery))))

        starter = asyncio.create_task(start())
        try:
            yield
        finally:
            starter.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(starter, *tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await replica.snapshot()
            pool.close()
            await redis.aclose()

    app = FastAPI(title=f"Storeface shard node ({store.id})", version="1", lifespan=lifespan)
    install_error_handlers(app)
    instrument(app, registry, "shard")
    app.include_router(router)
    return app


async def _gallery_at_start(state: ShardState, folder: Path) -> None:
    """One replica per store ingests the configured gallery; re-runs add nothing twice."""
    lock = state.db.redis.lock(f"lock:gallery:{state.store.id}", timeout=3600)
    if not await lock.acquire(blocking=False):
        return
    try:
        report = await ingest_folder(
            state.db,
            state.pool,
            state.store.id,
            state.replica.info,
            folder,
            min_size=state.store.min_face_size,
            on_added=state.replica.apply_local_add,
        )
        log.info("%s: gallery %s: %s", state.store.id, folder, report.summary())
    except Exception:
        log.exception("%s: gallery ingest of %s failed", state.store.id, folder)
    finally:
        with contextlib.suppress(Exception):
            await lock.release()
