"""Faces in Redis, the source of truth: records, vectors, members and each store's change feed.

Every write that touches a store's vectors also appends to that store's feed in the same
Lua script, with a per-store sequence number (`gen`), so a replica that sees a gap in the
sequence knows it missed something and rebuilds instead of drifting.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from redis.asyncio import Redis

from storeface.embedders import LEGACY_ARCFACE, legacy_identity, same_model
from storeface.errors import FaceNotFound, MemberNotBound, MemberTaken

FEED_MAXLEN = 1_000_000
AUDIT_KEY = "audit:erase"  # the erase trail: who, when, which FaceId, why; no biometric data
AUDIT_MAXLEN = 1_000_000
log = logging.getLogger("storeface.facedb")

_ADD_VECTOR = """
-- KEYS: seq:vec, face:{fid}, face:{fid}:vecs, store:{sid}:vec, store:{sid}:feed,
--       store:{sid}:gen, store:{sid}:photo, face:{fid}:photos, face:{fid}:stores
-- ARGV: fid, sid, emb, photo_sha, now, kind, label, member_id, maxlen, embedder, create,
--       max_vectors ('': no cap; else only while the face holds fewer vectors in the store)
if redis.call('EXISTS', KEYS[2]) == 0 then
  if ARGV[11] ~= '1' then return redis.error_reply('FACE_NOT_FOUND') end
  redis.call('HSET', KEYS[2], 'kind', ARGV[6], 'home_store', ARGV[2], 'label', ARGV[7],
             'member_id', ARGV[8], 'created', ARGV[5], 'last_seen', ARGV[5],
             'embedder', ARGV[10])
end
if ARGV[4] ~= '' then
  local known = redis.call('HGET', KEYS[7], ARGV[4])
  if known then return {0, 0, '', known} end
end
if ARGV[12] ~= '' then
  local held, prefix = 0, ARGV[2] .. ':'
  for _, entry in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    if string.sub(entry, 1, #prefix) == prefix then held = held + 1 end
  end
  if held >= tonumber(ARGV[12]) then return {0, 0, 'capped', ARGV[1]} end
end
local vid = redis.call('INCR', KEYS[1])
local gen = redis.call('INCR', KEYS[6])
redis.call('HSET', KEYS[4], vid, ARGV[1] .. '|' .. ARGV[3])
redis.call('SADD', KEYS[3], ARGV[2] .. ':' .. vid)
redis.call('SADD', KEYS[9], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[7], ARGV[4], ARGV[1])
  redis.call('SADD', KEYS[8], ARGV[2] .. ':' .. ARGV[4])
end
local id = redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[9], '*',
                      'op', 'add', 'gen', gen, 'vid', vid, 'fid', ARGV[1], 'emb', ARGV[3])
return {vid, gen, id, ARGV[1]}
"""

_CLAIM_EMBEDDER = """
-- KEYS: store:{sid}:meta. ARGV: identity, legacy value, the one identity it stands for.
-- Returns {recorded, the legacy value it replaced or ''}.
local held = redis.call('HGET', KEYS[1], 'embedder')
if not held then
  redis.call('HSET', KEYS[1], 'embedder', ARGV[1])
  return {ARGV[1], ''}
end
if held == ARGV[2] and ARGV[1] == ARGV[3] then
  redis.call('HSET', KEYS[1], 'embedder', ARGV[1])
  return {ARGV[1], held}
end
return {held, ''}
"""

_LABEL_IF_UNLABELLED = """
-- KEYS: face:{fid}   ARGV: label. Never creates the record: an erased face stays erased.
if redis.call('EXISTS', KEYS[1]) == 1 and (redis.call('HGET', KEYS[1], 'label') or '') == '' then
  redis.call('HSET', KEYS[1], 'label', ARGV[1])
  return 1
end
return 0
"""

_SET_GALLERY_FACE = """
-- KEYS: face:{fid}, store:{sid}:gallery, face:{fid}:gallery   ARGV: label, fid, sid.
-- Only while the face exists; face:{fid}:gallery lists the names it is filed under
-- ("sid:name"), so erase and merge find every one, whatever the face's label says.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3] .. ':' .. ARGV[1])
return 1
"""

_FORGET_GALLERY_FACE = """
-- KEYS: store:{sid}:gallery   ARGV: label, fid
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

_ERASE_FACES = """
-- ARGV: maxlen, actor, reason, now, audit_maxlen, then (fid, unseen_before) per face.
-- One erase per face, each recorded in the audit stream. With unseen_before (not ''), only
-- an unbound, unlabelled visitor last seen before that time is erased (the retention sweep:
-- checked here, so a visitor seen or bound since the sweep looked is kept).
local out = {}
for i = 6, #ARGV, 2 do
  local fid, before = ARGV[i], ARGV[i + 1]
  local face = 'face:' .. fid
  local existed = redis.call('EXISTS', face)
  local f = redis.call('HMGET', face, 'kind', 'member_id', 'label', 'last_seen', 'created')
  local seen = tonumber(f[4] or '') or tonumber(f[5] or '') or 0
  if before ~= '' and (f[1] ~= 'visitor' or (f[2] or '') ~= '' or (f[3] or '') ~= ''
                       or seen >= tonumber(before)) then
    existed = 0
  end
  local stores = {}
  if existed == 1 or before == '' then
    for _, entry in ipairs(redis.call('SMEMBERS', face .. ':vecs')) do
      local sid, vid = string.match(entry, '^(.*):(%d+)$')
      redis.call('HDEL', 'store:' .. sid .. ':vec', vid)
    end
    for _, entry in ipairs(redis.call('SMEMBERS', face .. ':photos')) do
      local sid, sha = string.match(entry, '^(.*):([^:]+)$')
      redis.call('HDEL', 'store:' .. sid .. ':photo', sha)
    end
    stores = redis.call('SMEMBERS', face .. ':stores')
    for _, sid in ipairs(stores) do
      local gen = redis.call('INCR', 'store:' .. sid .. ':gen')
      redis.call('XADD', 'store:' .. sid .. ':feed', 'MAXLEN', '~', ARGV[1], '*',
                 'op', 'remove', 'gen', gen, 'fid', fid)
    end
    for _, entry in ipairs(redis.call('SMEMBERS', face .. ':gallery')) do
      local sid, name = string.match(entry, '^([^:]*):(.*)$')
      if redis.call('HGET', 'store:' .. sid .. ':gallery', name) == fid then
        redis.call('HDEL', 'store:' .. sid .. ':gallery', name)
      end
    end
    if f[3] and f[3] ~= '' then  -- names filed before face:{fid}:gallery was kept
      for _, sid in ipairs(stores) do
        if redis.call('HGET', 'store:' .. sid .. ':gallery', f[3]) == fid then
          redis.call('HDEL', 'store:' .. sid .. ':gallery', f[3])
        end
      end
    end
    if f[2] and f[2] ~= '' then redis.call('DEL', 'member:' .. f[2]) end
    redis.call('DEL', face, face .. ':vecs', face .. ':photos', face .. ':stores',
               face .. ':gallery')
    if existed == 1 then
      -- a sighting answered just before the erase and recorded after it leaves no trace
      redis.call('SET', 'erased:' .. fid, '1', 'EX', 86400)
      redis.call('XADD', 'audit:erase', 'MAXLEN', '~', ARGV[5], '*', 'ts', ARGV[4],
                 'actor', ARGV[2], 'face_id', fid, 'reason', ARGV[3],
                 'stores', table.concat(stores, ','))
    end
  end
  out[#out + 1] = {existed, stores}
end
return out
"""

_VISITORS = """
-- ARGV: cursor, count. One SCAN step over face records: {next cursor, then FaceId, home
-- store, last seen for each unbound, unlabelled visitor found}; members and gallery never.
local step = redis.call('SCAN', ARGV[1], 'MATCH', 'face:*', 'COUNT', ARGV[2], 'TYPE', 'hash')
local out = {step[1]}
for _, key in ipairs(step[2]) do
  local fid = string.match(key, '^face:(%d+)$')
  if fid then
    local f = redis.call('HMGET', key, 'kind', 'member_id', 'label', 'home_store', 'last_seen',
                         'created')
    if f[1] == 'visitor' and (f[2] or '') == '' and (f[3] or '') == '' then
      out[#out + 1] = fid
      out[#out + 1] = f[4] or ''
      out[#out + 1] = f[5] or f[6] or '0'
    end
  end
end
return out
"""


_MERGE_FACES = """
-- KEYS: face:{keep}, face:{gone}   ARGV: keep, gone, maxlen
-- Every vector, photo hash, store, gallery name and the member of `gone` pass to `keep`;
-- each store's feed says so (remove gone, add its vectors under keep), so replicas follow.
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    return redis.error_reply('FACE_NOT_FOUND:' .. ARGV[i])
  end
end
local km = redis.call('HGET', KEYS[1], 'member_id') or ''
local gm = redis.call('HGET', KEYS[2], 'member_id') or ''
if km ~= '' and gm ~= '' and km ~= gm then return redis.error_reply('MEMBERS_DIFFER') end
local keep, gone = ARGV[1], ARGV[2]
local moved, order = {}, {}
for _, entry in ipairs(redis.call('SMEMBERS', 'face:' .. gone .. ':vecs')) do
  local sid, vid = string.match(entry, '^(.*):(%d+)$')
  local raw = redis.call('HGET', 'store:' .. sid .. ':vec', vid)
  if raw then
    local emb = string.sub(raw, string.find(raw, '|', 1, true) + 1)
    redis.call('HSET', 'store:' .. sid .. ':vec', vid, keep .. '|' .. emb)
    redis.call('SADD', 'face:' .. keep .. ':vecs', entry)
    if not moved[sid] then moved[sid] = {}; table.insert(order, sid) end
    table.insert(moved[sid], {vid, emb})
  end
end
for _, sid in ipairs(order) do
  local feed = 'store:' .. sid .. ':feed'
  local gen = redis.call('INCR', 'store:' .. sid .. ':gen')
  redis.call('XADD', feed, 'MAXLEN', '~', ARGV[3], '*', 'op', 'remove', 'gen', gen, 'fid', gone)
  for _, v in ipairs(moved[sid]) do
    gen = redis.call('INCR', 'store:' .. sid .. ':gen')
    redis.call('XADD', feed, 'MAXLEN', '~', ARGV[3], '*',
               'op', 'add', 'gen', gen, 'vid', v[1], 'fid', keep, 'emb', v[2])
  end
end
for _, entry in ipairs(redis.call('SMEMBERS', 'face:' .. gone .. ':photos')) do
  local sid, sha = string.match(entry, '^(.*):([^:]+)$')
  redis.call('HSET', 'store:' .. sid .. ':photo', sha, keep)
  redis.call('SADD', 'face:' .. keep .. ':photos', entry)
end
local label = redis.call('HGET', KEYS[2], 'label') or ''
local stores = redis.call('SMEMBERS', 'face:' .. gone .. ':stores')
for _, sid in ipairs(stores) do
  redis.call('SADD', 'face:' .. keep .. ':stores', sid)
  if label ~= '' and redis.call('HGET', 'store:' .. sid .. ':gallery', label) == gone then
    redis.call('HSET', 'store:' .. sid .. ':gallery', label, keep)
  end
end
for _, entry in ipairs(redis.call('SMEMBERS', 'face:' .. gone .. ':gallery')) do
  local sid, name = string.match(entry, '^([^:]*):(.*)$')
  if redis.call('HGET', 'store:' .. sid .. ':gallery', name) == gone then
    redis.call('HSET', 'store:' .. sid .. ':gallery', name, keep)
  end
  redis.call('SADD', 'face:' .. keep .. ':gallery', entry)
end
if (redis.call('HGET', KEYS[1], 'label') or '') == '' and label ~= '' then
  redis.call('HSET', KEYS[1], 'label', label)
end
local kc = tonumber(redis.call('HGET', KEYS[1], 'created') or '0')
local gc = tonumber(redis.call('HGET', KEYS[2], 'created') or '0')
if gc > 0 and (kc == 0 or gc < kc) then redis.call('HSET', KEYS[1], 'created', gc) end
local kl = tonumber(redis.call('HGET', KEYS[1], 'last_seen') or '0')
local gl = tonumber(redis.call('HGET', KEYS[2], 'last_seen') or '0')
if gl > kl then redis.call('HSET', KEYS[1], 'last_seen', gl) end
if km == '' and gm ~= '' then
  redis.call('HSET', KEYS[1], 'member_id', gm, 'kind', 'member')
  redis.call('HSET', 'member:' .. gm, 'face_id', keep)
end
redis.call('DEL', KEYS[2], 'face:' .. gone .. ':vecs', 'face:' .. gone .. ':photos',
           'face:' .. gone .. ':stores', 'face:' .. gone .. ':gallery')
-- says where `gone` went, so its visit history follows only a merge that happened
redis.call('SET', 'merged:' .. gone, keep, 'EX', 2592000)
return stores
"""


_BIND_MEMBER = """
-- KEYS: face:{fid}, member:{mid}   ARGV: fid, mid, profile json, move (1/0)
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('FACE_NOT_FOUND') end
local other = redis.call('HGET', KEYS[2], 'face_id')
local moved = false
if other and other ~= ARGV[1] then
  if ARGV[4] ~= '1' then return redis.error_reply('MEMBER_TAKEN:' .. other) end
  redis.call('HSET', 'face:' .. other, 'member_id', '', 'kind', 'visitor')
  moved = other
end
local previous = redis.call('HGET', KEYS[1], 'member_id')
if previous and previous ~= '' and previous ~= ARGV[2] then
  redis.call('DEL', 'member:' .. previous)
end
redis.call('HSET', KEYS[1], 'member_id', ARGV[2], 'kind', 'member')
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'face_id', ARGV[1], 'profile', ARGV[3])
return moved
"""


@dataclass
class FaceRecord:
    """What the chain knows about one person (never the photo)."""

    face_id: int
    kind: str
    home_store: str
    label: str = ""
    member_id: str = ""
    created: float = 0.0
    last_seen: float = 0.0
    embedder: str = ""


@dataclass
class FeedEvent:
    """One entry of a store's change feed."""

    id: str
    op: str
    gen: int
    face_id: int
    vec_id: int = 0
    embedding: bytes = b""


@dataclass
class AddResult:
    face_id: int
    vec_id: int
    gen: int
    feed_id: str
    duplicate: bool = False  # this photo was already ingested; nothing was added
    capped: bool = False  # the face already holds max_vectors vectors in the store


@dataclass
class EraseResult:
    existed: bool
    stores: list[str] = field(default_factory=list)


@dataclass
class AuditEntry:
    """One erase in the audit trail."""

    id: str  # the stream entry id: newest first, and the cursor for the next page
    ts: float
    actor: str  # a key's id, never the key
    face_id: int
    reason: str
    stores: list[str]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _event(eid: Any, fields: dict[Any, Any]) -> FeedEvent:
    f = {_s(k): v for k, v in fields.items()}
    return FeedEvent(
        id=_s(eid),
        op=_s(f["op"]),
        gen=int(f["gen"]),
        face_id=int(f["fid"]),
        vec_id=int(f.get("vid", 0)),
        embedding=f.get("emb", b""),
    )


class FaceDB:
    """The Redis data model; one instance per process, sharing the Redis client's pool."""

    def __init__(
        self, redis: Redis, feed_maxlen: int = FEED_MAXLEN, audit_maxlen: int = AUDIT_MAXLEN
    ) -> None:
        # redis-py's stubs type replies as str | bytes | list | ...; we decode explicitly.
        self.redis: Any = redis
        self.feed_maxlen = feed_maxlen
        self.audit_maxlen = audit_maxlen
        self._add = redis.register_script(_ADD_VECTOR)
        self._erase = redis.register_script(_ERASE_FACES)
        self._visitors = redis.register_script(_VISITORS)
        self._bind = redis.register_script(_BIND_MEMBER)
        self._merge = redis.register_script(_MERGE_FACES)
        self._label = redis.register_script(_LABEL_IF_UNLABELLED)
        self._gallery = redis.register_script(_SET_GALLERY_FACE)

    # --- ids -----------------------------------------------------------------------------

    async def new_face_id(self) -> int:
        """A chain-wide FaceId: never reused, int64-safe."""
        return int(await self.redis.incr("seq:face"))

    # --- store meta ----------------------------------------------------------------------

    async def claim_embedder(
        self, store_id: str, embedder: str, options: dict[str, Any] | None = None
    ) -> str:
        """Record the store's embedder identity (storeface.embedders.embedder_identity) on
        first use; returns the one recorded. A legacy "arcface" record is upgraded once, and
        only to the one model it can stand for given the group's embedder `options`
        (legacy_identity); any other identity finds it a mismatch."""
        key = f"store:{store_id}:meta"
        held, upgraded = await self.redis.eval(
            _CLAIM_EMBEDDER, 1, key, embedder, LEGACY_ARCFACE, legacy_identity(options)
        )
        if _s(upgraded):
            log.warning(
                "store %s: recorded embedder %r upgraded to %r (the recognizer arcface ran "
                "by default, or the one its group names, before stores recorded theirs)",
                store_id,
                _s(upgraded),
                _s(held),
            )
        return _s(held)

    # --- which node group serves a store (the hand-over when a store moves) ---------------

    async def mark_hosted(self, store_id: str, node_id: str) -> None:
        """A replica of `node_id` has the store loaded and serves it."""
        await self.redis.hset(f"store:{store_id}:hosts", node_id, f"{time.time():.3f}")

    async def unmark_hosted(self, store_id: str, node_id: str) -> None:
        await self.redis.hdel(f"store:{store_id}:hosts", node_id)

    async def is_hosted(self, store_id: str, node_id: str) -> bool:
        return bool(await self.redis.hexists(f"store:{store_id}:hosts", node_id))

    # --- vectors -------------------------------------------------------------------------

    async def add_vector(
        self,
        store_id: str,
        face_id: int,
        embedding: np.ndarray,
        *,
        embedder: str,
        kind: str = "gallery",
        label: str = "",
        member_id: str = "",
        photo_sha: str = "",
        create: bool = True,
        max_vectors: int | None = None,
    ) -> AddResult:
        """Store one embedding of a face in a store and announce it on the store's feed;
        with `max_vectors`, only while the face holds fewer vectors in that store."""
        emb = np.asarray(embedding, dtype=np.float32).tobytes()
        keys = [
            "seq:vec",
            f"face:{face_id}",
            f"face:{face_id}:vecs",
            f"store:{store_id}:vec",
            f"store:{store_id}:feed",
            f"store:{store_id}:gen",
            f"store:{store_id}:photo",
            f"face:{face_id}:photos",
            f"face:{face_id}:stores",
        ]
        args: list[bytes | str | int] = [
            face_id,
            store_id,
            emb,
            photo_sha,
            f"{time.time():.3f}",
            kind,
            label,
            member_id,
            self.feed_maxlen,
            embedder,
            "1" if create else "0",
            "" if max_vectors is None else max_vectors,
        ]
        try:
            vid, gen, feed_id, fid = await self._add(keys=keys, args=args)
        except Exception as exc:
            if "FACE_NOT_FOUND" in str(exc):
                raise FaceNotFound(face_id=face_id) from exc
            raise
        return AddResult(
            face_id=int(fid),
            vec_id=int(vid),
            gen=int(gen),
            feed_id=_s(feed_id),
            duplicate=int(vid) == 0 and _s(feed_id) != "capped",
            capped=int(vid) == 0 and _s(feed_id) == "capped",
        )

    async def face_vectors(
        self,
        face_id: int,
        embedder: str,
        store_options: dict[str, dict[str, Any]] | None = None,
    ) -> np.ndarray | None:
        """Every stored vector of a face made by `embedder` (any store); None: no such face.
        `store_options` (store id → its group's embedder options) say what a store still
        recorded as legacy "arcface" holds; a store not in it named no recognizer."""
        options = store_options or {}
        if not await self.redis.exists(f"face:{face_id}"):
            return None
        entries = [_s(e).rsplit(":", 1) for e in await self.redis.smembers(f"face:{face_id}:vecs")]
        stores = sorted({sid for sid, _ in entries})
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in stores:
                pipe.hget(f"store:{sid}:meta", "embedder")
            made_by = dict(
                zip(stores, [_s(e) if e else "" for e in await pipe.execute()], strict=True)
            )
        wanted = [
            (sid, vid)
            for sid, vid in entries
            if same_model(made_by.get(sid, ""), embedder, options.get(sid))
        ]
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid, vid in wanted:
                pipe.hget(f"store:{sid}:vec", vid)
            raws = await pipe.execute()
        vecs = [np.frombuffer(raw.partition(b"|")[2], dtype=np.float32) for raw in raws if raw]
        return np.vstack(vecs) if vecs else np.zeros((0, 0), np.float32)

    async def photo_face(self, store_id: str, photo_sha: str) -> int | None:
        raw = await self.redis.hget(f"store:{store_id}:photo", photo_sha)
        return int(raw) if raw else None

    async def scan_vectors(
        self, store_id: str, batch: int = 5000
    ) -> AsyncIterator[tuple[list[int], list[int], np.ndarray]]:
        """Yield (vec_ids, face_ids, embeddings) batches of every vector of a store."""
        cursor = 0
        while True:
            cursor, chunk = await self.redis.hscan(f"store:{store_id}:vec", cursor, count=batch)
            if chunk:
                vids, fids, embs = [], [], []
                for vid, raw in chunk.items():
                    fid, _, emb = raw.partition(b"|")
                    vids.append(int(vid))
                    fids.append(int(fid))
                    embs.append(np.frombuffer(emb, dtype=np.float32))
                yield vids, fids, np.vstack(embs)
            if cursor == 0:
                return

    async def gallery_face(self, store_id: str, label: str) -> int | None:
        """The FaceId a store's gallery gave this person's folder, if any."""
        raw = await self.redis.hget(f"store:{store_id}:gallery", label)
        return int(raw) if raw else None

    async def label_if_unlabelled(self, face_id: int, label: str) -> bool:
        """Name a face that exists and has no label yet (a visitor found to be a gallery
        person), in one step; False where it was erased or is named already."""
        return bool(await self._label(keys=[f"face:{face_id}"], args=[label]))

    async def set_gallery_face(self, store_id: str, label: str, face_id: int) -> bool:
        """File a gallery folder's person under a FaceId; False (nothing filed) where the
        face was erased meanwhile."""
        keys = [f"face:{face_id}", f"store:{store_id}:gallery", f"face:{face_id}:gallery"]
        return bool(await self._gallery(keys=keys, args=[label, face_id, store_id]))

    async def forget_gallery_face(self, store_id: str, label: str, face_id: int) -> None:
        """Drop a gallery person's entry while it still names `face_id` (found erased)."""
        await self.redis.eval(_FORGET_GALLERY_FACE, 1, f"store:{store_id}:gallery", label, face_id)

    # --- feed ----------------------------------------------------------------------------

    async def feed_head(self, store_id: str) -> tuple[str, int]:
        """The feed's last entry id and the store's sequence number, read atomically."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xrevrange(f"store:{store_id}:feed", "+", "-", count=1)
            pipe.get(f"store:{store_id}:gen")
            last, gen = await pipe.execute()
        return (_s(last[0][0]) if last else "0-0"), int(gen or 0)

    async def read_feed(self, store_id: str, after: str, count: int = 1000) -> list[FeedEvent]:
        """Feed entries after `after`, without waiting for new ones."""
        entries = await self.redis.xrange(
            f"store:{store_id}:feed", f"({after}" if after != "0-0" else "-", "+", count=count
        )
        return [_event(eid, fields) for eid, fields in entries]

    async def read_feeds(
        self, positions: dict[str, str], count: int = 1000, block_ms: int = 500
    ) -> dict[str, list[FeedEvent]]:
        """One blocking read over several stores' feeds: entries after each store's position."""
        if not positions:
            return {}
        streams = await self.redis.xread(
            {f"store:{sid}:feed": pos for sid, pos in positions.items()},
            count=count,
            block=block_ms,
        )
        out: dict[str, list[FeedEvent]] = {}
        for key, entries in streams or []:
            sid = _s(key).removeprefix("store:").removesuffix(":feed")
            out[sid] = [_event(eid, fields) for eid, fields in entries]
        return out

    # --- faces ---------------------------------------------------------------------------

    async def get_face(self, face_id: int) -> FaceRecord | None:
        raw = await self.redis.hgetall(f"face:{face_id}")
        if not raw:
            return None
        return self._record(face_id, raw)

    async def get_faces(self, face_ids: list[int]) -> dict[int, FaceRecord]:
        """Records of several faces in one round trip; erased faces are simply absent."""
        if not face_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for fid in face_ids:
                pipe.hgetall(f"face:{fid}")
            rows = await pipe.execute()
        return {fid: self._record(fid, raw) for fid, raw in zip(face_ids, rows, strict=True) if raw}

    @staticmethod
    def _record(face_id: int, raw: dict[Any, Any]) -> FaceRecord:
        r = {_s(k): _s(v) for k, v in raw.items()}
        return FaceRecord(
            face_id=face_id,
            kind=r.get("kind", ""),
            home_store=r.get("home_store", ""),
            label=r.get("label", ""),
            member_id=r.get("member_id", ""),
            created=float(r.get("created") or 0),
            last_seen=float(r.get("last_seen") or 0),
            embedder=r.get("embedder", ""),
        )

    async def erase_face(
        self, face_id: int, actor: str = "system", reason: str = "erase"
    ) -> EraseResult:
        """Erase a person everywhere: every vector in every store, photo hashes, member; the
        erase is recorded in the audit trail (`actor`: a key's id, never the key)."""
        return (await self.erase_faces([face_id], actor=actor, reason=reason))[face_id]

    async def erase_faces(
        self,
        face_ids: list[int],
        unseen_before: list[float] | None = None,
        *,
        actor: str = "system",
        reason: str = "erase",
    ) -> dict[int, EraseResult]:
        """Several erases in one call. With `unseen_before` (one time per face), a face is
        erased only if it is still an unbound, unlabelled visitor not seen since then."""
        args: list[int | str] = [self.feed_maxlen, actor, reason, f"{time.time():.3f}"]
        args.append(self.audit_maxlen)
        for i, fid in enumerate(face_ids):
            args += [fid, f"{unseen_before[i]:.3f}" if unseen_before is not None else ""]
        rows = await self._erase(args=args) if face_ids else []
        return {
            fid: EraseResult(existed=bool(existed), stores=sorted(_s(s) for s in stores))
            for fid, (existed, stores) in zip(face_ids, rows, strict=True)
        }

    async def visitor_batches(
        self, batch: int = 2000
    ) -> AsyncIterator[list[tuple[int, str, float]]]:
        """Every unbound, unlabelled visitor as (FaceId, home store, last seen), in batches:
        what the retention sweep looks at. Members and gallery faces are never listed."""
        cursor: int | bytes = 0
        while True:
            cursor, *flat = await self._visitors(args=[cursor, batch])
            if flat:
                yield [
                    (int(flat[i]), _s(flat[i + 1]), float(flat[i + 2]))
                    for i in range(0, len(flat), 3)
                ]
            if int(cursor) == 0:
                return

    async def audit(self, limit: int, before: str | None = None) -> list[AuditEntry]:
        """The erase trail, newest first; `before`: an entry id, for the page after it."""
        rows = await self.redis.xrevrange(
            AUDIT_KEY, f"({before}" if before else "+", "-", count=limit
        )
        out = []
        for eid, raw in rows:
            f = {_s(k): _s(v) for k, v in raw.items()}
            out.append(
                AuditEntry(
                    id=_s(eid),
                    ts=float(f.get("ts") or 0),
                    actor=f.get("actor", ""),
                    face_id=int(f.get("face_id") or 0),
                    reason=f.get("reason", ""),
                    stores=[s for s in f.get("stores", "").split(",") if s],
                )
            )
        return out

    async def merge_faces(self, keep: int, gone: int) -> list[str]:
        """Make `gone` part of `keep` (one person found under two FaceIds): its vectors, photo
        hashes, gallery names and member move over, and `gone` is no more. The stores it
        was in."""
        try:
            stores = await self._merge(
                keys=[f"face:{keep}", f"face:{gone}"], args=[keep, gone, self.feed_maxlen]
            )
        except Exception as exc:
            text = str(exc)
            if "FACE_NOT_FOUND" in text:
                raise FaceNotFound(face_id=int(text.rsplit(":", 1)[1].strip())) from exc
            if "MEMBERS_DIFFER" in text:
                raise MemberTaken(
                    f"FaceIds {keep} and {gone} are bound to different members: unbind one first",
                    face_id=gone,
                ) from exc
            raise
        return sorted(_s(s) for s in stores)

    # --- members -------------------------------------------------------------------------

    async def bind_member(
        self, face_id: int, member_id: str, profile: dict[str, Any], move: bool = False
    ) -> int | None:
        """Bind a member id (and profile) to a face: a member has one face, a face one member.

        A member bound to another face is a MemberTaken unless `move`, which unbinds it there;
        returns the face it was moved from, if any. One script: two binds cannot interleave."""
        try:
            moved = await self._bind(
                keys=[f"face:{face_id}", f"member:{member_id}"],
                args=[face_id, member_id, json.dumps(profile), "1" if move else "0"],
            )
        except Exception as exc:
            text = str(exc)
            if "FACE_NOT_FOUND" in text:
                raise FaceNotFound(face_id=face_id) from exc
            if "MEMBER_TAKEN" in text:
                other = int(text.rsplit(":", 1)[1].strip())
                raise MemberTaken(
                    f"member {member_id} is bound to FaceId {other}; move it explicitly",
                    member_id=member_id,
                    face_id=other,
                ) from exc
            raise
        return int(moved) if moved else None

    async def member_face(self, member_id: str) -> int | None:
        raw = await self.redis.hget(f"member:{member_id}", "face_id")
        return int(raw) if raw else None

    async def unbind_member(self, face_id: int) -> str:
        record = await self.get_face(face_id)
        if record is None:
            raise FaceNotFound(face_id=face_id)
        if not record.member_id:
            raise MemberNotBound(face_id=face_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"face:{face_id}", mapping={"member_id": "", "kind": "visitor"})
            pipe.delete(f"member:{record.member_id}")
            await pipe.execute()
        return record.member_id

    async def member_profiles(self, member_ids: list[str]) -> dict[str, dict[str, Any]]:
        ids = [m for m in dict.fromkeys(member_ids) if m]
        if not ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for mid in ids:
                pipe.hget(f"member:{mid}", "profile")
            rows = await pipe.execute()
        return {mid: json.loads(raw) for mid, raw in zip(ids, rows, strict=True) if raw}
