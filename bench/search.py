"""The index at scale: exact Flat vs IVF-Flat vs IVF-PQ fast-scan vs HNSW vs the product's
StoreIndex (Flat while small, then IVF over 4-bit PQ fast-scan codes, re-ranked exactly).

    python -m bench.search            # full run: 10k / 100k / 1M vectors, 128-d and 512-d
    python -m bench.search --quick    # a minute: 10k / 50k, 128-d

Vectors are shaped like face embeddings, not uniform noise: many identities (n/3 on
average, 1–5 vectors each), every vector = its identity's centre + per-photo noise.

* 128-d ("dlib128"): mean and covariance spectrum of real dlib embeddings of the 1,239
  lfw_distractors people; the share of variance that is within-person is calibrated so
  the median same-person / different-person L2 distance ratio equals the one measured on
  lfw_dev (both via tools.dataset.embed_folder, cached). Raw, not normalised: that is
  how the product stores dlib vectors (metric l2).
* 512-d ("arcface512"): the same spectrum shape stretched to 512 dimensions, L2-normalised
  (cosine), calibrated to ArcFace-class numbers (same-person cosine 0.62, different 0.01,
  ../shared/models/README.md).
* "isotropic128" (sensitivity check): the textbook recipe, random unit centres + isotropic
  noise, normalised, with dlib's same/different ratio.

Queries are held-out noisy views of enrolled identities. Recall@1 is against exact search.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from bench.common import (
    log,
    machine_info,
    stopwatch,
    summarize_ms,
    table,
    time_each,
    write_results,
)
from shard_node.faces.registry import embedder_info
from shard_node.index import NPROBE_STEPS, IndexPolicy, StoreIndex, _nlist_for
from storeface.paths import faces_dir
from tools.dataset import embed_folder

# ArcFace-class statistics (../shared/models/README.md, measured on lfw_dev).
ARCFACE_SAME_COS = 0.62
ARCFACE_DIFF_COS = 0.01


# --- vectors shaped like face embeddings -------------------------------------------------


@dataclass
class Shape:
    """How to draw synthetic embeddings: per-axis variances, within-person share, rotation."""

    name: str
    dim: int
    metric: str  # what StoreIndex would use: "l2" or "cosine"
    lam: np.ndarray  # variance of single views along each axis (before rotation)
    alpha: float  # share of that variance that is within-person noise
    basis: np.ndarray | None  # d×d rotation applied after sampling (None: identity)
    mean: np.ndarray | None  # added after rotation
    normalise: bool
    target_ratio: float  # median same-person / different-person distance to match
    note: str
    real: dict[str, float]  # the measured reference numbers


@dataclass
class Dataset:
    x: np.ndarray  # n×d float32
    face_of: np.ndarray  # n, identity of each vector
    queries: np.ndarray  # q×d
    query_face: np.ndarray  # q, identity each query is a view of


def _pair_medians(x: np.ndarray, who: np.ndarray) -> tuple[float, float]:
    """Median L2 distance of same-identity pairs and of different-identity pairs."""
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    dist = np.sqrt(d2)
    same = (who[:, None] == who[None, :]) & ~np.eye(len(who), dtype=bool)
    diff = who[:, None] != who[None, :]
    return float(np.median(dist[same])), float(np.median(dist[diff]))


def _counts(n: int, rng: np.random.Generator) -> np.ndarray:
    """Vectors per identity, 1–5 each, summing to exactly n."""
    counts = rng.integers(1, 6, size=n // 3 + 16)
    while counts.sum() < n:
        counts = np.concatenate([counts, rng.integers(1, 6, size=n // 3 + 16)])
    cs = np.cumsum(counts)
    k = int(np.searchsorted(cs, n))
    counts = counts[: k + 1].copy()
    counts[-1] -= int(cs[k] - n)
    return counts


def sample(shape: Shape, n: int, n_queries: int, rng: np.random.Generator) -> Dataset:
    """n enrolled vectors and n_queries held-out views of distinct enrolled identities."""
    d = shape.dim
    counts = _counts(n, rng)
    nid = len(counts)
    sb = np.sqrt((1 - shape.alpha) * shape.lam).astype(np.float32)
    sw = np.sqrt(shape.alpha * shape.lam).astype(np.float32)
    centres = rng.standard_normal((nid, d), dtype=np.float32) * sb
    face_of = np.repeat(np.arange(nid, dtype=np.int64), counts)

    def views(ids: np.ndarray) -> np.ndarray:
        v = centres[ids] + rng.standard_normal((len(ids), d), dtype=np.float32) * sw
        if shape.basis is not None:
            v = v @ shape.basis
        if shape.mean is not None:
            v += shape.mean
        if shape.normalise:
            v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v.astype(np.float32, copy=False)

    x = np.empty((n, d), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):
        x[s : s + step] = views(face_of[s : s + step])
    query_face = rng.choice(nid, size=min(n_queries, nid), replace=False).astype(np.int64)
    queries = np.ascontiguousarray(views(query_face))
    return Dataset(x=x, face_of=face_of, queries=queries, query_face=query_face)


def _calibrate_alpha(shape: Shape) -> tuple[float, float, float]:
    """Bisect alpha so the synthetic median distance ratio matches the target."""
    lo, hi = 0.01, 0.95
    same = diff = 0.0
    for _ in range(18):
        shape.alpha = (lo + hi) / 2
        ds = sample(shape, 3000, 0, np.random.default_rng(12345))
        same, diff = _pair_medians(ds.x[:1500], ds.face_of[:1500])
        if same / diff > shape.target_ratio:
            hi = shape.alpha
        else:
            lo = shape.alpha
    return shape.alpha, same, diff


def dlib_reference() -> dict[str, Any] | None:
    """Real dlib embeddings of lfw_distractors (spectrum) and lfw_dev (same/diff distances)."""
    try:
        log("loading real dlib embeddings (cached in .cache/embeddings after the first time)")
        distractors = embed_folder(faces_dir() / "lfw_distractors")
        dev = embed_folder(faces_dir() / "lfw_dev")
    except Exception as exc:  # no photos on this machine
        log(f"real embeddings unavailable ({exc}); falling back to an isotropic spectrum")
        return None
    t = distractors.embeddings[distractors.ok].astype(np.float64)
    e = dev.embeddings[dev.ok].astype(np.float32)
    people = np.array(dev.people)[dev.ok]
    _, who = np.unique(people, return_inverse=True)
    same, diff = _pair_medians(e, who)
    mean = t.mean(0)
    lam, vecs = np.linalg.eigh(np.cov((t - mean).T))
    lam = np.clip(lam[::-1], 1e-9, None)
    vecs = vecs[:, ::-1]
    return {
        "mean": mean.astype(np.float32),
        "lam": lam,
        "basis": vecs.T.astype(np.float32),  # rows = principal axes
        "same": same,
        "diff": diff,
        "n_distractors": len(t),
        "n_dev": len(e),
        "participation_ratio": float(lam.sum() ** 2 / (lam**2).sum()),
    }


def make_shapes(names: list[str]) -> dict[str, Shape]:
    ref = dlib_reference()
    dlib_ratio = ref["same"] / ref["diff"] if ref else 0.547
    base_lam = ref["lam"] if ref else np.ones(128)
    shapes: dict[str, Shape] = {}
    for name in names:
        if name == "dlib128":
            shape = Shape(
                name=name,
                dim=128,
                metric="l2",
                lam=base_lam.copy(),
                alpha=0.3,
                basis=ref["basis"] if ref else None,
                mean=ref["mean"] if ref else None,
                normalise=False,
                target_ratio=dlib_ratio,
                note="mean + covariance spectrum of real dlib embeddings (lfw_distractors), "
                "same/diff ratio of lfw_dev; raw vectors, L2 (as the product stores dlib)",
                real={"same_l2": ref["same"], "diff_l2": ref["diff"]} if ref else {},
            )
        elif name == "arcface512":
            lam = np.repeat(base_lam, 512 // len(base_lam)) if len(base_lam) <= 512 else base_lam
            same = math.sqrt(2 - 2 * ARCFACE_SAME_COS)
            diff = math.sqrt(2 - 2 * ARCFACE_DIFF_COS)
            shape = Shape(
                name=name,
                dim=512,
                metric="cosine",
                lam=lam[:512].astype(np.float64),
                alpha=0.3,
                basis=None,
                mean=None,
                normalise=True,
                target_ratio=same / diff,
                note="dlib's spectrum shape stretched to 512-d, L2-normalised, calibrated to "
                "ArcFace-class same/diff cosine 0.62/0.01 (../shared/models/README.md)",
                real={"same_l2": same, "diff_l2": diff},
            )
        elif name == "isotropic128":
            shape = Shape(
                name=name,
                dim=128,
                metric="cosine",
                lam=np.ones(128),
                alpha=0.3,
                basis=None,
                mean=None,
                normalise=True,
                target_ratio=dlib_ratio,
                note="random unit centres + isotropic noise, normalised, dlib's same/diff ratio "
                "(worst case for IVF: no low-dimensional structure)",
                real={"same_l2": ref["same"], "diff_l2": ref["diff"]} if ref else {},
            )
        else:
            raise SystemExit(f"unknown shape {name!r}")
        alpha, same_s, diff_s = _calibrate_alpha(shape)
        shape.real.update(
            {
                "synthetic_same_l2": same_s,
                "synthetic_diff_l2": diff_s,
                "alpha": alpha,
                "target_ratio": shape.target_ratio,
            }
        )
        if ref and name == "dlib128":
            shape.real["participation_ratio"] = ref["participation_ratio"]
        log(
            f"shape {name}: within-person share {alpha:.3f}; synthetic same/diff median "
            f"{same_s:.3f}/{diff_s:.3f} (ratio {same_s / diff_s:.3f}, target "
            f"{shape.target_ratio:.3f})"
        )
        shapes[name] = shape
    return shapes


# --- measuring one index -----------------------------------------------------------------


@dataclass
class Truth:
    ids: np.ndarray  # exact top-1 vector id per query
    dist2: np.ndarray  # its squared L2 distance
    threshold: float | None  # embedder's same-person distance (L2), for "matchable"
    # How a calibration would see recall, with two kinds of queries (see calibration_sets):
    noise_queries: np.ndarray | None = None  # StoreIndex's: stored vector + ½·NN-distance noise
    noise_truth: np.ndarray | None = None
    loo_queries: np.ndarray | None = None  # leave-one-out: a stored vector, its nearest *other*
    loo_self: np.ndarray | None = None
    loo_truth: np.ndarray | None = None


def calibration_sets(index: Any, ds: Dataset, shape: Shape, m: int, truth: Truth) -> None:
    """Query sets a calibration could use, with their exact answers from the Flat index.

    * noise: what StoreIndex._calibrate_nprobe does today: stored vectors moved by noise of
      half the median nearest-neighbour distance (normalised again for cosine).
    * leave-one-out: a stored vector as the query, the answer its nearest other vector.
      Its distance is that of a real second photo, so it is as hard as a real query.
    """
    n, d = ds.x.shape
    rng = np.random.default_rng(7)
    pick = rng.choice(n, size=min(m, n), replace=False)
    base = ds.x[pick]
    d2, nn = index.search(base, 2)
    other = np.where(nn[:, 0] == pick, nn[:, 1], nn[:, 0])
    other_d2 = np.where(nn[:, 0] == pick, d2[:, 1], d2[:, 0])
    sigma = float(np.median(np.sqrt(np.maximum(other_d2, 0)))) * 0.5 / math.sqrt(d)
    noisy = (base + rng.normal(0, sigma, base.shape)).astype(np.float32)
    if shape.normalise:
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    _, nt = index.search(noisy, 1)
    truth.noise_queries, truth.noise_truth = noisy, nt[:, 0]
    truth.loo_queries, truth.loo_self, truth.loo_truth = base, pick, other


def calibration_recall(index: Any, truth: Truth) -> dict[str, float]:
    """Recall@1 a calibration would measure with each query set (batched, all threads)."""
    out: dict[str, float] = {}
    if truth.noise_queries is not None and truth.noise_truth is not None:
        _, got = index.search(truth.noise_queries, 1)
        out["calib_noise_recall"] = float((got[:, 0] == truth.noise_truth).mean())
    if truth.loo_queries is not None and truth.loo_self is not None:
        _, got = index.search(truth.loo_queries, 2)
        first = np.where(got[:, 0] == truth.loo_self, got[:, 1], got[:, 0])
        out["calib_loo_recall"] = float((first == truth.loo_truth).mean())
    return out


def _index_bytes(index: Any) -> int:
    if isinstance(index, faiss.IndexFlat):  # no 2 GB serialised copy just to count it
        return int(index.ntotal * index.d * 4)
    if isinstance(index, faiss.IndexIVFFlat):
        return int(index.ntotal * (index.d * 4 + 8) + index.nlist * index.d * 4)
    return int(faiss.serialize_index(index).nbytes)


def pq_m(dim: int, spec: str) -> int:
    """Sub-quantizers for a --pq spec: a number, or "d/2", "d/4" (of this dimension)."""
    return dim // int(spec[2:]) if spec.startswith("d/") else int(spec)


def measure_search(
    search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    ds: Dataset,
    truth: Truth | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Single-query latency (one at a time), batched latency, QPS and recall@1."""
    q = ds.queries
    n_lat = min(args.latency_queries, len(q))
    faiss.omp_set_num_threads(args.single_threads)
    for i in range(min(5, len(q))):  # warm-up
        search(q[i : i + 1])
    single = time_each(lambda i: search(q[i : i + 1]), n_lat)
    faiss.omp_set_num_threads(args.threads)
    ids = np.empty(len(q), dtype=np.int64)
    d2 = np.empty(len(q), dtype=np.float32)
    search(q[: args.batch])  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(q), args.batch):
        dd, ii = search(q[s : s + args.batch])
        ids[s : s + args.batch] = ii[:, 0]
        d2[s : s + args.batch] = dd[:, 0]
    batch_total = time.perf_counter() - t0
    s1 = summarize_ms(single)
    out: dict[str, Any] = {
        "single_p50_ms": s1["p50"],
        "single_p99_ms": s1["p99"],
        "single_mean_ms": s1["mean"],
        "single_queries": n_lat,
        "qps_single": 1000 / s1["mean"],
        "batch_ms_per_query": batch_total * 1000 / len(q),
        "qps_batch": len(q) / batch_total,
        "recall_queries": len(q),
        "_ids": ids,
        "_d2": d2,
    }
    if truth is not None:
        out.update(recall(ids, d2, truth, ds))
    return out


def recall(ids: np.ndarray, d2: np.ndarray, truth: Truth, ds: Dataset) -> dict[str, Any]:
    valid = ids >= 0
    tie = d2 <= truth.dist2 * (1 + 1e-5) + 1e-7  # an equally near vector is as good
    hit = valid & ((ids == truth.ids) | tie)
    face_hit = valid & (ds.face_of[np.maximum(ids, 0)] == ds.face_of[truth.ids])
    out: dict[str, Any] = {
        "recall_at_1": float(hit.mean()),
        "face_recall_at_1": float(face_hit.mean()),
    }
    if truth.threshold is not None:
        matchable = np.sqrt(np.maximum(truth.dist2, 0)) <= truth.threshold
        out["matchable_queries"] = int(matchable.sum())
        out["matchable_face_recall_at_1"] = (
            float(face_hit[matchable].mean()) if matchable.any() else None
        )
    return out


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


# --- the settings ------------------------------------------------------------------------


def run_flat(ds: Dataset, shape: Shape, args: argparse.Namespace) -> tuple[dict[str, Any], Truth]:
    d = ds.x.shape[1]
    index = faiss.IndexFlatL2(d)
    with stopwatch() as sw:
        index.add(ds.x)
    res = measure_search(lambda q: index.search(q, 1), ds, None, args)
    truth = Truth(ids=res["_ids"].copy(), dist2=res["_d2"].copy(), threshold=None)
    faiss.omp_set_num_threads(args.threads)
    calibration_sets(index, ds, shape, args.calibration_queries, truth)
    # The product process does not pin faiss's threads: what does one query cost with all cores?
    faiss.omp_set_num_threads(args.threads)
    n_chk = min(30, len(ds.queries))
    all_cores = time_each(lambda i: index.search(ds.queries[i : i + 1], 1), n_chk)
    row = {
        "index": "Flat",
        "params": "exact",
        "build_s": sw[0],
        "train_s": 0.0,
        "bytes": _index_bytes(index),
        **res,
        "recall_at_1": 1.0,
        "face_recall_at_1": 1.0,
        "single_p50_ms_all_threads": float(np.median(all_cores)),
    }
    return row, truth


def default_nlists(n: int) -> list[int]:
    """√n and the product's 4·√n (shard_node.index._nlist_for)."""
    return sorted({max(16, int(math.sqrt(n))), _nlist_for(n)})


def _train_and_add(
    index: Any, ds: Dataset, nlist: int, args: argparse.Namespace, sort_sample: bool = False
) -> dict[str, Any]:
    """Train an IVF index on up to `train_per_list` points a list (a seeded sample; sorted
    where the PQ runs always took it so), add every vector; what each row reports of it."""
    n = len(ds.x)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(1)
    n_train = min(n, nlist * args.train_per_list)
    sample = rng.choice(n, size=n_train, replace=False)
    if sort_sample:
        sample = np.sort(sample)
    train = ds.x[sample] if sort_sample or n_train < n else ds.x
    with stopwatch() as sw_train:
        index.train(train)
    with stopwatch() as sw_add:
        index.add(ds.x)
    return {
        "nlist": nlist,
        "train_points": n_train,
        "build_s": sw_train[0] + sw_add[0],
        "train_s": sw_train[0],
        "add_s": sw_add[0],
    }


def run_ivf(
    ds: Dataset, truth: Truth, nlist: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    d = ds.x.shape[1]
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
    built = _train_and_add(index, ds, nlist, args)
    nbytes = _index_bytes(index)
    rows = []
    nprobe = 1
    while nprobe <= min(nlist, args.max_nprobe):
        index.nprobe = nprobe
        res = measure_search(lambda q: index.search(q, 1), ds, truth, args)
        res.update(calibration_recall(index, truth))
        rows.append(
            {
                "index": "IVF-Flat",
                "params": f"nlist={nlist} nprobe={nprobe}",
                "nprobe": nprobe,
                "scanned_share": nprobe / nlist,
                **built,
                "bytes": nbytes,
                **res,
            }
        )
        log(
            f"  IVF nlist={nlist} nprobe={nprobe}: recall@1 {res['recall_at_1']:.3f}, "
            f"p50 {res['single_p50_ms']:.2f} ms"
        )
        if res["recall_at_1"] >= args.stop_recall or nprobe * 2 > nlist:
            break
        nprobe *= 2
    return rows


def run_hnsw(ds: Dataset, truth: Truth, args: argparse.Namespace) -> list[dict[str, Any]]:
    d = ds.x.shape[1]
    index = faiss.IndexHNSWFlat(d, args.hnsw_m)
    index.hnsw.efConstruction = args.ef_construction
    faiss.omp_set_num_threads(args.threads)
    with stopwatch() as sw:
        index.add(ds.x)
    nbytes = _index_bytes(index)
    rows = []
    for ef in args.ef:
        index.hnsw.efSearch = ef
        res = measure_search(lambda q: index.search(q, 1), ds, truth, args)
        res.update(calibration_recall(index, truth))
        rows.append(
            {
                "index": "HNSW-Flat",
                "params": f"M={args.hnsw_m} efC={args.ef_construction} efSearch={ef}",
                "ef_search": ef,
                "build_s": sw[0],
                "train_s": 0.0,
                "bytes": nbytes,
                **res,
            }
        )
        log(f"  HNSW ef={ef}: recall@1 {res['recall_at_1']:.3f}, p50 {res['single_p50_ms']:.2f} ms")
        if res["recall_at_1"] >= args.stop_recall:
            break
    return rows


def run_ivfpq(ds: Dataset, truth: Truth, m: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """IVF (√n lists) over 4-bit PQ fast-scan codes, top `--rerank` re-scored from raw vectors."""
    n, d = ds.x.shape
    nlist = _nlist_for(n)
    index: Any = faiss.index_factory(d, f"IVF{nlist},PQ{m}x4fs", faiss.METRIC_L2)
    index.by_residual = False
    built = _train_and_add(index, ds, nlist, args, sort_sample=True)
    nbytes = _index_bytes(index) + ds.x.nbytes  # re-ranking needs the raw vectors
    x = ds.x
    rows = []
    for nprobe in (p for p in NPROBE_STEPS if args.pq_min_nprobe <= p <= nlist):
        params: Any = faiss.SearchParametersIVF()
        params.nprobe = nprobe

        def search(q: np.ndarray, params: Any = params) -> tuple[np.ndarray, np.ndarray]:
            _, cand = index.search(q, args.rerank, params=params)
            dist = np.full((len(q), 1), np.inf, np.float32)
            ids = np.full((len(q), 1), -1, np.int64)
            for r in range(len(q)):
                c = cand[r][cand[r] >= 0]
                diff = x[c] - q[r]
                d2 = np.einsum("ij,ij->i", diff, diff)
                j = int(np.argmin(d2))
                dist[r, 0], ids[r, 0] = d2[j], c[j]
            return dist, ids

        res = measure_search(search, ds, truth, args)
        rows.append(
            {
                "index": "IVF-PQfs",
                "params": f"nlist={nlist} PQ{m}x4fs nprobe={nprobe} k'={args.rerank}",
                "pq_m": m,
                "nprobe": nprobe,
                "scanned_share": nprobe / nlist,
                **built,
                "bytes": nbytes,
                **res,
            }
        )
        log(
            f"  IVF-PQfs PQ{m} nprobe={nprobe}: recall@1 {res['recall_at_1']:.3f}, "
            f"match@1 {res.get('matchable_face_recall_at_1') or 0:.4f}, "
            f"p50 {res['single_p50_ms']:.2f} ms"
        )
        if res["recall_at_1"] >= args.stop_recall:
            break
    return rows


def run_store_index(
    ds: Dataset, truth: Truth, shape: Shape, args: argparse.Namespace
) -> dict[str, Any]:
    """The product's own index, as a shard node builds it (add, then rebuild when told to)."""
    n, d = ds.x.shape
    policy = IndexPolicy(
        ivf_threshold=args.ivf_threshold,
        match_threshold=_store_threshold(shape),
        calibration_queries=args.store_calibration_queries,
        build_threads=args.build_threads,
    )
    faiss.omp_set_num_threads(args.threads)
    index = StoreIndex(shape.dim, shape.metric, "bench", policy)
    with stopwatch() as sw_add:
        index.add(list(range(n)), ds.face_of.tolist(), ds.x)
    rebuild_s = None
    if index.needs_rebuild():
        with stopwatch() as sw_rebuild:
            index.rebuild()
        rebuild_s = sw_rebuild[0]
    memory = index.memory()

    def search(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        got = index.search(q, 1)
        # StoreIndex answers FaceIds and exact distances: compare both with exact search's.
        faces = np.array([m[0].face_id if m else -1 for m in got], dtype=np.int64)
        dist = np.array([m[0].distance if m else np.inf for m in got], dtype=np.float64)
        d2 = 2 * dist if shape.metric == "cosine" else dist**2  # as squared L2 (unit vectors)
        return d2[:, None].astype(np.float32), faces[:, None]

    res = measure_search(search, ds, None, args)
    faces = res.pop("_ids")
    d2 = res.pop("_d2")
    face_hit = faces == ds.face_of[truth.ids]
    tie = d2 <= truth.dist2 * (1 + 1e-4) + 1e-6  # re-ranked distances are exact
    limit = policy.flat_limit(d)
    row: dict[str, Any] = {
        "index": f"StoreIndex ({index.kind})",
        "params": (
            f"nlist={index.nlist} nprobe={index.nprobe} k'={policy.rerank} (calibrated)"
            if index.kind == "ivfpq"
            else f"flat below {limit:,}"
            if n < limit
            else "IVF rejected by its calibration: flat"
        ),
        "kind": index.kind,
        "nlist": index.nlist,
        "nprobe": index.nprobe,
        "flat_limit": limit,
        "add_s": sw_add[0],
        "rebuild_s": rebuild_s,
        "build_s": sw_add[0] + (rebuild_s or 0.0),
        "bytes": sum(memory.values()),
        "memory": memory,
        "raw_ratio": sum(memory.values()) / (n * d * 4),
        **res,
        "face_recall_at_1": float(face_hit.mean()),
        "recall_at_1": float(tie.mean()),
    }
    if truth.threshold is not None:
        matchable = np.sqrt(np.maximum(truth.dist2, 0)) <= truth.threshold
        row["matchable_queries"] = int(matchable.sum())
        row["matchable_face_recall_at_1"] = (
            float(face_hit[matchable].mean()) if matchable.any() else None
        )
    return row


# --- the driver --------------------------------------------------------------------------


def _store_threshold(shape: Shape) -> float | None:
    """The match threshold of the embedder a shape stands for, in the store's own metric."""
    name = {"dlib128": "dlib", "arcface512": "arcface"}.get(shape.name)
    if name is None:
        return None
    try:
        return float(embedder_info(name).threshold)
    except Exception:
        return None


def _threshold(shape: Shape) -> float | None:
    """That threshold as an L2 distance (what exact search's truth is in)."""
    t = _store_threshold(shape)
    if t is None or shape.metric == "l2":
        return t
    return math.sqrt(2 * t)  # cosine distance t between unit vectors


def bench_size(shape: Shape, n: int, args: argparse.Namespace, store: bool) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed + n + shape.dim)
    with stopwatch() as sw:
        ds = sample(shape, n, args.queries, rng)
    d = shape.dim
    log(f"{shape.name} n={n:,}: generated {n:,}×{d} ({n * d * 4 / 2**20:.0f} MiB) in {sw[0]:.1f}s")
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    flat_row, truth = run_flat(ds, shape, args)
    truth.threshold = _threshold(shape)
    if truth.threshold is not None:
        flat_row.update(recall(truth.ids, truth.dist2, truth, ds))
    exact_identity = float((ds.face_of[truth.ids] == ds.query_face).mean())
    rows.append(flat_row)
    log(
        f"  Flat: p50 {flat_row['single_p50_ms']:.2f} ms, exact top-1 = right identity "
        f"for {exact_identity:.1%} of queries"
    )
    if "ivf" in args.indexes:
        for nlist in args.nlist or default_nlists(n):
            cost = n * nlist * d
            if nlist * 4 > n:
                skipped.append(f"IVF nlist={nlist}: fewer than 4 vectors per list")
                continue
            if cost > args.ivf_max_cost:
                skipped.append(
                    f"IVF nlist={nlist}: build cost n·nlist·d = {cost:.1e} > --ivf-max-cost "
                    f"{args.ivf_max_cost:.0e} (est. {cost / 5.1e11 * 100:.0f}s train+add here)"
                )
                log("  skipped " + skipped[-1])
                continue
            rows.extend(run_ivf(ds, truth, nlist, args))
            gc.collect()
    if "hnsw" in args.indexes:
        if n * d > args.hnsw_max_nd:
            skipped.append(
                f"HNSW: n·d = {n * d:.1e} > --hnsw-max-nd {args.hnsw_max_nd:.1e} "
                f"(build est. {n * d / 12.8e6 * 25 * max(1, math.log10(n / 1e5) + 1):.0f}s here)"
            )
            log("  skipped " + skipped[-1])
        else:
            rows.extend(run_hnsw(ds, truth, args))
    if "ivfpq" in args.indexes:
        for m in sorted({pq_m(d, spec) for spec in args.pq}, reverse=True):
            rows.extend(run_ivfpq(ds, truth, m, args))
            gc.collect()
    if store and "store" in args.indexes:
        log(f"  StoreIndex n={n:,} ...")
        row = run_store_index(ds, truth, shape, args)
        log(
            f"  StoreIndex: {row['params']}, build {row['build_s']:.1f}s, recall@1 "
            f"{row['recall_at_1']:.3f}, match@1 {row.get('matchable_face_recall_at_1') or 0:.4f}, "
            f"p50 {row['single_p50_ms']:.2f} ms, {row['bytes'] / n:.0f} B/vector "
            f"({row['raw_ratio']:.2f}× raw)"
        )
        rows.append(row)
    for r in rows:
        r.update({"shape": shape.name, "n": n, "dim": d})
    del ds
    gc.collect()
    return {
        "shape": shape.name,
        "n": n,
        "dim": d,
        "exact_top1_right_identity": exact_identity,
        "rows": [_clean(r) for r in rows],
        "skipped": skipped,
    }


def summarize(results: list[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """Per (shape, n): Flat vs the fastest IVF / HNSW setting that reaches the target recall."""
    out = []
    for res in results:
        rows = res["rows"]
        flat = next(r for r in rows if r["index"] == "Flat")
        entry: dict[str, Any] = {
            "shape": res["shape"],
            "n": res["n"],
            "dim": res["dim"],
            "flat_p50_ms": flat["single_p50_ms"],
            "flat_batch_ms": flat["batch_ms_per_query"],
        }
        for kind, key in (("IVF-Flat", "ivf"), ("HNSW-Flat", "hnsw"), ("IVF-PQfs", "pq")):
            ok = [r for r in rows if r["index"] == kind and (r.get("recall_at_1") or 0) >= target]
            if ok:
                best = min(ok, key=lambda r: r["single_p50_ms"])
                entry[f"{key}_params"] = best["params"]
                entry[f"{key}_p50_ms"] = best["single_p50_ms"]
                entry[f"{key}_p99_ms"] = best["single_p99_ms"]
                entry[f"{key}_recall"] = best["recall_at_1"]
                entry[f"{key}_build_s"] = best["build_s"]
                entry[f"{key}_speedup"] = flat["single_p50_ms"] / best["single_p50_ms"]
            else:
                tried = [r for r in rows if r["index"] == kind]
                entry[f"{key}_params"] = (
                    f"none reached {target} (best {max(r['recall_at_1'] for r in tried):.3f})"
                    if tried
                    else "not run"
                )
            # What the product needs: the right FaceId where exact search finds a match.
            ok_m = [
                r
                for r in rows
                if r["index"] == kind and (r.get("matchable_face_recall_at_1") or 0) >= target
            ]
            if ok_m:
                best = min(ok_m, key=lambda r: r["single_p50_ms"])
                entry[f"{key}_match_params"] = best["params"]
                entry[f"{key}_match_p50_ms"] = best["single_p50_ms"]
                entry[f"{key}_match_p99_ms"] = best["single_p99_ms"]
                entry[f"{key}_match_recall"] = best["matchable_face_recall_at_1"]
        store = next((r for r in rows if r["index"].startswith("StoreIndex")), None)
        if store is not None:
            entry.update(
                {
                    "store_kind": store["kind"],
                    "store_params": store["params"],
                    "store_p50_ms": store["single_p50_ms"],
                    "store_p99_ms": store["single_p99_ms"],
                    "store_recall": store["recall_at_1"],
                    "store_match_recall": store.get("matchable_face_recall_at_1"),
                    "store_build_s": store["build_s"],
                    "store_bytes_per_vector": store["bytes"] / res["n"],
                    "store_raw_ratio": store["raw_ratio"],
                    "store_speedup": flat["single_p50_ms"] / store["single_p50_ms"],
                }
            )
        out.append(entry)
    return out


def crossover(summary: list[dict[str, Any]], shape: str, key: str = "ivf") -> float | None:
    """Size where IVF (at the target recall) and Flat cost the same per single query.

    Log-log interpolation of the speed-up between the measured sizes; the smallest size
    measured when IVF is already faster there (so: "at most this"). key "store": the
    product's StoreIndex where it built IVF-PQ.
    """
    pts = sorted(
        (e["n"], e[f"{key}_speedup"])
        for e in summary
        if e["shape"] == shape
        and f"{key}_speedup" in e
        and (key != "store" or e.get("store_kind") == "ivfpq")
    )
    for (n0, s0), (n1, s1) in itertools.pairwise(pts):
        if s0 < 1 <= s1:
            f = (0 - math.log(s0)) / (math.log(s1) - math.log(s0))
            return float(math.exp(math.log(n0) + f * (math.log(n1) - math.log(n0))))
    if pts and pts[0][1] >= 1:
        return float(pts[0][0])  # already faster at the smallest size measured
    return None


def _r3(value: float | None) -> str | None:
    """Recalls with three decimals: 0.985 and 0.99 must not print alike."""
    return None if value is None else f"{value:.3f}"


def print_tables(payload: dict[str, Any]) -> None:
    print("\n## Calibration of the synthetic vectors\n")
    cal_rows = []
    for name, info in payload["shapes"].items():
        cal_rows.append(
            [
                name,
                info["dim"],
                info["real"].get("same_l2"),
                info["real"].get("diff_l2"),
                info["real"].get("synthetic_same_l2"),
                info["real"].get("synthetic_diff_l2"),
                info["real"].get("alpha"),
            ]
        )
    print(
        table(
            ["shape", "d", "ref same", "ref diff", "syn same", "syn diff", "within share"],
            cal_rows,
        )
    )
    for res in payload["results"]:
        print(
            f"\n## {res['shape']}, n={res['n']:,}, d={res['dim']} "
            f"(exact top-1 is the query's identity for {res['exact_top1_right_identity']:.1%})\n"
        )
        rows = []
        for r in res["rows"]:
            rows.append(
                [
                    r["index"],
                    r["params"],
                    r["build_s"],
                    r["bytes"] / 2**20,
                    r["bytes"] / res["n"],
                    r["single_p50_ms"],
                    r["single_p99_ms"],
                    r["batch_ms_per_query"],
                    r["qps_batch"],
                    *(
                        _r3(r.get(k))
                        for k in (
                            "recall_at_1",
                            "face_recall_at_1",
                            "matchable_face_recall_at_1",
                            "calib_noise_recall",
                            "calib_loo_recall",
                        )
                    ),
                ]
            )
        print(
            table(
                [
                    "index",
                    "params",
                    "build s",
                    "MiB",
                    "B/vec",
                    "p50 ms",
                    "p99 ms",
                    "batch ms/q",
                    "QPS batch",
                    "recall@1",
                    "face@1",
                    "match@1",
                    "cal.noise",
                    "cal.LOO",
                ],
                rows,
            )
        )
        for s in res["skipped"]:
            print(f"\nskipped: {s}")
    print(f"\n## Fastest setting at recall@1 ≥ {payload['target_recall']} (single query)\n")
    rows = []
    for e in payload["summary"]:
        rows.append(
            [
                e["shape"],
                e["n"],
                e["flat_p50_ms"],
                e.get("ivf_params"),
                e.get("ivf_p50_ms"),
                e.get("ivf_speedup"),
                e.get("hnsw_params"),
                e.get("hnsw_p50_ms"),
                e.get("hnsw_speedup"),
                e.get("ivf_match_params"),
                e.get("ivf_match_p50_ms"),
                e.get("hnsw_match_params"),
                e.get("hnsw_match_p50_ms"),
            ]
        )
    print(
        table(
            [
                "shape",
                "n",
                "Flat p50",
                "IVF setting",
                "IVF p50",
                "×Flat",
                "HNSW setting",
                "HNSW p50",
                "×Flat",
                "IVF (match@1)",
                "p50",
                "HNSW (match@1)",
                "p50",
            ],
            rows,
        )
    )
    print_product_tables(payload)
    for shape, n in payload["crossover"].items():
        smallest = min((e["n"] for e in payload["summary"] if e["shape"] == shape), default=0)
        if n is None:
            text = "not reached at the sizes measured"
        elif n <= smallest:
            text = f"IVF at the target recall is already faster at n = {smallest:,} (smallest run)"
        else:
            text = f"n ≈ {n:,.0f}"
        print(f"\nFlat→IVF crossover ({shape}): {text}")
    threads = [
        [r["shape"], r["n"], row["index"], row["single_p50_ms"], row["single_p50_ms_all_threads"]]
        for r in payload["results"]
        for row in r["rows"]
        if "single_p50_ms_all_threads" in row
    ]
    if threads:
        print(
            f"\n## One query at a time: faiss on 1 thread vs on all "
            f"{payload['machine']['faiss_threads_batch_and_build']} (p50 ms)\n"
        )
        print(table(["shape", "n", "index", "1 thread", "all threads"], threads))
    for msg in payload["skipped_sizes"]:
        print(f"\nskipped: {msg}")


def print_product_tables(payload: dict[str, Any]) -> None:
    """IVF-PQ fast-scan (raw faiss + re-rank) and the product's StoreIndex, per size."""
    target = payload["target_recall"]
    summary = payload["summary"]
    pq = [e for e in summary if "pq_params" in e]
    if pq:
        print(
            f"\n## IVF-PQ fast-scan + exact re-rank: fastest at recall@1 ≥ {target}, and at "
            f"match@1 ≥ {target} (single query, p50/p99 ms)\n"
        )
        rows = [
            [
                e["shape"],
                e["n"],
                e["flat_p50_ms"],
                e.get("pq_params"),
                e.get("pq_p50_ms"),
                e.get("pq_p99_ms"),
                e.get("pq_match_params"),
                e.get("pq_match_p50_ms"),
                e.get("pq_match_p99_ms"),
                _r3(e.get("pq_match_recall")),
            ]
            for e in pq
        ]
        head = ["shape", "n", "Flat p50", "at recall@1", "p50", "p99", "at match@1", "p50", "p99"]
        print(table([*head, "match@1"], rows))
    store = [e for e in summary if "store_kind" in e]
    if store:
        print("\n## The product's StoreIndex (single query, faiss on 1 thread)\n")
        rows = [
            [
                e["shape"],
                e["n"],
                e["flat_p50_ms"],
                e["store_params"],
                e["store_p50_ms"],
                e["store_p99_ms"],
                e["store_speedup"],
                _r3(e["store_recall"]),
                None if e["store_match_recall"] is None else f"{e['store_match_recall']:.4f}",
                e["store_build_s"],
                e["store_bytes_per_vector"],
                e["store_raw_ratio"],
            ]
            for e in store
        ]
        head = ["shape", "n", "Flat p50", "StoreIndex", "p50", "p99", "×Flat", "recall@1"]
        print(table([*head, "match@1", "build s", "B/vector", "×raw"], rows))
    for shape, n in payload.get("store_crossover", {}).items():
        smallest = min((e["n"] for e in store if e["shape"] == shape), default=0)
        if n is None:
            text = "not reached at the sizes measured (or IVF-PQ not built)"
        elif n <= smallest:
            text = f"already faster at n = {smallest:,} (smallest run)"
        else:
            text = f"n ≈ {n:,.0f}"
        print(f"\nFlat→StoreIndex IVF-PQ crossover ({shape}): {text}")


def _ints(text: str) -> list[int]:
    return [int(float(t)) for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 128-d only (~1 min)")
    p.add_argument("--sizes", type=_ints, default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dims", type=_ints, default=[128, 512], help="128: dlib-shaped, 512: arcface")
    p.add_argument(
        "--isotropic-sizes",
        type=_ints,
        default=[100_000],
        help="sizes for the isotropic worst-case check (Flat + IVF only); empty to skip",
    )
    p.add_argument(
        "--store-sizes",
        type=_ints,
        default=[10_000, 100_000, 1_000_000],
        help="sizes at which to run the product's StoreIndex",
    )
    p.add_argument("--indexes", default="flat,ivf,ivfpq,hnsw,store")
    p.add_argument(
        "--pq",
        type=lambda t: t.split(","),
        default=["d/2", "d/4"],
        help="IVF-PQ fast-scan sub-quantizers (4 bits each): numbers or d/2, d/4",
    )
    p.add_argument("--rerank", type=int, default=64, help="IVF-PQ candidates re-scored exactly")
    p.add_argument("--pq-min-nprobe", type=int, default=16, help="where IVF-PQ sweeps start")
    p.add_argument(
        "--build-threads", type=int, default=1, help="StoreIndex rebuild threads (IndexPolicy's)"
    )
    p.add_argument("--queries", type=int, default=1000, help="queries for recall and batches")
    p.add_argument("--latency-queries", type=int, default=200, help="single queries timed")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=cores, help="faiss threads for batches/builds")
    p.add_argument(
        "--single-threads",
        type=int,
        default=1,
        help="faiss threads for single queries (1: OpenMP start-up costs more than it saves)",
    )
    p.add_argument("--nlist", type=_ints, default=None, help="IVF nlists (default √n and 4√n)")
    p.add_argument("--max-nprobe", type=int, default=1024)
    p.add_argument("--train-per-list", type=int, default=64, help="as IndexPolicy does")
    p.add_argument("--ef", type=_ints, default=[16, 32, 64, 128, 256, 512, 1024])
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=40)
    p.add_argument(
        "--hnsw-max-nd",
        type=float,
        default=100_000 * 512,
        help="skip HNSW where n·d exceeds this (build ~15 s per 100k×128 here)",
    )
    p.add_argument(
        "--ivf-max-cost",
        type=float,
        default=6e11,
        help="skip IVF where n·nlist·d exceeds this (1M×4000×128 = 5.1e11 takes ~100 s here)",
    )
    p.add_argument(
        "--max-nd",
        type=float,
        default=1_000_000 * 128,
        help="skip sizes where n·d exceeds this (1M×512 alone takes ~10 min here)",
    )
    p.add_argument(
        "--calibration-queries", type=int, default=300, help="for the cal. noise / LOO columns"
    )
    p.add_argument(
        "--store-calibration-queries",
        type=int,
        default=IndexPolicy().calibration_queries,
        help="StoreIndex's IndexPolicy.calibration_queries",
    )
    p.add_argument(
        "--ivf-threshold",
        type=int,
        default=IndexPolicy().ivf_threshold,
        help="StoreIndex's IndexPolicy (128-d vectors; scaled by 128/d)",
    )
    p.add_argument("--target-recall", type=float, default=0.99)
    p.add_argument("--stop-recall", type=float, default=0.999, help="end a sweep at this recall")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="results file name (default search[-quick])")
    args = p.parse_args(argv)
    if args.quick:
        if "--sizes" not in (argv or []):
            args.sizes = [10_000, 50_000]
        if "--dims" not in (argv or []):
            args.dims = [128]
        if "--isotropic-sizes" not in (argv or []):
            args.isotropic_sizes = [10_000]
        if "--store-sizes" not in (argv or []):
            args.store_sizes = [10_000, 50_000]
        args.queries = min(args.queries, 300)
    args.indexes = {s.strip().lower() for s in args.indexes.split(",")}
    args.name = args.name or ("search-quick" if args.quick else "search")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.perf_counter()
    machine = machine_info(
        {
            "faiss_threads_batch_and_build": args.threads,
            "faiss_threads_single_query": args.single_threads,
        }
    )
    shape_names = [{128: "dlib128", 512: "arcface512"}[d] for d in args.dims]
    if args.isotropic_sizes:
        shape_names.append("isotropic128")
    shapes = make_shapes(shape_names)
    results = []
    skipped_sizes: list[str] = []
    for name in shape_names:
        shape = shapes[name]
        sizes = args.isotropic_sizes if name == "isotropic128" else args.sizes
        for n in sizes:
            if n * shape.dim > args.max_nd:
                msg = (
                    f"{name} n={n:,}: n·d = {n * shape.dim:.1e} > --max-nd {args.max_nd:.1e}; "
                    "run it on its own with a larger --max-nd"
                )
                log("skipped " + msg)
                skipped_sizes.append(msg)
                continue
            store = name != "isotropic128" and n in args.store_sizes
            if name == "isotropic128":
                saved = args.indexes
                args.indexes = args.indexes & {"flat", "ivf"}
                results.append(bench_size(shape, n, args, store=False))
                args.indexes = saved
            else:
                results.append(bench_size(shape, n, args, store))
    summary = summarize(results, args.target_recall)
    payload: dict[str, Any] = {
        "benchmark": "search",
        "machine": {**machine, "finished": machine_info()["date"]},
        "settings": {
            k: (sorted(v) if isinstance(v, set) else v)
            for k, v in vars(args).items()
            if k != "quick" or v
        },
        "shapes": {
            name: {"dim": s.dim, "metric": s.metric, "note": s.note, "real": s.real}
            for name, s in shapes.items()
        },
        "results": results,
        "summary": summary,
        "target_recall": args.target_recall,
        "crossover": {name: crossover(summary, name) for name in shape_names},
        "store_crossover": {name: crossover(summary, name, "store") for name in shape_names},
        "skipped_sizes": skipped_sizes,
        "wall_s": time.perf_counter() - started,
    }
    print_tables(payload)
    path = write_results(args.name, payload)
    print(f"\nwall time {payload['wall_s']:.0f}s; results in {path}")


if __name__ == "__main__":
    main()
