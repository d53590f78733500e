"""HTTP routes of the shard node: thin views over shard_node.service, scoped by store."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from shard_node import service
from shard_node.deps import NodeDep, Store
from storeface import wire
from web.errors import model_response
from web.uploads import read_upload

router = APIRouter()
# (method, path) of the operations that can answer 409, for the OpenAPI (web/openapi.py)
CONFLICTS = {
    ("post", "/v1/stores/{store_id}/faces"),
    ("post", "/v1/stores/{store_id}/faces/embedding"),
}


@router.post("/v1/stores/{store_id}/identify", response_model=wire.IdentifyResponse)
async def identify(
    state: Store,
    image: Annotated[UploadFile, File(description="a photo or camera frame")],
    top_k: Annotated[int, Form(ge=1, le=100)] = 5,
) -> Response:
    data = await read_upload(image, state.pool.limits.max_bytes)
    return model_response(await service.identify(state, data, top_k))


@router.post("/v1/search", response_model=wire.SearchResponse)
async def search(node: NodeDep, body: wire.SearchRequest) -> Response:
    """One call searches any of the group's stores; matches come tagged with their store."""
    return model_response(await service.search(node, body))


@router.post("/v1/stores/{store_id}/faces", response_model=wire.EnrollResponse, status_code=201)
async def enroll_image(
    state: Store,
    image: Annotated[UploadFile, File()],
    face_id: Annotated[int | None, Form(ge=1)] = None,
    label: Annotated[str, Form(max_length=200)] = "",
    member_id: Annotated[str, Form(max_length=100)] = "",
    kind: Annotated[str, Form(pattern=r"^(gallery|visitor|member)$")] = "gallery",
    largest: Annotated[bool, Form()] = False,
    new_person: Annotated[bool, Form()] = False,
    force: Annotated[bool, Form()] = False,
) -> Response:
    """201 with a new FaceId; 200 when the face was known (its FaceId, and the distance)."""
    data = await read_upload(image, state.pool.limits.max_bytes)
    done = await service.enroll_image(
        state,
        data,
        face_id=face_id,
        label=label,
        member_id=member_id,
        kind=kind,
        largest=largest,
        new_person=new_person,
        force=force,
    )
    return model_response(done, 201 if done.created else 200)


@router.post(
    "/v1/stores/{store_id}/faces/embedding", response_model=wire.EnrollResponse, status_code=201
)
async def enroll_embedding(state: Store, body: wire.EnrollEmbeddingRequest) -> wire.EnrollResponse:
    return await service.enroll_embedding(state, body)


@router.post("/v1/stores/{store_id}/register", response_model=wire.EnrollResponse)
async def register(state: Store, body: wire.RegisterRequest) -> wire.EnrollResponse:
    """The face's FaceId if it is known here, else a new one; idempotent, so retryable."""
    return await service.register(state, body)


@router.delete("/v1/faces/{face_id}", response_model=wire.EraseResponse)
async def erase(node: NodeDep, face_id: int) -> wire.EraseResponse:
    """Erase a person everywhere (a FaceId is chain-wide), and from this node at once."""
    return await service.erase(node, face_id)


@router.get("/v1/stores/{store_id}/info", response_model=wire.InfoResponse)
async def store_info(node: NodeDep, store_id: str) -> wire.InfoResponse:
    return service.store_info(node.hosted(store_id))


@router.get("/v1/info", response_model=wire.NodeInfoResponse)
async def info(node: NodeDep) -> wire.NodeInfoResponse:
    return service.node_info(node)


@router.get("/healthz", response_model=wire.HealthResponse)
async def healthz() -> wire.HealthResponse:
    return wire.HealthResponse(status="ok")


@router.get("/readyz", response_model=wire.HealthResponse)
async def readyz(request: Request, node: NodeDep) -> JSONResponse:
    """Ready once every pipeline worker has embedded a face and every store is loaded."""
    task = request.state.warm
    warm = task.done() and not task.cancelled() and task.exception() is None
    ready = node.loaded and warm
    details = {
        "node_id": node.node_id,
        "workers_ready": warm,
        "stores": {
            sid: {
                "loaded": st.replica.loaded,
                "loaded_from": st.replica.loaded_from,
                "load_seconds": round(st.replica.load_seconds, 3),
                "vectors": len(st.replica.index),
                **({"refused": st.refused} if st.refused else {}),
            }
            for sid, st in sorted(node.stores.items())
        },
    }
    body = wire.HealthResponse(status="ready" if ready else "loading", details=details)
    return JSONResponse(status_code=200 if ready else 503, content=body.model_dump())
