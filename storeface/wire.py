"""Pydantic models of what crosses HTTP between cameras, the gateway and the shards."""

from __future__ import annotations

from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator


def examples(*docs: dict[str, Any], **config: Any) -> ConfigDict:
    """A model's config with these examples for its OpenAPI schema (and any other `config`)."""
    return cast(ConfigDict, {"json_schema_extra": {"examples": list(docs)}, **config})


class Box(BaseModel):
    x: int = Field(description="left edge, in pixels")
    y: int = Field(description="top edge, in pixels")
    w: int = Field(description="width, in pixels")
    h: int = Field(description="height, in pixels")


class Quality(BaseModel):
    size: int = Field(description="shorter side of the face box, in pixels")
    blur: float = Field(description="Laplacian variance of the face crop; low = blurred")
    score: float = Field(description="detector confidence")
    yaw: float | None = Field(
        default=None,
        description="degrees the head is turned left/right (0: facing); from landmarks",
    )


class Match(BaseModel):
    face_id: int
    distance: float
    label: str = ""
    store_id: str = Field(default="", description="the store whose index holds the match")


class ShardFace(BaseModel):
    box: Box
    quality: Quality
    landmarks: list[tuple[float, float]] = Field(default_factory=list)
    embedding: list[float]
    matches: list[Match]


class IdentifyResponse(BaseModel):
    store_id: str
    embedder: str
    metric: str = "l2"
    threshold: float = Field(description="the store's match threshold now, for its size")
    gallery_faces: int = Field(
        default=0, description="faces in the store: what its threshold follows"
    )
    base_threshold: float | None = Field(
        default=None, description="the store's threshold before its size (1:1 checks use it)"
    )
    threshold_per_decade: float = Field(
        default=0.0, description="how much lower the threshold is for every tenfold more faces"
    )
    width: int
    height: int
    faces: list[ShardFace]
    timings: dict[str, float]


class SearchRequest(BaseModel):
    embeddings: list[list[float]] = Field(min_length=1, max_length=64)
    top_k: int = Field(default=5, ge=1, le=100)
    stores: list[str] | None = Field(
        default=None, max_length=10_000, description="stores of this node group; None = all"
    )

    @model_validator(mode="after")
    def _one_dimension(self) -> SearchRequest:
        if len({len(e) for e in self.embeddings}) > 1:
            raise ValueError("every embedding must have the same dimension")
        return self


class SearchResponse(BaseModel):
    node_id: str
    embedder: str
    results: list[list[Match]] = Field(description="per embedding, best first, store-tagged")
    stores: list[str] = Field(description="the stores searched")
    missing: list[str] = Field(
        default_factory=list, description="asked for but not hosted here, or not ready"
    )
    gallery_faces: int = Field(
        default=0, description="faces in the stores searched, for a threshold by size"
    )
    search_ms: float


class EnrollEmbeddingRequest(BaseModel):
    embedding: list[float]
    face_id: int | None = Field(default=None, ge=1)
    label: str = Field(default="", max_length=200)
    member_id: str = Field(default="", max_length=100)
    kind: str = Field(default="gallery", pattern=r"^(gallery|visitor|member)$")
    register_threshold: float | None = Field(
        default=None,
        gt=0,
        description="register only if no face lies within this distance (visitor dedupe)",
    )
    max_vectors: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="learn a view of `face_id` (needed): stored only while the FaceId holds "
        "fewer vectors in this store (checked in Redis), the same embedding twice stored once",
    )
    min_distance: float | None = Field(
        default=None,
        ge=0,
        description="learn a view of `face_id` (needed): stored only if every vector of "
        "`face_id` is further away",
    )


class RegisterRequest(BaseModel):
    """Register a visitor unless someone lies within `threshold`: safe to retry."""

    embedding: list[float]
    threshold: float = Field(gt=0)
    kind: str = Field(default="visitor", pattern=r"^(gallery|visitor|member)$")
    label: str = Field(default="", max_length=200)


class EnrollResponse(BaseModel):
    face_id: int = Field(description="the FaceId the photo was enrolled under")
    vec_id: int = Field(description="the id of the stored vector")
    created: bool = Field(description="a new FaceId was made")
    duplicate: bool = Field(default=False, description="this exact photo was already enrolled")
    distance: float | None = Field(
        default=None,
        description="how far the photo is from the FaceId it joined (an existing face)",
    )
    matched_store: str | None = Field(
        default=None, description="the store where the existing face was found"
    )
    member_moved_from: int | None = Field(
        default=None, description="the FaceId the member id was taken from (move_member)"
    )
    skipped: str | None = Field(
        default=None,
        description="a view not learned: capped (the FaceId holds max_vectors here), "
        "not_novel (one of its vectors is within min_distance) or busy (the store's "
        "registration lock stayed taken: learning waits for no one)",
    )

    model_config = examples(
        {
            "face_id": 42,
            "vec_id": 6101,
            "created": True,
            "duplicate": False,
            "distance": None,
            "matched_store": None,
            "member_moved_from": None,
            "skipped": None,
        }
    )


class EraseResponse(BaseModel):
    face_id: int = Field(description="the FaceId")
    erased: bool = Field(description="something was erased")
    stores: list[str] = Field(default_factory=list, description="the stores it was erased from")

    model_config = examples({"face_id": 42, "erased": True, "stores": ["store-a", "store-b"]})


class InfoResponse(BaseModel):
    store_id: str
    embedder: str
    dim: int
    metric: str
    threshold: float = Field(description="the match threshold in effect now, for the store's size")
    base_threshold: float | None = Field(
        default=None, description="the store's threshold (or its embedder's) before its size"
    )
    threshold_rule: str = Field(default="", description="how the threshold follows the size")
    threshold_note: str
    faces: int
    vectors: int
    index: str
    nprobe: int
    rebuilding: bool = False
    feed_position: str
    loaded: bool = True
    refused: str = Field(default="", description="why this node will not serve the store")
    leaving: bool = Field(default=False, description="moved to another node group")


class NodeInfoResponse(BaseModel):
    node_id: str
    embedder: str
    embedder_note: str | None = Field(
        default=None, description="why the node runs this embedder, when stores.yaml named none"
    )
    dim: int
    metric: str
    stores: list[InfoResponse]
    group_index: str | None = Field(
        default=None, description="the index over all hosted stores (flat/ivf), if kept"
    )
    group_index_vectors: int = 0


class HealthResponse(BaseModel):
    status: str = Field(description="ok | ready | not_ready")
    details: dict[str, Any] = Field(
        default_factory=dict,
        description="per dependency: Redis, node groups and the stores each hosts",
    )

    model_config = examples(
        {
            "status": "ready",
            "details": {
                "redis": True,
                "config_error": None,
                "nodes": {"node-1": True},
                "stores": {"store-a": True, "store-b": True},
            },
        }
    )


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
