"""One store's faiss index: several vectors per FaceId, exact while small, then IVF with 4-bit
PQ fast-scan codes whose candidates are re-scored exactly from the raw vectors kept here."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from shard_node.faces.registry import embedder_info
from storeface.errors import EmbeddingInvalid

log = logging.getLogger("shard_node.index")

SNAPSHOT_FORMAT = 2  # raw vectors + ids by slot, and the IVF-PQ index over slots
_BUILD_BATCH_BYTES = 16 << 20  # copied out per lock hold while a rebuild reads the vectors


@dataclass(frozen=True)
class IndexPolicy:
    """When to leave exact search, and how hard IVF must try; see docs/benchmarks.md."""

    # Vectors from which IVF-PQ replaces exact search, for 128-d vectors: Flat's cost grows
    # with n·d, so a d-dimensional store switches at ivf_threshold·128/d (docs/benchmarks.md).
    ivf_threshold: int = 50_000
    # Match recall@1 (recall@1 without a threshold) to keep: the calibration's one-sided 95%
    # lower bound must reach it, as probe noise alone once put a held-out 0.982 at 0.99.
    target_recall: float = 0.99
    retrain_growth: float = 2.0  # retrain IVF once the store has grown by this factor
    calibration_queries: int = 2000
    max_train_points_per_list: int = 64
    max_scan_share: float = 0.25  # IVF must read at most this share of the bytes Flat reads
    match_threshold: float | None = None  # the store's match distance; None: its embedder's
    rerank: int = 64  # IVF candidates re-scored exactly from the raw vectors
    min_match_probes: int = 200  # with fewer matchable probes, calibrate on all of them
    # faiss threads of a rebuild: the cores belong to the face pipeline, and OpenMP on a busy
    # core spins (k-means ran 15x slower on 2 threads than on 1 beside another busy process).
    build_threads: int = 1

    def flat_limit(self, dim: int) -> int:
        """Vectors below which a `dim`-dimensional store stays exact."""
        return max(1, self.ivf_threshold * 128 // max(dim, 1))


@dataclass(frozen=True)
class Match:
    face_id: int
    distance: float


def _nlist_for(n: int) -> int:
    # sqrt(n) lists scan the same share at recall 0.99 as 4*sqrt(n), and train 10x faster.
    return int(min(65536, max(16, math.sqrt(n))))


def _pq_m(dim: int) -> int:
    """Sub-quantizers of 4 bits: 2 dimensions each up to 256-d, 4 beyond (docs/benchmarks.md)."""
    m = max(1, dim // 2 if dim <= 256 else dim // 4)
    while dim % m:
        m -= 1
    return m


NPROBE_STEPS = (
    1,
    2,
    3,
    4,
    6,
    8,
    12,
    16,
    24,
    32,
    48,
    64,
    96,
    128,
    192,
    256,
    384,
    512,
    768,
    1024,
    1536,
    2048,
    3072,
    4096,
    6144,
    8192,
)


class _Vectors:
    """Raw vectors in dense slots 0..n-1 with their vector and face ids.

    vec id → slot is a sorted array (12 bytes a vector) plus a dict of recent changes that is
    merged into it now and then: a dict of every id would cost ~100 bytes a vector.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.raw = np.zeros((0, dim), np.float32)
        self.vid = np.zeros(0, np.int64)
        self.face = np.zeros(0, np.int64)
        self._keys = np.zeros(0, np.int64)  # sorted vec ids
        self._slots = np.zeros(0, np.int32)  # their slots, unless `_recent` says otherwise
        self._recent: dict[int, int] = {}  # vec id → slot, or -1 once removed

    @property
    def capacity(self) -> int:
        return len(self.raw)

    def nbytes(self) -> int:
        arrays = self.raw.nbytes + self.vid.nbytes + self.face.nbytes
        return arrays + self._keys.nbytes + self._slots.nbytes + _dict_nbytes(self._recent)

    def slots(self, vids: np.ndarray) -> np.ndarray:
        """Slot of each vec id, -1 where absent."""
        out = np.full(len(vids), -1, np.int64)
        if len(self._keys) and len(vids):
            pos = np.minimum(np.searchsorted(self._keys, vids), len(self._keys) - 1)
            hit = self._keys[pos] == vids
            out[hit] = self._slots[pos[hit]]
        if self._recent and len(vids) <= 64:
            get = self._recent.get
            for i, v in enumerate(vids.tolist()):
                s = get(v)
                if s is not None:
                    out[i] = s
        elif self._recent:
            keys = np.fromiter(self._recent.keys(), np.int64, len(self._recent))
            vals = np.fromiter(self._recent.values(), np.int64, len(self._recent))
            order = np.argsort(keys)
            keys, vals = keys[order], vals[order]
            pos = np.minimum(np.searchsorted(keys, vids), len(keys) - 1)
            hit = keys[pos] == vids
            out[hit] = vals[pos[hit]]
        return out

    def append(self, vids: np.ndarray, faces: np.ndarray, x: np.ndarray) -> np.ndarray:
        m = len(vids)
        if self.n + m > self.capacity:
            # Grow by 1/16: the unused tail stays under 7% of the vectors.
            self._reserve(max(self.n + m, self.capacity + max(1024, self.capacity // 16)))
        slots = np.arange(self.n, self.n + m, dtype=np.int64)
        self.raw[self.n : self.n + m] = x
        self.vid[self.n : self.n + m] = vids
        self.face[self.n : self.n + m] = faces
        self.n += m
        if m > max(256, self.n // 16):  # a bulk load: sort once rather than fill the dict
            self.merge()
            return slots
        for v, s in zip(vids.tolist(), slots.tolist(), strict=True):
            self._recent[v] = s
        self._maybe_merge()
        return slots

    def adopt(self, vids: np.ndarray, faces: np.ndarray, x: np.ndarray) -> None:
        """Take these arrays as the whole content (a snapshot just read): no copy."""
        self.raw = np.ascontiguousarray(x, dtype=np.float32)  # (n, dim), as saved
        self.vid = np.ascontiguousarray(vids, dtype=np.int64)
        self.face = np.ascontiguousarray(faces, dtype=np.int64)
        self.n = len(self.raw)
        self.merge()

    def plan_remove(self, rm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which live rows from the end fill the holes `rm` (sorted, unique) leaves: (src, dst)."""
        n2 = self.n - len(rm)
        tail = np.arange(n2, self.n)
        src = tail[~np.isin(tail, rm)]
        return src, rm[rm < n2]

    def remove(self, rm: np.ndarray, src: np.ndarray, dst: np.ndarray) -> None:
        """Drop slots `rm`, moving rows `src` into `dst`; freed rows are zeroed."""
        for v in self.vid[rm].tolist():
            self._recent[v] = -1
        self.raw[dst] = self.raw[src]
        self.vid[dst] = self.vid[src]
        self.face[dst] = self.face[src]
        for v, s in zip(self.vid[dst].tolist(), dst.tolist(), strict=True):
            self._recent[v] = s
        n2 = self.n - len(rm)
        self.raw[n2 : self.n] = 0  # an erased face's vector must not linger in the spare rows
        self.vid[n2 : self.n] = -1
        self.face[n2 : self.n] = -1
        self.n = n2
        if self.capacity > 4096 and self.n < self.capacity // 2:
            self._reserve(self.n + self.n // 16)
        self._maybe_merge()

    def _reserve(self, rows: int) -> None:
        # In place (realloc: no copy, no transient double) unless a view of an array is alive.
        for name in ("raw", "vid", "face"):
            shape = (rows, *getattr(self, name).shape[1:])
            try:
                getattr(self, name).resize(shape, refcheck=True)
            except ValueError:
                old = getattr(self, name)
                out = np.zeros(shape, old.dtype)
                keep = min(rows, len(old))
                out[:keep] = old[:keep]
                setattr(self, name, out)

    def _maybe_merge(self) -> None:
        if len(self._recent) > max(256, self.n // 16):
            self.merge()

    def merge(self) -> None:
        """Fold the recent changes into the sorted arrays."""
        live = self.vid[: self.n]
        order = np.argsort(live, kind="stable")
        self._keys = live[order].copy()
        self._slots = order.astype(np.int32)
        self._recent.clear()


def _dict_nbytes(d: dict[int, int], ints: int = 2) -> int:
    """A dict of int → int: its table plus `ints` int objects (32 bytes) an entry (counts up
    to 256 are shared small ints: 1)."""
    return sys.getsizeof(d) + 32 * ints * len(d)


def _count(per_face: dict[int, int], faces: np.ndarray, step: int) -> None:
    """Add `step` to each FaceId's vector count; a count that reaches 0 leaves."""
    ids, counts = np.unique(faces, return_counts=True)
    for f, c in zip(ids.tolist(), (counts * step).tolist(), strict=True):
        left = per_face.get(f, 0) + c
        if left > 0:
            per_face[f] = left
        else:
            per_face.pop(f, None)


def _block_lists(ivf: Any) -> Any:
    return faiss.downcast_InvertedLists(ivf.invlists)


def _list_ids(lists: Any, lst: int) -> np.ndarray:
    size = lists.list_size(lst)
    if size == 0:
        return np.zeros(0, np.int64)
    return faiss.rev_swig_ptr(lists.get_ids(lst), size).view(np.int64)


def _locate(ivf: Any, slots: np.ndarray, x: np.ndarray | None) -> dict[int, np.ndarray]:
    """The inverted list that holds each slot: its coarse cell when `x` is its vector (checked),
    else (or when the check fails: ties are assigned differently in a batch) a scan of all."""
    lists = _block_lists(ivf)
    found: dict[int, np.ndarray] = {}
    missing = slots
    if x is not None and len(slots):
        guess = ivf.quantizer.assign(x, 1).ravel()
        ok = np.zeros(len(slots), bool)
        for lst in np.unique(guess).tolist():
            mine = slots[guess == lst]
            here = np.isin(mine, _list_ids(lists, lst))
            if here.any():
                found[lst] = mine[here]
            ok[np.flatnonzero(guess == lst)[here]] = True
        missing = slots[~ok]
    if len(missing):
        for lst in range(lists.nlist):
            here = np.isin(missing, _list_ids(lists, lst))
            if here.any():
                found[lst] = np.concatenate([found.get(lst, np.zeros(0, np.int64)), missing[here]])
    return found


def _ivf_remove(ivf: Any, slots: np.ndarray, x: np.ndarray | None) -> None:
    """remove_ids, with the codes of what goes zeroed first and every freed tail zeroed after.

    faiss (1.15.1) packs an add into a partly filled block by OR-ing 4-bit codes into it and
    assumes the free tail is zero, but remove_ids leaves the removed codes there: the next add
    to that list would be corrupted, and an erased face's code would stay in memory."""
    if not len(slots):
        return
    where = _locate(ivf, slots, x)
    lists = _block_lists(ivf)
    packer = lists.packer
    zero = np.zeros(packer.code_size, np.uint8)
    zero_ptr = faiss.swig_ptr(zero)
    sizes = {}
    for lst, mine in where.items():
        ids = _list_ids(lists, lst)
        codes = lists.get_codes(lst)
        for off in np.flatnonzero(np.isin(ids, mine)).tolist():
            packer.pack_1_c(zero_ptr, off, codes)
        sizes[lst] = len(ids)
    ivf.remove_ids(faiss.IDSelectorBatch(slots))
    per_block = lists.n_per_block
    for lst, old in sizes.items():
        new = lists.list_size(lst)
        end = min(old, -(-new // per_block) * per_block)
        if new < end:
            codes = lists.get_codes(lst)
            for off in range(new, end):
                packer.pack_1_c(zero_ptr, off, codes)


def _lower_bound(p: float, m: int, z: float = 1.645) -> float:
    """Wilson score lower bound (one-sided 95%) of a proportion p measured on m samples."""
    if m <= 0:
        return 0.0
    centre = p + z * z / (2 * m)
    spread = z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m))
    return (centre - spread) / (1 + z * z / m)


def _ivf_params(nprobe: int) -> Any:
    params: Any = faiss.SearchParametersIVF()
    params.nprobe = nprobe
    return params


def _new_ivf(dim: int, n: int) -> Any:
    ivf: Any = faiss.index_factory(dim, f"IVF{_nlist_for(n)},PQ{_pq_m(dim)}x4fs", faiss.METRIC_L2)
    ivf.by_residual = False  # as accurate after re-ranking, and one look-up table per query
    return ivf


def _ivf_nbytes(ivf: Any) -> int:
    """Codes (in 32-code blocks), ids, centroids and codebooks of an IVF-PQ fast-scan index."""
    lists = _block_lists(ivf)
    sizes = np.array([lists.list_size(i) for i in range(lists.nlist)], dtype=np.int64)
    blocks = -(-sizes // lists.n_per_block)
    pq_bytes = faiss.vector_to_array(ivf.pq.centroids).nbytes
    return int(blocks.sum() * lists.block_size + sizes.sum() * 8 + ivf.nlist * ivf.d * 4) + pq_bytes


@dataclass
class _Probes:
    """Leave-one-out calibration: stored vectors as queries, their nearest *other* vector."""

    slots: np.ndarray
    x: np.ndarray
    best: np.ndarray  # squared L2 (l2) or -inner product (cosine) of the nearest other
    best_face: np.ndarray

    @classmethod
    def pick(cls, store: _Vectors, m: int, rng: np.random.Generator) -> _Probes:
        slots = np.sort(rng.choice(store.n, size=min(m, store.n), replace=False))
        x = store.raw[slots].copy()
        inf = np.full(len(slots), np.inf, np.float32)
        return cls(slots, x, inf, np.full(len(slots), -1, np.int64))

    def fold(self, xb: np.ndarray, first: int, faces: np.ndarray, metric: str) -> None:
        """Account for rows first.. of the store (a batch read during the rebuild)."""
        k = min(2, len(xb))
        if metric == "cosine":
            sim, pos = faiss.knn(self.x, xb, k, faiss.METRIC_INNER_PRODUCT)
            dist = -sim
        else:
            dist, pos = faiss.knn(self.x, xb, k)
        own = pos + first == self.slots[:, None]
        dist = np.where(own | (pos < 0), np.inf, dist)
        j = np.argmin(dist, axis=1)
        d = dist[np.arange(len(j)), j]
        better = d < self.best
        self.best[better] = d[better]
        self.best_face[better] = faces[pos[better, j[better]]]


class StoreIndex:
    """Thread-safe index of one store's vectors; search answers distinct FaceIds, best first.

    Kinds: "flat" (exact search over the raw vectors) and "ivfpq" (IVF over 4-bit PQ fast-scan
    codes; the top `rerank` candidates are re-scored from the raw vectors). Either way the raw
    float32 vectors live here once, in dense slots; the IVF's ids are those slots.
    """

    def __init__(
        self,
        dim: int,
        metric: str,
        embedder: str,
        policy: IndexPolicy | None = None,
        count_faces: bool = True,
    ) -> None:
        if metric not in ("l2", "cosine"):
            raise ValueError(f"unknown metric {metric!r}")
        self.dim = dim
        self.metric = metric
        self.embedder = embedder
        self.policy = policy or IndexPolicy()
        self._store = _Vectors(dim)
        self._ivf: Any = None  # faiss's SWIG types carry no attributes
        self._params: Any = None
        self._kind = "flat"
        self._nprobe = 0
        self._trained_at = 0
        # Vectors per FaceId, for face_count (np.unique over 1M ids took 0.2 s under the lock);
        # ~70 bytes a FaceId. None: counted when asked (an index whose faces are its vectors).
        self._per_face: dict[int, int] | None = {} if count_faces else None
        self._lock = threading.RLock()
        self._dirty: set[int] | None = None  # slots written while a rebuild runs
        self._rebuilding = threading.Lock()

    # --- state ---------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def nprobe(self) -> int:
        return self._nprobe

    @property
    def nlist(self) -> int | None:
        return int(self._ivf.nlist) if self._ivf is not None else None

    @property
    def rebuilding(self) -> bool:
        """An IVF (re)training or a return to Flat is under way in the background."""
        return self._rebuilding.locked()

    def __len__(self) -> int:
        return self._store.n

    @property
    def face_count(self) -> int:
        with self._lock:
            if self._per_face is not None:
                return len(self._per_face)
            return len(np.unique(self._store.face[: self._store.n]))

    def has_vector(self, vec_id: int) -> bool:
        with self._lock:
            return bool(self._store.slots(np.array([vec_id], np.int64))[0] >= 0)

    def vectors_of(self, face_id: int) -> set[int]:
        with self._lock:
            st = self._store
            return set(st.vid[: st.n][st.face[: st.n] == face_id].tolist())

    def face_of(self, vec_id: int) -> int:
        return int(self.faces_of(np.array([vec_id], np.int64))[0])

    def faces_of(self, vec_ids: np.ndarray) -> np.ndarray:
        """FaceId of each vec id; KeyError if one is not here."""
        with self._lock:
            slots = self._store.slots(np.asarray(vec_ids, np.int64))
            if (slots < 0).any():
                raise KeyError(int(np.asarray(vec_ids)[slots < 0][0]))
            return self._store.face[slots].copy()

    def memory(self) -> dict[str, int]:
        """Bytes held: raw vectors (with spare rows), ids and their lookup, IVF codes, and the
        per-FaceId counts."""
        with self._lock:
            st = self._store
            return {
                "raw": st.raw.nbytes,
                "ids": st.nbytes() - st.raw.nbytes,
                "ivf": _ivf_nbytes(self._ivf) if self._ivf is not None else 0,
                "faces": _dict_nbytes(self._per_face, 1) if self._per_face is not None else 0,
            }

    # --- writes --------------------------------------------------------------------------

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Validate and shape vectors for this index (cosine vectors are L2-normalised)."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise EmbeddingInvalid(f"expected {self.dim}-d embeddings, got shape {list(x.shape)}")
        if not np.isfinite(x).all():
            raise EmbeddingInvalid("embeddings must be finite numbers")
        x = np.ascontiguousarray(x)
        if self.metric == "cosine":
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.maximum(norms, 1e-12)
        return x

    def add(self, vec_ids: list[int], face_ids: list[int], vectors: np.ndarray) -> int:
        """Add vectors; ids already present are skipped, so replaying a feed is harmless."""
        x = self.prepare(vectors)
        vids = np.asarray(vec_ids, dtype=np.int64).reshape(-1)
        faces = np.asarray(face_ids, dtype=np.int64).reshape(-1)
        with self._lock:
            _, first = np.unique(vids, return_index=True)
            first.sort()
            keep = first[self._store.slots(vids[first]) < 0]
            if not len(keep):
                return 0
            xs = np.ascontiguousarray(x[keep])
            slots = self._store.append(vids[keep], faces[keep], xs)
            if self._ivf is not None:
                self._ivf.add_with_ids(xs, slots)
            if self._dirty is not None:
                self._dirty.update(slots.tolist())
            if self._per_face is not None:
                _count(self._per_face, faces[keep], 1)
            return len(keep)

    def remove_face(self, face_id: int) -> int:
        """Remove every vector of a FaceId; returns how many went."""
        return self.remove_faces([face_id])

    def remove_faces(self, face_ids: list[int] | set[int]) -> int:
        """Remove every vector of these FaceIds: their raw vectors and codes leave memory."""
        fids = np.fromiter(face_ids, dtype=np.int64)
        with self._lock:
            st = self._store
            if not st.n or not len(fids):
                return 0
            rm = np.flatnonzero(np.isin(st.face[: st.n], fids))
            if not len(rm):
                return 0
            if self._per_face is not None:
                _count(self._per_face, st.face[rm], -1)
            src, dst = st.plan_remove(rm)
            if self._ivf is not None:
                old = np.concatenate([rm, src])
                _ivf_remove(self._ivf, old, st.raw[old])
            st.remove(rm, src, dst)
            if self._ivf is not None and len(dst):
                self._ivf.add_with_ids(np.ascontiguousarray(st.raw[dst]), dst)
            if self._dirty is not None:
                self._dirty.update(rm.tolist(), src.tolist())
            return len(rm)

    # --- reads ---------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> list[list[Match]]:
        """Top-k distinct FaceIds per query, nearest first."""
        return self.search_prepared(self.prepare(queries), k)

    def search_prepared(self, q: np.ndarray, k: int) -> list[list[Match]]:
        """`search` for queries `prepare` already checked: a group's many stores share them."""
        with self._lock:
            n = self._store.n
            if n == 0 or k <= 0:
                return [[] for _ in range(len(q))]
            fetch = min(n, max(k * 4, k + 8))
            slots, dist = self._candidates(q, fetch)
            results = []
            for row in range(len(q)):
                matches = self._distinct(dist[row], slots[row], k)
                if len(matches) < k and fetch < n:  # one person holds many of the nearest
                    s2, d2 = self._candidates(q[row : row + 1], min(n, fetch * 16))
                    matches = self._distinct(d2[0], s2[0], k)
                results.append(matches)
            return results

    def _candidates(self, q: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest slots per query with exact distances (squared L2, or 1 - cosine), sorted."""
        st = self._store
        if self._ivf is None:
            if self.metric == "cosine":
                sim, slots = faiss.knn(q, st.raw[: st.n], fetch, faiss.METRIC_INNER_PRODUCT)
                return slots, 1.0 - sim
            d2, slots = faiss.knn(q, st.raw[: st.n], fetch)
            return slots, d2
        _, cand = self._ivf.search(q, max(fetch, self.policy.rerank), params=self._params)
        return self._rerank(q, cand, fetch)

    def _rerank(self, q: np.ndarray, cand: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        st = self._store
        slots = np.full((len(q), fetch), -1, np.int64)
        dist = np.full((len(q), fetch), np.inf, np.float32)
        for row in range(len(q)):
            c = cand[row][cand[row] >= 0]
            v = st.raw[c]
            if self.metric == "cosine":
                d = 1.0 - v @ q[row]
            else:
                diff = v - q[row]
                d = np.einsum("ij,ij->i", diff, diff)
            order = np.argsort(d, kind="stable")[:fetch]
            slots[row, : len(order)] = c[order]
            dist[row, : len(order)] = d[order]
        return slots, dist

    def _distinct(self, distances: np.ndarray, slots: np.ndarray, k: int) -> list[Match]:
        faces = self._store.face
        seen: set[int] = set()
        out = []
        for d, s in zip(distances.tolist(), slots.tolist(), strict=True):
            if s < 0:
                continue
            face = int(faces[s])
            if face in seen:
                continue
            seen.add(face)
            out.append(Match(face_id=face, distance=self._distance(d)))
            if len(out) == k:
                break
        return out

    def _distance(self, raw: float) -> float:
        if self.metric == "cosine":
            return max(raw, 0.0)
        return math.sqrt(max(raw, 0.0))

    # --- IVF -----------------------------------------------------------------------------

    def needs_rebuild(self) -> bool:
        n = len(self)
        limit = self.policy.flat_limit(self.dim)
        if n < limit:
            return self._kind == "ivfpq" and n < limit // 2
        if self._trained_at == 0:
            return True
        return n >= self._trained_at * self.policy.retrain_growth

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored (id, vector): a copy."""
        with self._lock:
            st = self._store
            return st.vid[: st.n].copy(), st.raw[: st.n].copy()

    def all_entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored (vec id, FaceId, vector): a copy."""
        with self._lock:
            st = self._store
            return st.vid[: st.n].copy(), st.face[: st.n].copy(), st.raw[: st.n].copy()

    def rebuild(self) -> None:
        """Re-shape the index for its size: IVF-PQ (trained, nprobe calibrated) or Flat.

        Runs without the lock while training; rows written meanwhile are re-applied to the
        new index before it is swapped in, so nothing is lost and searches never wait long.
        """
        if not self._rebuilding.acquire(blocking=False):
            return
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.policy.build_threads)  # this thread's setting only
        try:
            t0 = time.perf_counter()
            with self._lock:
                n = self._store.n
                self._dirty = set()
            built = None
            if n >= self.policy.flat_limit(self.dim):
                built = self._build_ivf(n)
            with self._lock:
                if built is None:
                    self._ivf, self._params, self._kind, self._nprobe = None, None, "flat", 0
                else:
                    ivf, nprobe = built
                    self._replay(ivf)
                    self._ivf, self._kind, self._nprobe = ivf, "ivfpq", nprobe
                    self._params = _ivf_params(nprobe)
                self._trained_at = n
            log.info(
                "rebuilt index: %s, %d vectors, nprobe=%d, %.1fs",
                self._kind,
                n,
                self._nprobe,
                time.perf_counter() - t0,
            )
        finally:
            with self._lock:
                self._dirty = None
            faiss.omp_set_num_threads(threads)
            self._rebuilding.release()

    def _replay(self, ivf: Any) -> None:
        """Bring a freshly built IVF up to date with the rows written since it read them."""
        st = self._store
        dirty = np.fromiter(self._dirty or (), dtype=np.int64)
        if not len(dirty):
            return
        _ivf_remove(ivf, np.sort(dirty), None)  # stale contents: find them by scanning
        live = np.sort(dirty[dirty < st.n])
        if len(live):
            ivf.add_with_ids(np.ascontiguousarray(st.raw[live]), live)

    def _build_ivf(self, n: int) -> tuple[Any, int] | None:
        rng = np.random.default_rng(0)
        ivf = _new_ivf(self.dim, n)
        with self._lock:
            n = min(n, self._store.n)
            sample = min(n, ivf.nlist * self.policy.max_train_points_per_list)
            train = self._store.raw[np.sort(rng.choice(n, size=sample, replace=False))]
            probes = _Probes.pick(self._store, self.policy.calibration_queries, rng)
        ivf.train(train)
        del train
        batch = max(1024, _BUILD_BATCH_BYTES // (4 * self.dim))
        for first in range(0, n, batch):
            with self._lock:
                last = min(first + batch, n, self._store.n)
                if last <= first:
                    break
                xb = self._store.raw[first:last].copy()
                faces = self._store.face[first:last].copy()
            ivf.add_with_ids(xb, np.arange(first, last, dtype=np.int64))
            probes.fold(xb, first, faces, self.metric)
        nprobe = self._calibrate_nprobe(ivf, probes)
        return None if nprobe is None else (ivf, nprobe)

    def match_threshold(self) -> float | None:
        """The distance under which this store matches: the policy's, else its embedder's."""
        if self.policy.match_threshold is not None:
            return self.policy.match_threshold
        try:
            return float(embedder_info(self.embedder).threshold)
        except Exception:  # an embedder the registry does not know (tests, benches)
            return None

    def _calibrate_nprobe(self, ivf: Any, probes: _Probes) -> int | None:
        """Smallest nprobe whose match recall@1 over leave-one-out probes reaches the target.

        A probe is a stored vector; the right answer the FaceId of its nearest *other* vector,
        like a new photo of someone enrolled (noisy copies of stored vectors overstate recall
        badly: they land in their own list). Only probes whose answer lies within the match
        threshold count: for the others the store answers "no match" whatever IVF finds, as
        re-ranked distances are exact. Without a threshold (or too few such probes) every
        probe counts. None when IVF would read more than `max_scan_share` of Flat's bytes.
        """
        answer = probes.best_face >= 0
        threshold = self.match_threshold()
        counted, what = answer, "recall@1"
        if threshold is not None:
            within = answer & (self._distance_of(probes.best) <= threshold)
            if within.sum() >= min(self.policy.min_match_probes, answer.sum()):
                counted, what = within, "match recall@1"
        n, nlist = self._store.n, ivf.nlist
        code_bytes = _block_lists(ivf).packer.code_size
        m = int(counted.sum())
        for nprobe in (p for p in NPROBE_STEPS if p <= nlist):
            read = nlist * self.dim * 4 + n * nprobe / nlist * (code_bytes + 8)
            if read > self.policy.max_scan_share * n * self.dim * 4:
                break
            recall = self._probe_recall(ivf, nprobe, probes, counted)
            if _lower_bound(recall, m) < self.policy.target_recall:
                continue
            log.info(
                "nprobe=%d gives %s %.4f on %d probes (nlist=%d, reads %.1f%% of Flat)",
                nprobe,
                what,
                recall,
                m,
                nlist,
                100 * read / (n * self.dim * 4),
            )
            return nprobe
        log.info(
            "IVF needs over %.0f%% of a Flat scan for recall@1 %.2f; staying exact",
            100 * self.policy.max_scan_share,
            self.policy.target_recall,
        )
        return None

    def _distance_of(self, raw: np.ndarray) -> np.ndarray:
        """Probe distances (squared L2, or -inner product) as the store reports them."""
        if self.metric == "cosine":
            return 1.0 + raw
        return np.sqrt(np.maximum(raw, 0.0))

    def _probe_recall(self, ivf: Any, nprobe: int, probes: _Probes, counted: np.ndarray) -> float:
        """Share of counted probes whose nearest other vector (IVF + re-rank) has the right face."""
        params = _ivf_params(nprobe)
        x, want, own = probes.x[counted], probes.best_face[counted], probes.slots[counted]
        _, cand = ivf.search(x, self.policy.rerank + 1, params=params)
        cand[cand == own[:, None]] = -1  # leave the probe itself out
        right = 0
        for s in range(0, len(cand), 256):
            with self._lock:  # rows may move meanwhile; a rare stale one does not matter
                slots, _ = self._rerank(x[s : s + 256], cand[s : s + 256], 1)
                got = np.where(slots[:, 0] >= 0, self._store.face[slots[:, 0]], -1)
            right += int((got == want[s : s + 256]).sum())
        return right / max(1, len(cand))

    # --- snapshots -----------------------------------------------------------------------

    def save(self, directory: Path, meta: dict[str, Any]) -> None:
        """Write vectors + ids (+ IVF) + `meta` atomically (rename), so a crash leaves the old."""
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".tmp-{os.getpid()}-{threading.get_ident()}"
        tmp.mkdir(exist_ok=True)
        names = ["vectors.npy", "vec_ids.npy", "face_ids.npy"]
        with self._lock:
            st = self._store
            np.save(tmp / "vectors.npy", st.raw[: st.n])
            np.save(tmp / "vec_ids.npy", st.vid[: st.n])
            np.save(tmp / "face_ids.npy", st.face[: st.n])
            if self._ivf is not None:
                faiss.write_index(self._ivf, str(tmp / "ivf.faiss"))
                names.append("ivf.faiss")
            info = {
                **meta,
                "format": SNAPSHOT_FORMAT,
                "embedder": self.embedder,
                "dim": self.dim,
                "metric": self.metric,
                "kind": self._kind,
                "nprobe": self._nprobe,
                "trained_at": self._trained_at,
                "count": st.n,
            }
        (tmp / "meta.json").write_text(json.dumps(info))
        for name in names:
            os.replace(tmp / name, directory / name)
        os.replace(tmp / "meta.json", directory / "meta.json")  # last: it marks a whole set
        if "ivf.faiss" not in names:
            (directory / "ivf.faiss").unlink(missing_ok=True)
        (directory / "index.faiss").unlink(missing_ok=True)  # the format before this one
        tmp.rmdir()

    @classmethod
    def load(
        cls,
        directory: Path,
        embedder: str,
        dim: int,
        metric: str,
        policy: IndexPolicy | None = None,
        count_faces: bool = True,
    ) -> tuple[StoreIndex, dict[str, Any]] | None:
        """Load a snapshot if one exists and was made by this embedder; else None."""
        meta_path = directory / "meta.json"
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if (meta.get("embedder"), meta.get("dim"), meta.get("metric")) != (
                embedder,
                dim,
                metric,
            ):
                log.warning("snapshot in %s is for another embedder; ignoring it", directory)
                return None
            if meta.get("format") != SNAPSHOT_FORMAT:
                log.warning("snapshot in %s is of an older format; rebuilding", directory)
                return None
            index = cls(dim, metric, embedder, policy, count_faces)
            x = np.load(directory / "vectors.npy")
            vids = np.load(directory / "vec_ids.npy")
            faces = np.load(directory / "face_ids.npy")
            ivf = (
                faiss.read_index(str(directory / "ivf.faiss")) if meta["kind"] == "ivfpq" else None
            )
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            log.warning("snapshot in %s is unreadable (%s); rebuilding from Redis", directory, exc)
            return None
        n = int(meta.get("count", -1))
        if not (len(x) == len(vids) == len(faces) == n) or (ivf is not None and ivf.ntotal != n):
            log.warning("snapshot in %s is inconsistent; rebuilding from Redis", directory)
            return None
        index._store.adopt(vids, faces, x)
        if index._per_face is not None:
            _count(index._per_face, index._store.face, 1)
        if ivf is not None:
            index._ivf, index._kind = ivf, "ivfpq"
            index._nprobe = int(meta["nprobe"])
            index._params = _ivf_params(index._nprobe)
        index._trained_at = int(meta.get("trained_at", 0))
        return index, meta
