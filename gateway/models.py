"""Request and response models of the gateway's public API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from storeface.wire import Box, Quality, examples


class Member(BaseModel):
    member_id: str = Field(description="the member id bound to this FaceId")
    profile: dict[str, Any] = Field(
        default_factory=dict, description="what the caller stored with the member (free-form)"
    )


class RecognizedFace(BaseModel):
    face_id: int | None = Field(
        description="null when the face is unknown and too poor to register (see `reason`)"
    )
    is_new: bool = Field(description="a FaceId was made for this face now")
    matched_store: str | None = Field(description="store whose index matched; null if new")
    distance: float | None = Field(description="to the matched face; null if new")
    label: str = Field(default="", description="the FaceId's label, if any")
    kind: str = Field(default="", description="visitor | member | gallery")
    member: Member | None = Field(
        default=None, description="the member bound to this FaceId, if any"
    )
    box: Box = Field(description="where the face is in the photo, in pixels")
    quality: Quality = Field(description="how usable the face is")
    visit: str = Field(default="", description="new | returning | deduped | not_counted")
    reason: str = Field(
        default="",
        description="why an unknown face was not counted: too_small | too_blurred | "
        "turned_away | not_registering",
    )


class RecognizeResponse(BaseModel):
    store_id: str = Field(description="the store the photo was taken at")
    faces: list[RecognizedFace] = Field(description="one per face found, largest first")
    degraded: list[str] = Field(
        default_factory=list, description="stores the fan-out could not ask in time"
    )
    timings: dict[str, float] = Field(
        description="milliseconds per step (decode, detect, embed, search, ...)"
    )

    model_config = examples(
        {
            "store_id": "store-a",
            "faces": [
                {
                    "face_id": 42,
                    "is_new": False,
                    "matched_store": "store-a",
                    "distance": 0.41,
                    "label": "",
                    "kind": "member",
                    "member": {"member_id": "m-1001", "profile": {"tier": "gold"}},
                    "box": {"x": 412, "y": 188, "w": 164, "h": 164},
                    "quality": {"size": 164, "blur": 212.4, "score": 0.98, "yaw": 6.5},
                    "visit": "returning",
                    "reason": "",
                }
            ],
            "degraded": [],
            "timings": {
                "decode": 3.1,
                "detect": 18.4,
                "embed": 9.7,
                "search": 4.2,
                "total": 38.0,
            },
        }
    )


class SearchMatch(BaseModel):
    face_id: int = Field(description="the matching FaceId")
    store_id: str = Field(description="the store whose index holds the match")
    label: str = Field(default="", description="the FaceId's label, if any")
    distance: float = Field(description="lower is closer")


class SearchFace(BaseModel):
    box: Box = Field(description="where the face is in the photo, in pixels")
    quality: Quality = Field(description="how usable the face is")
    matches: list[SearchMatch] = Field(description="best first")


class SearchResponse(BaseModel):
    store_id: str = Field(description="the store asked")
    threshold: float = Field(
        description="the store's match threshold (a match is closer than this)"
    )
    faces: list[SearchFace] = Field(description="one per face found")
    degraded: list[str] = Field(
        default_factory=list, description="stores the fan-out could not ask in time"
    )

    model_config = examples(
        {
            "store_id": "store-a",
            "threshold": 0.6,
            "faces": [
                {
                    "box": {"x": 412, "y": 188, "w": 164, "h": 164},
                    "quality": {"size": 164, "blur": 212.4, "score": 0.98, "yaw": 6.5},
                    "matches": [
                        {
                            "face_id": 42,
                            "store_id": "store-a",
                            "label": "",
                            "distance": 0.41,
                        },
                        {
                            "face_id": 77,
                            "store_id": "store-b",
                            "label": "",
                            "distance": 0.58,
                        },
                    ],
                }
            ],
            "degraded": [],
        }
    )


class VerifyResponse(BaseModel):
    same: bool = Field(description="the two faces are one person (distance under threshold)")
    distance: float = Field(description="between the two faces; lower is closer")
    threshold: float = Field(description="the store's match threshold")
    embedder: str = Field(description="the embedder that compared them")

    model_config = examples({"same": True, "distance": 0.38, "threshold": 0.6, "embedder": "dlib"})


class MemberBinding(BaseModel):
    member_id: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="the member id to bind (letters, digits, _ . : -)",
    )
    profile: dict[str, Any] = Field(
        default_factory=dict, description="free-form data to keep with the member"
    )
    move: bool = Field(
        default=False,
        description="take the member id from the FaceId it is bound to (else 409 member_taken)",
    )

    model_config = examples({"member_id": "m-1001", "profile": {"tier": "gold"}, "move": False})


class MemberBindingResponse(BaseModel):
    face_id: int = Field(description="the FaceId")
    member_id: str = Field(description="the member id bound (or unbound)")
    bound: bool = Field(description="whether a member is bound to the FaceId now")
    moved_from: int | None = Field(default=None, description="the FaceId it was taken from")

    model_config = examples(
        {"face_id": 42, "member_id": "m-1001", "bound": True, "moved_from": None}
    )


class MergeRequest(BaseModel):
    other: int = Field(ge=1, description="the FaceId that is the same person; it ends")

    model_config = examples({"other": 77})


class MergeResponse(BaseModel):
    face_id: int = Field(description="the FaceId that remains")
    merged: int = Field(description="the FaceId that ended")
    stores: list[str] = Field(description="the stores the merged FaceId's vectors were in")
    label: str = Field(default="", description="the remaining FaceId's label")
    member_id: str = Field(default="", description="the remaining FaceId's member id")

    model_config = examples(
        {
            "face_id": 42,
            "merged": 77,
            "stores": ["store-a", "store-b"],
            "label": "",
            "member_id": "m-1001",
        }
    )


class ErasedFace(BaseModel):
    face_id: int = Field(description="the FaceId erased")
    distance: float = Field(description="from the photo to this FaceId")
    stores: list[str] = Field(description="the stores it was erased from")


class PhotoEraseResponse(BaseModel):
    erased: list[ErasedFace] = Field(
        description="the FaceIds that matched the photo, erased everywhere"
    )
    max_distance: float = Field(description="the strict threshold used")
    degraded: list[str] = Field(
        default_factory=list, description="stores that could not be searched: erase again later"
    )

    model_config = examples(
        {
            "erased": [{"face_id": 42, "distance": 0.31, "stores": ["store-a", "store-b"]}],
            "max_distance": 0.48,
            "degraded": [],
        }
    )


class DayStats(BaseModel):
    day: str = Field(description="the day (UTC), ISO 8601 date")
    pv: int = Field(description="counted visits (page views)")
    uv: int = Field(description="distinct visitors that day")
    new: int = Field(description="visits by first-time visitors")
    returning: int = Field(description="visits by returning visitors")
    member_visits: int = Field(description="visits by members")
    member_uv: int = Field(description="distinct members that day")


class StatsResponse(BaseModel):
    store_id: str = Field(description="the store")
    from_: str = Field(alias="from", description="first day of the range (UTC), ISO 8601 date")
    to: str = Field(description="last day of the range (UTC), ISO 8601 date")
    unique_visitors: int = Field(description="distinct visitors over the whole range")
    days: list[DayStats] = Field(description="one per day, oldest first")

    model_config = examples(
        {
            "store_id": "store-a",
            "from": "2024-05-01",
            "to": "2024-05-02",
            "unique_visitors": 180,
            "days": [
                {
                    "day": "2024-05-01",
                    "pv": 140,
                    "uv": 120,
                    "new": 70,
                    "returning": 70,
                    "member_visits": 25,
                    "member_uv": 20,
                },
                {
                    "day": "2024-05-02",
                    "pv": 110,
                    "uv": 95,
                    "new": 60,
                    "returning": 50,
                    "member_visits": 18,
                    "member_uv": 15,
                },
            ],
        },
        populate_by_name=True,
    )


class SweepRequest(BaseModel):
    older_than_days: int | None = Field(
        default=None, ge=1, le=36500, description="this run only: overrides every store's period"
    )
    dry_run: bool = Field(default=False, description="count what would be erased; erase nothing")

    model_config = examples({"older_than_days": 90, "dry_run": True}, extra="forbid")


class SweepResponse(BaseModel):
    erased: int = Field(description="FaceIds erased everywhere (0 in a dry run)")
    expired: int = Field(description="visitors unseen for longer than their period")
    scanned: int = Field(description="unbound, unlabelled visitors looked at")
    dry_run: bool = Field(description="nothing was erased")
    older_than_days: int | None = Field(description="the override of this run, if any")
    took_ms: float = Field(description="how long the sweep took, in milliseconds")

    model_config = examples(
        {
            "erased": 0,
            "expired": 312,
            "scanned": 5400,
            "dry_run": True,
            "older_than_days": 90,
            "took_ms": 842.5,
        }
    )


class AuditEntryOut(BaseModel):
    id: str = Field(description="the entry's id; pass it as `before` for older entries")
    time: str = Field(description="UTC, ISO 8601")
    actor: str = Field(description="the id of the key that erased (never the key)")
    face_id: int = Field(description="the FaceId erased")
    reason: str = Field(description="request | photo | retention | what the caller gave")
    stores: list[str] = Field(description="the stores it was erased from")


class AuditPage(BaseModel):
    entries: list[AuditEntryOut] = Field(description="newest first")
    next: str | None = Field(description="`before` for the next (older) page; null: no more")

    model_config = examples(
        {
            "entries": [
                {
                    "id": "1714557600000-0",
                    "time": "2024-05-01T10:00:00Z",
                    "actor": "admin",
                    "face_id": 42,
                    "reason": "TICKET-123",
                    "stores": ["store-a", "store-b"],
                }
            ],
            "next": None,
        }
    )


class Me(BaseModel):
    key_id: str = Field(description="the calling key's id (never the key)")
    role: str = Field(description="admin | camera")
    stores: list[str] = Field(description="the stores this key may see")

    model_config = examples({"key_id": "cam-entrance", "role": "camera", "stores": ["store-a"]})


class WindowStats(BaseModel):
    pv: int = Field(description="counted visits")
    uv: int = Field(description="distinct visitors over the window")
    new: int = Field(description="visits by first-time visitors")
    returning: int = Field(description="visits by returning visitors")
    member_visits: int = Field(description="visits by members")


class StoreOverview(BaseModel):
    store_id: str = Field(description="the store")
    region: str = Field(description="the store's region (stores.yaml)")
    today: WindowStats = Field(description="since midnight UTC")
    last_7_days: WindowStats = Field(description="the last 7 days, today included")
    last_30_days: WindowStats = Field(description="the last 30 days, today included")


class Overview(BaseModel):
    day: str = Field(description="today (UTC)")
    stores: list[StoreOverview] = Field(description="every store the key may see")

    model_config = examples(
        {
            "day": "2024-05-02",
            "stores": [
                {
                    "store_id": "store-a",
                    "region": "north",
                    "today": {
                        "pv": 110,
                        "uv": 95,
                        "new": 60,
                        "returning": 50,
                        "member_visits": 18,
                    },
                    "last_7_days": {
                        "pv": 820,
                        "uv": 540,
                        "new": 400,
                        "returning": 420,
                        "member_visits": 130,
                    },
                    "last_30_days": {
                        "pv": 3400,
                        "uv": 1900,
                        "new": 1500,
                        "returning": 1900,
                        "member_visits": 520,
                    },
                }
            ],
        }
    )


class Visit(BaseModel):
    face_id: int = Field(description="the visitor's FaceId")
    time: str = Field(description="UTC, ISO 8601")
    visit: str = Field(description="new | returning")
    member: bool = Field(description="a member was bound to the FaceId at the visit")
    kind: str = Field(description="visitor | member | gallery (now)")


class VisitsResponse(BaseModel):
    store_id: str = Field(description="the store")
    visits: list[Visit] = Field(description="newest first")

    model_config = examples(
        {
            "store_id": "store-a",
            "visits": [
                {
                    "face_id": 42,
                    "time": "2024-05-02T09:14:03Z",
                    "visit": "returning",
                    "member": True,
                    "kind": "member",
                },
                {
                    "face_id": 311,
                    "time": "2024-05-02T09:12:47Z",
                    "visit": "new",
                    "member": False,
                    "kind": "visitor",
                },
            ],
        }
    )


class StoreHealth(BaseModel):
    store_id: str = Field(description="the store")
    node: str = Field(description="the node group hosting it")
    replicas: int = Field(description="configured")
    replicas_up: int | None = Field(description="answering /readyz; null: behind a proxy")
    reachable: bool = Field(description="a replica answered")
    faces: int | None = Field(default=None, description="FaceIds in the store's index")
    vectors: int | None = Field(default=None, description="vectors in the store's index")
    index: str | None = Field(
        default=None,
        description="the kind of faiss index the store runs now (it changes with its size)",
    )
    embedder: str = Field(description="the store's embedder")
    threshold: float | None = Field(default=None, description="the store's match threshold")
    loaded: bool | None = Field(default=None, description="the node has the store loaded")
    visitor_retention_days: int | None = Field(description="null: visitors are kept")

    model_config = examples(
        {
            "store_id": "store-a",
            "node": "node-1",
            "replicas": 2,
            "replicas_up": 2,
            "reachable": True,
            "faces": 5400,
            "vectors": 6100,
            "index": "flat",
            "embedder": "dlib",
            "threshold": 0.6,
            "loaded": True,
            "visitor_retention_days": 90,
        }
    )
