"""The gateway over real shard processes, real Redis and real photos."""

from __future__ import annotations

import datetime as dt
import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis as redis_lib

from storeface.distances import distances
from tests.support import GatewayNode, RedisServer, ShardNode, wait_until, write_stores
from tools.dataset import EmbeddedSet

pytestmark = pytest.mark.slow  # starts server processes or embeds many photos

ADMIN = "test-admin-key"
CAM_A = "camera-a-key"
STORES = ["store-a", "store-b", "store-c"]


class Cluster:
    def __init__(self, redis: RedisServer, work: Path) -> None:
        self.redis = redis
        self.work = work
        self.shards: dict[str, list[ShardNode]] = {}
        self.stores_file = work / "stores.yaml"
        self.gateway: GatewayNode | None = None

    def store_entries(self, ids: list[str]) -> list[dict]:
        return [
            {
                "id": sid,
                "region": "south" if sid == "store-c" else "north",
                "shard_urls": [n.url for n in self.shards[sid]],
            }
            for sid in ids
        ]

    def add_shard(self, sid: str, replicas: int = 1) -> None:
        write_stores(
            self.stores_file, [*self.store_entries(list(self.shards)), {"id": sid}]
        )  # the node reads its own entry at start-up
        # a queue for the concurrent posts below: shedding is tested in test_overload.py
        self.shards[sid] = [
            ShardNode(sid, self.stores_file, self.redis.url, self.work, max_queue="8")
            for _ in range(replicas)
        ]
        for n in self.shards[sid]:
            n.start(wait=False)
        for n in self.shards[sid]:
            n.wait_ready()

    def client(self, key: str | None = ADMIN) -> httpx.Client:
        assert self.gateway is not None
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.gateway.url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def cluster(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    redis_lib.Redis(port=redis_server.port).flushall()
    c = Cluster(redis_server, tmp_path_factory.mktemp("gw"))
    c.add_shard("store-a", replicas=2)
    c.add_shard("store-b")
    c.add_shard("store-c")
    write_stores(c.stores_file, c.store_entries(STORES))
    c.gateway = GatewayNode(
        c.stores_file,
        redis_server.url,
        c.work,
        admin_key=ADMIN,
        camera_keys=f"{CAM_A}=store-a",
        fanout_deadline_ms="400",
        shard_timeout_s="120",  # only the fan-out deadline can end a frozen shard's wait
    ).start()
    yield c
    c.gateway.stop()
    for nodes in c.shards.values():
        for n in nodes:
            n.stop()


def close_pairs(dev: EmbeddedSet, max_distance: float) -> list[tuple[str, bytes, bytes]]:
    """(person, photo, other photo) of the same person, well inside the threshold."""
    out, seen = [], set()
    d = distances(dev.embeddings, dev.embeddings, "l2")
    for i, j in zip(*np.nonzero(d < max_distance), strict=True):
        if i < j and dev.people[i] == dev.people[j] and dev.people[i] not in seen:
            seen.add(dev.people[i])
            out.append(
                (dev.people[i], Path(dev.paths[i]).read_bytes(), Path(dev.paths[j]).read_bytes())
            )
    return out


@pytest.fixture(scope="module")
def pairs(dev_set: EmbeddedSet) -> Iterator[tuple[str, bytes, bytes]]:
    found = close_pairs(dev_set, 0.39)
    assert len(found) >= 5, "lfw_dev should hold several close same-person pairs"
    return iter(found)


def recognize(c: httpx.Client, store: str, image: bytes) -> httpx.Response:
    return c.post("/v1/recognize", files={"image": ("f.jpg", image)}, data={"store_id": store})


def test_member_of_another_store_is_found_with_its_face_id(
    cluster: Cluster, pairs: Iterator[tuple[str, bytes, bytes]]
) -> None:
    person, first, second = next(pairs)
    with cluster.client() as c:
        r = c.post(
            "/v1/stores/store-b/faces", files={"image": ("a.jpg", first)}, data={"label": person}
        )
        assert r.status_code == 201, r.text
        face_id = r.json()["face_id"]
        body = recognize(c, "store-a", second).json()
        face = body["faces"][0]
        assert (face["face_id"], face["matched_store"], face["is_new"]) == (
            face_id,
            "store-b",
            False,
        )
        assert face["label"] == person
        # learned at home: the next visit matches in store-a's own index
        again = recognize(c, "store-a", second).json()["faces"][0]
        assert (again["face_id"], again["matched_store"]) == (face_id, "store-a")


def test_unknown_visitor_gets_a_face_id_and_keeps_it(
    cluster: Cluster, pairs: Iterator[tuple[str, bytes, bytes]]
) -> None:
    _, first, second = next(pairs)
    with cluster.client(CAM_A) as c:
        one = recognize(c, "store-a", first).json()["faces"][0]
        assert one["is_new"] is True and one["face_id"] > 0 and one["visit"] == "new"
        two = recognize(c, "store-a", second).json()["faces"][0]
        assert two["is_new"] is False
        assert two["face_id"] == one["face_id"]


def test_concurrent_first_visits_make_one_face_id(
    cluster: Cluster, pairs: Iterator[tuple[str, bytes, bytes]]
) -> None:
    _, first, second = next(pairs)
    with cluster.client(CAM_A) as c, ThreadPoolExecutor(6) as ex:
        frames = [first, second] * 3
        answers = list(ex.map(lambda img: recognize(c, "store-a", img), frames))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    ids = {r.json()["faces"][0]["face_id"] for r in answers}
    new = [r.json()["faces"][0]["is_new"] for r in answers]
    assert len(ids) == 1, ids
    assert new.count(True) == 1


def test_a_stopped_or_frozen_store_is_reported_degraded(
    cluster: Cluster, dev_set: EmbeddedSet
) -> None:
    strangers = [Path(p).read_bytes() for p in dev_set.paths[-2:]]
    c_node = cluster.shards["store-c"][0]
    with cluster.client() as c:
        # frozen (SIGSTOP): it accepts connections but never answers within the deadline
        c_node.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            body = recognize(c, "store-a", strangers[0]).json()
            assert body["degraded"] == ["store-c"]
            assert body["faces"][0]["face_id"] > 0
            # With a 120 s shard timeout and the client's 60 s, only the deadline answers.
        finally:
            c_node.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        c_node.stop()
        try:
            body = recognize(c, "store-b", strangers[1]).json()
            assert body["degraded"] == ["store-c"]
            assert body["faces"][0]["face_id"] > 0
            ready = c.get("/readyz").json()["details"]["stores"]
            assert ready == {"store-a": True, "store-b": True, "store-c": False}
        finally:
            cluster.shards["store-c"] = [
                ShardNode(
                    "store-c",
                    cluster.stores_file,
                    cluster.redis.url,
                    cluster.work,
                    port=c_node.port,
                ).start()
            ]


def test_member_binding_is_returned_and_erase_removes_everywhere(
    cluster: Cluster, pairs: Iterator[tuple[str, bytes, bytes]]
) -> None:
    person, first, second = next(pairs)
    with cluster.client() as c:
        face_id = c.post(
            "/v1/stores/store-b/faces", files={"image": ("a.jpg", first)}, data={"label": person}
        ).json()["face_id"]
        r = c.put(
            f"/v1/faces/{face_id}/member",
            json={"member_id": "M-1001", "profile": {"name": "Pat", "tier": "gold"}},
        )
        assert r.status_code == 200, r.text
        face = recognize(c, "store-a", second).json()["faces"][0]  # learned into store-a too
        assert face["face_id"] == face_id
        assert face["member"] == {"member_id": "M-1001", "profile": {"name": "Pat", "tier": "gold"}}
        r = c.delete(f"/v1/faces/{face_id}")
        assert r.status_code == 200
        assert r.json()["stores"] == ["store-a", "store-b"]
        for store in ("store-a", "store-b"):
            found = c.post(
                "/v1/search",
                files={"image": ("q.jpg", second)},
                data={"store_id": store, "everywhere": "true", "top_k": "10"},
            ).json()
            assert all(m["face_id"] != face_id for m in found["faces"][0]["matches"])
        # ... and the shards' own indexes drop it through the feed
        for sid in ("store-a", "store-b"):
            for node in cluster.shards[sid]:
                wait_until(
                    lambda n=node, sid=sid: (
                        face_id
                        not in [
                            m["face_id"]
                            for m in httpx.post(
                                f"{n.url}/v1/stores/{sid}/identify",
                                files={"image": ("q.jpg", second)},
                                data={"top_k": "50"},
                                timeout=30,
                            ).json()["faces"][0]["matches"]
                        ]
                    ),
                    10,
                    what=f"{sid} to drop the erased face",
                )
        assert c.delete(f"/v1/faces/{face_id}").status_code == 404
        assert c.put(f"/v1/faces/{face_id}/member", json={"member_id": "M-1"}).status_code == 404


def test_keys_are_scoped(cluster: Cluster, dev_set: EmbeddedSet) -> None:
    img = Path(dev_set.paths[0]).read_bytes()
    with cluster.client(None) as c:
        assert recognize(c, "store-a", img).status_code == 401
        assert recognize(c, "no-such-store", img).status_code == 401  # no store probing
    with cluster.client("wrong") as c:
        assert recognize(c, "store-a", img).status_code == 401
    with cluster.client(CAM_A) as c:
        r = recognize(c, "store-b", img)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = c.post("/v1/stores/store-a/faces", files={"image": ("a.jpg", img)})
        assert r.status_code == 403
        assert c.delete("/v1/faces/1").status_code == 403
        assert c.get("/v1/stores/store-b/stats").status_code == 403
        assert c.get("/v1/stores/store-a/stats").status_code == 200


def test_bad_requests_are_clear_4xx(cluster: Cluster) -> None:
    with cluster.client() as c:
        r = recognize(c, "nowhere", b"x")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_store"
        r = recognize(c, "store-a", b"not an image at all")
        assert r.status_code == 415 and r.json()["error"]["code"] == "not_an_image"
        r = c.post("/v1/recognize", data={"store_id": "store-a"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "missing_field"
        r = c.post("/v1/recognize", files={"image": ("f.jpg", b"\xff\xd8\xff")})
        assert r.status_code == 422 and r.json()["error"]["code"] == "missing_field"
        r = c.get("/v1/stores/store-a/stats", params={"from": "2026-02-01", "to": "2026-01-01"})
        assert r.status_code == 422


def test_verify_tells_people_apart(
    cluster: Cluster, pairs: Iterator[tuple[str, bytes, bytes]], dev_set: EmbeddedSet
) -> None:
    _, first, second = next(pairs)
    other = Path(dev_set.paths[0]).read_bytes()
    with cluster.client() as c:
        same = c.post(
            "/v1/verify", files={"image_a": ("a.jpg", first), "image_b": ("b.jpg", second)}
        ).json()
        diff = c.post(
            "/v1/verify", files={"image_a": ("a.jpg", first), "image_b": ("b.jpg", other)}
        ).json()
    assert same["same"] is True and same["distance"] < same["threshold"]
    assert diff["same"] is False and diff["distance"] > diff["threshold"]


def test_stats_count_todays_visits(cluster: Cluster, faces: Path) -> None:
    """Exact counts for visits this test makes itself (it runs alone or after others)."""
    today = dt.datetime.now(dt.UTC).date().isoformat()
    strangers = sorted(p for p in (faces / "lfw_distractors").iterdir() if p.is_dir())[-3:]
    with cluster.client() as c:

        def day() -> dict:
            r = c.get("/v1/stores/store-c/stats", params={"from": today, "to": today})
            return dict(r.json()["days"][0])

        before = day()
        assert before["day"] == today
        for person in strangers:  # three never-seen people: three new visitors
            first = sorted(person.iterdir())[0].read_bytes()
            assert recognize(c, "store-c", first).json()["faces"][0]["visit"] == "new"
        again = sorted(strangers[0].iterdir())[0].read_bytes()  # inside the dedupe window
        assert recognize(c, "store-c", again).json()["faces"][0]["visit"] == "deduped"
        after = day()
    delta = {k: after[k] - before[k] for k in ("pv", "uv", "new", "returning")}
    assert delta == {"pv": 3, "uv": 3, "new": 3, "returning": 0}
    assert after["new"] + after["returning"] == after["uv"]


def test_metrics_show_stages_fallbacks_and_registrations(cluster: Cluster) -> None:
    text = httpx.get(f"{cluster.gateway.url}/metrics").text  # type: ignore[union-attr]
    for stage in ("identify", "fanout", "register", "redis", "total"):
        assert f'storeface_stage_seconds_count{{service="gateway",stage="{stage}"}}' in text
    registrations = re.search(r"^storeface_registrations_total (\S+)$", text, re.M)
    assert registrations and float(registrations.group(1)) >= 2
    degraded = re.search(r'^storeface_degraded_total\{store="store-c"\} (\S+)$', text, re.M)
    assert degraded and float(degraded.group(1)) >= 2


def test_a_store_added_to_the_file_becomes_routable(cluster: Cluster, dev_set: EmbeddedSet) -> None:
    with cluster.client() as c:
        assert recognize(c, "store-d", b"x").status_code == 404
        cluster.add_shard("store-d")
        write_stores(cluster.stores_file, cluster.store_entries([*STORES, "store-d"]))
        img = Path(dev_set.paths[5]).read_bytes()
        wait_until(
            lambda: recognize(c, "store-d", img).status_code == 200, 10, what="store-d routable"
        )
        # an invalid edit keeps the last good map and says so in /readyz
        cluster.stores_file.write_text("stores:\n  - id: store-a\n    replicas: lots\n")
        wait_until(
            lambda: c.get("/readyz").json()["details"]["config_error"],
            10,
            what="config error reported",
        )
        error = c.get("/readyz").json()["details"]["config_error"]
        assert "stores.yaml:3: stores.0.replicas" in error
        assert recognize(c, "store-d", img).status_code == 200
        write_stores(cluster.stores_file, cluster.store_entries([*STORES, "store-d"]))
        wait_until(
            lambda: c.get("/readyz").json()["details"]["config_error"] is None,
            10,
            what="config error cleared",
        )
