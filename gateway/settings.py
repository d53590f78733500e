"""Gateway settings from the environment (STOREFACE_*); secrets never come from the repo."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from storeface.images import MAX_IMAGE_BYTES


class GatewaySettings(BaseSettings):
    """One gateway replica; every replica of a cluster shares the same settings."""

    model_config = SettingsConfigDict(env_prefix="STOREFACE_", extra="ignore")

    stores_file: Path = Path("config/stores.yaml")
    # Base URL of the per-store upstreams when not the local cluster's (compose: nginx:8081).
    shard_proxy: str | None = None
    redis_url: str = "redis://127.0.0.1:6380/0"
    # "host:port,host:port": find the primary through these Sentinels (then redis_url is
    # used for its db only) and acknowledge a write once a replica has it too.
    redis_sentinels: str = ""
    redis_service: str = "storeface"
    redis_wait_timeout_ms: int = 1000
    admin_key: SecretStr | None = None
    # "key=store-a,store-b;key2=store-c": camera keys scoped to their stores.
    camera_keys: SecretStr | None = None
    keys_file: Path | None = None  # YAML: {admin_key: ..., camera_keys: {key: [stores]}}
    fanout_deadline_ms: float = 300.0
    shard_timeout_s: float = 15.0
    reload_interval_s: float = 1.0
    handover_timeout_s: float = 600.0  # a moved store is routed to its old group until then
    visit_window_s: int = 300  # repeated sightings of a face at a store within it count once
    max_image_bytes: int = MAX_IMAGE_BYTES
    max_faces: int = 10
    # The retention sweep runs this often across all replicas (0: only on demand); each
    # replica checks every `retention_check_s` whether it is due, and one takes the lock.
    retention_interval_s: float = 86400.0
    retention_check_s: float = 600.0
    audit_maxlen: int = 1_000_000  # the erase trail keeps about this many entries
