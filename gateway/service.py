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
    new_person: bool = False  # refuse (409) a face the store (or chain) already knows
    force: bool = False  # file under `face_id` even if the photo looks like someone else
    everywhere: bool = False  # look for the face in the whole chain, not this store only
    move_member: bool = False  # take `member_id` from the FaceId holding it


async def enroll(gw: Gateway, store_id: str, image: bytes, req: Enrollment) -> wire.EnrollResponse:
    """Enroll a photo's one face: a face already known (in this store, or with `everywhere`
    in any store of the chain that runs the same embedder) keeps its FaceId, and a face
    found in another store is filed here under it; a member id is bound to one FaceId only,
    and a known face that was unlabelled takes the label."""
    store = gw.stores.route(store_id)
    holder = None
    if req.member_id and not req.move_member:
        holder = await gw.db.member_face(req.member_id)
    face_id, force, known = req.face_id, req.force, None
    if face_id is None and (req.everywhere or holder is not None):
        known = await _known_face(gw, store, image, chain=req.everywhere)
    elsewhere = known if known is not None and known.store_id != store.id else None
    if elsewhere is not None:
        if req.new_person:
            raise AlreadyEnrolled(
                f"this face is FaceId {elsewhere.face_id} in {elsewhere.store_id} "
                f"(distance {elsewhere.distance:.3f})",
                face_id=elsewhere.face_id,
                distance=elsewhere.distance,
                store_id=elsewhere.store_id,
            )
        face_id, force = elsewhere.face_id, True  # its distance was just measured
    whose = face_id if face_id is not None else known.face_id if known else None
    if holder is not None and holder != whose:
        raise MemberTaken(
            f"member {req.member_id} is bound to FaceId {holder}; send move_member=true",
            member_id=req.member_id,
            face_id=holder,
        )
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
    if elsewhere is not None and done.face_id == elsewhere.face_id:
        done = done.model_copy(
            update={"distance": elsewhere.distance, "matched_store": elsewhere.store_id}
        )
    elif not done.created and done.distance is not None:
        done = done.model_copy(update={"matched_store": store.id})
    if not done.created and req.label:
        await gw.db.label_if_unlabelled(done.face_id, req.label)
    if req.member_id:
        moved = await gw.db.bind_member(done.face_id, req.member_id, {}, move=req.move_member)
        done = done.model_copy(update={"member_moved_from": moved})
    return done


async def _known_face(
    gw: Gateway, store: StoreConfig, image: bytes, chain: bool
) -> _Candidate | None:
    """The live FaceId of the photo's largest face under the store's threshold: at home,
    else (with `chain`) in every other store that runs the same embedder, whatever the
    store's fallback policy: one call per node group, as recognition's fan-out."""
    ident = await gw.shards.identify(gw.stores.urls(store), store.id, image, top_k=1)
    if not ident.faces:
        return None  # the enrollment itself says why (no_face)
    face = ident.faces[0]
    best = None
    if face.matches and face.matches[0].distance <= ident.threshold:
        m = face.matches[0]
        best = _Candidate(m.face_id, store.id, m.distance, m.label)
    elif chain:
        found = await fan_out(
            gw,
            store,
            [face.embedding],
            1,
            stores=gw.stores.config.compatible(store),
            embedder=ident.embedder,
        )
        row = found.rows[0]
        best = row[0] if row and row[0].distance <= found.threshold(ident) else None
    return best if best is not None and await gw.db.get_face(best.face_id) else None


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
    in every store (each searched with the model its group runs), that matches the photo's
    largest face under a strict threshold is erased everywhere."""
    degraded: list[str] = []
    if store_id:
        home = gw.stores.route(store_id)
        plan = [(home, gw.stores.config.compatible(home))]
    else:
        plan, degraded = await _homes_by_model(gw)
    found: dict[int, float] = {}
    limit = max_distance or 0.0
    seen_face = False
    for home, same in plan:
        ident = await gw.shards.identify(gw.stores.urls(home), home.id, image, ERASE_TOP_K)
        if not ident.faces:  # this model's detector missed it: the others may not
            degraded += [home.id] + [s.id for s in same]
            continue
        seen_face = True
        # strict, but not tightened for the store's size: erase must find every FaceId
        base = ident.base_threshold or ident.threshold
        limit = max_distance or round(ERASE_STRICTNESS * base, 6)
        face = ident.faces[0]
        others = await fan_out(
            gw, home, [face.embedding], ERASE_TOP_K, stores=same, embedder=ident.embedder
        )
        degraded += others.degraded
        hits = [(m.face_id, m.distance) for m in face.matches]
        hits += [(c.face_id, c.distance) for c in others.rows[0]]
        for fid, dist in hits:
            if dist <= limit:
                found[fid] = min(dist, found.get(fid, dist))
    if not seen_face:
        raise NoFace("no face in the photo: nothing to look for")
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


async def _homes_by_model(
    gw: Gateway,
) -> tuple[list[tuple[StoreConfig, list[StoreConfig]]], list[str]]:
    """Every store, by the model its node group runs (each group is asked: one that names
    no recognizer picked its own at start-up), as (a store to embed the photo with, the
    other stores of that model); and the stores none of those can search."""
    targets = gw.stores.by_group(gw.stores.config.stores)
    infos = await asyncio.gather(
        *(gw.shards.node_info(gw.stores.group_urls(g), gw.fanout_deadline_s) for g, _ in targets)
    )
    stores: dict[str, list[StoreConfig]] = {}
    homes: dict[str, StoreConfig] = {}
    unreached: list[str] = []
    for (_, sids), info in zip(targets, infos, strict=True):
        if info is None:
            unreached += sids
            continue
        serving = {s.store_id for s in info.stores if s.loaded and not s.refused}
        for sid in sids:
            store = gw.stores.config.store(sid)
            if store is None:
                continue
            stores.setdefault(info.embedder, []).append(store)
            if sid in serving:
                homes.setdefault(info.embedder, store)
    plan = []
    for model, members in stores.items():
        home = homes.get(model)
        if home is None:  # no store of this model can embed the photo now
            unreached += [s.id for s in members]
        else:
            plan.append((home, [s for s in members if s.id != home.id]))
    return plan, unreached


async def merge(gw: Gateway, face_id: int, other: int) -> MergeResponse:
    """One person under two FaceIds becomes one: `other`'s photos, vectors in every store,
    gallery names, member and visit history pass to `face_id`, and `other` ends.

    The face merge runs first (it checks both FaceIds and their members), then the visit
    history follows in one pass that moves only an ended FaceId's: a merge refused or never
    run moves none. A crash between the two is completed by a re-run, which answers 404 for
    `other` (it has ended) after moving what is left of its history."""
    if other == face_id:
        raise InvalidRequest("a FaceId cannot be merged into itself")
    try:
        stores = await gw.db.merge_faces(face_id, other)
    except FaceNotFound as exc:
        if exc.details.get("face_id") == other:
            await gw.analytics.merge_faces(face_id, other)
        raise
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
