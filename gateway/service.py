"""The gateway's work beyond recognition: enrollment, erase, members, stats, readiness."""

from __future__ import annotations

import asyncio
import datetime as dt

from gateway.models import MemberBinding, MemberBindingResponse, StatsResponse
from gateway.recognition import Gateway
from storeface import wire
from storeface.errors import FaceNotFound, InvalidRequest

MAX_STATS_DAYS = 366


async def enroll(
    gw: Gateway,
    store_id: str,
    image: bytes,
    *,
    label: str = "",
    member_id: str = "",
    face_id: int | None = None,
    largest: bool = False,
) -> wire.EnrollResponse:
    """Enroll a photo's one face into a store: a member if a member id comes with it."""
    store = gw.stores.route(store_id)
    form = {
        "label": label,
        "member_id": member_id,
        "largest": str(largest).lower(),
        "kind": "member" if member_id else "gallery",
    }
    if face_id is not None:
        form["face_id"] = str(face_id)
    return await gw.shards.enroll_image(gw.stores.urls(store), store.id, image, form)


async def erase(gw: Gateway, face_id: int) -> wire.EraseResponse:
    """Erase a person everywhere: vectors in every store, member binding, visit traces."""
    result = await gw.db.erase_face(face_id)
    await gw.analytics.erase_face(face_id)
    if not result.existed:
        raise FaceNotFound(face_id=face_id)
    return wire.EraseResponse(face_id=face_id, erased=True, stores=result.stores)


async def bind_member(gw: Gateway, face_id: int, body: MemberBinding) -> MemberBindingResponse:
    await gw.db.bind_member(face_id, body.member_id, body.profile)
    return MemberBindingResponse(face_id=face_id, member_id=body.member_id, bound=True)


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
