"""HTTP routes of the gateway: thin views over gateway.recognition and friends."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from gateway import insights, recognition, service
from gateway.auth import KeyRing
from gateway.deps import Admin, ApiKey, GatewayDep, KeysDep
from gateway.models import (
    AuditPage,
    Me,
    MemberBinding,
    MemberBindingResponse,
    MergeRequest,
    MergeResponse,
    Overview,
    PhotoEraseResponse,
    RecognizeResponse,
    SearchResponse,
    StatsResponse,
    StoreHealth,
    SweepRequest,
    SweepResponse,
    VerifyResponse,
    VisitsResponse,
)
from gateway.recognition import Gateway
from storeface import wire
from web.errors import model_response
from web.uploads import read_upload

router = APIRouter()
# (method, path) of the operations that can answer 409, for the OpenAPI (web/openapi.py)
CONFLICTS = {
    ("post", "/v1/stores/{store_id}/faces"),
    ("post", "/v1/faces/{face_id}/merge"),
    ("put", "/v1/faces/{face_id}/member"),
    ("post", "/v1/retention/sweep"),
}

StoreForm = Annotated[
    str, Form(min_length=1, max_length=64, description="the store the photo was taken at")
]
Image = Annotated[UploadFile, File(description="a photo or camera frame")]
StorePath = Annotated[str, Path(description="the store's id (stores.yaml), e.g. store-a")]
FaceIdPath = Annotated[int, Path(description="the FaceId")]


def _form_example(**fields: object) -> dict[str, object]:
    """openapi_extra: an example of a multipart body (files shown as their name)."""
    return {"requestBody": {"content": {"multipart/form-data": {"example": fields}}}}


def _allow(gw: Gateway, keys: KeyRing, key: str | None, store_id: str) -> None:
    """A valid key first (strangers learn nothing, not even which stores exist), then the
    store, then whether this key may act for it."""
    keys.require_any(key)
    gw.stores.route(store_id)
    keys.require_store(key, store_id)


def _limit(request: Request) -> int:
    return int(request.app.state.settings.max_image_bytes)


@router.post(
    "/v1/recognize",
    response_model=RecognizeResponse,
    openapi_extra=_form_example(image="door-cam-1.jpg", store_id="store-a"),
)
async def recognize(
    request: Request, gw: GatewayDep, keys: KeysDep, key: ApiKey, image: Image, store_id: StoreForm
) -> Response:
    """FaceIds for every face at a store's door: members, returning and new visitors."""
    _allow(gw, keys, key, store_id)
    data = await read_upload(image, _limit(request))
    return model_response(await recognition.recognize(gw, store_id, data))


@router.post(
    "/v1/search",
    response_model=SearchResponse,
    openapi_extra=_form_example(
        image="door-cam-1.jpg", store_id="store-a", top_k=5, everywhere=False
    ),
)
async def search(
    request: Request,
    gw: GatewayDep,
    keys: KeysDep,
    key: ApiKey,
    image: Image,
    store_id: StoreForm,
    top_k: Annotated[int, Form(ge=1, le=100, description="matches per face")] = 5,
    everywhere: Annotated[
        bool, Form(description="search every store, not only this one's")
    ] = False,
) -> SearchResponse:
    """Top-k matches with distances; no registration, no visit."""
    _allow(gw, keys, key, store_id)
    data = await read_upload(image, _limit(request))
    return await recognition.search(gw, store_id, data, top_k, everywhere)


@router.post(
    "/v1/verify",
    response_model=VerifyResponse,
    openapi_extra=_form_example(image_a="id-card.jpg", image_b="selfie.jpg", store_id="store-a"),
)
async def verify(
    request: Request,
    gw: GatewayDep,
    keys: KeysDep,
    key: ApiKey,
    image_a: Image,
    image_b: Image,
    store_id: Annotated[
        str | None, Form(description="embed with this store's embedder (default: the first)")
    ] = None,
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
    responses={200: {"model": wire.EnrollResponse, "description": "the face was known"}},
    openapi_extra=_form_example(image="member-photo.jpg", label="Ada L.", member_id="m-1001"),
)
async def enroll(
    request: Request,
    gw: GatewayDep,
    store_id: StorePath,
    image: Image,
    label: Annotated[str, Form(max_length=200, description="a name for the FaceId")] = "",
    member_id: Annotated[str, Form(max_length=100, description="bind this member id")] = "",
    face_id: Annotated[
        int | None, Form(ge=1, description="file the photo under this FaceId")
    ] = None,
    largest: Annotated[
        bool, Form(description="take the largest face when the photo has several")
    ] = False,
    new_person: Annotated[bool, Form(description="409 if the face is already known")] = False,
    force: Annotated[bool, Form(description="file under face_id even if far from it")] = False,
    everywhere: Annotated[
        bool,
        Form(
            description="look for the face in every store of the chain that runs the same "
            "embedder, whatever the fallback policy (default: this store only)"
        ),
    ] = False,
    move_member: Annotated[bool, Form(description="take member_id from its FaceId")] = False,
) -> Response:
    """Enroll a photo's one face into a store: 201 with a new FaceId, or 200 with the FaceId
    the face already had (and the distance); a photo filed under a FaceId it does not look
    like is refused (face_mismatch), as is a member id bound elsewhere (member_taken)."""
    gw.stores.route(store_id)  # an unknown store is refused before the upload is read
    data = await read_upload(image, _limit(request))
    done = await service.enroll(
        gw,
        store_id,
        data,
        service.Enrollment(
            label=label,
            member_id=member_id,
            face_id=face_id,
            largest=largest,
            new_person=new_person,
            force=force,
            everywhere=everywhere,
            move_member=move_member,
        ),
    )
    return model_response(done, 201 if done.created else 200)


@router.post(
    "/v1/erase",
    response_model=PhotoEraseResponse,
    dependencies=[Admin],
    openapi_extra=_form_example(image="erasure-request.jpg"),
)
async def erase_by_photo(
    request: Request,
    gw: GatewayDep,
    keys: KeysDep,
    key: ApiKey,
    image: Image,
    store_id: Annotated[str | None, Form(description="embed with this store's embedder")] = None,
    max_distance: Annotated[float | None, Form(gt=0, description="default: strict")] = None,
) -> PhotoEraseResponse:
    """Erase by photo: every FaceId, in every store, that matches the photo's largest face
    under a strict threshold (0.8 × the store's), erased everywhere; answers which."""
    data = await read_upload(image, _limit(request))
    return await service.erase_by_photo(gw, data, store_id, max_distance, keys.key_id(key))


Reason = Annotated[
    str,
    Query(
        pattern=r"^[A-Za-z0-9 _.:#/-]{1,80}$",
        description="why, for the audit trail (a ticket number; no personal data)",
    ),
]


@router.delete("/v1/faces/{face_id}", response_model=wire.EraseResponse, dependencies=[Admin])
async def erase(
    gw: GatewayDep, keys: KeysDep, key: ApiKey, face_id: FaceIdPath, reason: Reason = "request"
) -> wire.EraseResponse:
    """Erase a person everywhere: vectors in every store, member binding, visit traces; the
    audit trail records it."""
    return await service.erase(gw, face_id, keys.key_id(key), reason)


@router.post("/v1/faces/{face_id}/merge", response_model=MergeResponse, dependencies=[Admin])
async def merge(gw: GatewayDep, face_id: FaceIdPath, body: MergeRequest) -> MergeResponse:
    """Merge two FaceIds that are one person: `other` joins this one everywhere and ends."""
    return await service.merge(gw, face_id, body.other)


@router.put(
    "/v1/faces/{face_id}/member", response_model=MemberBindingResponse, dependencies=[Admin]
)
async def bind_member(
    gw: GatewayDep, face_id: FaceIdPath, body: MemberBinding
) -> MemberBindingResponse:
    return await service.bind_member(gw, face_id, body)


@router.delete(
    "/v1/faces/{face_id}/member", response_model=MemberBindingResponse, dependencies=[Admin]
)
async def unbind_member(gw: GatewayDep, face_id: FaceIdPath) -> MemberBindingResponse:
    return await service.unbind_member(gw, face_id)


@router.get(
    "/v1/stores/{store_id}/stats", response_model=StatsResponse, response_model_by_alias=True
)
async def stats(
    gw: GatewayDep,
    keys: KeysDep,
    key: ApiKey,
    store_id: StorePath,
    from_: Annotated[
        dt.date | None,
        Query(alias="from", description="first day (UTC), ISO 8601; default: `to`; at most a year"),
    ] = None,
    to: Annotated[
        dt.date | None, Query(description="last day (UTC), ISO 8601; default: today")
    ] = None,
) -> StatsResponse:
    """Per day: PV, UV, new vs returning visitors, member visits."""
    _allow(gw, keys, key, store_id)
    return await service.stats(gw, store_id, from_, to)


@router.get("/v1/me", response_model=Me)
async def whoami(gw: GatewayDep, keys: KeysDep, key: ApiKey) -> Me:
    """The calling key's id (never the key), role, and the stores it may see."""
    return insights.me(gw, keys, key)


@router.get("/v1/stats/overview", response_model=Overview)
async def overview(gw: GatewayDep, keys: KeysDep, key: ApiKey) -> Overview:
    """Every store the key may see: visits today, over the last 7 and the last 30 days."""
    return await insights.overview(gw, keys.scope(key))


@router.get("/v1/stores/{store_id}/visits", response_model=VisitsResponse)
async def visits(
    gw: GatewayDep,
    keys: KeysDep,
    key: ApiKey,
    store_id: StorePath,
    limit: Annotated[int, Query(ge=1, le=500, description="how many visits, newest first")] = 50,
) -> VisitsResponse:
    """A store's latest counted visits: FaceIds, new or returning, time; never a photo."""
    _allow(gw, keys, key, store_id)
    return await insights.visits(gw, store_id, limit)


@router.get("/v1/stores/{store_id}/health", response_model=StoreHealth)
async def store_health(
    gw: GatewayDep, keys: KeysDep, key: ApiKey, store_id: StorePath
) -> StoreHealth:
    """The store's node group: replicas up, faces, index type, embedder."""
    _allow(gw, keys, key, store_id)
    return await insights.health(gw, store_id)


@router.post(
    "/v1/retention/sweep",
    response_model=SweepResponse,
    dependencies=[Admin],
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"example": {"older_than_days": 90, "dry_run": True}}}
        }
    },
)
async def retention_sweep(
    gw: GatewayDep, keys: KeysDep, key: ApiKey, body: SweepRequest | None = None
) -> SweepResponse:
    """Erase visitors unseen for their store's retention period now (409 sweep_running
    while another replica sweeps)."""
    return await insights.sweep(gw, body or SweepRequest(), keys.key_id(key))


@router.get("/v1/audit", response_model=AuditPage, dependencies=[Admin])
async def audit(
    gw: GatewayDep,
    limit: Annotated[int, Query(ge=1, le=500, description="how many entries, newest first")] = 50,
    before: Annotated[
        str | None, Query(max_length=41, description="an entry's id: only older entries")
    ] = None,
) -> AuditPage:
    """The erase audit trail, newest first: time, actor (a key's id), FaceId, reason, stores."""
    return await insights.audit(gw, limit, before)


@router.get("/healthz", response_model=wire.HealthResponse)
async def healthz() -> wire.HealthResponse:
    return wire.HealthResponse(status="ok")


@router.get("/readyz", response_model=wire.HealthResponse)
async def readyz(gw: GatewayDep) -> JSONResponse:
    """Ready when the config is loaded and Redis answers; node groups are reported, with the
    stores each hosts."""
    redis_ok, details = await service.readiness(gw)
    body = wire.HealthResponse(status="ready" if redis_ok else "not_ready", details=details)
    return JSONResponse(status_code=200 if redis_ok else 503, content=body.model_dump())
