"""The first recognition after a shard says ready: workers only started (as before) vs
workers that have each detected and embedded once (FacePool.warm_up).

    python -m bench.warmstart --runs 3

Each run builds a fresh FacePool (new worker processes), warms it one way, then times the
first photos through it (real lfw_dev photos, as many as workers, at once) and then the
same photos again (warm). Prints a table, writes bench/results/warmstart.json."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from bench.common import log, machine_info, table, write_results
from shard_node.faces.pool import FacePool
from storeface.paths import faces_dir, models_dir


def _photos(n: int) -> list[bytes]:
    people = sorted(p for p in (faces_dir() / "lfw_dev").iterdir() if p.is_dir())
    return [sorted(person.glob("*.jpg"))[0].read_bytes() for person in people[:n]]


async def _once(embedder: str, workers: int, embed: bool) -> dict[str, float]:
    pool = FacePool(embedder, {"models_dir": str(models_dir())}, workers=workers)
    try:
        t0 = time.perf_counter()
        await pool.warm_up(embed=embed)
        ready_s = time.perf_counter() - t0
        photos = _photos(workers)

        async def batch() -> float:
            t = time.perf_counter()
            await asyncio.gather(*(pool.analyze(p) for p in photos))
            return (time.perf_counter() - t) * 1000

        first = await batch()
        second = await batch()
    finally:
        pool.close()
    return {"ready_s": ready_s, "first_ms": first, "second_ms": second}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--embedders", default="dlib,arcface")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine_info(), "runs": args.runs, "rows": []}
    rows = []
    for embedder in args.embedders.split(","):
        for embed, label in ((False, "started only (before)"), (True, "embedded once (now)")):
            runs = []
            for i in range(args.runs):
                log(f"{embedder} {label} run {i + 1}")
                runs.append(asyncio.run(_once(embedder, args.workers, embed)))
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            ratio = med["first_ms"] / med["second_ms"]
            results["rows"].append({"embedder": embedder, "warm_up": label, **med, "runs": runs})
            rows.append([embedder, label, med["ready_s"], med["first_ms"], med["second_ms"], ratio])
    print(
        table(
            [
                "embedder",
                "warm-up",
                "to ready s",
                "first batch ms",
                "next batch ms",
                "first ÷ next",
            ],
            rows,
        )
    )
    print(write_results("warmstart", results))


if __name__ == "__main__":
    main()
