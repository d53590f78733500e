"""HTTP routes of the gateway: thin views over gateway.recognition and friends."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from gateway import recognition
from gateway.auth import KeyRing
from gateway.deps import Admin, ApiKey, GatewayDep, KeysDep
from gateway.models import (
    MemberBinding,
    MemberBindingResponse,
    RecognizeResponse,
    SearchResponse,
    StatsResponse,
    VerifyResponse,
)
from gateway.recognition import Gateway
from storeface import wire
from storeface.errors import FaceNotFound, InvalidRequest
from web.errors import model_response
from web.uploads import read_upload

router = APIRouter()

StoreForm = Annotated[str, Form(min_length=1, max_length=64)]
Image = Annotated[UploadFile, File(description="a photo or camera frame")]


def _allow(gw: Gateway, keys: KeyRing, key: str | None, store_id: str) -> None:
    """A valid key first (strangers learn nothing, not even which stores exist), then the
    store, then whether this key may act for it."""
    keys.require_any(key)
    gw.stores.route(store_id)
    keys.require_store(key, store_id)


def _limit(request: Request) -> int:
    return int(request.app.state.settings.max_image_bytes)


@router.post("/v1/recognize", response_model=RecognizeResponse)
async def recognize(
    request: Request, gw: GatewayDep, keys: KeysDep, key: ApiKey, image: Image, store_id: StoreForm
) -> Response:
    """FaceIds for every face at a store's door: members, returning and new visitors."""
    _allow(gw, keys, key, store_id)
    data = await read_upload(image, _limit(request))
    return model_response(await recognition.recognize(gw, store_id, data))


@router.post("/v1/search", response_model=SearchResponse)
async def search(
    request: Request,
    gw: GatewayDep,
    keys: KeysDep,
    key: ApiKey,
    image: Image,
    store_id: StoreForm,
    top_k: Annotated[int, Form(ge=1, le=100)] = 5,
    everywhere: Annotated[bool, Form()] = False,
) -> SearchResponse:
    """Top-k matches with distances; no registration, no visit."""
    _allow(gw, keys, key, store_id)
    data = await read_upload(image, _limit(request))
    return await recognition.search(gw, store_id, data, top_k, everywhere)


@router.post("/v1/verify", response_model=VerifyResponse)
async def verify(
    request: Request,
    gw: GatewayDep,
    keys: KeysDep,
    key: ApiKey,
    image_a: Image,
    image_b: Image,
    store_id: Annotated[str | None, Form()] = None,
) -> VerifyResponse:
    """1:1: the largest face of each photo, same person or not."""
    store = store_id or gw.stores.config.stores[0].id
    _allow(gw, keys, key, store)
    a, b = await asyncio.gather(
        read_upload(image_a, _limit(request)), read_upload(image_b, _limit(request))
    )
    return await recognition.verify(gw, store, a, b)


@router.post(
    "/v1/stores/{store_id}/faces",
    response_model=wire.EnrollResponse,
    status_code=201,
    dependencies=[Admin],
)
async def enroll(
    request: Request,
    gw: GatewayDep,
    store_id: str,
    image: Image,
    label: Annotated[str, Form(max_length=200)] = "",
    member_id: Annotated[str, Form(max_length=100)] = "",
    face_id: Annotated[int | None, Form(ge=1)] = None,
    largest: Annotated[bool, Form()] = False,
) -> wire.EnrollResponse:
    """Enroll a photo's one face into a store (a new FaceId, or another photo of one)."""
    store = gw.stores.route(store_id)
    data = await read_upload(image, _limit(request))
    form = {
        "label": label,
        "member_id": member_id,
        "largest": str(largest).lower(),
        "kind": "member" if member_id else "gallery",
    }
    if face_id is not None:
        form["face_id"] = str(face_id)
    return await gw.shards.enroll_image(gw.stores.urls(store), store.id, data, form)


@router.delete("/v1/faces/{face_id}", response_model=wire.EraseResponse, dependencies=[Admin])
async def erase(gw: GatewayDep, face_id: int) -> wire.EraseResponse:
    """Erase a person everywhere: vectors in every store, member binding, visit traces."""
    result = await gw.db.erase_face(face_id)
    await gw.analytics.erase_face(face_id)
    if not result.existed:
        raise FaceNotFound(face_id=face_id)
    return wire.EraseResponse(face_id=face_id, erased=True, stores=result.stores)


@router.put(
    "/v1/faces/{face_id}/member", response_model=MemberBindingResponse, dependencies=[Admin]
)
async def bind_member(gw: GatewayDep, face_id: int, body: MemberBinding) -> MemberBindingResponse:
    await gw.db.bind_member(face_id, body.member_id, body.profile)
    return MemberBindingResponse(face_id=face_id, member_id=body.member_id, bound=True)


@router.delete(
    "/v1/faces/{face_id}/member", response_model=MemberBindingResponse, dependencies=[Admin]
)
async def unbind_member(gw: GatewayDep, face_id: int) -> MemberBindingResponse:
    member_id = await gw.db.unbind_member(face_id)
    return MemberBindingResponse(face_id=face_id, member_id=member_id, bound=False)


@router.get(
    "/v1/stores/{store_id}/stats", response_model=StatsResponse, response_model_by_alias=True
)
async def stats(
    gw: GatewayDep,
    keys: KeysDep,
    key: ApiKey,
    store_id: str,
    from_: Annotated[dt.date | None, Query(alias="from")] = None,
    to: Annotated[dt.date | None, Query()] = None,
) -> StatsResponse:
    """Per day: PV, UV, new vs returning visitors, member visits."""
    _allow(gw, keys, key, store_id)
    today = dt.datetime.now(dt.UTC).date()
    last = to or today
    first = from_ or last
    if first > last or (last - first).days > 366:
        raise InvalidRequest("`from` must not be after `to`, and the range at most a year")
    days = await gw.analytics.days(store_id, first, last)
    return StatsResponse(
        **{"from": f"{first}"},
        to=f"{last}",
        store_id=store_id,
        unique_visitors=await gw.analytics.unique_visitors(store_id, first, last),
        days=days,
    )


@router.get("/healthz", response_model=wire.HealthResponse)
async def healthz() -> wire.HealthResponse:
    return wire.HealthResponse(status="ok")


@router.get("/readyz", response_model=wire.HealthResponse)
async def readyz(gw: GatewayDep) -> JSONResponse:
    """Ready when the config is loaded and Redis answers; node groups are reported, with the
    stores each hosts."""
    try:
        redis_ok = bool(await gw.db.redis.ping())
    except Exception:
        redis_ok = False
    groups = gw.stores.config.groups()
    reach = await asyncio.gather(*(gw.shards.ready(gw.stores.group_urls(g)) for g in groups))
    details = {
        "redis": redis_ok,
        "config_error": gw.stores.last_error,
        "nodes": {g.id: ok for g, ok in zip(groups, reach, strict=True)},
        "stores": {sid: ok for g, ok in zip(groups, reach, strict=True) for sid in g.stores},
    }
    body = wire.HealthResponse(status="ready" if redis_ok else "not_ready", details=details)
    return JSONResponse(status_code=200 if redis_ok else 503, content=body.model_dump())
