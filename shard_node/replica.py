"""Keeps one store's index in this process equal to Redis: load, apply its feed, snapshot."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from shard_node.faces.base import EmbedderInfo
from shard_node.group_index import GroupIndex
from shard_node.index import IndexPolicy, StoreIndex
from storeface.facedb import FaceDB, FeedEvent

log = logging.getLogger("shard_node.replica")


class FeedGap(Exception):
    """The feed skipped a sequence number: this replica missed writes and must rebuild."""


class Replica:
    """One store's index in this process, converging on the store's Redis feed."""

    def __init__(
        self,
        store_id: str,
        info: EmbedderInfo,
        db: FaceDB,
        snapshot_dir: Path | None = None,
        policy: IndexPolicy | None = None,
    ) -> None:
        self.store_id = store_id
        self.info = info
        self.db = db
        self.policy = policy or IndexPolicy()
        self.snapshot_dir = snapshot_dir / store_id if snapshot_dir else None
        self.index = StoreIndex(info.dim, info.metric, info.name, self.policy)
        self.position = "0-0"  # last feed entry applied
        self.gen = 0  # its sequence number
        self.loaded = False
        self.load_seconds = 0.0
        self.loaded_from = ""
        self.released = False
        self._apply_lock = asyncio.Lock()
        self._saved_gen = -1
        self._rebuild_task: asyncio.Task[None] | None = None
        self._resync: asyncio.Task[None] | None = None
        # The node's index over all its stores, when it keeps one: every change goes there too.
        self.group: GroupIndex | None = None

    # --- loading -------------------------------------------------------------------------

    async def load(self) -> None:
        """Fill the index: from the local snapshot plus the feed since, else from Redis."""
        t0 = time.perf_counter()
        snap = None
        if self.snapshot_dir is not None:
            snap = await asyncio.to_thread(
                StoreIndex.load,
                self.snapshot_dir,
                self.info.name,
                self.info.dim,
                self.info.metric,
                self.policy,
            )
        async with self._apply_lock:
            if snap is not None:
                self._replace(snap[0])
                meta = snap[1]
                self.position, self.gen = meta["position"], int(meta["gen"])
                self._saved_gen = self.gen
                try:
                    await self._catch_up_locked()
                    self.loaded_from = "snapshot"
                except FeedGap:
                    log.warning("%s: snapshot is older than the feed; rebuilding", self.store_id)
                    snap = None
            if snap is None:
                await self._rebuild_from_redis_locked()
                self.loaded_from = "redis"
        self.loaded = True
        self.load_seconds = time.perf_counter() - t0
        log.info(
            "%s: loaded %d vectors (%d faces) from %s in %.2fs",
            self.store_id,
            len(self.index),
            self.index.face_count,
            self.loaded_from,
            self.load_seconds,
        )
        self._maybe_reshape()

    async def _rebuild_from_redis_locked(self) -> None:
        position, gen = await self.db.feed_head(self.store_id)
        index = StoreIndex(self.info.dim, self.info.metric, self.info.name, self.policy)
        async for vids, fids, embs in self.db.scan_vectors(self.store_id):
            await asyncio.to_thread(index.add, vids, fids, embs)
        self._replace(index)
        self.position, self.gen = position, gen
        # Writes between feed_head and the scan are in both; replaying them is harmless.
        await self._catch_up_locked()
        # A large store answers at once with exact search; IVF is trained behind it.
        self._maybe_reshape()

    # --- the feed ------------------------------------------------------------------------

    async def catch_up(self) -> None:
        """Apply everything the feed holds now (read-your-writes across replicas)."""
        async with self._apply_lock:
            try:
                await self._catch_up_locked()
            except FeedGap:
                await self._rebuild_from_redis_locked()

    async def _catch_up_locked(self) -> None:
        while True:
            events = await self.db.read_feed(self.store_id, self.position, count=2000)
            if not events:
                return
            await self._apply_locked(events)

    async def _apply_locked(self, events: list[FeedEvent]) -> None:
        adds: tuple[list[int], list[int], list[np.ndarray]] = ([], [], [])
        for ev in events:
            if ev.gen <= self.gen:
                continue  # seen already
            if ev.gen != self.gen + 1:
                raise FeedGap(f"expected gen {self.gen + 1}, feed has {ev.gen}")
            if ev.op == "add":
                adds[0].append(ev.vec_id)
                adds[1].append(ev.face_id)
                adds[2].append(np.frombuffer(ev.embedding, dtype=np.float32))
            elif ev.op == "remove":
                self._flush_adds(adds)
                adds = ([], [], [])
                self.remove_face(ev.face_id)
            self.gen, self.position = ev.gen, ev.id
        self._flush_adds(adds)
        self._maybe_reshape()

    def _flush_adds(self, adds: tuple[list[int], list[int], list[np.ndarray]]) -> None:
        if adds[0]:
            self._add(adds[0], adds[1], np.vstack(adds[2]))

    @property
    def busy(self) -> bool:
        """Rebuilding or saving a snapshot: the feed follower leaves this store for now."""
        return self._apply_lock.locked()

    async def apply(self, events: list[FeedEvent]) -> None:
        """Apply entries the node's feed follower read; a gap means a rebuild from Redis,
        which runs as a task of its own so the follower goes on with the other stores."""
        async with self._apply_lock:
            try:
                await self._apply_locked(events)
                return
            except FeedGap as gap:
                log.warning("%s: %s; rebuilding from Redis", self.store_id, gap)
        if self._resync is None or self._resync.done():
            self._resync = asyncio.get_running_loop().create_task(self._rebuild())

    async def _rebuild(self) -> None:
        async with self._apply_lock:
            await self._rebuild_from_redis_locked()

    # --- local writes --------------------------------------------------------------------

    def apply_local_add(self, gen: int, vec_id: int, face_id: int, embedding: np.ndarray) -> None:
        """Make our own acknowledged write (feed sequence `gen`) searchable here at once; the
        feed replays it. If the feed got here first it may also have applied an erase since:
        then adding it again would bring an erased face back, so nothing is done."""
        if gen <= self.gen:
            return
        self._add([vec_id], [face_id], embedding)
        self._maybe_reshape()

    def remove_face(self, face_id: int) -> None:
        """Drop every vector of a FaceId from this store's index (and the group's)."""
        vecs = self.index.vectors_of(face_id)
        self.index.remove_face(face_id)
        if self.group is not None and vecs:
            self.group.remove(self.store_id, vecs)

    def _add(self, vec_ids: list[int], face_ids: list[int], vectors: np.ndarray) -> None:
        self.index.add(vec_ids, face_ids, vectors)
        if self.group is not None:
            self.group.add(self.store_id, vec_ids, face_ids, vectors)

    def _replace(self, index: StoreIndex) -> None:
        self.index = index
        if self.group is not None:
            self.group.replace_store(self.store_id, index)

    def _maybe_reshape(self) -> None:
        if self.index.needs_rebuild() and (self._rebuild_task is None or self._rebuild_task.done()):
            self._rebuild_task = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self.index.rebuild)
            )

    # --- snapshots -----------------------------------------------------------------------

    async def snapshot(self) -> bool:
        """Save index + feed position if anything changed since the last save."""
        if self.snapshot_dir is None or not self.loaded:
            return False
        async with self._apply_lock:
            if self.gen == self._saved_gen or self.released:
                return False
            meta = {"position": self.position, "gen": self.gen, "saved_at": time.time()}
            gen = self.gen
            # Saved under the apply lock so the position matches the content exactly.
            await asyncio.to_thread(self.index.save, self.snapshot_dir, meta)
            self._saved_gen = gen
        return True

    async def release(self) -> None:
        """Let the store go: delete its snapshot, and write none again (a node that lets a
        store go keeps no copy of its faces)."""
        async with self._apply_lock:  # a snapshot being written finishes first
            self.released = True
            if self.snapshot_dir is not None:
                await asyncio.to_thread(shutil.rmtree, self.snapshot_dir, True)
