"""Visitor retention, the erase audit trail and the dashboard's read API, through the in-process
gateway and node group (real Redis, real photos, real pipelines): who is swept and who never
is, one sweep at a time, the audit trail's pages, and every bad input a clear 4xx."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis as redis_lib
import yaml
from redis.asyncio import Redis

from gateway import retention
from gateway.analytics import Analytics
from gateway.dashboard import STATIC
from gateway.recognition import Gateway
from gateway.routing import StoreMap
from gateway.shards import ShardClient
from storeface.errors import ConfigError
from storeface.facedb import FaceDB
from storeface.stores import parse_stores
from tests.conftest import photo
from tests.inprocess import InProcess, in_process
from tests.support import ROOT, RedisServer

NODES = {"n1": ["store-a", "store-b"]}
CAMERA = "camera-of-store-a"
DAY = 86400.0


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("retention")


@pytest.fixture(scope="module")
async def apps(work: Path, redis_server: RedisServer) -> AsyncIterator[InProcess]:
    redis_lib.Redis(port=redis_server.port).flushall()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STOREFACE_CAMERA_KEYS", f"{CAMERA}=store-a")
        mp.setenv("STOREFACE_RETENTION_INTERVAL_S", "0")  # sweeps here are the tests' own
        async with in_process(work, redis_server.url, NODES) as apps:
            yield apps


@pytest.fixture
def db(redis_server: RedisServer) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis(port=redis_server.port)
    yield client
    client.close()


async def _visitor(c: httpx.AsyncClient, store: str, image: bytes) -> int:
    r = await c.post("/v1/recognize", files={"image": ("f.jpg", image)}, data={"store_id": store})
    assert r.status_code == 200, r.text
    face = r.json()["faces"][0]
    return int(face["face_id"])


def _age(db: redis_lib.Redis, face_id: int, days: float) -> None:
    """The face was last seen `days` ago."""
    db.hset(f"face:{face_id}", "last_seen", f"{time.time() - days * DAY:.3f}")


def _error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


def test_stores_yaml_has_a_chain_default_and_per_store_overrides() -> None:
    cfg = parse_stores(
        """
visitor_retention_days: 14
stores:
  - id: a
  - id: b
    visitor_retention_days: 90
  - id: c
    visitor_retention_days: null
"""
    )
    assert [cfg.retention_days(s) for s in ("a", "b", "c", "gone")] == [14, 90, None, 14]
    assert parse_stores("stores: [{id: a}]").retention_days("a") == 30  # the default
    assert (
        parse_stores("visitor_retention_days: null\nstores: [{id: a}]").retention_days("a") is None
    )
    with pytest.raises(ConfigError, match=r"stores.yaml:3: stores.0.visitor_retention_days"):
        parse_stores("stores:\n  - id: a\n    visitor_retention_days: 0\n")


@pytest.mark.anyio
async def test_a_sweep_erases_only_unbound_visitors_unseen_for_their_period(
    apps: InProcess, faces: Path, db: redis_lib.Redis
) -> None:
    c = apps.gateway
    old = await _visitor(c, "store-a", photo(faces, "Juanes", 1))
    member = await _visitor(c, "store-a", photo(faces, "Mary_Carey", 1))
    recent = await _visitor(c, "store-b", photo(faces, "Alberto_Fujimori", 1))
    r = await c.post(
        "/v1/stores/store-a/faces",
        files={"image": ("g.jpg", photo(faces, "Barbra_Streisand", 1))},
        data={"label": "Barbra_Streisand"},
    )
    gallery = r.json()["face_id"]
    bound = await c.put(f"/v1/faces/{member}/member", json={"member_id": "m-1"})
    assert bound.status_code == 200, bound.text
    for fid in (old, member, gallery):
        _age(db, fid, 40)
    _age(db, recent, 29)
    stats = (await c.get("/v1/stores/store-a/stats")).json()

    dry = (await c.post("/v1/retention/sweep", json={"dry_run": True})).json()
    assert (dry["expired"], dry["erased"], dry["dry_run"]) == (1, 0, True)
    assert db.exists(f"face:{old}")

    done = await c.post("/v1/retention/sweep", json={})
    assert done.status_code == 200, done.text
    assert (done.json()["erased"], done.json()["older_than_days"]) == (1, None)
    assert not db.exists(f"face:{old}") and not db.exists(f"face:{old}:visited")
    assert all(db.exists(f"face:{f}") for f in (member, gallery, recent))
    visits = (await c.get("/v1/stores/store-a/visits")).json()["visits"]
    assert old not in {v["face_id"] for v in visits} and member in {v["face_id"] for v in visits}
    # erased everywhere: the index forgot the face, so the person is a new visitor again
    again = await _visitor(c, "store-a", photo(faces, "Juanes", 1))
    assert again != old
    # aggregates hold no identity and stay
    after = (await c.get("/v1/stores/store-a/stats")).json()
    assert after["days"][0]["pv"] == stats["days"][0]["pv"] + 1  # the new sighting only

    trail = (await c.get("/v1/audit")).json()["entries"]
    entry = next(e for e in trail if e["face_id"] == old)
    assert (entry["actor"], entry["reason"], entry["stores"]) == ("admin", "retention", ["store-a"])
    assert set(entry) == {"id", "time", "actor", "face_id", "reason", "stores"}

    # this run's period overrides the stores': 29 days unseen is past 7
    override = await c.post("/v1/retention/sweep", json={"older_than_days": 7})
    assert override.json()["erased"] == 1 and not db.exists(f"face:{recent}")


@pytest.mark.anyio
async def test_each_store_keeps_visitors_for_its_own_period(
    apps: InProcess, work: Path, faces: Path, db: redis_lib.Redis
) -> None:
    c = apps.gateway
    a = await _visitor(c, "store-a", photo(faces, "Ben_Glisan", 1))
    b = await _visitor(c, "store-b", photo(faces, "Barrett_Jackman", 1))
    _age(db, a, 10)
    _age(db, b, 1000)
    stores = work / "stores.yaml"
    original = stores.read_text()
    doc = yaml.safe_load(original)
    doc["visitor_retention_days"] = 5
    doc["stores"][1]["visitor_retention_days"] = None  # store-b keeps its visitors
    stores.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        for _ in range(100):  # the gateway reloads the file within a second
            health = (await c.get("/v1/stores/store-b/health")).json()
            if health["visitor_retention_days"] is None:
                break
            await asyncio.sleep(0.1)
        assert health["visitor_retention_days"] is None
        assert (await c.get("/v1/stores/store-a/health")).json()["visitor_retention_days"] == 5
        done = (await c.post("/v1/retention/sweep")).json()
        assert done["erased"] == 1
        assert not db.exists(f"face:{a}") and db.exists(f"face:{b}")
    finally:
        stores.write_text(original)
        await asyncio.sleep(1.5)


@pytest.mark.anyio
async def test_one_sweep_at_a_time_across_replicas(apps: InProcess, db: redis_lib.Redis) -> None:
    db.set(retention.LOCK_KEY, "another-gateway", px=60_000)
    try:
        busy = await apps.gateway.post("/v1/retention/sweep", json={"dry_run": True})
        assert _error(busy) == (409, "sweep_running")
    finally:
        db.delete(retention.LOCK_KEY)
    ok = await apps.gateway.post("/v1/retention/sweep", json={"dry_run": True})
    assert ok.status_code == 200 and not db.exists(retention.LOCK_KEY)


@pytest.mark.anyio
async def test_the_scheduled_sweep_runs_once_per_interval(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    stores = tmp_path / "stores.yaml"
    stores.write_text("stores: [{id: s1}]\n")
    redis = Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/1")  # beside the apps' db 0
    await redis.flushdb()
    db = FaceDB(redis)
    async with httpx.AsyncClient() as client:
        gws = [
            Gateway(
                stores=StoreMap(stores),
                shards=ShardClient(client, 1.0),
                db=db,
                analytics=Analytics(redis, 300),
                fanout_deadline_s=0.1,
            )
            for _ in range(3)
        ]
        fid = await db.new_face_id()
        await db.add_vector("s1", fid, np.full(128, 0.1), embedder="dlib", kind="visitor")
        await redis.hset(f"face:{fid}", "last_seen", f"{time.time() - 31 * DAY:.3f}")
        # three replicas find it due at once: one sweeps, the others stand aside
        runs = await asyncio.gather(*(retention.run_if_due(g, DAY) for g in gws))
        done = [r for r in runs if r is not None]
        assert len(done) == 1 and done[0].erased == 1
        assert await retention.run_if_due(gws[0], DAY) is None  # not due again today
        later = await retention.run_if_due(gws[1], DAY, now=time.time() + DAY + 1)
        assert later is not None and later.erased == 0
        trail = await db.audit(10)
        assert [(e.face_id, e.actor, e.reason) for e in trail] == [
            (fid, retention.SCHEDULED_ACTOR, "retention")
        ]
    await redis.aclose()


@pytest.mark.anyio
async def test_the_sweeps_erase_checks_each_face_again_in_redis(redis_server: RedisServer) -> None:
    """A visitor seen, bound or named after the sweep looked at it is kept."""
    redis = Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/2")
    await redis.flushdb()
    db = FaceDB(redis)
    ids = [await db.new_face_id() for _ in range(4)]
    for fid in ids:
        await db.add_vector("s1", fid, np.full(128, 0.1), embedder="dlib", kind="visitor")
    cutoff = time.time() - 10  # every face was seen just now, after this
    await redis.hset(f"face:{ids[1]}", "last_seen", "1")  # expired
    await redis.hset(f"face:{ids[2]}", mapping={"last_seen": "1", "member_id": "m"})
    await redis.hset(f"face:{ids[3]}", mapping={"last_seen": "1", "label": "Ann"})
    done = await db.erase_faces(ids, [cutoff] * 4, actor="t", reason="retention")
    assert [done[f].existed for f in ids] == [False, True, False, False]
    assert [bool(await redis.exists(f"face:{f}")) for f in ids] == [True, False, True, True]
    assert [e.face_id for e in await db.audit(10)] == [ids[1]]
    await redis.aclose()


@pytest.mark.anyio
async def test_the_audit_trail_pages_newest_first(apps: InProcess, faces: Path) -> None:
    c = apps.gateway
    people = ["Tom_Jones", "Ted_Maher", "S_Jayakumar"]
    ids = [await _visitor(c, "store-b", photo(faces, p, 2)) for p in people]
    for fid in ids:
        r = await c.delete(f"/v1/faces/{fid}", params={"reason": "ticket #42"})
        assert r.status_code == 200, r.text
    first = (await c.get("/v1/audit", params={"limit": 2})).json()
    assert [e["face_id"] for e in first["entries"]] == ids[::-1][:2]
    assert first["entries"][0]["reason"] == "ticket #42"
    second = (await c.get("/v1/audit", params={"limit": 2, "before": first["next"]})).json()
    assert second["entries"][0]["face_id"] == ids[0]
    # an erase by photo is recorded with its own reason
    again = await _visitor(c, "store-a", photo(faces, "Jon_Voight", 1))
    by_photo = await c.post("/v1/erase", files={"image": ("p.jpg", photo(faces, "Jon_Voight", 1))})
    assert by_photo.status_code == 200, by_photo.text
    newest = (await c.get("/v1/audit", params={"limit": 1})).json()["entries"][0]
    assert (newest["face_id"], newest["reason"]) == (again, "photo")


@pytest.mark.anyio
async def test_bad_input_and_wrong_keys_are_clear_4xx(apps: InProcess) -> None:
    c = apps.gateway
    cam = {"X-API-Key": CAMERA}
    cases: list[tuple[Any, tuple[int, str]]] = [
        (c.post("/v1/retention/sweep", json={"older_than_days": 0}), (422, "invalid_request")),
        (c.post("/v1/retention/sweep", json={"older_than_days": "x"}), (422, "invalid_request")),
        (c.post("/v1/retention/sweep", json={"dry": True}), (422, "invalid_request")),
        (
            c.post(
                "/v1/retention/sweep", content=b"{", headers={"Content-Type": "application/json"}
            ),
            (422, "invalid_request"),
        ),
        (c.post("/v1/retention/sweep", headers=cam), (403, "forbidden")),
        (c.post("/v1/retention/sweep", headers={"X-API-Key": "nope"}), (401, "unauthorized")),
        (c.get("/v1/audit", headers=cam), (403, "forbidden")),
        (c.get("/v1/audit", params={"before": "yesterday"}), (422, "invalid_request")),
        (c.get("/v1/audit", params={"limit": 0}), (422, "invalid_request")),
        (c.delete("/v1/faces/1", params={"reason": "<script>"}), (422, "invalid_request")),
        (c.delete("/v1/faces/999999"), (404, "face_not_found")),
        (c.get("/v1/stores/store-b/visits", headers=cam), (403, "forbidden")),
        (c.get("/v1/stores/store-b/health", headers=cam), (403, "forbidden")),
        (c.get("/v1/stores/nowhere/health"), (404, "unknown_store")),
        (c.get("/v1/stores/store-a/visits", params={"limit": 501}), (422, "invalid_request")),
        (c.get("/v1/me", headers={"X-API-Key": ""}), (401, "unauthorized")),
        (c.get("/v1/stats/overview", headers={"X-API-Key": "nope"}), (401, "unauthorized")),
    ]
    for call, want in cases:
        assert _error(await call) == want


@pytest.mark.anyio
async def test_a_camera_key_reads_only_its_stores(apps: InProcess, faces: Path) -> None:
    c = apps.gateway
    cam = {"X-API-Key": CAMERA}
    fid = await _visitor(c, "store-a", photo(faces, "Barrett_Jackman", 2))
    me = (await c.get("/v1/me", headers=cam)).json()
    assert me["role"] == "camera" and me["stores"] == ["store-a"]
    assert CAMERA not in me["key_id"]
    assert (await c.get("/v1/me")).json() == {
        "key_id": "admin",
        "role": "admin",
        "stores": ["store-a", "store-b"],
    }
    overview = (await c.get("/v1/stats/overview", headers=cam)).json()
    assert [s["store_id"] for s in overview["stores"]] == ["store-a"]
    today = (await c.get("/v1/stores/store-a/stats", headers=cam)).json()["days"][0]
    assert overview["stores"][0]["today"]["pv"] == today["pv"]
    assert overview["stores"][0]["today"]["uv"] == today["uv"]
    visits = (await c.get("/v1/stores/store-a/visits", headers=cam)).json()["visits"]
    assert visits[0]["face_id"] == fid and visits[0]["kind"] == "visitor"
    assert set(visits[0]) == {"face_id", "time", "visit", "member", "kind"}
    health = (await c.get("/v1/stores/store-a/health", headers=cam)).json()
    assert (health["node"], health["replicas"], health["replicas_up"]) == ("n1", 1, 1)
    assert health["reachable"] and health["faces"] >= 1 and health["embedder"] == "dlib"


@pytest.mark.anyio
async def test_the_dashboard_is_served_from_our_own_files(apps: InProcess) -> None:
    c = apps.gateway
    page = await c.get("/dashboard", headers={"X-API-Key": ""})
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "http" not in page.text.split("<body>")[0], "no asset from another origin"
    for asset in ("key.js", "dashboard.js", "dashboard.css", "vendor/chart.umd.min.js"):
        r = await c.get(f"/dashboard/assets/{asset}")
        assert r.status_code == 200, f"{asset}: run `make dashboard`"
    assert (await c.get("/dashboard/assets/missing.js")).status_code == 404
    for name in ("index.html", "dashboard.js", "key.js", "dashboard.css"):
        text = (STATIC / name).read_text()
        assert "http://" not in text and "https://" not in text, f"{name} names another origin"
    # `make` and the image fetch the same chart.js
    version = (ROOT / "Makefile").read_text().split("CHARTJS_VERSION := ")[1].split()[0]
    assert f"ARG CHARTJS_VERSION={version}" in (ROOT / "deploy" / "Dockerfile").read_text()
