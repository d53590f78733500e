"""What a shard node process opens before it serves: Redis, the data model, the face pool.

Built in one place for the server's lifespan and for `python -m shard_node ingest`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import faiss
from redis.asyncio import Redis

from shard_node.faces.base import EmbedderInfo
from shard_node.faces.pool import FacePool
from shard_node.faces.registry import AUTO, embedder_info, resolve_embedder
from shard_node.settings import ShardSettings
from storeface.embedders import (
    LEGACY_ARCFACE,
    embedder_identity,
    legacy_identity,
    parse_identity,
    same_model,
)
from storeface.errors import ConfigError
from storeface.facedb import FaceDB
from storeface.images import ImageLimits
from storeface.redis_client import connect
from storeface.stores import NodeGroup, StoresFile

log = logging.getLogger("storeface.shard")


@dataclass
class Runtime:
    """The long-lived resources of one shard node process."""

    group: NodeGroup
    info: EmbedderInfo
    redis: Redis
    db: FaceDB
    pool: FacePool
    embedder_note: str = ""  # why it runs this embedder, when stores.yaml named none


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


async def chosen_embedder(
    group: NodeGroup, settings: ShardSettings, redis: Redis
) -> tuple[str, dict[str, object], str]:
    """The group's embedder, its options and a note on why: the one named, else the model its
    stores were built with (where its files are here), else the default (arcface with the
    first known recognizer present, else dlib)."""
    options = embedder_options(group, settings)
    name, note = resolve_embedder(group.embedder, options)
    if group.embedder != AUTO:
        return name, options, note
    try:
        values = [await redis.hget(f"store:{sid}:meta", "embedder") for sid in group.stores]
    except Exception:  # Redis not up yet: each store's claim still refuses a mismatch
        log.warning("node %s: could not read its stores' embedders", group.id, exc_info=True)
        return name, options, note
    # A legacy "arcface" record stands for one model only: the group runs that, or refuses.
    legacy = legacy_identity(group.embedder_options)
    built = {v.decode() if isinstance(v, bytes) else str(v) for v in values if v}
    built = {legacy if v == LEGACY_ARCFACE else v for v in built}
    if len(built) != 1:
        return name, options, note
    held = built.pop()
    if same_model(held, embedder_identity(name, options)):
        return name, options, note
    # Photos are not kept, so a store's faces cannot be re-embedded: it keeps its model,
    # unless the group names another recognizer or the held one's file is not here (then
    # each store's claim refuses the mismatch and says so).
    held_name, pinned = parse_identity(held)
    if pinned and "recognizer_model" in group.embedder_options:
        return name, options, note
    held_options = {**options, **pinned}
    if pinned and resolve_embedder(AUTO, held_options)[0] != "arcface":
        return name, options, note
    return (
        held_name,
        held_options,
        (
            f"no embedder set: running {held}, which this node's stores were built with "
            f"(the default here would be {embedder_identity(name, options)}); set "
            f"`embedder: {held_name}`"
            + (f" and `recognizer_model: {pinned['recognizer_model']}`" if pinned else "")
            + " to say so"
        ),
    )


@contextlib.asynccontextmanager
async def open_runtime(
    settings: ShardSettings, group: NodeGroup, workers: int | None = None
) -> AsyncIterator[Runtime]:
    """Open Redis and the face pool for a node group; close both on the way out."""
    faiss.omp_set_num_threads(settings.search_threads)
    redis = connect(
        settings.redis_url,
        settings.redis_sentinels,
        settings.redis_service,
        settings.redis_wait_timeout_ms,
    )
    name, options, note = await chosen_embedder(group, settings, redis)
    if note:
        log.warning("node %s: %s", group.id, note)
    pool = FacePool(
        name,
        options,
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
        info = embedder_info(name, options)
        yield Runtime(group, info, redis, FaceDB(redis), pool, note)
    finally:
        await asyncio.to_thread(pool.close)  # joins the workers: not on the event loop
        await redis.aclose()
