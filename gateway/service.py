"""The gateway's work beyond recognition: enrollment, erase, members, stats, readiness."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

from gateway.models import (
    ErasedFace,
    MemberBinding,
    MemberBindingResponse,
    MergeResponse,
    PhotoEraseResponse,
    StatsResponse,
)
from gateway.recognition import Gateway, _Candidate, fan_out
from storeface import wire
from storeface.embedders import may_match
from storeface.errors import AlreadyEnrolled, FaceNotFound, InvalidRequest, MemberTaken, NoFace
from storeface.stores import StoreConfig

MAX_STATS_DAYS = 366


@dataclass
class Enrollment:
    """What an enrollment asks for beyond the photo."""

    label: str = ""
    member_id: str = ""
    face_id: int | None = None
    largest: bool = False
    new_person: bool = False  # refuse (409) a face the chain already knows
    force: bool = False  # file under `face_id` even if the photo looks like someone else
    everywhere: bool = False  # look for the face in the store's fallback stores too
    move_member: bool = False  # take `member_id` from the FaceId holding it


async def enroll(gw: Gateway, store_id: str, image: bytes, req: Enrollment) -> wire.EnrollResponse:
    """Enroll a photo's one face: a face already known (here, or with `everywhere` in the
    fallback stores) keeps its FaceId; a member id is bound to one FaceId only."""
    store = gw.stores.route(store_id)
    if req.member_id and not req.move_member:
        holder = await gw.db.member_face(req.member_id)
        if holder is not None and holder != req.face_id:
            raise MemberTaken(
                f"member {req.member_id} is bound to FaceId {holder}; send move_member=true",
                member_id=req.member_id,
                face_id=holder,
            )
    face_id, force, elsewhere = req.face_id, req.force, None
    if req.everywhere and face_id is None:
        elsewhere = await _known_elsewhere(gw, store, image)
        if elsewhere is not None:
            if req.new_person:
                raise AlreadyEnrolled(
                    f"this face is FaceId {elsewhere.face_id} in {elsewhere.store_id}",
                    face_id=elsewhere.face_id,
                    distance=elsewhere.distance,
                    store_id=elsewhere.store_id,
                )
            face_id, force = elsewhere.face_id, True  # its distance was just measured
    form = {
        "label": req.label,
        "largest": str(req.largest).lower(),
        "kind": "member" if req.member_id else "gallery",
        "new_person": str(req.new_person).lower(),
        "force": str(force).lower(),
    }
    if face_id is not None:
        form["face_id"] = str(face_id)
    done = await gw.shards.enroll_image(gw.stores.urls(store), store.id, image, form)
    if elsewhere is not None:
        done = done.model_copy(
            update={"distance": elsewhere.distance, "matched_store": elsewhere.store_id}
        )
    elif not done.created and done.distance is not None:
        done = done.model_copy(update={"matched_store": store.id})
    if req.member_id:
        moved = await gw.db.bind_member(done.face_id, req.member_id, {}, move=req.move_member)
        done = done.model_copy(update={"member_moved_from": moved})
    return done


async def _known_elsewhere(gw: Gateway, store: StoreConfig, image: bytes) -> _Candidate | None:
    """The photo's largest face, if the store's fallback stores know it (and home does not)."""
    ident = await gw.shards.identify(gw.stores.urls(store), store.id, image, top_k=1)
    if not ident.faces:
        return None  # the enrollment itself says why (no_face)
    threshold = store.threshold or ident.threshold
    face = ident.faces[0]
    if face.matches and face.matches[0].distance <= threshold:
        return None  # known at home: the shard itself answers with that FaceId
    rows, _ = await fan_out(gw, store, [face.embedding], 1)
    best = rows[0][0] if rows[0] else None
    if best is None or best.distance > threshold:
        return None
    return best if await gw.db.get_face(best.face_id) is not None else None


async def erase(
    gw: Gateway, face_id: int, actor: str = "system", reason: str = "request"
) -> wire.EraseResponse:
    """Erase a person everywhere: vectors in every store, member binding, visit traces; the
    audit trail records who (a key's id), when and why."""
    result = await gw.db.erase_face(face_id, actor=actor, reason=reason)
    await gw.analytics.erase_face(face_id)
    if not result.existed:
        raise FaceNotFound(face_id=face_id)
    return wire.EraseResponse(face_id=face_id, erased=True, stores=result.stores)


ERASE_STRICTNESS = 0.8  # erase by photo matches under this share of the store's threshold
ERASE_TOP_K = 20


async def erase_by_photo(
    gw: Gateway,
    image: bytes,
    store_id: str | None,
    max_distance: float | None,
    actor: str = "system",
) -> PhotoEraseResponse:
    """The right to be forgotten for someone who does not know their FaceId: every FaceId,
    in every store (of each embedder), that matches the photo's largest face under a strict
    threshold is erased everywhere."""
    homes = [gw.stores.route(store_id)] if store_id else _one_store_per_embedder(gw)
    found: dict[int, float] = {}
    degraded: list[str] = []
    limit = max_distance or 0.0
    for home in homes:
        ident = await gw.shards.identify(gw.stores.urls(home), home.id, image, ERASE_TOP_K)
        if not ident.faces:
            raise NoFace("no face in the photo: nothing to look for")
        limit = max_distance or round(ERASE_STRICTNESS * (home.threshold or ident.threshold), 6)
        face = ident.faces[0]
        same = [
            s
            for s in gw.stores.config.stores
            if s.id != home.id and may_match(s.embedder, home.embedder)
        ]
        rows, missed = await fan_out(
            gw, home, [face.embedding], ERASE_TOP_K, stores=same, embedder=ident.embedder
        )
        degraded += missed
        hits = [(m.face_id, m.distance) for m in face.matches]
        hits += [(c.face_id, c.distance) for c in rows[0]]
        for fid, dist in hits:
            if dist <= limit:
                found[fid] = min(dist, found.get(fid, dist))
    if not found:
        raise FaceNotFound(f"no FaceId matches this photo under distance {limit}")
    erased = []
    for fid, dist in sorted(found.items(), key=lambda kv: kv[1]):
        try:
            done = await erase(gw, fid, actor, "photo")
        except FaceNotFound:
            continue  # erased a moment ago (by this loop's merge of duplicates, or by hand)
        erased.append(ErasedFace(face_id=fid, distance=round(dist, 6), stores=done.stores))
    return PhotoEraseResponse(erased=erased, max_distance=limit, degraded=sorted(set(degraded)))


def _one_store_per_embedder(gw: Gateway) -> list[StoreConfig]:
    first: dict[str, StoreConfig] = {}
    for s in gw.stores.config.stores:
        first.setdefault(s.embedder, s)
    return list(first.values())


async def merge(gw: Gateway, face_id: int, other: int) -> MergeResponse:
    """One person under two FaceIds becomes one: `other`'s photos, vectors in every store,
    gallery names, member and visit history pass to `face_id`, and `other` ends."""
    if other == face_id:
        raise InvalidRequest("a FaceId cannot be merged into itself")
    stores = await gw.db.merge_faces(face_id, other)
    await gw.analytics.merge_faces(face_id, other)
    record = await gw.db.get_face(face_id)
    return MergeResponse(
        face_id=face_id,
        merged=other,
        stores=stores,
        label=record.label if record else "",
        member_id=record.member_id if record else "",
    )


async def bind_member(gw: Gateway, face_id: int, body: MemberBinding) -> MemberBindingResponse:
    moved = await gw.db.bind_member(face_id, body.member_id, body.profile, move=body.move)
    return MemberBindingResponse(
        face_id=face_id, member_id=body.member_id, bound=True, moved_from=moved
    )


async def unbind_member(gw: Gateway, face_id: int) -> MemberBindingResponse:
    member_id = await gw.db.unbind_member(face_id)
    return MemberBindingResponse(face_id=face_id, member_id=member_id, bound=False)


def stats_range(first: dt.date | None, last: dt.date | None) -> tuple[dt.date, dt.date]:
    """The days asked for: `to` defaults to today (UTC), `from` to `to`; at most a year."""
    end = last or dt.datetime.now(dt.UTC).date()
    start = first or end
    if start > end or (end - start).days > MAX_STATS_DAYS:
        raise InvalidRequest("`from` must not be after `to`, and the range at most a year")
    return start, end


async def stats(
    gw: Gateway, store_id: str, first: dt.date | None, last: dt.date | None
) -> StatsResponse:
    """Per day: PV, UV, new vs returning visitors, member visits; and UV over the range."""
    start, end = stats_range(first, last)
    return StatsResponse(
        **{"from": f"{start}"},
        to=f"{end}",
        store_id=store_id,
        unique_visitors=await gw.analytics.unique_visitors(store_id, start, end),
        days=await gw.analytics.days(store_id, start, end),
    )


async def readiness(gw: Gateway) -> tuple[bool, dict[str, object]]:
    """Ready when Redis answers; node groups are reported, with the stores each hosts."""
    try:
        redis_ok = bool(await gw.db.redis.ping())
    except Exception:  # any failure to reach Redis is "not ready", never a 500
        redis_ok = False
    groups = gw.stores.config.groups()
    reach = await asyncio.gather(*(gw.shards.ready(gw.stores.group_urls(g)) for g in groups))
    return redis_ok, {
        "redis": redis_ok,
        "config_error": gw.stores.last_error,
        "nodes": {g.id: ok for g, ok in zip(groups, reach, strict=True)},
        "stores": {sid: ok for g, ok in zip(groups, reach, strict=True) for sid in g.stores},
    }
