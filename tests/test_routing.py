"""The gateway's store map: fallback policies, embedder isolation, reloads, start-up errors."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.routing import StoreMap
from storeface.errors import ConfigError, UnknownStore
from tests.support import GatewayNode, ProcessDied, write_stores

STORES: list[dict[str, Any]] = [
    {"id": "a", "region": "north"},
    {"id": "b", "region": "north"},
    {"id": "c", "region": "south"},
    {"id": "d", "region": "north", "embedder": "arcface"},
    {"id": "r", "region": "north", "fallback": "region"},
    {"id": "l", "fallback": "list", "fallback_stores": ["c", "d"]},
    {"id": "n", "fallback": "none"},
]


@pytest.fixture
def stores(tmp_path: Path) -> StoreMap:
    return StoreMap(write_stores(tmp_path / "stores.yaml", STORES))


def targets(m: StoreMap, sid: str) -> list[str]:
    return [s.id for s in m.fallback_targets(m.route(sid))]


def test_fallback_policies_and_embedders(stores: StoreMap) -> None:
    assert targets(stores, "a") == ["b", "c", "r", "l", "n"]  # never d: another embedder
    assert targets(stores, "r") == ["a", "b"]  # its own region, same embedder
    assert targets(stores, "l") == ["c"]  # the list, less the arcface store
    assert targets(stores, "n") == []
    assert targets(stores, "d") == []  # the only arcface store


def test_unknown_store(stores: StoreMap) -> None:
    with pytest.raises(UnknownStore):
        stores.route("zzz")


def test_reload_takes_good_edits_and_keeps_the_map_on_bad_ones(stores: StoreMap) -> None:
    assert not stores.check()  # unchanged
    write_stores(stores.path, [*STORES, {"id": "e"}])
    os.utime(stores.path, ns=(time.time_ns(), time.time_ns() + 1))
    assert stores.check() and stores.route("e").id == "e"
    stores.path.write_text("stores:\n  - id: a\n    fallback: sideways\n")
    assert not stores.check()
    assert stores.route("e").id == "e"  # the last good map stays
    assert stores.last_error and "stores.yaml:3: stores.0.fallback" in stores.last_error


def test_shard_proxy_overrides_derived_urls(tmp_path: Path) -> None:
    path = write_stores(
        tmp_path / "s.yaml", [{"id": "a"}, {"id": "b", "shard_urls": ["http://x:1"]}]
    )
    m = StoreMap(path, "http://nginx:8081/")
    assert m.urls(m.route("a")) == ["http://nginx:8081/a"]
    assert m.urls(m.route("b")) == ["http://x:1"]


@pytest.mark.slow  # starts a gateway process
def test_invalid_file_at_start_up_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "stores.yaml"
    path.write_text("stores:\n  - id: a\n  - id: b\n    replicas: 0\n")
    with pytest.raises(ConfigError, match=r"stores.yaml:4: stores.1.replicas"):
        StoreMap(path)
    node = GatewayNode(path, "redis://127.0.0.1:1/0", tmp_path)
    with pytest.raises(ProcessDied, match="gateway exited"):
        node.start()
    assert "error: " in node.tail() and "stores.yaml:4: stores.1.replicas" in node.tail()
    node.stop()


def test_a_store_on_the_default_embedder_may_search_an_explicit_one(tmp_path: Path) -> None:
    """`auto` is decided by each node at start-up: the gateway cannot tell it apart from an
    explicit arcface or dlib, so it asks, and the fan-out drops a group that runs another."""
    path = write_stores(
        tmp_path / "stores.yaml",
        [
            {"id": "a", "embedder": "auto"},
            {"id": "b", "embedder": "arcface"},
            {"id": "c", "embedder": "dlib"},
        ],
    )
    m = StoreMap(path)
    assert targets(m, "a") == ["b", "c"]
    assert targets(m, "b") == ["a"]  # never c: explicitly another embedder
    assert targets(m, "c") == ["a"]
