"""The store map from stores.yaml, reloaded on change; invalid edits keep the last good map."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from storeface.errors import UnknownStore
from storeface.stores import NodeGroup, StoreConfig, WatchedStoresFile

Confirm = Callable[[str, str], Awaitable[bool]]  # (store, node group) → serves it?


@dataclass
class _Move:
    old: NodeGroup  # still serving the store
    new: str  # the group stores.yaml now names
    since: float


class StoreMap(WatchedStoresFile):
    """Current routing table: store → node group → where the group's replicas answer.

    A store moved to another group keeps being routed to its old group until the new one
    says it serves the store (or `handover_timeout_s` passes): no camera waits for a large
    store to load at its new place."""

    def __init__(
        self, path: Path, shard_proxy: str | None = None, handover_timeout_s: float = 600.0
    ) -> None:
        super().__init__(path)
        self.shard_proxy = shard_proxy.rstrip("/") if shard_proxy else None
        self.handover_timeout_s = handover_timeout_s
        self.moving: dict[str, _Move] = {}

    def check(self) -> bool:
        before = self.config
        if not super().check():
            return False
        now = time.monotonic()
        for store in self.config.stores:
            new = self.config.group_of(store.id)
            move = self.moving.get(store.id)
            if move is not None and move.old.id == new.id:  # moved back before it settled
                del self.moving[store.id]
            elif move is not None:
                move.new = new.id
            elif before.store(store.id) is not None:
                old = before.group_of(store.id)
                if old.id != new.id:
                    self.moving[store.id] = _Move(old, new.id, now)
        for sid in set(self.moving) - {s.id for s in self.config.stores}:
            del self.moving[sid]
        return True

    async def settle(self, confirm: Confirm) -> None:
        """Route moved stores to their new group once it serves them."""
        now = time.monotonic()
        for sid, move in list(self.moving.items()):
            try:
                done = await confirm(sid, move.new)
            except Exception:  # Redis unreachable: keep the old route, ask again
                done = False
            if done or now - move.since >= self.handover_timeout_s:
                self.moving.pop(sid, None)

    async def watch(self, interval: float, confirm: Confirm | None = None) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()
            if confirm is not None and self.moving:
                await self.settle(confirm)

    def route(self, store_id: str) -> StoreConfig:
        store = self.config.store(store_id)
        if store is None:
            raise UnknownStore(f"no store {store_id!r}", store_id=store_id)
        return store

    def group(self, store: StoreConfig) -> NodeGroup:
        """The group serving a store now: its old one while a move is being handed over."""
        move = self.moving.get(store.id)
        if move is not None:
            return move.old
        try:
            return self.config.group_of(store.id)
        except KeyError:  # the store left stores.yaml while a request for it was running
            raise UnknownStore(f"no store {store.id!r}", store_id=store.id) from None

    def urls(self, store: StoreConfig) -> list[str]:
        """The replicas (or the nginx upstream) of the node group hosting a store."""
        return self.group_urls(self.group(store))

    def group_urls(self, group: NodeGroup) -> list[str]:
        if self.shard_proxy and not group.urls:
            return [f"{self.shard_proxy}/{group.id}"]
        return self.config.node_urls(group.id)

    def replica_urls(self, group: NodeGroup) -> list[str] | None:
        """Each replica of a group, where the gateway can reach them one by one: explicit
        URLs, or the local cluster's ports; None behind another host's proxy (compose)."""
        if group.urls:
            return list(group.urls)
        if self.shard_proxy:
            return None
        host = self.config.cluster.host
        return [f"http://{host}:{p}" for p in group.ports]

    def fallback_targets(self, home: StoreConfig) -> list[StoreConfig]:
        """The other stores a face unknown at home is searched in, per the home's policy."""
        # never mix embedders (fan_out drops a group that runs another one)
        others = self.config.compatible(home)
        if home.fallback == "none":
            return []
        if home.fallback == "region":
            return [s for s in others if s.region == home.region]
        if home.fallback == "list":
            return [s for s in others if s.id in home.fallback_stores]
        return others

    def by_group(self, stores: list[StoreConfig]) -> list[tuple[NodeGroup, list[str]]]:
        """Stores grouped by the node group hosting them: one call per group."""
        out: dict[str, tuple[NodeGroup, list[str]]] = {}
        for s in stores:
            group = self.group(s)
            out.setdefault(group.id, (group, []))[1].append(s.id)
        return list(out.values())
