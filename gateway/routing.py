"""The store map from stores.yaml, reloaded on change; invalid edits keep the last good map."""

from __future__ import annotations

import asyncio
from pathlib import Path

from storeface.errors import UnknownStore
from storeface.stores import NodeGroup, StoreConfig, WatchedStoresFile


class StoreMap(WatchedStoresFile):
    """Current routing table: store → node group → where the group's replicas answer."""

    def __init__(self, path: Path, shard_proxy: str | None = None) -> None:
        super().__init__(path)
        self.shard_proxy = shard_proxy.rstrip("/") if shard_proxy else None

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()

    def route(self, store_id: str) -> StoreConfig:
        store = self.config.store(store_id)
        if store is None:
            raise UnknownStore(f"no store {store_id!r}", store_id=store_id)
        return store

    def group(self, store: StoreConfig) -> NodeGroup:
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

    def fallback_targets(self, home: StoreConfig) -> list[StoreConfig]:
        """The other stores a face unknown at home is searched in, per the home's policy."""
        others = [
            s for s in self.config.stores if s.id != home.id and s.embedder == home.embedder
        ]  # never mix embedders
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
