"""Restart time of a shard replica holding N faces: cold from Redis, from its snapshot,
and after a SIGKILL (snapshot + feed catch-up); plus /v1/search latency over HTTP.

    python -m bench.restart --faces 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from redis.asyncio import Redis

from bench.cluster import ROOT, free_port
from bench.common import log, machine_info, summarize_ms, table, write_results
from deploy.topology import redis_command
from storeface.facedb import FaceDB

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
    env: dict[str, str], port: int, log_path: Path
) -> tuple[subprocess.Popen[bytes], float, dict[str, Any]]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shard_node", "serve", "--node", STORE, "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    while True:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            if r.status_code == 200:
                return proc, time.perf_counter() - t0, r.json()["details"]
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"shard exited; see {log_path}")
        time.sleep(0.05)


def settled_index(c: httpx.Client, timeout: float = 300) -> dict[str, Any]:
    """Wait until no background index rebuild (IVF training) is running."""
    deadline = time.monotonic() + timeout
    time.sleep(1.0)  # a rebuild starts right after the load
    info: dict[str, Any] = c.get(f"/v1/stores/{STORE}/info").json()
    while info["rebuilding"] and time.monotonic() < deadline:
        time.sleep(1.0)
        info = c.get(f"/v1/stores/{STORE}/info").json()
    return info


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    os.killpg(proc.pid, sig)
    proc.wait(120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--faces", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=300)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="storeface-restart-"))
    rport, sport = free_port(), free_port()
    redis = subprocess.Popen(
        redis_command(rport, "127.0.0.1", work),
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    rows, out = [], {"machine": machine_info(), "faces": args.faces}
    try:
        time.sleep(0.5)
        url = f"redis://127.0.0.1:{rport}/0"
        vectors = face_like(args.faces, 128)
        log(f"writing {args.faces} faces to Redis")
        out["populate_s"] = asyncio.run(populate(url, vectors))
        (work / "stores.yaml").write_text(yaml.safe_dump({"stores": [{"id": STORE}]}))
        env = {
            "STOREFACE_STORES_FILE": str(work / "stores.yaml"),
            "STOREFACE_REDIS_URL": url,
            "STOREFACE_SNAPSHOT_DIR": str(work / "snap"),
            "STOREFACE_WORKERS": "1",
            "STOREFACE_SNAPSHOT_INTERVAL_S": "3600",
        }
        logf = work / "shard.log"
        for case in (
            "cold: from Redis",
            "restart: from snapshot",
            "after SIGKILL: snapshot + feed",
        ):
            proc, seconds, details = start_node(env, sport, logf)
            rows.append(
                [case, details["loaded_from"], details["vectors"], seconds, details["load_seconds"]]
            )
            if case.startswith("cold"):
                q = vectors[np.random.default_rng(1).choice(args.faces, args.queries)]
                lat = []
                with httpx.Client(base_url=f"http://127.0.0.1:{sport}") as c:
                    out["index"] = settled_index(c)
                    for v in q:
                        t0 = time.perf_counter()
                        c.post(
                            "/v1/search", json={"embeddings": [v.tolist()], "top_k": 5}
                        ).raise_for_status()
                        lat.append((time.perf_counter() - t0) * 1000)
                out["http_search_ms"] = summarize_ms(lat)
                stop(proc)  # graceful: writes the snapshot
            elif case.startswith("restart"):
                # writes the snapshot does not cover, then a crash
                asyncio.run(populate(url, face_like(1000, 128, seed=5)))
                stop(proc, signal.SIGKILL)
            else:
                stop(proc)
        out["restarts"] = [
            dict(zip(["case", "loaded_from", "vectors", "ready_s", "load_s"], r, strict=True))
            for r in rows
        ]
    finally:
        os.killpg(redis.pid, signal.SIGTERM)
        redis.wait(30)
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
