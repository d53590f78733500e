"""One store's faiss index: several vectors per FaceId, exact while small, IVF when large."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from storeface.errors import EmbeddingInvalid

log = logging.getLogger("shard_node.index")


@dataclass(frozen=True)
class IndexPolicy:
    """When to leave exact search, and how hard IVF must try; see docs/benchmarks.md."""

    # Vectors at which Flat gives way to IVF: below ~100k (128-d) IVF at recall 0.99 saves
    # under a millisecond; for 512-d embeddings ~25k is the point (docs/benchmarks.md).
    ivf_threshold: int = 100_000
    target_recall: float = 0.99  # recall@1 against exact that nprobe must keep
    retrain_growth: float = 2.0  # retrain IVF once the store has grown by this factor
    calibration_queries: int = 300
    max_train_points_per_list: int = 64
    max_scan_share: float = 0.5  # IVF must scan at most this share of what Flat scans


@dataclass(frozen=True)
class Match:
    face_id: int
    distance: float


def _flat(dim: int, metric: str) -> faiss.Index:
    inner = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
    return faiss.IndexIDMap2(inner)


def _faiss_metric(metric: str) -> int:
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def _nlist_for(n: int) -> int:
    # sqrt(n) lists scan the same share at recall 0.99 as 4*sqrt(n), and train 10x faster.
    return int(min(65536, max(16, math.sqrt(n))))


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
)


def _other(found: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Per row of a k=2 search, the first id that is not the query's own."""
    return np.where(found[:, 0] == own, found[:, 1], found[:, 0])


class StoreIndex:
    """Thread-safe index of one store's vectors; search answers distinct FaceIds, best first."""

    def __init__(
        self, dim: int, metric: str, embedder: str, policy: IndexPolicy | None = None
    ) -> None:
        if metric not in ("l2", "cosine"):
            raise ValueError(f"unknown metric {metric!r}")
        self.dim = dim
        self.metric = metric
        self.embedder = embedder
        self.policy = policy or IndexPolicy()
        self._index: Any = _flat(dim, metric)  # faiss's SWIG types carry no attributes
        self._kind = "flat"
        self._nprobe = 0
        self._trained_at = 0
        self._vec_face: dict[int, int] = {}
        self._face_vecs: dict[int, set[int]] = {}
        self._lock = threading.RLock()
        self._pending: list[tuple[str, Any]] | None = None  # ops seen during a rebuild
        self._rebuilding = threading.Lock()

    # --- state ---------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def nprobe(self) -> int:
        return self._nprobe

    @property
    def rebuilding(self) -> bool:
        """An IVF (re)training or a return to Flat is under way in the background."""
        return self._rebuilding.locked()

    def __len__(self) -> int:
        return len(self._vec_face)

    @property
    def face_count(self) -> int:
        return len(self._face_vecs)

    def has_vector(self, vec_id: int) -> bool:
        return vec_id in self._vec_face

    def vectors_of(self, face_id: int) -> set[int]:
        return set(self._face_vecs.get(face_id, ()))

    def face_of(self, vec_id: int) -> int:
        return self._vec_face[vec_id]

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
        with self._lock:
            keep = [i for i, v in enumerate(vec_ids) if v not in self._vec_face]
            if not keep:
                return 0
            ids = np.asarray([vec_ids[i] for i in keep], dtype=np.int64)
            xs = x[keep]
            self._index.add_with_ids(xs, ids)
            for i in keep:
                self._vec_face[vec_ids[i]] = face_ids[i]
                self._face_vecs.setdefault(face_ids[i], set()).add(vec_ids[i])
            if self._pending is not None:
                self._pending.append(("add", (ids, xs)))
            return len(keep)

    def remove_face(self, face_id: int) -> int:
        """Remove every vector of a FaceId; returns how many went."""
        return self.remove_faces([face_id])

    def remove_faces(self, face_ids: list[int] | set[int]) -> int:
        """Remove every vector of these FaceIds in one pass over the index."""
        with self._lock:
            vecs: set[int] = set()
            for face_id in face_ids:
                vecs |= self._face_vecs.pop(face_id, set())
            if not vecs:
                return 0
            for v in vecs:
                self._vec_face.pop(v, None)
            ids = np.fromiter(vecs, dtype=np.int64)
            self._index.remove_ids(faiss.IDSelectorBatch(ids))
            if self._pending is not None:
                self._pending.append(("remove", ids))
            return len(vecs)

    # --- reads ---------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> list[list[Match]]:
        """Top-k distinct FaceIds per query, nearest first."""
        return self.search_prepared(self.prepare(queries), k)

    def search_prepared(self, q: np.ndarray, k: int) -> list[list[Match]]:
        """`search` for queries `prepare` already checked: a group's many stores share them."""
        with self._lock:
            n = self._index.ntotal
            if n == 0 or k <= 0:
                return [[] for _ in range(len(q))]
            results = []
            fetch = min(n, max(k * 4, k + 8))
            distances, ids = self._index.search(q, fetch)
            for row in range(len(q)):
                matches = self._distinct(distances[row], ids[row], k)
                if len(matches) < k and fetch < n:  # one person holds many of the nearest
                    d2, i2 = self._index.search(q[row : row + 1], min(n, fetch * 16))
                    matches = self._distinct(d2[0], i2[0], k)
                results.append(matches)
            return results

    def _distinct(self, distances: np.ndarray, ids: np.ndarray, k: int) -> list[Match]:
        seen: set[int] = set()
        out = []
        for d, vid in zip(distances, ids, strict=True):
            if vid < 0:
                continue
            face = self._vec_face.get(int(vid))
            if face is None or face in seen:
                continue
            seen.add(face)
            out.append(Match(face_id=face, distance=self._distance(float(d))))
            if len(out) == k:
                break
        return out

    def _distance(self, raw: float) -> float:
        if self.metric == "cosine":
            return 1.0 - raw
        return math.sqrt(max(raw, 0.0))

    # --- IVF -----------------------------------------------------------------------------

    def needs_rebuild(self) -> bool:
        n = len(self)
        if n < self.policy.ivf_threshold:
            return self._kind == "ivf" and n < self.policy.ivf_threshold // 2
        if self._trained_at == 0:
            return True
        return n >= self._trained_at * self.policy.retrain_growth

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored (id, vector): a copy, read straight out of faiss's own arrays."""
        with self._lock:
            index = self._index
            if index.ntotal == 0:
                return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
            if self._kind == "flat":
                ids = faiss.vector_to_array(index.id_map).astype(np.int64)
                flat: Any = faiss.downcast_index(index.index)
                xb = faiss.vector_to_array(flat.codes).view(np.float32)
                return ids, xb.reshape(-1, self.dim).copy()
            invlists = index.invlists
            id_parts, vec_parts = [], []
            for lst in range(invlists.nlist):
                size = invlists.list_size(lst)
                if size == 0:
                    continue
                id_parts.append(
                    np.array(faiss.rev_swig_ptr(invlists.get_ids(lst), size), dtype=np.int64)
                )
                codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * self.dim * 4)
                vec_parts.append(
                    np.frombuffer(bytes(codes), dtype=np.float32).reshape(size, self.dim)
                )
            return np.concatenate(id_parts), np.vstack(vec_parts)

    def rebuild(self) -> None:
        """Re-shape the index for its size: IVF (trained, nprobe calibrated) or back to Flat.

        Runs without the lock while training; writes made meanwhile are replayed on the new
        index before it is swapped in, so nothing is lost and searches never wait long.
        """
        if not self._rebuilding.acquire(blocking=False):
            return
        try:
            with self._lock:
                self._pending = []
                ids, vecs = self.all_vectors()
            t0 = time.perf_counter()
            n = len(ids)
            if n < self.policy.ivf_threshold:
                new: Any = _flat(self.dim, self.metric)
                kind, nprobe = "flat", 0
                if n:
                    new.add_with_ids(vecs, ids)
            else:
                new, nprobe = self._build_ivf(ids, vecs)
                kind = "ivf"
                if new is None:  # IVF cannot beat exact search on these vectors
                    new, kind, nprobe = _flat(self.dim, self.metric), "flat", 0
                    new.add_with_ids(vecs, ids)
            with self._lock:
                for op, payload in self._pending or []:
                    if op == "add":
                        new.add_with_ids(payload[1], payload[0])
                    else:
                        new.remove_ids(faiss.IDSelectorBatch(payload))
                self._index, self._kind, self._nprobe = new, kind, nprobe
                self._trained_at = n
                self._pending = None
            log.info(
                "rebuilt index: %s, %d vectors, nprobe=%d, %.1fs",
                kind,
                n,
                nprobe,
                time.perf_counter() - t0,
            )
        finally:
            with self._lock:
                self._pending = None
            self._rebuilding.release()

    def _build_ivf(self, ids: np.ndarray, vecs: np.ndarray) -> tuple[Any | None, int]:
        n = len(ids)
        nlist = _nlist_for(n)
        metric = _faiss_metric(self.metric)
        quantizer = (
            faiss.IndexFlatIP(self.dim) if self.metric == "cosine" else faiss.IndexFlatL2(self.dim)
        )
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, metric)
        rng = np.random.default_rng(0)
        sample = min(n, nlist * self.policy.max_train_points_per_list)
        ivf.train(vecs[rng.choice(n, size=sample, replace=False)])
        ivf.add_with_ids(vecs, ids)
        nprobe = self._calibrate_nprobe(ivf, ids, vecs, rng)
        if nprobe is None:
            return None, 0
        ivf.nprobe = nprobe
        return ivf, nprobe

    def _calibrate_nprobe(
        self, ivf: Any, ids: np.ndarray, vecs: np.ndarray, rng: np.random.Generator
    ) -> int | None:
        """Smallest nprobe whose recall@1 against exact search reaches the target.

        Leave-one-out: a stored vector is the query and its nearest *other* vector the
        answer, like a new photo of someone already enrolled. (Noisy copies of stored
        vectors overstate recall badly: they land in their own list.) None when IVF would
        scan more than `max_scan_share` of what exact search scans: the store stays Flat.
        """
        n = len(vecs)
        m = min(n, self.policy.calibration_queries)
        picked = rng.choice(n, size=m, replace=False)
        queries, own = vecs[picked], ids[picked]
        exact = (
            faiss.IndexFlatIP(self.dim) if self.metric == "cosine" else faiss.IndexFlatL2(self.dim)
        )
        exact.add(vecs)
        _, pos = exact.search(queries, 2)
        truth = _other(ids[pos], own)
        nlist = ivf.nlist
        for nprobe in (p for p in NPROBE_STEPS if p <= nlist):
            scanned = (nlist + n * nprobe / nlist) / n  # quantizer + lists, relative to Flat
            if scanned > self.policy.max_scan_share:
                break
            ivf.nprobe = nprobe
            _, got = ivf.search(queries, 2)
            recall = float((_other(got, own) == truth).mean())
            if recall >= self.policy.target_recall:
                log.info(
                    "nprobe=%d gives recall@1=%.3f (nlist=%d, scans %.0f%% of Flat)",
                    nprobe,
                    recall,
                    nlist,
                    100 * scanned,
                )
                return nprobe
        log.info(
            "IVF needs over %.0f%% of a Flat scan for recall@1 %.2f; staying exact",
            100 * self.policy.max_scan_share,
            self.policy.target_recall,
        )
        return None

    # --- snapshots -----------------------------------------------------------------------

    def save(self, directory: Path, meta: dict[str, Any]) -> None:
        """Write index + id maps + `meta` atomically (rename), so a crash leaves the old one."""
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".tmp-{os.getpid()}-{threading.get_ident()}"
        tmp.mkdir(exist_ok=True)
        with self._lock:
            faiss.write_index(self._index, str(tmp / "index.faiss"))
            vec_ids = np.fromiter(self._vec_face.keys(), dtype=np.int64)
            face_ids = np.fromiter(self._vec_face.values(), dtype=np.int64)
            info = {
                **meta,
                "embedder": self.embedder,
                "dim": self.dim,
                "metric": self.metric,
                "kind": self._kind,
                "nprobe": self._nprobe,
                "trained_at": self._trained_at,
                "count": len(vec_ids),
            }
        np.save(tmp / "vec_ids.npy", vec_ids)
        np.save(tmp / "face_ids.npy", face_ids)
        (tmp / "meta.json").write_text(json.dumps(info))
        for name in ("index.faiss", "vec_ids.npy", "face_ids.npy"):
            os.replace(tmp / name, directory / name)
        os.replace(tmp / "meta.json", directory / "meta.json")  # last: it marks a whole set
        tmp.rmdir()

    @classmethod
    def load(
        cls,
        directory: Path,
        embedder: str,
        dim: int,
        metric: str,
        policy: IndexPolicy | None = None,
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
            index = cls(dim, metric, embedder, policy)
            raw = faiss.read_index(str(directory / "index.faiss"))
            vec_ids = np.load(directory / "vec_ids.npy")
            face_ids = np.load(directory / "face_ids.npy")
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("snapshot in %s is unreadable (%s); rebuilding from Redis", directory, exc)
            return None
        if raw.ntotal != len(vec_ids):
            log.warning("snapshot in %s is inconsistent; rebuilding from Redis", directory)
            return None
        index._index = raw
        index._kind = meta.get("kind", "flat")
        index._nprobe = int(meta.get("nprobe", 0))
        index._trained_at = int(meta.get("trained_at", 0))
        for v, f in zip(vec_ids.tolist(), face_ids.tolist(), strict=True):
            index._vec_face[v] = f
            index._face_vecs.setdefault(f, set()).add(v)
        return index, meta
