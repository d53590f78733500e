"""One index over every store a node hosts, for the cross-store search of a large group.

Searching each hosted store's own index in turn costs a fixed ~7-15 µs per store besides
the vectors scanned (bench/group_search), so a group of hundreds of small stores would pay
for its number of stores. This index holds the same vectors once more, tagged with their
store, so one search costs what the group's faces cost (and turns IVF when they are many).
It is kept in step by the stores' replicas: every add, removal and reload goes through it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shard_node.index import IndexPolicy, Match, StoreIndex


class GroupIndex:
    """Every hosted store's vectors in one StoreIndex, each vector tagged (store, FaceId)."""

    def __init__(self, dim: int, metric: str, embedder: str, policy: IndexPolicy) -> None:
        # Inside, a vector is its own "face": the owner map says whose it is.
        self.index = StoreIndex(dim, metric, embedder, policy, count_faces=False)
        self._owner: dict[int, tuple[str, int]] = {}
        self._store_vecs: dict[str, set[int]] = {}

    def __len__(self) -> int:
        return len(self._owner)

    def add(self, store_id: str, vec_ids: list[int], face_ids: list[int], vectors: Any) -> None:
        self.index.add(vec_ids, vec_ids, vectors)
        vecs = self._store_vecs.setdefault(store_id, set())
        for v, f in zip(vec_ids, face_ids, strict=True):
            self._owner[v] = (store_id, f)
            vecs.add(v)

    def remove(self, store_id: str, vec_ids: set[int]) -> None:
        self.index.remove_faces(vec_ids)  # one pass over the index, however many go
        for v in vec_ids:
            self._owner.pop(v, None)
        self._store_vecs.get(store_id, set()).difference_update(vec_ids)

    def replace_store(self, store_id: str, store_index: StoreIndex) -> None:
        """Take a store's index as it now is (after a load or a rebuild from Redis)."""
        self.drop_store(store_id)
        ids, faces, vectors = store_index.all_entries()
        if len(ids):
            self.add(store_id, ids.tolist(), faces.tolist(), vectors)

    def drop_store(self, store_id: str) -> None:
        self.remove(store_id, set(self._store_vecs.pop(store_id, set())))

    def search(
        self, queries: np.ndarray, k: int, stores: set[str]
    ) -> list[list[tuple[Match, str]] | None]:
        """Per query, the k nearest FaceIds in `stores`, nearest first, tagged with the store.

        Vectors of other stores are filtered out after the search; a row where that leaves
        fewer than k answers while more vectors exist is None: the caller searches those
        stores one by one instead."""
        n = len(self)
        fetch = min(n, k * 8 + 16)
        found = self.index.search_prepared(queries, fetch)
        rows: list[list[tuple[Match, str]] | None] = []
        for row in found:
            best: dict[int, tuple[Match, str]] = {}
            for m in row:  # m.face_id is a vector id here
                store, face = self._owner.get(m.face_id, ("", 0))
                if store in stores and face not in best:
                    best[face] = (Match(face_id=face, distance=m.distance), store)
                    if len(best) == k:
                        break
            complete = len(best) == k or len(row) == n
            rows.append(list(best.values()) if complete else None)
        return rows

    def needs_rebuild(self) -> bool:
        return self.index.needs_rebuild()
