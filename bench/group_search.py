"""What a node group's cross-store search costs: a loop over its stores' indexes vs one index.

A node answers the gateway's fan-out with one /v1/search over the stores it hosts. Looping
over each store's own index pays a fixed cost per store (the Python call, the lock, faiss's
set-up) besides the vectors it scans; the group index (shard_node.group_index) holds the
same vectors once more and answers in one search, filtered to the stores asked for. This
measures both for the fan-out's usual ask, every store but the home one, at one query, one
faiss thread, on random unit vectors (dimension --dim): per-store overhead of the loop =
(loop − group index) / stores.

    python -m bench.group_search
    python -m bench.group_search --stores 16,64,256,1024 --faces 10,100,1000 --dim 512
"""

from __future__ import annotations

import argparse
import sys

import faiss
import numpy as np

from bench.common import machine_info, table, time_each, write_results
from shard_node.group_index import GroupIndex
from shard_node.index import IndexPolicy, StoreIndex


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def measure(stores: int, faces: int, dim: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    policy = IndexPolicy(ivf_threshold=10**12)  # exact search on both sides: the same work
    indexes, vid = [], 0
    for _ in range(stores):
        index = StoreIndex(dim, "l2", "bench", policy)
        ids = list(range(vid, vid + faces))
        index.add(ids, ids, _unit(rng, faces, dim))
        indexes.append(index)
        vid += faces
    group = GroupIndex(dim, "l2", "bench", policy)
    for i, index in enumerate(indexes):
        group.replace_store(f"s{i}", index)
    asked = {f"s{i}" for i in range(1, stores)}  # all but the home store
    q = indexes[0].prepare(_unit(rng, 1, dim))

    def loop(_: int) -> None:
        for index in indexes[1:]:
            index.search_prepared(q, 1)

    loop_ms = float(np.median(time_each(loop, repeats)))
    one_ms = float(np.median(time_each(lambda _: group.search(q, 1, asked), repeats)))
    return {
        "stores": stores,
        "faces_per_store": faces,
        "loop_ms": loop_ms,
        "group_index_ms": one_ms,
        "overhead_us_per_store": (loop_ms - one_ms) / stores * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.group_search", description=__doc__)
    parser.add_argument("--stores", default="16,64,256,1024")
    parser.add_argument("--faces", default="10,100,1000")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(1)
    results = [
        measure(int(s), int(f), args.dim, args.repeats)
        for f in args.faces.split(",")
        for s in args.stores.split(",")
    ]
    print(f"\none query, {args.dim}-d, exact search, 1 faiss thread, median of {args.repeats}\n")
    print(
        table(
            ["stores", "faces/store", "loop ms", "group index ms", "loop overhead µs/store"],
            [
                [
                    r["stores"],
                    r["faces_per_store"],
                    f"{r['loop_ms']:.3f}",
                    f"{r['group_index_ms']:.3f}",
                    f"{r['overhead_us_per_store']:.1f}",
                ]
                for r in results
            ],
        )
    )
    path = write_results(
        "group_search", {"machine": machine_info(), "args": vars(args), "results": results}
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
