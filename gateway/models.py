"""Request and response models of the gateway's public API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from storeface.wire import Box, Quality


class Member(BaseModel):
    member_id: str
    profile: dict[str, Any] = Field(default_factory=dict)


class RecognizedFace(BaseModel):
    face_id: int | None = Field(
        description="null when the face is unknown and too poor to register (see `reason`)"
    )
    is_new: bool
    matched_store: str | None = Field(description="store whose index matched; null if new")
    distance: float | None
    label: str = ""
    kind: str = ""
    member: Member | None = None
    box: Box
    quality: Quality
    visit: str = Field(default="", description="new | returning | deduped | not_counted")
    reason: str = Field(
        default="",
        description="why an unknown face was not counted: too_small | too_blurred | "
        "turned_away | not_registering",
    )


class RecognizeResponse(BaseModel):
    store_id: str
    faces: list[RecognizedFace]
    degraded: list[str] = Field(
        default_factory=list, description="stores the fan-out could not ask in time"
    )
    timings: dict[str, float]


class SearchMatch(BaseModel):
    face_id: int
    store_id: str
    label: str = ""
    distance: float


class SearchFace(BaseModel):
    box: Box
    quality: Quality
    matches: list[SearchMatch]


class SearchResponse(BaseModel):
    store_id: str
    threshold: float
    faces: list[SearchFace]
    degraded: list[str] = Field(default_factory=list)


class VerifyResponse(BaseModel):
    same: bool
    distance: float
    threshold: float
    embedder: str


class MemberBinding(BaseModel):
    member_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    profile: dict[str, Any] = Field(default_factory=dict)
    move: bool = Field(
        default=False,
        description="take the member id from the FaceId it is bound to (else 409 member_taken)",
    )


class MemberBindingResponse(BaseModel):
    face_id: int
    member_id: str
    bound: bool
    moved_from: int | None = Field(default=None, description="the FaceId it was taken from")


class MergeRequest(BaseModel):
    other: int = Field(ge=1, description="the FaceId that is the same person; it ends")


class MergeResponse(BaseModel):
    face_id: int
    merged: int
    stores: list[str] = Field(description="the stores the merged FaceId's vectors were in")
    label: str = ""
    member_id: str = ""


class ErasedFace(BaseModel):
    face_id: int
    distance: float = Field(description="from the photo to this FaceId")
    stores: list[str] = Field(description="the stores it was erased from")


class PhotoEraseResponse(BaseModel):
    erased: list[ErasedFace]
    max_distance: float = Field(description="the strict threshold used")
    degraded: list[str] = Field(
        default_factory=list, description="stores that could not be searched: erase again later"
    )


class DayStats(BaseModel):
    day: str
    pv: int
    uv: int
    new: int
    returning: int
    member_visits: int
    member_uv: int


class StatsResponse(BaseModel):
    store_id: str
    from_: str = Field(alias="from")
    to: str
    unique_visitors: int = Field(description="distinct visitors over the whole range")
    days: list[DayStats]

    model_config = {"populate_by_name": True}


class SweepRequest(BaseModel):
    older_than_days: int | None = Field(
        default=None, ge=1, le=36500, description="this run only: overrides every store's period"
    )
    dry_run: bool = Field(default=False, description="count what would be erased; erase nothing")

    model_config = {"extra": "forbid"}


class SweepResponse(BaseModel):
    erased: int = Field(description="FaceIds erased everywhere (0 in a dry run)")
    expired: int = Field(description="visitors unseen for longer than their period")
    scanned: int = Field(description="unbound, unlabelled visitors looked at")
    dry_run: bool
    older_than_days: int | None = Field(description="the override of this run, if any")
    took_ms: float


class AuditEntryOut(BaseModel):
    id: str = Field(description="the entry's id; pass it as `before` for older entries")
    time: str = Field(description="UTC, ISO 8601")
    actor: str = Field(description="the id of the key that erased (never the key)")
    face_id: int
    reason: str = Field(description="request | photo | retention | what the caller gave")
    stores: list[str]


class AuditPage(BaseModel):
    entries: list[AuditEntryOut] = Field(description="newest first")
    next: str | None = Field(description="`before` for the next (older) page; null: no more")


class Me(BaseModel):
    key_id: str
    role: str = Field(description="admin | camera")
    stores: list[str] = Field(description="the stores this key may see")


class WindowStats(BaseModel):
    pv: int
    uv: int = Field(description="distinct visitors over the window")
    new: int
    returning: int
    member_visits: int


class StoreOverview(BaseModel):
    store_id: str
    region: str
    today: WindowStats
    last_7_days: WindowStats
    last_30_days: WindowStats


class Overview(BaseModel):
    day: str = Field(description="today (UTC)")
    stores: list[StoreOverview]


class Visit(BaseModel):
    face_id: int
    time: str = Field(description="UTC, ISO 8601")
    visit: str = Field(description="new | returning")
    member: bool
    kind: str = Field(description="visitor | member | gallery (now)")


class VisitsResponse(BaseModel):
    store_id: str
    visits: list[Visit] = Field(description="newest first")


class StoreHealth(BaseModel):
    store_id: str
    node: str
    replicas: int = Field(description="configured")
    replicas_up: int | None = Field(description="answering /readyz; null: behind a proxy")
    reachable: bool
    faces: int | None = None
    vectors: int | None = None
    index: str | None = None
    embedder: str
    threshold: float | None = None
    loaded: bool | None = None
    visitor_retention_days: int | None = Field(description="null: visitors are kept")
