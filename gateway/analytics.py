"""Per-store visitor analytics in Redis: PV, UV (HyperLogLog), new vs returning, members."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from redis.asyncio import Redis

from gateway.models import DayStats

VISITS_MAXLEN = 10_000
STATS_TTL_S = 400 * 86400  # daily counters are kept a bit over a year

_RECORD = """
-- KEYS: seen, first_seen, pv, uv, new, member_pv, member_uv, visits, visited, face
-- ARGV: fid, ts, window_s, is_member, store_id, ttl_s, visits_maxlen
if redis.call('EXISTS', KEYS[10]) == 1 then redis.call('HSET', KEYS[10], 'last_seen', ARGV[2]) end
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then return 0 end
local first = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[3])
redis.call('PFADD', KEYS[4], ARGV[1])
if first == 1 then redis.call('INCR', KEYS[5]) end
if ARGV[4] == '1' then
  redis.call('INCR', KEYS[6])
  redis.call('PFADD', KEYS[7], ARGV[1])
end
for i = 3, 7 do redis.call('EXPIRE', KEYS[i], ARGV[6]) end
redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[7], '*', 'fid', ARGV[1], 'ts', ARGV[2],
           'new', first, 'member', ARGV[4])
redis.call('SADD', KEYS[9], ARGV[5])
return 1 + first
"""


def day_of(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


class Analytics:
    """Visit counting; one Lua call per sighting, so counters never disagree."""

    def __init__(self, redis: Redis, window_s: int) -> None:
        self.redis: Any = redis
        self.window_s = window_s
        self._record = redis.register_script(_RECORD)

    async def record(
        self, store_id: str, face_id: int, is_member: bool, now: float | None = None
    ) -> str:
        """Count a sighting: 'deduped' inside the window, else 'new' or 'returning'.

        The face's `last_seen` is updated in the same call (if the face still exists).
        """
        ts = now if now is not None else time.time()
        day = day_of(ts)
        base = f"stats:{store_id}:{day}"
        keys = [
            f"seen:{store_id}:{face_id}",
            f"store:{store_id}:first_seen",
            f"{base}:pv",
            f"{base}:uv",
            f"{base}:new",
            f"{base}:member_pv",
            f"{base}:member_uv",
            f"visits:{store_id}",
            f"face:{face_id}:visited",
            f"face:{face_id}",  # last_seen, on every sighting, deduped or not
        ]
        args: list[str | int] = [
            face_id,
            f"{ts:.3f}",
            self.window_s,
            "1" if is_member else "0",
            store_id,
            STATS_TTL_S,
            VISITS_MAXLEN,
        ]
        result = int(await self._record(keys=keys, args=args))
        return {0: "deduped", 1: "returning", 2: "new"}[result]

    async def days(self, store_id: str, first: dt.date, last: dt.date) -> list[DayStats]:
        days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for d in days:
                base = f"stats:{store_id}:{d:%Y-%m-%d}"
                pipe.get(f"{base}:pv")
                pipe.pfcount(f"{base}:uv")
                pipe.get(f"{base}:new")
                pipe.get(f"{base}:member_pv")
                pipe.pfcount(f"{base}:member_uv")
            raw = await pipe.execute()
        out = []
        for i, d in enumerate(days):
            pv, uv, new, mpv, muv = raw[i * 5 : i * 5 + 5]
            uv, new = int(uv or 0), int(new or 0)
            out.append(
                DayStats(
                    day=f"{d:%Y-%m-%d}",
                    pv=int(pv or 0),
                    uv=uv,
                    new=new,
                    returning=max(0, uv - new),
                    member_visits=int(mpv or 0),
                    member_uv=int(muv or 0),
                )
            )
        return out

    async def unique_visitors(self, store_id: str, first: dt.date, last: dt.date) -> int:
        """Distinct visitors over the whole range (a union of the daily HyperLogLogs)."""
        keys = [
            f"stats:{store_id}:{first + dt.timedelta(days=i):%Y-%m-%d}:uv"
            for i in range((last - first).days + 1)
        ]
        return int(await self.redis.pfcount(*keys))

    async def erase_face(self, face_id: int) -> None:
        """Remove a person's traces: first-seen times, dedupe keys, recent visit events.

        Daily HyperLogLogs hold no identities (only hashed registers), so counts stay.
        """
        stores = [
            s.decode() if isinstance(s, bytes) else s
            for s in await self.redis.smembers(f"face:{face_id}:visited")
        ]
        for sid in stores:
            await self.redis.hdel(f"store:{sid}:first_seen", face_id)
            await self.redis.delete(f"seen:{sid}:{face_id}")
            stale = [
                eid
                for eid, fields in await self.redis.xrange(f"visits:{sid}")
                if fields.get(b"fid") == str(face_id).encode()
            ]
            if stale:
                await self.redis.xdel(f"visits:{sid}", *stale)
        await self.redis.delete(f"face:{face_id}:visited")

    async def merge_faces(self, keep: int, gone: int) -> None:
        """One person's visit history under one FaceId: the earlier first sighting per store
        wins, and a visit inside the dedupe window of either counts as seen.

        Recent visit events keep the FaceId they were recorded under; daily UV counted both
        (HyperLogLogs cannot be corrected)."""
        stores = [
            s.decode() if isinstance(s, bytes) else s
            for s in await self.redis.smembers(f"face:{gone}:visited")
        ]
        for sid in stores:
            key = f"store:{sid}:first_seen"
            mine, theirs = await self.redis.hmget(key, [keep, gone])
            if theirs is not None and (mine is None or float(theirs) < float(mine)):
                await self.redis.hset(key, keep, theirs)
            await self.redis.hdel(key, gone)
            await self.redis.sadd(f"face:{keep}:visited", sid)
            ttl = await self.redis.ttl(f"seen:{sid}:{gone}")
            if ttl > 0:
                await self.redis.set(f"seen:{sid}:{keep}", "1", ex=ttl, nx=True)
            await self.redis.delete(f"seen:{sid}:{gone}")
        await self.redis.delete(f"face:{gone}:visited")
