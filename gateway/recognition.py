"""Recognition, search and verification across stores: the gateway's core, no web here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

import numpy as np

from gateway.analytics import Analytics
from gateway.models import (
    Member,
    RecognizedFace,
    RecognizeResponse,
    SearchFace,
    SearchMatch,
    SearchResponse,
    VerifyResponse,
)
from gateway.routing import StoreMap
from gateway.shards import ShardClient
from storeface import wire
from storeface.distances import distances
from storeface.errors import NoFace, StorefaceError
from storeface.facedb import FaceDB, FaceRecord
from storeface.matching import rule_of
from storeface.stores import StoreConfig

log = logging.getLogger("gateway.recognition")
CAPPED_KEPT = 100_000
# Learned views being sent to shards at once; more are dropped (learning is an optimisation,
# and a shard that is slow to answer must not pile them up).
LEARNING_MAX = 64


@dataclass
class Counters:
    """What /metrics reports beyond latency; plain numbers, exported by the app."""

    fallbacks: int = 0
    registrations: int = 0
    learned_views: int = 0  # embeddings a confident recognition added to its FaceId
    learns_dropped: int = 0  # views not learned: LEARNING_MAX were already in flight
    degraded: dict[str, int] = field(default_factory=dict)


@dataclass
class Gateway:
    """Everything a gateway replica holds, opened in the lifespan."""

    stores: StoreMap
    shards: ShardClient
    db: FaceDB
    analytics: Analytics
    fanout_deadline_s: float
    counters: Counters = field(default_factory=Counters)
    # FaceIds their store said hold max_per_face views: a FaceId never loses one, so no
    # need to ask again while the cap stays (it is part of the key: stores.yaml may raise
    # it); cleared when it grows past CAPPED_KEPT.
    capped: set[tuple[str, int, int]] = field(default_factory=set)  # (store, FaceId, cap)
    learning: set[asyncio.Task[None]] = field(default_factory=set)  # views being learned
    observe: Callable[[dict[str, float]], None] = lambda timings: None

    def in_background(self, work: Coroutine[object, object, None]) -> bool:
        """Run `work` after the answer, tracked (the lifespan stops what is left); dropped
        when LEARNING_MAX are already running."""
        if len(self.learning) >= LEARNING_MAX:
            work.close()
            self.counters.learns_dropped += 1
            return False
        task = asyncio.get_running_loop().create_task(work)
        self.learning.add(task)
        task.add_done_callback(self._finished)
        return True

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.learning.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background learning failed", exc_info=task.exception())


@dataclass
class _Candidate:
    face_id: int
    store_id: str
    distance: float
    label: str


@dataclass
class FanOut:
    """What the other stores answered: best first per embedding, who did not answer, and how
    many faces the answering stores hold (a search over more faces needs a stricter
    threshold: storeface/matching.py)."""

    rows: list[list[_Candidate]]
    degraded: list[str]
    faces: int = 0

    def threshold(self, ident: wire.IdentifyResponse) -> float:
        """The home's rule over the home's faces and these."""
        rule = rule_of(ident.base_threshold or ident.threshold, ident.threshold_per_decade)
        return rule.threshold(ident.gallery_faces + self.faces)


async def fan_out(
    gw: Gateway,
    home: StoreConfig,
    embeddings: list[list[float]],
    top_k: int,
    stores: list[StoreConfig] | None = None,
    embedder: str = "",
) -> FanOut:
    """Search other stores (the home's fallback stores unless given) under one deadline: one
    call per node group, concurrently.

    Stores whose group failed, was late, did not have them loaded, or runs another embedder
    than `embedder` (groups that name none pick theirs at start-up) are `degraded`."""
    targets = gw.stores.by_group(gw.stores.fallback_targets(home) if stores is None else stores)
    merged: list[list[_Candidate]] = [[] for _ in embeddings]
    if not targets or not embeddings:
        return FanOut(merged, [])
    deadline = gw.fanout_deadline_s
    tasks = {
        asyncio.create_task(
            gw.shards.search(
                gw.stores.group_urls(group), stores, embeddings, top_k, deadline_s=deadline
            )
        ): stores
        for group, stores in targets
    }
    done, pending = await asyncio.wait(tasks, timeout=deadline)
    for t in pending:
        t.cancel()
    degraded = [sid for t in pending for sid in tasks[t]]
    faces = 0
    for t in done:
        if t.exception() is not None:
            degraded += tasks[t]
            log.warning("fan-out to %s failed: %s", ", ".join(tasks[t]), t.exception())
            continue
        found = t.result()
        if embedder and found.embedder != embedder:  # its distances would mean nothing here
            degraded += tasks[t]
            log.warning("fan-out: %s run %s, not %s", ", ".join(tasks[t]), found.embedder, embedder)
            continue
        degraded += found.missing
        faces += found.gallery_faces
        for row, matches in zip(merged, found.results, strict=True):
            row += [_Candidate(m.face_id, m.store_id, m.distance, m.label) for m in matches]
    for row in merged:
        row.sort(key=lambda c: c.distance)
    for sid in degraded:
        gw.counters.degraded[sid] = gw.counters.degraded.get(sid, 0) + 1
    return FanOut(merged, sorted(degraded), faces)


@dataclass
class _Visit:
    """One recognition in progress: where it happens and what is known so far."""

    home: StoreConfig
    home_urls: list[str]
    ident: wire.IdentifyResponse
    threshold: float
    best: list[_Candidate | None] = field(default_factory=list)  # per face, once found
    runner_up: list[float | None] = field(default_factory=list)  # next FaceId at home, per face
    records: dict[int, FaceRecord] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)


async def recognize(
    gw: Gateway, store_id: str, image: bytes, now: float | None = None
) -> RecognizeResponse:
    """A FaceId for every face: known here, known elsewhere, or a new visitor."""
    stopwatch = _Stopwatch()
    v = await _identify_at_home(gw, store_id, image)
    timings = {f"shard_{k}": ms for k, ms in v.ident.timings.items()}
    timings["identify_ms"] = stopwatch.lap()
    await _search_elsewhere(gw, v)
    timings["fanout_ms"] = stopwatch.lap()
    results = await _face_ids(gw, v)
    timings["register_ms"] = stopwatch.lap()
    await _members_and_visits(gw, v, results, now)
    timings["redis_ms"] = stopwatch.lap()
    timings["total_ms"] = stopwatch.total()
    gw.observe(timings)
    return RecognizeResponse(
        store_id=v.home.id,
        faces=results,
        degraded=v.degraded,
        timings={k: round(ms, 3) for k, ms in timings.items()},
    )


class _Stopwatch:
    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()

    def lap(self) -> float:
        """Milliseconds since the last lap."""
        now = time.perf_counter()
        ms, self.last = (now - self.last) * 1000, now
        return ms

    def total(self) -> float:
        return (time.perf_counter() - self.start) * 1000


async def _identify_at_home(gw: Gateway, store_id: str, image: bytes) -> _Visit:
    """Every face of the image with its best match at home, if under the threshold."""
    home = gw.stores.route(store_id)
    home_urls = gw.stores.urls(home)
    # Two: learning a view needs the margin to the next FaceId.
    top_k = 2 if home.learn_views is not None else 1
    ident = await gw.shards.identify(home_urls, home.id, image, top_k=top_k)
    v = _Visit(home, home_urls, ident, ident.threshold)  # the shard's: for the store's size
    for face in ident.faces:
        m = face.matches[0] if face.matches else None
        hit = m is not None and m.distance <= v.threshold
        v.best.append(_Candidate(m.face_id, home.id, m.distance, m.label) if m and hit else None)
        v.runner_up.append(face.matches[1].distance if len(face.matches) > 1 else None)
    return v


async def _search_elsewhere(gw: Gateway, v: _Visit) -> None:
    """Faces unknown at home are searched in the other stores: only their embeddings travel."""
    unknown = [i for i, b in enumerate(v.best) if b is None]
    if not unknown or v.home.fallback == "none":
        return
    gw.counters.fallbacks += 1
    embeddings = [v.ident.faces[i].embedding for i in unknown]
    found = await fan_out(gw, v.home, embeddings, 1, embedder=v.ident.embedder)
    v.degraded = found.degraded
    limit = found.threshold(v.ident)
    for i, row in zip(unknown, found.rows, strict=True):
        if row and row[0].distance <= limit:
            v.best[i] = row[0]


async def _face_ids(gw: Gateway, v: _Visit) -> list[RecognizedFace]:
    """Known faces keep their FaceId (cross-store ones are learned at home); unknown ones are
    registered as new visitors, unless too poor to count (`uncountable`)."""
    v.records = await gw.db.get_faces([b.face_id for b in v.best if b is not None])
    results: list[RecognizedFace] = []
    for face, cand, runner_up in zip(v.ident.faces, v.best, v.runner_up, strict=True):
        if cand is not None and cand.face_id not in v.records:
            cand = None  # erased since the index last heard: treat as unknown
        if cand is not None:
            if cand.store_id != v.home.id and v.home.learn_cross_store:
                await _learn(gw, v.home, v.home_urls, face, cand.face_id)
            elif cand.store_id == v.home.id and _worth_learning(gw, v, face, cand, runner_up):
                # after the answer: the shard takes the store's registration lock for it
                gw.in_background(_learn_view(gw, v.home, v.home_urls, face, cand, v.threshold))
            results.append(_answer(face, cand, v.records[cand.face_id], False, cand.store_id))
        elif (why := uncountable(v.home, face.quality)) is not None:
            results.append(
                _answer(face, None, None, False, None).model_copy(update={"reason": why})
            )
        else:
            results.append(await _register(gw, v, face))
    return results


def uncountable(store: StoreConfig, q: wire.Quality) -> str | None:
    """Why an unknown face gets no new visitor FaceId, or None: a face this poor would not
    match when the same person comes back, so registering it would count them twice."""
    if not store.auto_register:
        return "not_registering"
    return too_poor(store, q)


def too_poor(store: StoreConfig, q: wire.Quality) -> str | None:
    """Why a face is too poor to register or to learn from, or None."""
    if q.size < store.min_face_size:
        return "too_small"
    if q.blur < store.min_face_blur:
        return "too_blurred"
    if q.yaw is not None and abs(q.yaw) > store.max_face_yaw:
        return "turned_away"
    return None


async def _register(gw: Gateway, v: _Visit, face: wire.ShardFace) -> RecognizedFace:
    """A new visitor FaceId at home, or the one a concurrent post just registered."""
    reg = await gw.shards.register(
        v.home_urls,
        v.home.id,
        wire.RegisterRequest(embedding=face.embedding, threshold=v.threshold),
    )
    fallback = FaceRecord(face_id=reg.face_id, kind="visitor", home_store=v.home.id)
    if reg.created:
        gw.counters.registrations += 1
        cand, record = _Candidate(reg.face_id, v.home.id, 0.0, ""), fallback
    else:
        cand = _Candidate(reg.face_id, v.home.id, reg.distance or 0.0, "")
        record = (await gw.db.get_faces([reg.face_id])).get(reg.face_id) or fallback
    v.records[cand.face_id] = record
    return _answer(face, cand, record, reg.created, None if reg.created else v.home.id)


async def _members_and_visits(
    gw: Gateway, v: _Visit, results: list[RecognizedFace], now: float | None
) -> None:
    """Attach labels and member profiles; count each person once per frame as a visit."""
    profiles = await gw.db.member_profiles(
        [v.records[r.face_id].member_id for r in results if r.face_id is not None]
    )
    counted: set[int] = set()
    for r in results:
        if r.face_id is None:
            r.visit = "not_counted"
            continue
        rec = v.records[r.face_id]
        r.label, r.kind = rec.label, rec.kind
        if rec.member_id:
            r.member = Member(member_id=rec.member_id, profile=profiles.get(rec.member_id, {}))
        if r.face_id in counted:  # the same person twice in one frame is one visit
            r.visit = "deduped"
            continue
        counted.add(r.face_id)
        r.visit = await gw.analytics.record(v.home.id, r.face_id, bool(rec.member_id), now)


async def _learn(
    gw: Gateway, home: StoreConfig, home_urls: list[str], face: wire.ShardFace, face_id: int
) -> None:
    """Add a cross-store face's embedding at home, so the next visit matches locally."""
    try:
        await gw.shards.enroll_embedding(
            home_urls,
            home.id,
            wire.EnrollEmbeddingRequest(embedding=face.embedding, face_id=face_id),
        )
    except StorefaceError as exc:  # learning is an optimisation; the answer stands
        log.warning("could not learn face %s at home: %s", face_id, exc.message)


def _worth_learning(
    gw: Gateway, v: _Visit, face: wire.ShardFace, cand: _Candidate, runner_up: float | None
) -> bool:
    """A confident, unambiguous home match of a good face, in a store that learns views, of
    a FaceId not known to be full."""
    lv = v.home.learn_views
    if lv is None or lv.max_per_face < 2 or (v.home.id, cand.face_id, lv.max_per_face) in gw.capped:
        return False
    t = v.threshold
    if not lv.novel * t < cand.distance <= lv.confident * t:
        return False
    if runner_up is not None and runner_up - cand.distance < lv.margin * t:
        return False
    return too_poor(v.home, face.quality) is None


async def _learn_view(
    gw: Gateway,
    home: StoreConfig,
    home_urls: list[str],
    face: wire.ShardFace,
    cand: _Candidate,
    threshold: float,
) -> None:
    """Add the face's embedding to its FaceId as one more view (docs/benchmarks.md, "More
    than one view per FaceId"); the shard enforces the cap and novelty again under its lock
    (or skips it when the lock is busy), and refuses an erased FaceId."""
    lv = home.learn_views
    if lv is None:
        return
    req = wire.EnrollEmbeddingRequest(
        embedding=face.embedding,
        face_id=cand.face_id,
        max_vectors=lv.max_per_face,
        min_distance=lv.novel * threshold,
    )
    try:
        done = await gw.shards.enroll_embedding(home_urls, home.id, req)
    except StorefaceError as exc:  # learning is an optimisation; the answer stands
        log.warning("could not learn a view of face %s: %s", cand.face_id, exc.message)
        return
    if done.skipped == "capped":
        if len(gw.capped) >= CAPPED_KEPT:
            gw.capped.clear()
        gw.capped.add((home.id, cand.face_id, lv.max_per_face))
    elif done.vec_id:
        gw.counters.learned_views += 1


def _answer(
    face: wire.ShardFace,
    cand: _Candidate | None,
    record: FaceRecord | None,
    is_new: bool,
    matched_store: str | None,
) -> RecognizedFace:
    return RecognizedFace(
        face_id=cand.face_id if cand else None,
        is_new=is_new,
        matched_store=matched_store,
        distance=None if cand is None or is_new else cand.distance,
        label=record.label if record else "",
        kind=record.kind if record else "",
        box=face.box,
        quality=face.quality,
    )


async def search(
    gw: Gateway, store_id: str, image: bytes, top_k: int, everywhere: bool
) -> SearchResponse:
    """Top-k matches per face at home (with `everywhere`, also in every other store that
    may run the same embedder, whatever the fallback policy), no side effects."""
    home = gw.stores.route(store_id)
    ident = await gw.shards.identify(gw.stores.urls(home), home.id, image, top_k=top_k)
    rows: list[list[_Candidate]] = [
        [_Candidate(m.face_id, home.id, m.distance, m.label) for m in f.matches]
        for f in ident.faces
    ]
    degraded: list[str] = []
    threshold = ident.threshold
    if everywhere and ident.faces:
        others = await fan_out(
            gw,
            home,
            [f.embedding for f in ident.faces],
            top_k,
            stores=gw.stores.config.compatible(home),
            embedder=ident.embedder,
        )
        degraded, threshold = others.degraded, others.threshold(ident)
        rows = [
            sorted(a + b, key=lambda c: c.distance) for a, b in zip(rows, others.rows, strict=True)
        ]
    live = await gw.db.get_faces(list({c.face_id for row in rows for c in row}))
    faces = []
    for f, row in zip(ident.faces, rows, strict=True):
        seen: set[int] = set()
        matches = []
        for c in row:
            if c.face_id in live and c.face_id not in seen:
                seen.add(c.face_id)
                matches.append(
                    SearchMatch(
                        face_id=c.face_id,
                        store_id=c.store_id,
                        label=live[c.face_id].label,
                        distance=c.distance,
                    )
                )
        faces.append(SearchFace(box=f.box, quality=f.quality, matches=matches[:top_k]))
    return SearchResponse(
        store_id=home.id,
        threshold=threshold,
        faces=faces,
        degraded=degraded,
    )


async def verify(gw: Gateway, store_id: str, a: bytes, b: bytes) -> VerifyResponse:
    """1:1: are the largest faces of two photos the same person?"""
    store = gw.stores.route(store_id)
    urls = gw.stores.urls(store)
    ia, ib = await asyncio.gather(
        gw.shards.identify(urls, store.id, a, 1), gw.shards.identify(urls, store.id, b, 1)
    )
    for name, ident in (("image_a", ia), ("image_b", ib)):
        if not ident.faces:
            raise NoFace(f"no face in {name}", image=name)
    ea = np.asarray([ia.faces[0].embedding], np.float32)
    eb = np.asarray([ib.faces[0].embedding], np.float32)
    dist = float(distances(ea, eb, ia.metric)[0, 0])
    threshold = ia.base_threshold or ia.threshold  # 1:1: no gallery, so not the size's
    return VerifyResponse(
        same=dist <= threshold, distance=round(dist, 6), threshold=threshold, embedder=ia.embedder
    )
