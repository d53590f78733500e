"""HTTP routes of the shard node: thin views over shard_node.service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse, Response

from shard_node import service
from shard_node.deps import State
from storeface import wire
from storeface.http import model_response
from storeface.uploads import read_upload

router = APIRouter()


@router.post("/v1/identify", response_model=wire.IdentifyResponse)
async def identify(
    state: State,
    image: Annotated[UploadFile, File(description="a photo or camera frame")],
    top_k: Annotated[int, Form(ge=1, le=100)] = 5,
) -> Response:
    data = await read_upload(image, state.pool.limits.max_bytes)
    return model_response(await service.identify(state, data, top_k))


@router.post("/v1/search", response_model=wire.SearchResponse)
async def search(state: State, body: wire.SearchRequest) -> Response:
    return model_response(await service.search(state, body))


@router.post("/v1/faces", response_model=wire.EnrollResponse, status_code=201)
async def enroll_image(
    state: State,
    image: Annotated[UploadFile, File()],
    face_id: Annotated[int | None, Form(ge=1)] = None,
    label: Annotated[str, Form(max_length=200)] = "",
    member_id: Annotated[str, Form(max_length=100)] = "",
    kind: Annotated[str, Form(pattern=r"^(gallery|visitor|member)$")] = "gallery",
    largest: Annotated[bool, Form()] = False,
) -> wire.EnrollResponse:
    data = await read_upload(image, state.pool.limits.max_bytes)
    return await service.enroll_image(
        state, data, face_id=face_id, label=label, member_id=member_id, kind=kind, largest=largest
    )


@router.post("/v1/faces/embedding", response_model=wire.EnrollResponse, status_code=201)
async def enroll_embedding(state: State, body: wire.EnrollEmbeddingRequest) -> wire.EnrollResponse:
    return await service.enroll_embedding(state, body)


@router.post("/v1/register", response_model=wire.EnrollResponse)
async def register(state: State, body: wire.RegisterRequest) -> wire.EnrollResponse:
    """The face's FaceId if it is known here, else a new one; idempotent, so retryable."""
    return await service.register(state, body)


@router.delete("/v1/faces/{face_id}", response_model=wire.EraseResponse)
async def erase(state: State, face_id: int) -> wire.EraseResponse:
    return await service.erase(state, face_id)


@router.get("/v1/info", response_model=wire.InfoResponse)
async def info(state: State) -> wire.InfoResponse:
    return service.info(state)


@router.get("/healthz", response_model=wire.HealthResponse)
async def healthz() -> wire.HealthResponse:
    return wire.HealthResponse(status="ok")


@router.get("/readyz", response_model=wire.HealthResponse)
async def readyz(state: State) -> JSONResponse:
    r = state.replica
    details = {
        "store_id": state.store.id,
        "loaded": r.loaded,
        "loaded_from": r.loaded_from,
        "load_seconds": round(r.load_seconds, 3),
        "vectors": len(r.index),
    }
    body = wire.HealthResponse(status="ready" if r.loaded else "loading", details=details)
    return JSONResponse(status_code=200 if r.loaded else 503, content=body.model_dump())
