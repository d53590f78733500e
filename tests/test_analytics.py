"""Visit counting against real Redis, with a scripted clock."""

from __future__ import annotations

import asyncio
import datetime as dt

import numpy as np
from redis.asyncio import Redis

from gateway.analytics import Analytics
from storeface.facedb import FaceDB

DAY1 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC).timestamp()
DAY2 = DAY1 + 86400
MIN = 60.0


def test_scripted_visits_give_exact_stats(redis_url: str) -> None:
    async def run() -> None:
        redis = Redis.from_url(redis_url)
        a = Analytics(redis, window_s=300)
        script = [  # (time, face, member?) -> expected outcome
            (DAY1, 1, False, "new"),
            (DAY1 + 1 * MIN, 1, False, "deduped"),  # still in front of the camera
            (DAY1 + 4 * MIN, 1, False, "deduped"),
            (DAY1 + 2 * MIN, 2, True, "new"),  # a member
            (DAY1 + 3 * MIN, 3, False, "new"),
        ]
        for ts, face, member, want in script:
            assert await a.record("s1", face, member, now=ts) == want
        # the window is wall-clock TTL in Redis: expire face 1's dedupe key to move on
        await redis.delete("seen:s1:1", "seen:s1:2")
        assert await a.record("s1", 1, False, now=DAY1 + 60 * MIN) == "returning"
        await redis.delete("seen:s1:1", "seen:s1:3")
        assert await a.record("s1", 1, False, now=DAY2) == "returning"
        assert await a.record("s1", 3, False, now=DAY2 + MIN) == "returning"
        assert await a.record("s1", 4, False, now=DAY2 + 2 * MIN) == "new"
        assert await a.record("s2", 1, False, now=DAY2) == "new"  # new to another store

        d1, d2 = await a.days("s1", dt.date(2026, 3, 2), dt.date(2026, 3, 3))
        assert (d1.pv, d1.uv, d1.new, d1.returning, d1.member_visits) == (4, 3, 3, 0, 1)
        assert (d2.pv, d2.uv, d2.new, d2.returning, d2.member_visits) == (3, 3, 1, 2, 0)
        assert await a.unique_visitors("s1", dt.date(2026, 3, 2), dt.date(2026, 3, 3)) == 4
        (empty,) = await a.days("s1", dt.date(2026, 3, 4), dt.date(2026, 3, 4))
        assert (empty.pv, empty.uv) == (0, 0)

        # erasing a face removes its identity traces from the store's analytics
        await a.erase_face(1)
        assert not await redis.hexists("store:s1:first_seen", 1)
        events = await redis.xrange("visits:s1")
        assert events and all(f and f[b"fid"] != b"1" for _, f in events)
        assert await a.record("s1", 1, False, now=DAY2 + 3 * MIN) == "new"
        await redis.aclose()

    asyncio.run(run())


def test_dedupe_window_is_a_real_expiry(redis_url: str) -> None:
    async def run() -> None:
        redis = Redis.from_url(redis_url)
        a = Analytics(redis, window_s=1)
        assert await a.record("s1", 9, False, now=DAY1) == "new"
        assert await a.record("s1", 9, False, now=DAY1 + 0.5) == "deduped"
        await asyncio.sleep(1.2)
        assert await a.record("s1", 9, False, now=DAY1 + 2) == "returning"
        await redis.aclose()

    asyncio.run(run())


def test_sightings_update_last_seen_but_never_resurrect_a_face(redis_url: str) -> None:
    async def run() -> None:
        redis = Redis.from_url(redis_url)
        a = Analytics(redis, window_s=300)
        await redis.hset("face:5", mapping={"kind": "visitor", "last_seen": "1.000"})
        await a.record("s1", 5, False, now=DAY1)
        await a.record("s1", 5, False, now=DAY1 + MIN)  # deduped, still a sighting
        assert float(await redis.hget("face:5", "last_seen") or 0) == DAY1 + MIN
        await a.record("s1", 6, False, now=DAY1)  # face 6 was erased meanwhile
        assert not await redis.exists("face:6")
        await redis.aclose()

    asyncio.run(run())


def test_an_erased_face_leaves_no_visit_and_lends_none_to_a_merge(redis_url: str) -> None:
    """A sighting answered just before an erase and recorded after it leaves no trace, and a
    merge into `keep` that answers 404 for an erased FaceId moves no visit history; only a
    merge that happened does."""

    async def run() -> None:
        redis = Redis.from_url(redis_url)
        db, a = FaceDB(redis), Analytics(redis, window_s=300)
        keep, erased, twin = [await _visitor(db) for _ in range(3)]
        assert await a.record("s1", keep, False, now=DAY1 + 60 * MIN) == "new"
        assert await a.record("s1", erased, False, now=DAY1) == "new"
        await db.erase_face(erased)
        await a.erase_face(erased)
        assert await a.record("s1", erased, False, now=DAY1 + MIN) == "deduped"  # not counted
        assert await redis.hget("store:s1:first_seen", str(erased)) is None
        assert not await redis.exists(f"face:{erased}:visited")
        assert await a.merge_faces(keep, erased) == 0
        assert float(await redis.hget("store:s1:first_seen", str(keep)) or 0) == DAY1 + 60 * MIN
        assert await a.record("s1", twin, False, now=DAY1 + 2 * MIN) == "new"
        await db.merge_faces(keep, twin)
        assert await a.merge_faces(keep, twin) == 1  # the twin's earlier first sighting wins
        assert float(await redis.hget("store:s1:first_seen", str(keep)) or 0) == DAY1 + 2 * MIN
        await redis.aclose()

    asyncio.run(run())


async def _visitor(db: FaceDB) -> int:
    """A visitor FaceId with one vector in store s1, as registration makes one."""
    fid = await db.new_face_id()
    await db.add_vector("s1", fid, np.ones(4, np.float32), embedder="dlib", kind="visitor")
    return fid
