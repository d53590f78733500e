"""Node groups: one shard node process hosts several stores; the gateway calls each group once."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_lib

from tests.conftest import photo
from tests.support import (
    GatewayNode,
    RedisServer,
    ShardNode,
    enroll_embedding,
    free_port,
    wait_until,
)
from tools.dataset import EmbeddedSet

pytestmark = pytest.mark.slow  # starts server processes or embeds many photos

ADMIN = "node-groups-admin"


def _write(path: Path, nodes: list[dict[str, Any]], stores: list[dict[str, Any]]) -> Path:
    import yaml

    nodes = [{"embedder": "dlib", **n} for n in nodes]  # the shared lfw embeddings are dlib's
    path.write_text(yaml.safe_dump({"nodes": nodes, "stores": stores}, sort_keys=False))
    return path


def _hosted(url: str) -> dict[str, dict[str, Any]]:
    return {s["store_id"]: s for s in httpx.get(f"{url}/v1/info", timeout=10).json()["stores"]}


def _search_calls(url: str) -> int:
    """How many /v1/search requests a node has answered, from its own /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.findall(
        r'storeface_http_request_seconds_count\{[^}]*route="/v1/search"[^}]*\} (\S+)', text
    )
    return int(sum(float(v) for v in found))


@pytest.mark.parametrize("group_index", ["off", "on"])
def test_one_process_hosts_several_stores_each_with_its_own_index(
    tmp_path: Path, redis_url: str, dev_set: EmbeddedSet, group_index: str
) -> None:
    """The same answers whether the cross-store search loops over the stores' indexes or
    uses the group-wide index (`group_index`)."""
    nodes = [{"id": "n1", "replicas": 2}]
    stores = _write(
        tmp_path / "stores.yaml",
        nodes,
        [{"id": "a", "node": "n1"}, {"id": "b", "node": "n1"}],
    )
    one = ShardNode("n1", stores, redis_url, tmp_path / "one", group_index=group_index).start()
    two = ShardNode("n1", stores, redis_url, tmp_path / "two", group_index=group_index).start()
    try:
        embs = dev_set.embeddings
        fa = enroll_embedding(one.url, "a", embs[0], "in-a")
        fb = enroll_embedding(one.url, "b", embs[5], "in-b")
        assert set(_hosted(one.url)) == {"a", "b"}
        # each store answers from its own index only
        info = _hosted(one.url)
        assert (info["a"]["vectors"], info["b"]["vectors"]) == (1, 1)
        # one search covers any list of the group's stores, matches tagged with their store
        r = httpx.post(
            f"{one.url}/v1/search",
            json={"embeddings": [embs[0].tolist(), embs[5].tolist()], "top_k": 2},
        )
        rows = r.json()["results"]
        assert (rows[0][0]["face_id"], rows[0][0]["store_id"]) == (fa, "a")
        assert (rows[1][0]["face_id"], rows[1][0]["store_id"]) == (fb, "b")
        only_b = httpx.post(
            f"{one.url}/v1/search",
            json={"embeddings": [embs[0].tolist()], "top_k": 5, "stores": ["b", "zz"]},
        ).json()
        assert [m["store_id"] for m in only_b["results"][0]] == ["b"]
        assert only_b["stores"] == ["b"] and only_b["missing"] == ["zz"]
        # the other replica follows both stores' feeds (one blocking read) and converges
        wait_until(
            lambda: {s: i["vectors"] for s, i in _hosted(two.url).items()} == {"a": 1, "b": 1},
            10,
            what="replica two to see both stores' writes",
        )
        # a store the group does not host: a 503 that nginx and the gateway retry elsewhere
        r = httpx.post(
            f"{one.url}/v1/stores/zz/faces/embedding", json={"embedding": embs[0].tolist()}
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_not_hosted"
        # embeddings of different lengths are the caller's mistake, not a 500
        r = httpx.post(f"{one.url}/v1/search", json={"embeddings": [[0.1] * 128, [0.1] * 12]})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        # more faces in both stores: the search answers the nearest across them, in order
        more = [enroll_embedding(one.url, "ab"[i % 2], embs[10 + i]) for i in range(20)]
        r = httpx.post(f"{two.url}/v1/search", json={"embeddings": [embs[10].tolist()], "top_k": 5})
        row = r.json()["results"][0]
        assert row[0]["face_id"] == more[0] and row[0]["store_id"] == "a"
        assert [m["distance"] for m in row] == sorted(m["distance"] for m in row)
        assert len({m["face_id"] for m in row}) == 5
        # erase leaves every hosted index (and the group's) at once
        assert httpx.delete(f"{two.url}/v1/faces/{fa}").status_code == 200
        wait_until(lambda: _hosted(one.url)["a"]["vectors"] == 10, 10, what="erase to reach one")
        for url in (one.url, two.url):
            node = httpx.get(f"{url}/v1/info").json()
            assert node["group_index_vectors"] == (21 if group_index == "on" else 0)  # a 10, b 11
        for url in (one.url, two.url):
            after = httpx.post(
                f"{url}/v1/search", json={"embeddings": [embs[0].tolist()], "top_k": 30}
            ).json()["results"][0]
            assert fa not in [m["face_id"] for m in after]
    finally:
        one.stop()
        two.stop()


def test_stores_join_and_leave_a_running_group_without_a_restart(
    tmp_path: Path, redis_url: str, dev_set: EmbeddedSet
) -> None:
    """Adding a store to a group, or moving one away, is an edit of stores.yaml: the group
    loads the store from Redis, the old one lets it go (and deletes its snapshot)."""
    nodes = [{"id": "n1", "replicas": 1}, {"id": "n2", "replicas": 1}]
    path = tmp_path / "stores.yaml"
    _write(path, nodes, [{"id": "a", "node": "n1"}, {"id": "c", "node": "n2"}])

    def node(name: str) -> ShardNode:
        return ShardNode(
            name,
            path,
            redis_url,
            tmp_path / name,
            reload_interval_s="0.2",
            release_grace_s="0.5",
            snapshot_interval_s="0.3",
            group_index="on",
        )

    n1, n2 = node("n1").start(), node("n2").start()
    try:
        fc = [enroll_embedding(n2.url, "c", e) for e in dev_set.embeddings[:3]]
        pid_n1 = n1.proc.pid if n1.proc else 0
        snapshot = tmp_path / "n2" / "snapshots" / "c"
        wait_until(lambda: (snapshot / "meta.json").exists(), 10, what="c's snapshot on n2")
        # move c to n1 and add a new store d to n1
        _write(path, nodes, [{"id": "a", "node": "n1"}, {"id": "c", "node": "n1"},
                             {"id": "d", "node": "n1"}])  # fmt: skip
        wait_until(
            lambda: set(_hosted(n1.url)) == {"a", "c", "d"} and _hosted(n1.url)["c"]["loaded"],
            20,
            what="n1 to host c and d",
        )
        assert _hosted(n1.url)["c"]["faces"] == 3  # loaded from Redis
        r = httpx.post(
            f"{n1.url}/v1/search",
            json={"embeddings": [dev_set.embeddings[1].tolist()], "top_k": 1, "stores": ["c"]},
        )
        assert r.json()["results"][0][0]["face_id"] == fc[1]
        wait_until(lambda: "c" not in _hosted(n2.url), 20, what="n2 to let c go")
        assert not snapshot.exists(), "a node that lets a store go keeps no copy of its faces"
        assert httpx.get(f"{n2.url}/v1/info").json()["group_index_vectors"] == 0
        assert n1.alive and n1.proc is not None and n1.proc.pid == pid_n1, "no restart"
        # a write at the new home after the move reaches the index there
        enroll_embedding(n1.url, "d", dev_set.embeddings[10])
        assert _hosted(n1.url)["d"]["vectors"] == 1
        # a node that restarts after its store moved away while it was down deletes the
        # snapshot it still had of it
        n1.stop()
        _write(path, nodes, [{"id": "a", "node": "n1"}, {"id": "c", "node": "n2"},
                             {"id": "d", "node": "n2"}])  # fmt: skip
        assert (tmp_path / "n1" / "snapshots" / "d").is_dir()
        n1 = node("n1").start()
        assert set(_hosted(n1.url)) == {"a"}
        assert not (tmp_path / "n1" / "snapshots" / "d").exists()
        assert not (tmp_path / "n1" / "snapshots" / "c").exists()
        wait_until(lambda: _hosted(n2.url).get("d", {}).get("vectors") == 1, 20, what="d on n2")
    finally:
        n1.stop()
        n2.stop()


@pytest.fixture
def groups(
    tmp_path: Path, redis_server: RedisServer, redis_url: str
) -> Iterator[tuple[GatewayNode, ShardNode, ShardNode]]:
    """Four stores on two node groups (one replica each), and a gateway."""
    p1, p2 = free_port(), free_port()
    nodes = [
        {"id": "n1", "replicas": 1, "urls": [f"http://127.0.0.1:{p1}"]},
        {"id": "n2", "replicas": 1, "urls": [f"http://127.0.0.1:{p2}"]},
    ]
    path = _write(
        tmp_path / "stores.yaml",
        nodes,
        [
            {"id": "store-a", "node": "n1"},
            {"id": "store-b", "node": "n1"},
            {"id": "store-c", "node": "n2"},
            {"id": "store-d", "node": "n2"},
        ],
    )
    n1 = ShardNode("n1", path, redis_url, tmp_path / "n1", port=p1).start()
    n2 = ShardNode("n2", path, redis_url, tmp_path / "n2", port=p2).start()
    gw = GatewayNode(path, redis_url, tmp_path, admin_key=ADMIN, fanout_deadline_ms="2000").start()
    yield gw, n1, n2
    gw.stop()
    n1.stop()
    n2.stop()
    redis_lib.Redis(port=redis_server.port).flushall()


def test_the_fan_out_makes_one_call_per_node_group(
    groups: tuple[GatewayNode, ShardNode, ShardNode], faces: Path
) -> None:
    gw, n1, n2 = groups
    person = "Rebekah_Chantay_Revels"
    with httpx.Client(base_url=gw.url, headers={"X-API-Key": ADMIN}, timeout=60) as c:
        r = c.post(
            "/v1/stores/store-c/faces",
            files={"image": ("a.jpg", photo(faces, person, 1))},
            data={"label": person},
        )
        assert r.status_code == 201, r.text
        face_id = r.json()["face_id"]
        before = _search_calls(n1.url), _search_calls(n2.url)
        r = c.post(
            "/v1/recognize",
            files={"image": ("b.jpg", photo(faces, person, 3))},
            data={"store_id": "store-a"},
        )
        assert r.status_code == 200, r.text
        face = r.json()["faces"][0]
        # found in store-c (node n2), learned at home; three other stores, two calls
        assert (face["face_id"], face["matched_store"], face["is_new"]) == (
            face_id,
            "store-c",
            False,
        )
        assert r.json()["degraded"] == []
        after = _search_calls(n1.url), _search_calls(n2.url)
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def test_a_group_that_is_down_degrades_exactly_its_stores(
    groups: tuple[GatewayNode, ShardNode, ShardNode], faces: Path
) -> None:
    gw, _, n2 = groups
    n2.stop()
    with httpx.Client(base_url=gw.url, headers={"X-API-Key": ADMIN}, timeout=60) as c:
        r = c.post(
            "/v1/recognize",
            files={"image": ("q.jpg", photo(faces, "Juanes", 1))},
            data={"store_id": "store-a"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["degraded"] == ["store-c", "store-d"]
        assert body["faces"][0]["is_new"] is True  # still answered, a new visitor at home
        ready = c.get("/readyz").json()["details"]
        assert ready["nodes"] == {"n1": True, "n2": False}
        assert ready["stores"] == {
            "store-a": True,
            "store-b": True,
            "store-c": False,
            "store-d": False,
        }


def test_a_moved_store_is_served_by_its_old_group_until_the_new_one_has_it(
    tmp_path: Path, redis_server: RedisServer, redis_url: str, faces: Path
) -> None:
    """The hand-over: the old group keeps a moved store, and gateways keep routing it there,
    until the new group says it serves it; here the new group is down at first."""
    p1, p2 = free_port(), free_port()
    nodes = [
        {"id": "n1", "replicas": 1, "urls": [f"http://127.0.0.1:{p1}"]},
        {"id": "n2", "replicas": 1, "urls": [f"http://127.0.0.1:{p2}"]},
    ]
    before = [{"id": "a", "node": "n1"}, {"id": "c", "node": "n2"}]
    path = _write(tmp_path / "stores.yaml", nodes, before)

    def node(name: str, port: int) -> ShardNode:
        work = tmp_path / name
        return ShardNode(
            name, path, redis_url, work, port=port, reload_interval_s="0.2", release_grace_s="0.3"
        )

    n2, n1 = node("n2", p2).start(), node("n1", p1)
    gw = GatewayNode(path, redis_url, tmp_path, admin_key=ADMIN).start()
    person = "Rebekah_Chantay_Revels"
    try:
        with httpx.Client(base_url=gw.url, headers={"X-API-Key": ADMIN}, timeout=60) as c:

            def recognize_at_c() -> httpx.Response:
                files = {"image": ("q.jpg", photo(faces, person, 3))}
                return c.post("/v1/recognize", files=files, data={"store_id": "c"})

            r = c.post("/v1/stores/c/faces", files={"image": ("a.jpg", photo(faces, person, 1))})
            assert r.status_code == 201, r.text
            face_id = r.json()["face_id"]
            _write(path, nodes, [{"id": "a", "node": "n1"}, {"id": "c", "node": "n1"}])
            time.sleep(2.0)  # well past the reload interval and the grace period
            assert "c" in _hosted(n2.url), "n1 does not serve c yet: n2 keeps it"
            r = recognize_at_c()  # routed to n2: n1 is not even running
            assert r.status_code == 200, r.text
            assert r.json()["faces"][0]["face_id"] == face_id
            n1.start()
            wait_until(lambda: "c" not in _hosted(n2.url), 30, what="n2 to hand c over")
            assert _hosted(n1.url)["c"]["faces"] == 1
            r = recognize_at_c()
            assert r.status_code == 200 and r.json()["faces"][0]["face_id"] == face_id
            assert httpx.get(f"{n1.url}/v1/info").json()["stores"][1]["store_id"] == "c"
    finally:
        gw.stop()
        n1.stop()
        n2.stop()
