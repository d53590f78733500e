"""The embedder interface every face pipeline implements."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from storeface.errors import FaceTooSmall, MultipleFaces, NoFace
from storeface.images import DecodedImage, laplacian_variance

Metric = Literal["l2", "cosine"]


@dataclass(frozen=True)
class EmbedderInfo:
    """What an index must know about the vectors an embedder makes."""

    name: str
    dim: int
    metric: Metric
    threshold: float  # distance at or below which two faces are the same person
    threshold_note: str  # how the threshold was measured, with its error rates


@dataclass
class Detection:
    """A face box in detection-frame pixels, with landmarks where the detector gives them."""

    x: float
    y: float
    w: float
    h: float
    score: float
    landmarks: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Face:
    """One detected and embedded face, in the coordinates of the uploaded image."""

    box: tuple[int, int, int, int]  # x, y, w, h
    score: float
    size: int  # shorter side of the box, in original pixels
    blur: float  # Laplacian variance of the face crop; low means blurred
    landmarks: list[tuple[float, float]]
    embedding: np.ndarray


class FacePipeline(Protocol):
    """Detects faces in an RGB frame and embeds each one."""

    info: EmbedderInfo

    def detect(self, rgb: np.ndarray) -> list[Detection]: ...

    def embed(self, rgb: np.ndarray, detections: list[Detection]) -> np.ndarray: ...


def analyze(
    pipeline: FacePipeline,
    image: DecodedImage,
    max_faces: int,
    timings: dict[str, float] | None = None,
) -> list[Face]:
    """Detect, embed and describe every face, largest first, at most `max_faces`."""
    timings = timings if timings is not None else {}
    t0 = time.perf_counter()
    detections = pipeline.detect(image.rgb)
    detections.sort(key=lambda d: d.w * d.h, reverse=True)
    detections = detections[:max_faces]
    t1 = time.perf_counter()
    timings["detect_ms"] = (t1 - t0) * 1000
    if not detections:
        timings["embed_ms"] = 0.0
        return []
    embeddings = pipeline.embed(image.rgb, detections)
    timings["embed_ms"] = (time.perf_counter() - t1) * 1000
    inv = 1.0 / image.scale
    faces = []
    for det, emb in zip(detections, embeddings, strict=True):
        x0, y0 = max(0, int(det.x)), max(0, int(det.y))
        x1 = min(image.rgb.shape[1], int(det.x + det.w))
        y1 = min(image.rgb.shape[0], int(det.y + det.h))
        box = (round(det.x * inv), round(det.y * inv), round(det.w * inv), round(det.h * inv))
        faces.append(
            Face(
                box=box,
                score=float(det.score),
                size=min(box[2], box[3]),
                blur=laplacian_variance(image.rgb[y0:y1, x0:x1].mean(axis=2)),
                landmarks=[(round(px * inv, 1), round(py * inv, 1)) for px, py in det.landmarks],
                embedding=np.asarray(emb, dtype=np.float32),
            )
        )
    return faces


def enrollable_face(faces: list[Face], min_size: int, largest: bool) -> Face:
    """The one face a photo is enrolled by (largest first); a clear error otherwise."""
    if not faces:
        raise NoFace()
    if len(faces) > 1 and not largest:
        raise MultipleFaces(faces=len(faces))
    face = faces[0]  # largest first
    if face.size < min_size:
        raise FaceTooSmall(
            f"the face is {face.size}px; enrollment needs {min_size}px",
            size=face.size,
            min_size=min_size,
        )
    return face
