"""What a shard node does, as plain functions over its hosted stores, pool and FaceDB."""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Any

import numpy as np
from redis.exceptions import LockError

from shard_node.faces.base import Face, enrollable_face
from shard_node.index import Match as IndexMatch
from shard_node.node import Node, StoreState
from storeface import wire
from storeface.distances import distances
from storeface.errors import AlreadyEnrolled, FaceMismatch, FaceNotFound, InvalidRequest
from storeface.facedb import FaceDB

ERASED_SLACK = 2
# A learned view waits this long for the store's registration lock, then is skipped ("busy"):
# it is optional, and registrations (a camera waiting) come first.
VIEW_LOCK_WAIT_S = 0.5
VIEW_LOCK_POLL_S = 0.02


async def _labelled(db: FaceDB, rows: list[list[tuple[IndexMatch, str]]]) -> list[list[wire.Match]]:
    """Attach labels; drops faces erased in Redis that this replica has not yet seen go."""
    ids = list({m.face_id for row in rows for m, _ in row})
    records = await db.get_faces(ids)
    return [
        [
            wire.Match(
                face_id=m.face_id,
                distance=round(m.distance, 6),
                label=records[m.face_id].label,
                store_id=sid,
            )
            for m, sid in row
            if m.face_id in records
        ]
        for row in rows
    ]


def _tagged(rows: list[list[IndexMatch]], store_id: str) -> list[list[tuple[IndexMatch, str]]]:
    return [[(m, store_id) for m in row] for row in rows]


def _face_wire(face: Face, matches: list[wire.Match]) -> wire.ShardFace:
    x, y, w, h = face.box
    return wire.ShardFace(
        box=wire.Box(x=x, y=y, w=w, h=h),
        quality=wire.Quality(
            size=face.size, blur=round(face.blur, 2), score=round(face.score, 4), yaw=face.yaw
        ),
        landmarks=face.landmarks,
        embedding=[float(v) for v in face.embedding],
        matches=matches,
    )


async def identify(state: StoreState, image: bytes, top_k: int) -> wire.IdentifyResponse:
    """Every face in the image, largest first, with its nearest FaceIds in this store."""
    state.require_ready()
    t0 = time.perf_counter()
    analysis = await state.pool.analyze(image)
    t1 = time.perf_counter()
    timings = dict(analysis.timings)
    rows: list[list[wire.Match]] = []
    size = state.replica.index.face_count
    if analysis.faces:
        found = state.replica.index.search(np.vstack([f.embedding for f in analysis.faces]), top_k)
        rows = await _labelled(state.db, _tagged(found, state.store.id))
    timings["pool_ms"] = (t1 - t0) * 1000
    timings["search_ms"] = (time.perf_counter() - t1) * 1000
    state.observe(timings)
    return wire.IdentifyResponse(
        store_id=state.store.id,
        embedder=state.replica.info.identity,
        metric=state.replica.info.metric,
        threshold=state.rule.threshold(size),
        gallery_faces=size,
        base_threshold=state.rule.base,
        threshold_per_decade=state.rule.per_decade,
        width=analysis.width,
        height=analysis.height,
        faces=[_face_wire(f, m) for f, m in zip(analysis.faces, rows, strict=True)],
        timings={k: round(v, 3) for k, v in timings.items()},
    )


async def search(node: Node, req: wire.SearchRequest) -> wire.SearchResponse:
    """Top-k FaceIds over any of the group's stores: the gateway's one call per node group."""
    t0 = time.perf_counter()
    wanted = node.store_ids() if req.stores is None else list(dict.fromkeys(req.stores))
    live = [node.stores[s] for s in wanted if s in node.stores and node.stores[s].serving]
    missing = sorted(set(wanted) - {st.store.id for st in live})
    rows: list[list[tuple[IndexMatch, str]] | None] = [None] * len(req.embeddings)
    if live:
        # Validated once: every store of a group shares the node's embedder.
        queries = live[0].replica.index.prepare(np.asarray(req.embeddings, dtype=np.float32))
        # A few more than asked: faces erased in Redis but not yet here drop out below.
        k = req.top_k + ERASED_SLACK
        if node.group is not None and len(live) > 1:
            rows = node.group.search(queries, k, {st.store.id for st in live})
        todo = [i for i, row in enumerate(rows) if row is None]
        if todo:
            looped = _search_each(live, queries[todo], k)
            for i, row in zip(todo, looped, strict=True):
                rows[i] = row
    return wire.SearchResponse(
        node_id=node.node_id,
        embedder=node.info.identity,
        results=[r[: req.top_k] for r in await _labelled(node.db, [row or [] for row in rows])],
        stores=[st.store.id for st in live],
        missing=missing,
        gallery_faces=sum(st.replica.index.face_count for st in live),
        search_ms=round((time.perf_counter() - t0) * 1000, 3),
    )


def _search_each(
    live: list[StoreState], queries: np.ndarray, k: int
) -> list[list[tuple[IndexMatch, str]]]:
    """Each store's own index in turn, merged: best first, one entry per FaceId."""
    rows: list[list[tuple[IndexMatch, str]]] = [[] for _ in queries]
    for st in live:
        found_rows = st.replica.index.search_prepared(queries, k)
        for row, found in zip(rows, found_rows, strict=True):
            row += [(m, st.store.id) for m in found]
    merged = []
    for row in rows:
        best: dict[int, tuple[IndexMatch, str]] = {}
        for m, sid in sorted(row, key=lambda ms: ms[0].distance):
            best.setdefault(m.face_id, (m, sid))  # a learned face may live in several stores
        merged.append(list(best.values())[:k])
    return merged


async def enroll_image(
    state: StoreState,
    image: bytes,
    *,
    face_id: int | None,
    label: str,
    member_id: str,
    kind: str,
    largest: bool = False,
    new_person: bool = False,
    force: bool = False,
) -> wire.EnrollResponse:
    """Enroll the one face of a photo; the same photo twice is a no-op (by content hash).

    Without `face_id`, a face the store already knows (under its threshold) is answered with
    that FaceId, `created: false` and the distance, and the photo joins it — or, with
    `new_person`, refused as already_enrolled. With `face_id`, a photo far from that face is
    refused as face_mismatch unless `force`."""
    state.require_ready()
    photo_sha = hashlib.sha256(image).hexdigest()
    known = await state.db.photo_face(state.store.id, photo_sha)
    if known is not None and new_person:
        raise AlreadyEnrolled(
            f"this exact photo is enrolled as FaceId {known}", face_id=known, distance=0.0
        )
    if known is not None:
        return wire.EnrollResponse(face_id=known, vec_id=0, created=False, duplicate=True)
    analysis = await state.pool.analyze(image)
    face = enrollable_face(analysis.faces, state.store.min_face_size, largest)
    vec = state.replica.index.prepare(face.embedding)[0]
    if face_id is not None:
        distance = None if force else await _check_same_face(state, vec, face_id)
        stored = await _store(
            state, vec, face_id=face_id, label="", member_id="", kind=kind, photo_sha=photo_sha
        )
        return stored.model_copy(update={"distance": distance})
    async with _registration(state):
        best = await _nearest_known(state, vec)
        if best is None:
            return await _store(
                state,
                vec,
                face_id=None,
                label=label,
                member_id=member_id,
                kind=kind,
                photo_sha=photo_sha,
            )
        if new_person:
            raise AlreadyEnrolled(
                f"this face is FaceId {best.face_id} (distance {best.distance:.3f})",
                face_id=best.face_id,
                distance=best.distance,
                label=best.label,
            )
        stored = await _store(
            state, vec, face_id=best.face_id, label="", member_id="", kind=kind, photo_sha=photo_sha
        )
        return stored.model_copy(update={"created": False, "distance": best.distance})


async def _check_same_face(state: StoreState, vec: np.ndarray, face_id: int) -> float | None:
    """The distance from a photo to the face it is filed under; too far is face_mismatch."""
    stored = await state.db.face_vectors(face_id, state.replica.info.identity)
    if stored is None:
        raise FaceNotFound(face_id=face_id)
    if not len(stored):
        return None  # nothing to compare with (another embedder's face): take it as said
    dist = round(float(distances(vec[None, :], stored, state.replica.info.metric).min()), 6)
    if dist > state.threshold:
        raise FaceMismatch(
            f"the photo is {dist:.3f} from FaceId {face_id}; the threshold is "
            f"{state.threshold:.3f} (send force=true if it is the same person)",
            face_id=face_id,
            distance=dist,
            threshold=state.threshold,
        )
    return dist


def _registration(state: StoreState, wait_s: float | None = None, poll_s: float = 0.1) -> Any:
    """The store's lock for making FaceIds: two cameras seeing one new person make one."""
    return state.db.redis.lock(
        f"lock:register:{state.store.id}",
        timeout=state.register_lock_s,
        blocking_timeout=state.register_lock_s * 2 if wait_s is None else wait_s,
        sleep=poll_s,
    )


async def _nearest_known(
    state: StoreState, vec: np.ndarray, threshold: float | None = None
) -> wire.Match | None:
    """The nearest live face under the threshold, after catching up on the feed."""
    await state.replica.catch_up()
    found = state.replica.index.search(vec[None, :], 1)
    rows = await _labelled(state.db, _tagged(found, state.store.id))
    limit = state.match_threshold() if threshold is None else threshold
    return rows[0][0] if rows[0] and rows[0][0].distance <= limit else None


async def enroll_embedding(
    state: StoreState, req: wire.EnrollEmbeddingRequest
) -> wire.EnrollResponse:
    """Enroll a ready embedding; with `register_threshold`, register only if nobody is close."""
    if req.face_id is None and (req.max_vectors is not None or req.min_distance is not None):
        raise InvalidRequest("max_vectors/min_distance need face_id: they learn a view of it")
    if req.register_threshold is not None and req.face_id is None:
        return await register(
            state,
            wire.RegisterRequest(
                embedding=req.embedding,
                threshold=req.register_threshold,
                kind=req.kind,
                label=req.label,
            ),
        )
    state.require_ready()
    if req.face_id is not None and (req.max_vectors is not None or req.min_distance is not None):
        return await _learn_view(state, req, req.face_id)
    return await _store(
        state,
        np.asarray(req.embedding, dtype=np.float32),
        face_id=req.face_id,
        label=req.label,
        member_id=req.member_id,
        kind=req.kind,
    )


async def _learn_view(
    state: StoreState, req: wire.EnrollEmbeddingRequest, face_id: int
) -> wire.EnrollResponse:
    """A recognised face's embedding as one more view of its FaceId: capped in Redis, the
    same embedding stored once, and never for a FaceId erased meanwhile. The novelty check
    (`min_distance`) runs under the store's registration lock (two gateways learning
    near-identical views add one); a lock held longer than VIEW_LOCK_WAIT_S skips the view."""
    vec = state.replica.index.prepare(np.asarray(req.embedding, dtype=np.float32))[0]
    sha = "view-" + hashlib.sha256(vec.tobytes()).hexdigest()  # a retry is a no-op
    if req.min_distance is None:
        return await _store_view(state, req, face_id, vec, sha)
    lock = _registration(state, VIEW_LOCK_WAIT_S, VIEW_LOCK_POLL_S)
    if not await lock.acquire():
        return wire.EnrollResponse(face_id=face_id, vec_id=0, created=False, skipped="busy")
    try:
        stored = await state.db.face_vectors(face_id, state.replica.info.identity)
        if stored is None:
            raise FaceNotFound(face_id=face_id)
        if len(stored):
            metric = state.replica.info.metric
            dist = round(float(distances(vec[None, :], stored, metric).min()), 6)
            if dist <= req.min_distance:
                return wire.EnrollResponse(
                    face_id=face_id, vec_id=0, created=False, distance=dist, skipped="not_novel"
                )
        return await _store_view(state, req, face_id, vec, sha)
    finally:
        with contextlib.suppress(LockError):  # it expired meanwhile: nothing to release
            await lock.release()


async def _store_view(
    state: StoreState, req: wire.EnrollEmbeddingRequest, face_id: int, vec: np.ndarray, sha: str
) -> wire.EnrollResponse:
    return await _store(
        state,
        vec,
        face_id=face_id,
        label="",
        member_id="",
        kind=req.kind,
        photo_sha=sha,
        max_vectors=req.max_vectors,
    )


async def register(state: StoreState, req: wire.RegisterRequest) -> wire.EnrollResponse:
    """The FaceId of whoever lies within `threshold`, else a new one: safe to retry."""
    state.require_ready()
    vec = state.replica.index.prepare(np.asarray(req.embedding, dtype=np.float32))[0]
    async with _registration(state):
        best = await _nearest_known(state, vec, req.threshold)
        if best is not None:
            return wire.EnrollResponse(
                face_id=best.face_id, vec_id=0, created=False, distance=best.distance
            )
        return await _store(state, vec, face_id=None, label=req.label, member_id="", kind=req.kind)


async def _store(
    state: StoreState,
    vec: np.ndarray,
    *,
    face_id: int | None,
    label: str,
    member_id: str,
    kind: str,
    photo_sha: str = "",
    max_vectors: int | None = None,
) -> wire.EnrollResponse:
    vec = state.replica.index.prepare(vec)[0]  # validated before a FaceId is spent on it
    created = face_id is None
    if face_id is None:
        face_id = await state.db.new_face_id()
    result = await state.db.add_vector(
        state.store.id,
        face_id,
        vec,
        embedder=state.replica.info.name,
        kind=kind,
        label=label,
        member_id=member_id,
        photo_sha=photo_sha,
        create=created,
        max_vectors=max_vectors,
    )
    if result.capped:
        return wire.EnrollResponse(face_id=face_id, vec_id=0, created=False, skipped="capped")
    if result.duplicate:
        return wire.EnrollResponse(face_id=result.face_id, vec_id=0, created=False, duplicate=True)
    # Acknowledged by Redis (AOF on); now searchable here at once, elsewhere via the feed.
    state.replica.apply_local_add(result.gen, result.vec_id, face_id, vec)
    return wire.EnrollResponse(face_id=face_id, vec_id=result.vec_id, created=created)


async def erase(node: Node, face_id: int) -> wire.EraseResponse:
    """Erase a person from Redis (all stores) and from this node's indexes at once."""
    result = await node.db.erase_face(face_id)
    for st in list(node.stores.values()):
        st.replica.remove_face(face_id)
    if not result.existed:
        raise FaceNotFound(face_id=face_id)
    return wire.EraseResponse(face_id=face_id, erased=True, stores=result.stores)


def store_info(state: StoreState) -> wire.InfoResponse:
    r = state.replica
    return wire.InfoResponse(
        store_id=state.store.id,
        embedder=r.info.identity,
        dim=r.info.dim,
        metric=r.info.metric,
        threshold=state.match_threshold(),
        base_threshold=state.threshold,
        threshold_rule=state.rule.describe(),
        threshold_note=r.info.threshold_note,
        faces=r.index.face_count,
        vectors=len(r.index),
        index=r.index.kind,
        nprobe=r.index.nprobe,
        rebuilding=r.index.rebuilding,
        feed_position=r.position,
        loaded=r.loaded,
        refused=state.refused,
        leaving=state.leaving_at is not None,
    )


def node_info(node: Node) -> wire.NodeInfoResponse:
    return wire.NodeInfoResponse(
        node_id=node.node_id,
        embedder=node.info.identity,
        embedder_note=node.embedder_note or None,
        dim=node.info.dim,
        metric=node.info.metric,
        stores=[store_info(node.stores[s]) for s in node.store_ids()],
        group_index=node.group.index.kind if node.group is not None else None,
        group_index_vectors=len(node.group) if node.group is not None else 0,
    )
