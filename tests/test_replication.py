"""Replicas of one store converge through Redis; crashes lose nothing acknowledged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis as redis_lib

from tests.support import RedisServer, ShardNode, enroll_embedding, wait_until, write_stores
from tools.dataset import EmbeddedSet

pytestmark = pytest.mark.slow  # starts server processes or embeds many photos

STORE = "rep"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[RedisServer, Path]]:
    """A Redis of its own (these tests kill it) and a stores file."""
    server = RedisServer(tmp_path / "redis").start()
    stores = write_stores(tmp_path / "stores.yaml", [{"id": STORE}])
    yield server, stores
    server.stop()


def _enroll(url: str, emb: np.ndarray, label: str = "") -> int:
    return enroll_embedding(url, STORE, emb, label)


def _top(url: str, queries: np.ndarray, k: int = 3) -> list[list[tuple[int, float]]]:
    r = httpx.post(
        f"{url}/v1/search", json={"embeddings": queries.tolist(), "top_k": k}, timeout=30
    )
    assert r.status_code == 200, r.text
    return [[(m["face_id"], m["distance"]) for m in row] for row in r.json()["results"]]


def _info(url: str) -> dict:
    return httpx.get(f"{url}/v1/stores/{STORE}/info", timeout=10).json()


def test_two_replicas_converge_on_enroll_and_erase(
    cluster: tuple[RedisServer, Path], tmp_path: Path, dev_set: EmbeddedSet
) -> None:
    server, stores = cluster
    a = ShardNode(STORE, stores, server.url, tmp_path / "a").start()
    b = ShardNode(STORE, stores, server.url, tmp_path / "b").start()
    try:
        embs = dev_set.embeddings[:20]
        ids = [_enroll(a.url, e, dev_set.people[i]) for i, e in enumerate(embs)]
        # Every write made on A becomes searchable on B through the feed.
        wait_until(lambda: _info(b.url)["vectors"] == 20, 10, what="B to see A's writes")
        assert [row[0][0] for row in _top(b.url, embs, 1)] == ids
        # An erase on B leaves A too.
        assert httpx.delete(f"{b.url}/v1/faces/{ids[0]}").status_code == 200
        wait_until(lambda: _info(a.url)["vectors"] == 19, 10, what="A to see B's erase")
        assert all(m[0] != ids[0] for m in _top(a.url, embs[:1], 5)[0])
    finally:
        a.stop()
        b.stop()


def test_restart_answers_exactly_as_before_from_snapshot(
    cluster: tuple[RedisServer, Path], tmp_path: Path, dev_set: EmbeddedSet
) -> None:
    server, stores = cluster
    a = ShardNode(STORE, stores, server.url, tmp_path / "a", snapshot_interval_s="3600").start()
    for i, e in enumerate(dev_set.embeddings[:40]):
        _enroll(a.url, e, dev_set.people[i])
    queries = dev_set.embeddings[40:70]
    before = _top(a.url, queries, 5)
    a.stop()  # graceful: writes its snapshot on the way out
    a = ShardNode(STORE, stores, server.url, tmp_path / "a", port=a.port).start()
    try:
        ready = httpx.get(f"{a.url}/readyz").json()["details"]["stores"][STORE]
        assert ready["loaded_from"] == "snapshot"
        assert _top(a.url, queries, 5) == before
    finally:
        a.stop()


def test_killed_replica_loses_nothing_acknowledged(
    cluster: tuple[RedisServer, Path], tmp_path: Path, dev_set: EmbeddedSet
) -> None:
    server, stores = cluster
    a = ShardNode(STORE, stores, server.url, tmp_path / "a", snapshot_interval_s="3600").start()
    ids = [_enroll(a.url, e) for e in dev_set.embeddings[:30]]
    a.kill()  # SIGKILL: no snapshot, no goodbye
    a = ShardNode(STORE, stores, server.url, tmp_path / "a", port=a.port).start()
    try:
        assert (
            httpx.get(f"{a.url}/readyz").json()["details"]["stores"][STORE]["loaded_from"]
            == "redis"
        )
        assert [row[0][0] for row in _top(a.url, dev_set.embeddings[:30], 1)] == ids
    finally:
        a.stop()


def test_killed_redis_loses_nothing_acknowledged(
    cluster: tuple[RedisServer, Path], tmp_path: Path, dev_set: EmbeddedSet
) -> None:
    server, stores = cluster
    a = ShardNode(STORE, stores, server.url, tmp_path / "a").start()
    try:
        ids = [_enroll(a.url, e) for e in dev_set.embeddings[:25]]
        server.kill()  # redis-server SIGKILLed right after acknowledging
        server.start()  # same dir and port: replays its append-only file
        fresh = ShardNode(STORE, stores, server.url, tmp_path / "fresh").start()
        try:
            assert _info(fresh.url)["vectors"] == 25
            assert [row[0][0] for row in _top(fresh.url, dev_set.embeddings[:25], 1)] == ids
            # The surviving replica reconnects and keeps following the feed.
            new_id = _enroll(fresh.url, dev_set.embeddings[30])
            wait_until(
                lambda: _top(a.url, dev_set.embeddings[30:31], 1)[0][0][0] == new_id,
                15,
                what="A to follow the feed after Redis restarted",
            )
        finally:
            fresh.stop()
    finally:
        a.stop()


def test_replica_that_missed_trimmed_feed_rebuilds(
    cluster: tuple[RedisServer, Path], tmp_path: Path, dev_set: EmbeddedSet
) -> None:
    """A snapshot older than the feed's tail is detected by the sequence gap, not trusted."""
    server, stores = cluster
    a = ShardNode(STORE, stores, server.url, tmp_path / "a").start()
    ids = [_enroll(a.url, e) for e in dev_set.embeddings[:10]]
    a.stop()
    b = ShardNode(STORE, stores, server.url, tmp_path / "b").start()
    more = [_enroll(b.url, e) for e in dev_set.embeddings[10:20]]
    httpx.delete(f"{b.url}/v1/faces/{ids[0]}")
    b.stop()
    redis_lib.Redis(port=server.port).xtrim(f"store:{STORE}:feed", maxlen=2)  # lose history
    a = ShardNode(STORE, stores, server.url, tmp_path / "a", port=a.port).start()
    try:
        assert (
            httpx.get(f"{a.url}/readyz").json()["details"]["stores"][STORE]["loaded_from"]
            == "redis"
        )
        assert _info(a.url)["vectors"] == 19
        assert [row[0][0] for row in _top(a.url, dev_set.embeddings[10:20], 1)] == more
    finally:
        a.stop()


def test_a_node_with_another_embedder_is_refused(
    cluster: tuple[RedisServer, Path], tmp_path: Path, dev_set: EmbeddedSet
) -> None:
    """Mixing embedders in one store's index would make every distance meaningless: a node
    with another embedder refuses the store (409, and says why), and serves nothing of it."""
    server, stores = cluster
    a = ShardNode(STORE, stores, server.url, tmp_path / "a").start()
    _enroll(a.url, dev_set.embeddings[0])
    a.stop()
    other = write_stores(tmp_path / "arcface.yaml", [{"id": STORE, "embedder": "arcface"}])
    b = ShardNode(STORE, other, server.url, tmp_path / "b").start()
    try:
        r = httpx.post(
            f"{b.url}/v1/stores/{STORE}/faces/embedding",
            json={"embedding": [0.1] * 128},
            timeout=10,
        )
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "embedder_mismatch"
        assert "holds dlib embeddings; this node runs arcface" in r.json()["error"]["message"]
        refused = httpx.get(f"{b.url}/readyz", timeout=10).json()["details"]["stores"][STORE]
        assert "holds dlib embeddings" in refused["refused"]
        assert _info(b.url)["vectors"] == 0
        assert "holds dlib embeddings; this node runs arcface" in b.tail()
    finally:
        b.stop()
