"""The store map from stores.yaml, reloaded on change; invalid edits keep the last good map."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from storeface.errors import ConfigError, UnknownStore
from storeface.stores import StoreConfig, StoresFile, load_stores

log = logging.getLogger("gateway.routing")


class StoreMap:
    """Current routing table; `check()` reloads it when the file changed."""

    def __init__(self, path: Path, shard_proxy: str | None = None) -> None:
        self.path = path
        self.shard_proxy = shard_proxy.rstrip("/") if shard_proxy else None
        self.config: StoresFile = load_stores(path)  # invalid at start-up: refuse to start
        self.last_error: str | None = None
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def check(self) -> bool:
        """Reload if the file changed; True when a new map was taken."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            config = load_stores(self.path)
        except ConfigError as exc:
            self.last_error = exc.message
            log.error("keeping the last good store map: %s", exc.message)
            return False
        added = {s.id for s in config.stores} - {s.id for s in self.config.stores}
        self.config, self.last_error = config, None
        log.info(
            "store map reloaded: %d stores%s",
            len(config.stores),
            f" (new: {', '.join(sorted(added))})" if added else "",
        )
        return True

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()

    def route(self, store_id: str) -> StoreConfig:
        store = self.config.store(store_id)
        if store is None:
            raise UnknownStore(f"no store {store_id!r}", store_id=store_id)
        return store

    def urls(self, store: StoreConfig) -> list[str]:
        if self.shard_proxy and not store.shard_urls:
            return [f"{self.shard_proxy}/{store.id}"]
        return self.config.shard_urls(store.id)

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
