"""Restart time of a shard replica holding N faces: cold from Redis, from its snapshot,
and after a SIGKILL (snapshot + feed catch-up); plus /v1/search latency over HTTP.

    python -m bench.restart --faces 100000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from redis.asyncio import Redis

from bench.common import log, machine_info, summarize_ms, table, write_results
from storeface.facedb import FaceDB
from tools.servers import RedisServer, ShardNode, free_port

STORE = "big"


def face_like(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in identities of 1-3 close views, like real 128-d face embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // 2 + 1, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    owner = rng.integers(0, len(centres), n)
    x = centres[owner] + rng.normal(0, 0.25 / np.sqrt(dim), (n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True) * 0.6).astype(np.float32)


async def populate(redis_url: str, vectors: np.ndarray) -> float:
    t0 = time.perf_counter()
    redis = Redis.from_url(redis_url, max_connections=64)
    db = FaceDB(redis)
    await db.claim_embedder(STORE, "dlib")
    sem = asyncio.Semaphore(64)

    async def one(v: np.ndarray) -> None:
        async with sem:
            await db.add_vector(STORE, await db.new_face_id(), v, embedder="dlib")

    for i in range(0, len(vectors), 5000):
        await asyncio.gather(*(one(v) for v in vectors[i : i + 5000]))
        log(f"  {min(i + 5000, len(vectors))} vectors in Redis")
    await redis.aclose()
    return time.perf_counter() - t0


def start_node(
    work: Path, stores_file: Path, redis_url: str, port: int
) -> tuple[ShardNode, float, dict[str, Any]]:
    """Start the store's node and time it to its first ready /readyz."""
    t0 = time.perf_counter()
    node = ShardNode(
        STORE, stores_file, redis_url, work, port=port, snapshot_interval_s="3600"
    ).start()
    seconds = time.perf_counter() - t0
    details = httpx.get(f"{node.url}/readyz", timeout=5).json()["details"]["stores"][STORE]
    return node, seconds, details


def settled_index(c: httpx.Client, timeout: float = 300) -> dict[str, Any]:
    """Wait until no background index rebuild (IVF training) is running."""
    deadline = time.monotonic() + timeout
    time.sleep(1.0)  # a rebuild starts right after the load
    info: dict[str, Any] = c.get(f"/v1/stores/{STORE}/info").json()
    while info["rebuilding"] and time.monotonic() < deadline:
        time.sleep(1.0)
        info = c.get(f"/v1/stores/{STORE}/info").json()
    return info


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--faces", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=300)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="storeface-restart-"))
    redis = RedisServer(work / "redis").start()
    sport = free_port()
    rows, out = [], {"machine": machine_info(), "faces": args.faces}
    try:
        url = redis.url
        vectors = face_like(args.faces, 128)
        log(f"writing {args.faces} faces to Redis")
        out["populate_s"] = asyncio.run(populate(url, vectors))
        stores_file = work / "stores.yaml"
        stores_file.write_text(yaml.safe_dump({"stores": [{"id": STORE}]}))
        for case in (
            "cold: from Redis",
            "restart: from snapshot",
            "after SIGKILL: snapshot + feed",
        ):
            node, seconds, details = start_node(work, stores_file, url, sport)
            rows.append(
                [case, details["loaded_from"], details["vectors"], seconds, details["load_seconds"]]
            )
            if case.startswith("cold"):
                q = vectors[np.random.default_rng(1).choice(args.faces, args.queries)]
                lat = []
                with httpx.Client(base_url=node.url) as c:
                    out["index"] = settled_index(c)
                    for v in q:
                        t0 = time.perf_counter()
                        c.post(
                            "/v1/search", json={"embeddings": [v.tolist()], "top_k": 5}
                        ).raise_for_status()
                        lat.append((time.perf_counter() - t0) * 1000)
                out["http_search_ms"] = summarize_ms(lat)
                node.stop(timeout=120)  # graceful: writes the snapshot
            elif case.startswith("restart"):
                # writes the snapshot does not cover, then a crash
                asyncio.run(populate(url, face_like(1000, 128, seed=5)))
                node.kill()
            else:
                node.stop(timeout=120)
        out["restarts"] = [
            dict(zip(["case", "loaded_from", "vectors", "ready_s", "load_s"], r, strict=True))
            for r in rows
        ]
    finally:
        redis.stop(timeout=30)
    print(table(["case", "loaded from", "vectors", "ready (s)", "index load (s)"], rows))
    s = out["http_search_ms"]
    print(
        f"\n/v1/search over HTTP at {args.faces} faces ({out['index']['index']}, nprobe "
        f"{out['index']['nprobe']}, top-5): "
        f"p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms"
    )
    print(f"\nresults: {write_results(f'restart-{args.faces}', out)}")


if __name__ == "__main__":
    main()
