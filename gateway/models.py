"""Request and response models of the gateway's public API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from storeface.wire import Box, Quality


class Member(BaseModel):
    member_id: str
    profile: dict[str, Any] = Field(default_factory=dict)


class RecognizedFace(BaseModel):
    face_id: int | None = Field(description="null only when the face was too small to register")
    is_new: bool
    matched_store: str | None = Field(description="store whose index matched; null if new")
    distance: float | None
    label: str = ""
    kind: str = ""
    member: Member | None = None
    box: Box
    quality: Quality
    visit: str = Field(default="", description="new | returning | deduped | not_counted")


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
