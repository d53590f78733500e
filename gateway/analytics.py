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
-- KEYS: seen, first_seen, pv, uv, new, member_pv, member_uv, visits, visited, face, erased
-- ARGV: fid, ts, window_s, is_member, store_id, ttl_s, visits_maxlen
if redis.call('EXISTS', KEYS[11]) == 1 then return 0 end  -- erased since it was answered
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


_DROP_VISITS = """
-- KEYS: visits:{sid}   ARGV: FaceIds whose recent visit events go
local gone, want, from = 0, {}, '-'
for i = 1, #ARGV do want[ARGV[i]] = true end
while true do
  local rows = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', 1000)
  for _, row in ipairs(rows) do
    local f = row[2]
    for j = 1, #f, 2 do
      if f[j] == 'fid' then
        if want[f[j + 1]] then
          redis.call('XDEL', KEYS[1], row[1])
          gone = gone + 1
        end
        break
      end
    end
  end
  if #rows < 1000 then return gone end
  from = '(' .. rows[#rows][1]
end
"""


_FORGET = """
-- ARGV: FaceIds. Their first-seen times, dedupe keys and visited sets go; answers the
-- (store, FaceId) pairs whose recent visit events are still to drop (_DROP_VISITS).
local out = {}
for i = 1, #ARGV do
  local fid = ARGV[i]
  for _, sid in ipairs(redis.call('SMEMBERS', 'face:' .. fid .. ':visited')) do
    redis.call('HDEL', 'store:' .. sid .. ':first_seen', fid)
    redis.call('DEL', 'seen:' .. sid .. ':' .. fid)
    out[#out + 1] = sid
    out[#out + 1] = fid
  end
  redis.call('DEL', 'face:' .. fid .. ':visited')
end
return out
"""


_MERGE = """
-- KEYS: face:{keep}, face:{gone}, face:{keep}:visited, face:{gone}:visited, merged:{gone}
-- ARGV: keep, gone. Only after the face merge: `keep` lives, `gone` has ended, and the
-- merge script said `gone` went to `keep` (not erased, nor merged elsewhere).
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('GET', KEYS[5]) ~= ARGV[1] then return 0 end
local moved = 0
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local first = 'store:' .. sid .. ':first_seen'
  local mine = redis.call('HGET', first, ARGV[1])
  local theirs = redis.call('HGET', first, ARGV[2])
  if theirs and (not mine or tonumber(theirs) < tonumber(mine)) then
    redis.call('HSET', first, ARGV[1], theirs)
  end
  redis.call('HDEL', first, ARGV[2])
  redis.call('SADD', KEYS[3], sid)
  local seen = 'seen:' .. sid .. ':' .. ARGV[2]
  local ttl = redis.call('PTTL', seen)
  if ttl > 0 then redis.call('SET', 'seen:' .. sid .. ':' .. ARGV[1], '1', 'PX', ttl, 'NX') end
  redis.call('DEL', seen)
  moved = moved + 1
end
redis.call('DEL', KEYS[4])
return moved
"""


def day_of(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


class Analytics:
    """Visit counting; one Lua call per sighting, so counters never disagree."""

    def __init__(self, redis: Redis, window_s: int) -> None:
        self.redis: Any = redis
        self.window_s = window_s
        self._record = redis.register_script(_RECORD)
        self._drop_visits = redis.register_script(_DROP_VISITS)
        self._forget = redis.register_script(_FORGET)
        self._merge = redis.register_script(_MERGE)

    async def record(
        self, store_id: str, face_id: int, is_member: bool, now: float | None = None
    ) -> str:
        """Count a sighting: 'deduped' inside the window (or for a face erased since it was
        answered: nothing is recorded), else 'new' or 'returning'.

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
            f"erased:{face_id}",  # set by erase for a day: a late sighting records nothing
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
        bases = [f"stats:{store_id}:{d:%Y-%m-%d}" for d in days]
        async with self.redis.pipeline(transaction=False) as pipe:
            for counter in ("pv", "new", "member_pv"):
                pipe.mget([f"{b}:{counter}" for b in bases])
            for b in bases:
                pipe.pfcount(f"{b}:uv")
                pipe.pfcount(f"{b}:member_uv")
            pvs, news, mpvs, *hlls = await pipe.execute()
        out = []
        for i, d in enumerate(days):
            pv, new, mpv = pvs[i], int(news[i] or 0), mpvs[i]
            uv, muv = int(hlls[2 * i] or 0), hlls[2 * i + 1]
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

    async def recent_days(
        self, store_ids: list[str], last: dt.date, days: int = 30
    ) -> dict[str, dict[str, Any]]:
        """Per store, the counters of the `days` days up to `last`, oldest first (`pv`, `new`,
        `member_pv`), and distinct visitors on the last day, the last 7 and all `days`: six
        commands a store, in one round trip for all of them."""
        span = [f"{last - dt.timedelta(days=i):%Y-%m-%d}" for i in range(days - 1, -1, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in store_ids:
                for counter in ("pv", "new", "member_pv"):
                    pipe.mget([f"stats:{sid}:{d}:{counter}" for d in span])
                uv = [f"stats:{sid}:{d}:uv" for d in span]
                pipe.pfcount(uv[-1])
                pipe.pfcount(*uv[-7:])
                pipe.pfcount(*uv)
            raw = await pipe.execute()
        out = {}
        for i, sid in enumerate(store_ids):
            pv, new, mpv, uv1, uv7, uv_all = raw[i * 6 : i * 6 + 6]
            out[sid] = {
                "pv": [int(v or 0) for v in pv],
                "new": [int(v or 0) for v in new],
                "member_pv": [int(v or 0) for v in mpv],
                "uv_last_day": int(uv1),
                "uv_last_7": int(uv7),
                "uv_all": int(uv_all),
            }
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
        await self.erase_faces([face_id])

    async def erase_faces(self, face_ids: list[int], visits: bool = True) -> dict[str, set[int]]:
        """`erase_face` for several people in one call. With `visits` False, their recent
        visit events stay for a later `drop_visits` of what this answers (store → FaceIds):
        a sweep reads each store's events once, not once per batch."""
        if not face_ids:
            return {}
        flat = await self._forget(args=face_ids)
        pending: dict[str, set[int]] = {}
        for i in range(0, len(flat), 2):
            sid = flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])
            pending.setdefault(sid, set()).add(int(flat[i + 1]))
        if not visits:
            return pending
        await self.drop_visits(pending)
        return {}

    async def drop_visits(self, pending: dict[str, set[int]]) -> None:
        """Remove these FaceIds' recent visit events: one pass over each store's, in Redis."""
        for sid, fids in pending.items():
            await self._drop_visits(keys=[f"visits:{sid}"], args=sorted(fids))

    async def recent(self, store_id: str, limit: int) -> list[dict[str, Any]]:
        """A store's latest counted visits, newest first: FaceId, time, new or not, member."""
        rows = await self.redis.xrevrange(f"visits:{store_id}", "+", "-", count=limit)
        return [
            {
                "face_id": int(f[b"fid"]),
                "ts": float(f[b"ts"]),
                "new": f.get(b"new") == b"1",
                "member": f.get(b"member") == b"1",
            }
            for _, f in rows
        ]

    async def merge_faces(self, keep: int, gone: int) -> int:
        """One person's visit history under one FaceId, in one script: per store, the earlier
        first sighting wins and a visit inside the dedupe window of either counts as seen;
        answers the stores moved. It runs only once the face merge has ended `gone` (and
        `keep` lives), so a merge refused or not yet run moves nothing; a re-run moves what
        was counted under `gone` since, and nothing twice.

        Recent visit events keep the FaceId they were recorded under; daily UV counted both
        (HyperLogLogs cannot be corrected)."""
        keys = [
            f"face:{keep}",
            f"face:{gone}",
            f"face:{keep}:visited",
            f"face:{gone}:visited",
            f"merged:{gone}",
        ]
        return int(await self._merge(keys=keys, args=[keep, gone]))
