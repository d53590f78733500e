"""Helpers for tests; the servers themselves come from tools.servers (benchmarks use it too)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from storeface.paths import ROOT
from tools.servers import (
    GatewayNode,
    LocalCluster,
    Process,
    ProcessDied,
    RedisServer,
    ShardNode,
    free_port,
    wait_until,
)

__all__ = [
    "ROOT",
    "GatewayNode",
    "LocalCluster",
    "Process",
    "ProcessDied",
    "RedisServer",
    "ShardNode",
    "enroll_embedding",
    "free_port",
    "run_ingest",
    "wait_until",
    "write_stores",
]


def write_stores(path: Path, stores: list[dict[str, Any]], **cluster: Any) -> Path:
    """stores.yaml for a test; a store that names no embedder (nor node) runs dlib, which the
    shared lfw embeddings (conftest) and these tests' distances are made with."""
    stores = [s if "embedder" in s or "node" in s else {**s, "embedder": "dlib"} for s in stores]
    doc: dict[str, Any] = {"stores": stores}
    if cluster:
        doc["cluster"] = cluster
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def enroll_embedding(url: str, store: str, emb: Any, label: str = "") -> int:
    """Enroll one embedding straight into a shard node's store; its new FaceId."""
    r = httpx.post(
        f"{url}/v1/stores/{store}/faces/embedding",
        json={"embedding": [float(v) for v in emb], "label": label},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return int(r.json()["face_id"])


def run_ingest(
    stores: Path, redis_url: str, folder: Path, store: str, *flags: str, workers: int = 1
) -> subprocess.CompletedProcess[str]:
    """`python -m shard_node ingest` as an operator runs it, with only these settings."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "shard_node",
            "ingest",
            str(folder),
            "--store",
            store,
            "--workers",
            str(workers),
            *flags,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={
            "STOREFACE_STORES_FILE": str(stores),
            "STOREFACE_REDIS_URL": redis_url,
            "PATH": "/usr/bin:/bin",
        },
    )
