"""What a shard node process opens before it serves: Redis, the data model, the face pool.

Built in one place for the server's lifespan and for `python -m shard_node ingest`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import faiss
from redis.asyncio import Redis

from shard_node.faces.base import EmbedderInfo
from shard_node.faces.pool import FacePool
from shard_node.faces.registry import embedder_info
from shard_node.settings import ShardSettings
from storeface.errors import ConfigError
from storeface.facedb import FaceDB
from storeface.images import ImageLimits
from storeface.redis_client import connect
from storeface.stores import NodeGroup, StoresFile


@dataclass
class Runtime:
    """The long-lived resources of one shard node process."""

    group: NodeGroup
    info: EmbedderInfo
    redis: Redis
    db: FaceDB
    pool: FacePool


def node_group(settings: ShardSettings, stores: StoresFile) -> NodeGroup:
    group = stores.group(settings.node_id)
    if group is None:
        known = ", ".join(g.id for g in stores.groups())
        raise ConfigError(
            f"node {settings.node_id!r} is not in {settings.stores_file} (node groups: {known})"
        )
    return group


def embedder_options(group: NodeGroup, settings: ShardSettings) -> dict[str, object]:
    return {"models_dir": str(settings.models_dir), **group.embedder_options}


def group_embedder(group: NodeGroup, settings: ShardSettings) -> EmbedderInfo:
    """The group's embedder, checked (and its models found) before anything starts."""
    return embedder_info(group.embedder, embedder_options(group, settings))


@contextlib.asynccontextmanager
async def open_runtime(
    settings: ShardSettings, group: NodeGroup, workers: int | None = None
) -> AsyncIterator[Runtime]:
    """Open Redis and the face pool for a node group; close both on the way out."""
    faiss.omp_set_num_threads(settings.search_threads)
    redis = connect(settings.redis_url)
    pool = FacePool(
        group.embedder,
        embedder_options(group, settings),
        workers=workers or settings.workers or None,
        limits=ImageLimits(
            settings.max_image_bytes,
            settings.max_pixels,
            settings.max_side,
            settings.detect_pixels,
        ),
        max_faces=settings.max_faces,
        max_queue=settings.max_queue,
    )
    try:
        yield Runtime(group, group_embedder(group, settings), redis, FaceDB(redis), pool)
    finally:
        await asyncio.to_thread(pool.close)  # joins the workers: not on the event loop
        await redis.aclose()
