"""Shard node settings, from the environment (STOREFACE_*) and the group's stores.yaml entry."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from storeface.images import DETECT_PIXELS, MAX_IMAGE_BYTES
from storeface.paths import models_dir


class ShardSettings(BaseSettings):
    """One replica of one node group (which hosts one or more stores)."""

    model_config = SettingsConfigDict(env_prefix="STOREFACE_", extra="ignore")

    node_id: str
    stores_file: Path = Path("config/stores.yaml")
    redis_url: str = "redis://127.0.0.1:6380/0"
    # "host:port,host:port": find the primary through these Sentinels (then redis_url is
    # used for its db only) and acknowledge a write once a replica has it too.
    redis_sentinels: str = ""
    redis_service: str = "storeface"
    redis_wait_timeout_ms: int = 1000
    replica_name: str = ""
    snapshot_dir: Path | None = Path(".data/snapshots")
    snapshot_interval_s: float = 30.0
    workers: int = 0  # face-pipeline processes; 0 = this host's cores ÷ the replicas it runs
    # Photos in the pipeline (running + waiting) before it answers 503 overloaded; 0 = 2 per
    # worker: every worker stays busy, and an admitted photo waits at most one photo's time.
    max_queue: int = 0
    max_image_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = 40_000_000
    max_side: int = 1600
    # a larger upload is searched again, in tiles of at most this many pixels, for the small
    # faces the downscale to max_side loses (0: not; bench/frames.py for the cost)
    detect_pixels: int = DETECT_PIXELS
    max_faces: int = 10
    # vectors (at 128-d; scaled by 128/dim) above which a store's index is IVF-PQ, not Flat
    ivf_threshold: int = 50_000
    # faiss threads per search: parallelism comes from concurrent requests, and OpenMP's
    # thread hand-off costs more than a single query's work (bench/search.py).
    search_threads: int = 1
    feed_block_ms: int = 500
    reload_interval_s: float = 1.0  # how often stores.yaml is checked for edits
    release_grace_s: float = 30.0  # a store moved away keeps answering at least this long
    handover_timeout_s: float = 600.0  # ... and until its new group serves it, up to this
    load_wait_s: float = 10.0  # a request for a store still loading waits this long
    # One more index over all hosted stores for the cross-store search: "auto" keeps one
    # from `group_index_min_stores` stores up (it doubles the vectors' memory; below that
    # a loop over the stores' own indexes costs under ~0.3 ms; bench/group_search).
    group_index: Literal["auto", "on", "off"] = "auto"
    group_index_min_stores: int = 32
    register_lock_s: float = 5.0
    models_dir: Path = Field(default_factory=models_dir)
