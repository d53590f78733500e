"""A chain that grows: never-seen faces posted at one store while the number of stores rises.

For each chain size N (--sizes, default 3,16,64) a cluster is started exactly like `make
run` (bench.cluster: the deploy.run launcher, supervisord, nginx, Redis, 1 gateway) with N
stores spread round-robin over --groups node groups (default 2) of one replica each. For
comparison, the shape before node groups (every store a group of its own, one replica, so
one process per store) runs at the sizes in --per-store-sizes (default 3,16).

Each cluster gets --warmup photos, then --requests photos of never-seen people
(lfw_distractors, one photo per person, none repeated) POSTed to /v1/recognize at store-000
through nginx from --concurrency threads. Every one misses at home, fans out to every other
store (fallback: all) and is registered at home as a new visitor. Reported per run:
requests/s, the gateway's fan-out time (fanout_ms) p50/p99, client latency p50/p99, the
cluster's memory (PSS summed over the launcher's process tree, read after the load), and
throughput relative to the smallest size of the same shape.

    python -m bench.scale                      # arcface where its models are, else dlib
    python -m bench.scale --sizes 3,16 --per-store-sizes "" --requests 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import log, machine_info, percentiles, table, write_results
from bench.load import Photo, load, process_tree
from storeface.paths import faces_dir, models_dir
from tools.dataset import list_photos
from tools.servers import LocalCluster, running_cluster

HOME = "store-000"


def never_seen(count: int) -> list[Photo]:
    """One photo each of the first `count` never-enrolled people."""
    first: dict[str, Path] = {}
    for person, path in list_photos(faces_dir() / "lfw_distractors"):
        first.setdefault(person, path)
    paths = [first[p] for p in sorted(first)][:count]
    if len(paths) < count:
        raise SystemExit(f"only {len(paths)} never-seen people; ask for fewer requests")
    return [Photo(p.name, p.read_bytes()) for p in paths]


def pss_mb(root: int) -> float:
    """Proportional set size of a process tree, in MB: shared pages counted once."""
    total_kb = 0
    for pid in process_tree([root]):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
                    break
        except OSError:
            continue
    return total_kb / 1024


def topology(
    shape: str, size: int, groups: int, embedder: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(nodes, stores) of a chain of `size` stores in the given shape."""
    stores = [f"store-{i:03d}" for i in range(size)]
    if shape == "per-store":
        return [], [{"id": s, "replicas": 1, "embedder": embedder} for s in stores]
    nodes = [{"id": f"node-{g + 1}", "replicas": 1, "embedder": embedder} for g in range(groups)]
    return nodes, [{"id": s, "node": nodes[i % groups]["id"]} for i, s in enumerate(stores)]


def run_one(
    cluster: LocalCluster, photos: list[Photo], warmup: list[Photo], args: argparse.Namespace
) -> dict[str, Any]:
    url = f"{cluster.front}/v1/recognize"
    headers = {"X-API-Key": cluster.admin_key()}
    form = {"store_id": HOME}
    load(url, warmup, args.concurrency, len(warmup), 120, form, headers)
    level = load(url, photos, args.concurrency, len(photos), args.max_seconds, form, headers)
    fanout = [t["fanout_ms"] for t in level.timings if "fanout_ms" in t]
    degraded = 0
    with httpx.Client(base_url=cluster.front, headers=headers, timeout=60) as c:
        ready = c.get("/readyz").json()["details"]
        degraded = sum(not ok for ok in ready["stores"].values())
    return {
        "sent": level.sent,
        "ok": level.ok,
        "errors": level.errors,
        "rps": level.ok / level.wall_s if level.wall_s else 0.0,
        "fanout_p50_ms": percentiles(fanout, [50])[0] if fanout else None,
        "fanout_p99_ms": percentiles(fanout, [99])[0] if fanout else None,
        "client_p50_ms": percentiles(level.latencies_ms, [50])[0],
        "client_p99_ms": percentiles(level.latencies_ms, [99])[0],
        "pss_mb": pss_mb(cluster.pid),
        "stores_not_ready": degraded,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--sizes", default="3,16,64")
    parser.add_argument("--per-store-sizes", default="3,16")
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--embedder", default=None, help="default: arcface if its models exist")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=24)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    embedder = args.embedder or (
        "arcface" if (models_dir() / "face_detection_yunet_2023mar.onnx").exists() else "dlib"
    )
    runs: list[tuple[str, int]] = [("groups", int(n)) for n in args.sizes.split(",") if n]
    runs += [("per-store", int(n)) for n in args.per_store_sizes.split(",") if n]
    # Every run is a fresh cluster (its own Redis), so the same people are never-seen in each.
    people = never_seen(args.warmup + args.requests)
    warmup, photos = people[: args.warmup], people[args.warmup :]
    results: list[dict[str, Any]] = []
    for shape, size in runs:
        nodes, stores = topology(shape, size, args.groups, embedder)
        log(f"{shape}: {size} stores ({embedder}) ...")
        t0 = time.monotonic()
        with running_cluster(nodes, stores, timeout=900) as cluster:
            started = time.monotonic() - t0
            res = run_one(cluster, photos, warmup, args)
        res.update(shape=shape, stores=size, start_s=started)
        log(
            f"  {res['rps']:.1f} req/s, fan-out p50 {res['fanout_p50_ms']:.1f} ms, "
            f"{res['pss_mb']:.0f} MB PSS"
        )
        results.append(res)
    for shape in ("groups", "per-store"):
        mine = [r for r in results if r["shape"] == shape]
        if mine:
            base = min(mine, key=lambda r: r["stores"])
            for r in mine:
                r["rps_vs_smallest"] = r["rps"] / base["rps"] if base["rps"] else None
                extra = r["stores"] - base["stores"]
                r["mb_per_extra_store"] = (r["pss_mb"] - base["pss_mb"]) / extra if extra else None
    rows = [
        [
            r["shape"],
            r["stores"],
            f"{r['rps']:.1f}",
            f"{r['rps_vs_smallest']:.0%}" if r.get("rps_vs_smallest") else "",
            f"{r['fanout_p50_ms']:.1f}",
            f"{r['fanout_p99_ms']:.1f}",
            f"{r['client_p50_ms']:.0f}",
            f"{r['client_p99_ms']:.0f}",
            f"{r['pss_mb']:.0f}",
            f"{r['mb_per_extra_store']:.1f}" if r.get("mb_per_extra_store") is not None else "",
            f"{r['ok']}/{r['sent']}",
        ]
        for r in results
    ]
    print(
        f"\nnever-seen faces at {HOME}, concurrency {args.concurrency}, {embedder}, "
        f"groups: {args.groups} × 1 replica; per-store: 1 replica per store\n"
    )
    print(
        table(
            [
                "shape",
                "stores",
                "req/s",
                "vs smallest",
                "fan-out p50 ms",
                "fan-out p99 ms",
                "client p50 ms",
                "client p99 ms",
                "PSS MB",
                "MB / extra store",
                "ok",
            ],
            rows,
        )
    )
    path = write_results(
        "scale",
        {
            "machine": machine_info({"embedder": embedder}),
            "args": vars(args),
            "results": results,
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
