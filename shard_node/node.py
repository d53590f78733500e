"""A shard node: every store of its node group in one process, one index per store.

One face pipeline pool serves all hosted stores; one blocking read follows all their change
feeds; stores.yaml is watched so a store added to the group, or moved away from it, is
loaded or let go without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shard_node.faces.base import EmbedderInfo
from shard_node.faces.pool import FacePool
from shard_node.faces.registry import AUTO
from shard_node.gallery import ingest_folder
from shard_node.group_index import GroupIndex
from shard_node.index import IndexPolicy
from shard_node.replica import Replica
from storeface.errors import EmbedderMismatch, NotReady, StoreNotHosted
from storeface.facedb import FaceDB
from storeface.matching import SizeRule, size_rule_for
from storeface.stores import StoreConfig, StoresFile, WatchedStoresFile
from storeface.tasks import stop_tasks

log = logging.getLogger("shard_node.node")


@dataclass
class StoreState:
    """One hosted store: its config, its index (via the replica) and the node's shared parts."""

    store: StoreConfig
    replica: Replica
    pool: FacePool
    db: FaceDB
    threshold: float
    register_lock_s: float = 5.0
    observe: Callable[[dict[str, float]], None] = lambda timings: None
    refused: str = ""  # why this node will not serve the store (another embedder's faces)
    leaving_at: float | None = None  # the store left this group; let go at this time
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def serving(self) -> bool:
        return self.replica.loaded and not self.refused

    @property
    def rule(self) -> SizeRule:
        """How this store's match threshold follows its size (storeface/matching.py)."""
        return size_rule_for(
            self.replica.info.name, self.threshold, self.store.threshold_per_decade
        )

    def match_threshold(self) -> float:
        """The threshold a search of this store uses now: tighter as it grows."""
        return self.rule.threshold(self.replica.index.face_count)

    def require_ready(self) -> None:
        if self.refused:
            raise EmbedderMismatch(self.refused, store_id=self.store.id)
        if not self.replica.loaded:
            raise NotReady(f"store {self.store.id} is still loading", store_id=self.store.id)


@dataclass
class NodeOptions:
    """The node-wide settings a hosted store needs."""

    snapshot_dir: Path | None
    policy: IndexPolicy
    register_lock_s: float
    release_grace_s: float  # a store that left keeps answering at least this long
    # ... and until its new group has it loaded, but no longer than this (a group that
    # refuses it, or never starts, must not keep the old one holding it forever)
    handover_timeout_s: float
    load_wait_s: float  # a request for a store still loading waits this long for it
    group_index: str = "auto"  # auto | on | off: keep a GroupIndex for the fan-out
    group_index_min_stores: int = 32


class Node:
    """The stores of one node group, kept in step with stores.yaml and with Redis."""

    def __init__(
        self,
        node_id: str,
        info: EmbedderInfo,
        db: FaceDB,
        pool: FacePool,
        stores_file: WatchedStoresFile,
        options: NodeOptions,
        observe: Callable[[dict[str, float]], None] = lambda timings: None,
    ) -> None:
        self.node_id = node_id
        self.info = info
        self.db = db
        self.pool = pool
        self.stores_file = stores_file
        self.options = options
        self.observe = observe
        self.stores: dict[str, StoreState] = {}
        self.embedder_note = ""  # why it runs its embedder, when stores.yaml named none
        self.group: GroupIndex | None = None
        self._group_rebuild: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._releases: set[asyncio.Task[None]] = set()  # awaited, never cancelled, on close

    # --- which stores ------------------------------------------------------------------------

    def store_ids(self) -> list[str]:
        return sorted(self.stores)

    def hosted(self, store_id: str) -> StoreState:
        """A store this node hosts, in whatever state it is."""
        st = self.stores.get(store_id)
        if st is None:
            raise StoreNotHosted(
                f"node {self.node_id} does not host store {store_id}",
                store_id=store_id,
                node_id=self.node_id,
            )
        return st

    async def get(self, store_id: str) -> StoreState:
        """A hosted store, ready to serve; one still loading is waited for a little."""
        if store_id not in self.stores and self.stores_file.check():
            # A gateway that read an edit of stores.yaml before this node did: catch up now.
            self.sync(self.stores_file.config)
        st = self.hosted(store_id)
        if not st.ready.is_set() and not st.refused:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(st.ready.wait(), self.options.load_wait_s)
        st.require_ready()
        return st

    @property
    def loaded(self) -> bool:
        """Every store it serves is loaded (a refused store is reported, not waited for)."""
        return all(st.replica.loaded for st in self.stores.values() if not st.refused)

    def prune_snapshots(self) -> None:
        """Delete snapshots of stores this node no longer hosts (moved while it was down):
        a node keeps no copy of faces it does not serve."""
        root = self.options.snapshot_dir
        if root is None or not root.is_dir():
            return
        for path in root.iterdir():
            if path.is_dir() and path.name not in self.stores:
                shutil.rmtree(path, ignore_errors=True)
                log.info("node %s: deleted the snapshot of %s (not hosted)", self.node_id, path)

    def sync(self, cfg: StoresFile) -> None:
        """Host exactly the stores the file gives this group: load new ones, release old ones."""
        group = cfg.group(self.node_id)
        if group is None:
            log.error("node %s is no longer in stores.yaml; keeping its stores", self.node_id)
            return
        if group.embedder not in (self.info.name, AUTO):
            log.error(
                "node %s now names embedder %s but runs %s: restart it to switch",
                self.node_id,
                group.embedder,
                self.info.name,
            )
            return
        wanted = {sid: cfg.store(sid) for sid in group.stores}
        for sid, store in wanted.items():
            assert store is not None
            st = self.stores.get(sid)
            if st is None:
                self._host(store)
                continue
            if st.leaving_at is not None:
                log.info("%s: back on node %s; keeping it", sid, self.node_id)
                st.leaving_at = None
            st.store = store
            st.threshold = store.threshold or self.info.threshold
        self._keep_group_index()
        now = time.monotonic()
        for sid, st in self.stores.items():
            if sid not in wanted and st.leaving_at is None:
                log.info(
                    "%s: no longer on node %s; letting it go in %.0fs",
                    sid,
                    self.node_id,
                    self.options.release_grace_s,
                )
                st.leaving_at = now + self.options.release_grace_s

    def _host(self, store: StoreConfig) -> None:
        """Start hosting a store: it is listed (as loading) at once, and loads behind."""
        st = StoreState(
            store=store,
            replica=Replica(
                store.id, self.info, self.db, self.options.snapshot_dir, self.options.policy
            ),
            pool=self.pool,
            db=self.db,
            threshold=store.threshold or self.info.threshold,
            register_lock_s=self.options.register_lock_s,
            observe=self.observe,
        )
        st.replica.group = self.group
        self.stores[store.id] = st
        self._spawn(self._load(st))

    async def _load(self, st: StoreState) -> None:
        """Claim the store's embedder, load its index, then ingest its gallery if it has one."""
        store = st.store
        while True:
            try:
                # Photos are not kept: a store's faces cannot be re-embedded by another model.
                recorded = await self.db.claim_embedder(
                    store.id, self.info.identity, store.embedder_options
                )
                if recorded != self.info.identity:
                    st.refused = (
                        f"store {store.id} holds {recorded} embeddings; "
                        f"this node runs {self.info.identity}"
                    )
                    log.error("%s: refused: %s", store.id, st.refused)
                    st.ready.set()
                    return
                await st.replica.load()
                break
            except Exception:  # Redis restarting: try again, the store stays "loading"
                log.exception("%s: loading failed; retrying", store.id)
                await asyncio.sleep(1.0)
        st.ready.set()
        await self._mark_hosted(store.id)
        if store.gallery:
            self._spawn(self._gallery(st, Path(store.gallery)))

    async def _mark_hosted(self, store_id: str) -> None:
        """Tell the chain this group serves the store: a move away from its old group
        completes only once this is said."""
        while store_id in self.stores:
            try:
                await self.db.mark_hosted(store_id, self.node_id)
                return
            except Exception:  # Redis restarting: the old group keeps serving meanwhile
                log.exception("%s: could not mark it hosted; retrying", store_id)
                await asyncio.sleep(1.0)

    async def _handed_over(self, store_id: str, leaving_at: float) -> bool:
        """The store's new group (if it has one) serves it, or waiting for that is over."""
        if time.monotonic() >= leaving_at + self.options.handover_timeout_s:
            return True
        try:
            new = self.stores_file.config.group_of(store_id).id
        except KeyError:  # no longer in stores.yaml at all: nobody takes it over
            return True
        try:
            return await self.db.is_hosted(store_id, new)
        except Exception:  # Redis unreachable: keep serving, ask again next time
            return False

    async def _release_due(self) -> None:
        now = time.monotonic()
        for sid, st in list(self.stores.items()):
            if st.leaving_at is None or now < st.leaving_at:
                continue
            if not await self._handed_over(sid, st.leaving_at):
                continue
            if self.stores.get(sid) is st and st.leaving_at is not None:
                del self.stores[sid]
                if self.group is not None:
                    self.group.drop_store(sid)
                    st.replica.group = None
                task = asyncio.get_running_loop().create_task(self._let_go(st))
                self._releases.add(task)
                task.add_done_callback(self._releases.discard)
        self._keep_group_index()

    def _keep_group_index(self) -> None:
        """Build the group-wide index once the node hosts enough stores; drop it below."""
        mode, least = self.options.group_index, self.options.group_index_min_stores
        want = mode == "on" or (mode == "auto" and len(self.stores) >= least)
        if want and self.group is None:
            group = GroupIndex(self.info.dim, self.info.metric, self.info.name, self.options.policy)
            # No await from here on: no feed entry can slip in between copy and hook.
            for sid, st in self.stores.items():
                group.replace_store(sid, st.replica.index)
                st.replica.group = group
            self.group = group
            log.info("node %s: group index over %d stores", self.node_id, len(self.stores))
        elif not want and self.group is not None:
            for st in self.stores.values():
                st.replica.group = None
            self.group = None
        if (
            self.group is not None
            and self.group.needs_rebuild()
            and (self._group_rebuild is None or self._group_rebuild.done())
        ):
            self._group_rebuild = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self.group.index.rebuild)
            )

    async def watch(self, interval: float) -> None:
        """Apply stores.yaml edits; release stores whose grace period is over."""
        while True:
            await asyncio.sleep(interval)
            if self.stores_file.check():
                self.sync(self.stores_file.config)
            await self._release_due()  # and reshapes the group index as it grows

    # --- the feeds -----------------------------------------------------------------------

    async def follow(self, block_ms: int) -> None:
        """One blocking read over every loaded store's feed, forever; replicas converge."""
        while True:
            try:
                # A store busy rebuilding or saving a snapshot sits this read out, so one
                # large store never holds the others' feeds back; its position keeps.
                live = {
                    sid: st
                    for sid, st in self.stores.items()
                    if st.replica.loaded and not st.replica.busy
                }
                if not live:
                    await asyncio.sleep(block_ms / 1000)
                    continue
                feeds = await self.db.read_feeds(
                    {sid: st.replica.position for sid, st in live.items()},
                    count=2000,
                    block_ms=block_ms,
                )
                for sid, events in feeds.items():
                    await live[sid].replica.apply(events)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis restarting: keep serving, retry shortly
                log.exception("node %s: feed read failed; retrying", self.node_id)
                await asyncio.sleep(1.0)

    async def catch_up(self) -> None:
        for st in list(self.stores.values()):
            if st.replica.loaded:
                await st.replica.catch_up()

    # --- snapshots -----------------------------------------------------------------------

    async def snapshot(self) -> None:
        for st in list(self.stores.values()):
            if st.leaving_at is not None:
                continue  # on its way out: its snapshot goes with it
            try:
                await st.replica.snapshot()
            except Exception:
                log.exception("%s: snapshot failed", st.store.id)

    async def snapshot_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self.snapshot()

    # --- tasks ---------------------------------------------------------------------------

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("node %s: task failed", self.node_id, exc_info=task.exception())

    async def _let_go(self, st: StoreState) -> None:
        await st.replica.release()
        with contextlib.suppress(Exception):  # Redis down: the mark is only advisory
            await self.db.unmark_hosted(st.store.id, self.node_id)
        log.info("%s: let go by node %s", st.store.id, self.node_id)

    async def close(self) -> None:
        leaving = [self._let_go(st) for st in self.stores.values() if st.leaving_at]
        await asyncio.gather(*self._releases, *leaving, return_exceptions=True)
        await stop_tasks(list(self._tasks))
        if self._group_rebuild is not None:  # a thread: it cannot be stopped, only awaited
            await asyncio.gather(self._group_rebuild, return_exceptions=True)

    async def _gallery(self, st: StoreState, folder: Path) -> None:
        """One replica of the group ingests a store's gallery; re-runs add nothing twice."""
        lock = self.db.redis.lock(f"lock:gallery:{st.store.id}", timeout=3600)
        if not await lock.acquire(blocking=False):
            return
        try:
            report = await ingest_folder(
                self.db,
                self.pool,
                st.store.id,
                self.info,
                folder,
                min_size=st.store.min_face_size,
                on_added=st.replica.apply_local_add,
                index=st.replica.index,
                threshold=st.match_threshold(),
            )
            log.info("%s: gallery %s: %s", st.store.id, folder, report.summary())
            for path in report.dominant:
                log.info("%s: several faces in %s: enrolled the dominant one", st.store.id, path)
        except Exception:
            log.exception("%s: gallery ingest of %s failed", st.store.id, folder)
        finally:
            with contextlib.suppress(Exception):
                await lock.release()
