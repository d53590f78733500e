"""The embedder interface every face pipeline implements."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
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
    # Which landmarks are the image-left eye, the image-right eye and the nose (for yaw).
    eyes_nose: tuple[tuple[int, ...], tuple[int, ...], int] = ((0,), (1,), 2)
    # The model that makes the vectors, which a store records (storeface.embedders
    # embedder_identity): "arcface:<recognizer file>"; "" means the name says it all.
    identity: str = ""

    def __post_init__(self) -> None:
        if not self.identity:
            object.__setattr__(self, "identity", self.name)


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
    yaw: float | None = None  # degrees the head is turned, from the landmarks; None: unknown


class FacePipeline(Protocol):
    """Detects faces in an RGB frame and embeds each one."""

    info: EmbedderInfo

    def detect(self, rgb: np.ndarray) -> list[Detection]: ...

    def embed(self, rgb: np.ndarray, detections: list[Detection]) -> np.ndarray: ...


# A downscaled upload is searched again for the faces the downscale made too small, in
# tiles of a finer frame (DecodedImage.detail_scale); docs/benchmarks.md, "Large frames".
# A face this large in the downscaled frame is found there, by either detector (dlib's HOG
# finds faces from ~31 px, YuNet from ~17); larger boxes from the tiles are dropped.
COARSE_SURE_PX = 80
TILE_SIDE = 2048  # at most this many px a side per tile: bounds a detector call's memory
# Tiles overlap by this many times the largest face they keep, so that each such face lies
# whole in one tile (a box cut by a tile's edge is dropped there).
TILE_MARGIN = 1.25
CUT_PX = 2  # a box within this of an edge a tile shares with another tile is cut there
DUPLICATE_IOU = 0.4  # boxes overlapping more than this are one face found twice
# A face in a downscaled upload is embedded from the upload's own pixels: a crop around it
# with this margin (× its side), shrunk where the face is larger than EMBED_FACE_PX.
EMBED_MARGIN = 0.5
EMBED_FACE_PX = 160
# ... and detected again in that crop where the crop is at least this much finer than the
# frame the face was found in: its box and landmarks then come from the upload's pixels.
REFINE_GAIN = 1.5


def analyze(
    pipeline: FacePipeline,
    image: DecodedImage,
    max_faces: int,
    timings: dict[str, float] | None = None,
) -> list[Face]:
    """Detect, embed and describe every face, largest first, at most `max_faces`."""
    timings = timings if timings is not None else {}
    t0 = time.perf_counter()
    found = detect_faces(pipeline, image)
    found.sort(key=lambda f: f.det.w * f.det.h, reverse=True)
    found = found[:max_faces]
    if image.full is None:  # not downscaled: the frame is the upload
        detections = [f.det for f in found]
    else:  # each face from the upload's own pixels, its box refined there
        crops = [refined(pipeline, face_crop(image.full, f.det), f.scale) for f in found]
        crops.sort(key=lambda c: c.face.w * c.face.h / (c.fx * c.fy), reverse=True)
        detections = [c.to_upload(c.face) for c in crops]
    t1 = time.perf_counter()
    timings["detect_ms"] = (t1 - t0) * 1000
    if not detections:
        timings["embed_ms"] = 0.0
        return []
    if image.full is None:
        embeddings = list(pipeline.embed(image.rgb, detections))
        timings["embed_ms"] = (time.perf_counter() - t1) * 1000
        blurs = [_box_blur(image.rgb, det) for det in detections]
    else:
        embeddings = [pipeline.embed(c.rgb, [c.face])[0] for c in crops]
        timings["embed_ms"] = (time.perf_counter() - t1) * 1000
        blurs = [_box_blur(c.rgb, c.face) for c in crops]
    faces = []
    for det, emb, blur in zip(detections, embeddings, blurs, strict=True):
        box = (round(det.x), round(det.y), round(det.w), round(det.h))
        faces.append(
            Face(
                box=box,
                score=float(det.score),
                size=min(box[2], box[3]),
                blur=blur,
                landmarks=[(round(px, 1), round(py, 1)) for px, py in det.landmarks],
                embedding=np.asarray(emb, dtype=np.float32),
                yaw=yaw_degrees(det.landmarks, pipeline.info.eyes_nose),
            )
        )
    return faces


@dataclass
class Found:
    """A face in upload pixels, and the scale (≤ 1) of the frame it was detected in."""

    det: Detection
    scale: float


def detect_faces(pipeline: FacePipeline, image: DecodedImage) -> list[Found]:
    """Every face, in upload pixels: the whole frame, then the tiles of a finer frame of an
    upload that was downscaled; a face both found is kept once, from the finer frame."""
    coarse = _mapped(pipeline.detect(image.rgb), 1.0 / image.scale, 1.0 / image.scale)
    if image.full is None or image.detail_scale <= 0:
        return [Found(d, image.scale) for d in coarse]
    full = image.full
    if image.detail_scale >= 1:
        detail = full
    else:
        size = (round(image.width * image.detail_scale), round(image.height * image.detail_scale))
        detail = _shrink(full, size)
    fine = detect_tiles(pipeline, detail, tile_overlap(image))
    fine = _mapped(fine, image.width / detail.shape[1], image.height / detail.shape[0])
    # The larger faces are the whole frame's: at full resolution YuNet finds false faces in,
    # and worse landmarks of, a face enlarged 4×, which the downscaled frame sees right.
    big = COARSE_SURE_PX / image.scale
    fine = [d for d in fine if max(d.w, d.h) < big]
    scales = {id(d): detail.shape[1] / image.width for d in fine}
    return [Found(d, scales.get(id(d), image.scale)) for d in dedupe(fine, coarse)]


def tile_overlap(image: DecodedImage) -> int:
    """How much the detail frame's tiles overlap: the largest face they keep, with margin."""
    ratio = min(1.0, image.detail_scale) / image.scale  # detail px per whole-frame px
    return min(TILE_SIDE // 2, math.ceil(TILE_MARGIN * COARSE_SURE_PX * ratio))


def tile_spans(length: int, overlap: int, tile: int = TILE_SIDE) -> list[range]:
    """Equal spans covering 0..length, each at most `tile` long, overlapping at least `overlap`."""
    if length <= tile:
        return [range(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    side = math.ceil((length + (count - 1) * overlap) / count)
    step = (length - side) / (count - 1)
    return [range(round(i * step), round(i * step) + side) for i in range(count)]


def detect_tiles(pipeline: FacePipeline, frame: np.ndarray, overlap: int) -> list[Detection]:
    """The faces of `frame` (its pixels), detected tile by tile; a face cut by a tile's edge
    is left to the neighbouring tile, which holds it whole if it is under `overlap`."""
    height, width = frame.shape[:2]
    found: list[Detection] = []
    for ys in tile_spans(height, overlap):
        for xs in tile_spans(width, overlap):
            tile = np.ascontiguousarray(frame[ys.start : ys.stop, xs.start : xs.stop])
            shared = (xs.start > 0, ys.start > 0, xs.stop < width, ys.stop < height)
            for det in pipeline.detect(tile):
                if not _cut(det, len(xs), len(ys), shared):
                    found.append(_shifted(det, xs.start, ys.start))
    return found


def _cut(det: Detection, width: int, height: int, shared: tuple[bool, ...]) -> bool:
    """Whether a box touches one of a tile's edges that it shares with another tile."""
    left, top, right, bottom = shared
    return (
        (left and det.x < CUT_PX)
        or (top and det.y < CUT_PX)
        or (right and det.x + det.w > width - CUT_PX)
        or (bottom and det.y + det.h > height - CUT_PX)
    )


def _shifted(det: Detection, dx: float, dy: float) -> Detection:
    return Detection(
        x=det.x + dx,
        y=det.y + dy,
        w=det.w,
        h=det.h,
        score=det.score,
        landmarks=[(px + dx, py + dy) for px, py in det.landmarks],
    )


def _mapped(detections: list[Detection], fx: float, fy: float) -> list[Detection]:
    """Detections scaled by fx, fy (frame pixels to upload pixels)."""
    if fx == 1 and fy == 1:
        return detections
    return [
        Detection(
            x=d.x * fx,
            y=d.y * fy,
            w=d.w * fx,
            h=d.h * fy,
            score=d.score,
            landmarks=[(px * fx, py * fy) for px, py in d.landmarks],
        )
        for d in detections
    ]


def iou(a: Detection, b: Detection) -> float:
    """Intersection over union of two boxes."""
    iw = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    ih = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a.w * a.h + b.w * b.h - inter)


def dedupe(*groups: list[Detection]) -> list[Detection]:
    """One detection per face: earlier groups first, then the higher score, win."""
    kept: list[Detection] = []
    for group in groups:
        for det in sorted(group, key=lambda d: d.score, reverse=True):
            if all(iou(det, k) <= DUPLICATE_IOU for k in kept):
                kept.append(det)
    return kept


def _shrink(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`rgb` resized to size (w, h) by pixel-area averaging."""
    import cv2  # here: the shard's main process imports this module and needs no OpenCV

    return np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))


def _box_blur(rgb: np.ndarray, det: Detection) -> float:
    """Sharpness of the box's pixels in `rgb`."""
    x0, y0 = max(0, int(det.x)), max(0, int(det.y))
    x1 = min(rgb.shape[1], int(det.x + det.w))
    y1 = min(rgb.shape[0], int(det.y + det.h))
    return laplacian_variance(rgb[y0:y1, x0:x1].mean(axis=2))


@dataclass(frozen=True)
class FaceCrop:
    """The upload's pixels around a face (shrunk where the face is large), and the face."""

    rgb: np.ndarray
    x0: int
    y0: int
    fx: float  # crop pixels per upload pixel, across
    fy: float  # ... and down
    face: Detection  # in crop pixels

    def to_upload(self, det: Detection) -> Detection:
        return _shifted(_mapped([det], 1 / self.fx, 1 / self.fy)[0], self.x0, self.y0)


def face_crop(full: np.ndarray, det: Detection) -> FaceCrop:
    """The pixels around a face, with a margin, the face at most EMBED_FACE_PX."""
    side = max(det.w, det.h, 1.0)
    pad = EMBED_MARGIN * side
    x0, y0 = max(0, int(det.x - pad)), max(0, int(det.y - pad))
    x1 = min(full.shape[1], math.ceil(det.x + det.w + pad))
    y1 = min(full.shape[0], math.ceil(det.y + det.h + pad))
    crop = full[y0:y1, x0:x1]
    shrink = min(1.0, EMBED_FACE_PX / side)
    if shrink < 1:
        size = (max(1, round((x1 - x0) * shrink)), max(1, round((y1 - y0) * shrink)))
        crop = _shrink(crop, size)
    fx, fy = crop.shape[1] / (x1 - x0), crop.shape[0] / (y1 - y0)
    local = _mapped([_shifted(det, -x0, -y0)], fx, fy)[0]
    return FaceCrop(np.ascontiguousarray(crop), x0, y0, fx, fy, local)


def refined(pipeline: FacePipeline, crop: FaceCrop, scale: float) -> FaceCrop:
    """The crop with its face detected again in it, where the crop shows the face sharper
    than the frame it was found in: a box (and landmarks) to the upload's own pixel."""
    if min(crop.fx, crop.fy) < REFINE_GAIN * scale:
        return crop
    again = [d for d in pipeline.detect(crop.rgb) if iou(d, crop.face) > DUPLICATE_IOU]
    if not again:
        return crop
    return replace(crop, face=max(again, key=lambda d: iou(d, crop.face)))


# How far a head is turned, from where the nose sits between the eyes: its offset over the
# eye distance is about NOSE_DEPTH·tan(yaw) (the nose tip stands ~0.55 eye distances out).
NOSE_DEPTH = 0.55


def yaw_degrees(
    landmarks: list[tuple[float, float]], eyes_nose: tuple[tuple[int, ...], tuple[int, ...], int]
) -> float | None:
    """Left-right head turn in degrees (0: facing the camera); None without landmarks."""
    left_idx, right_idx, nose_idx = eyes_nose
    if len(landmarks) <= max(*left_idx, *right_idx, nose_idx):
        return None
    pts = np.asarray(landmarks, dtype=np.float64)
    left, right = pts[list(left_idx)].mean(axis=0), pts[list(right_idx)].mean(axis=0)
    axis = right - left
    span = float(np.hypot(*axis))
    if span < 1e-6:
        return None
    offset = float(np.dot(pts[nose_idx] - (left + right) / 2, axis)) / span**2
    return round(math.degrees(math.atan(offset / NOSE_DEPTH)), 1)


# A photo with several faces is enrolled by its largest when that one clearly dominates:
# every other face is under the store's min_face_size, or at most this fraction of the
# largest's size (docs/benchmarks.md, "Accuracy": measured on the lfw photos).
DOMINANT_RATIO = 0.7


def dominant(faces: list[Face], min_size: int) -> bool:
    """One face (the first, largest) clearly dominates the others."""
    if len(faces) < 2:
        return True
    second = faces[1].size  # faces come largest first
    return second < min_size or second <= DOMINANT_RATIO * faces[0].size


def enrollable_face(faces: list[Face], min_size: int, largest: bool) -> Face:
    """The one face a photo is enrolled by: its only face, its clearly dominant one, or
    (`largest`) its largest; a clear error otherwise."""
    if not faces:
        raise NoFace()
    if not largest and not dominant(faces, min_size):
        raise MultipleFaces(
            "enrollment needs one clear face; the image has several of similar size "
            "(crop it, or set largest=true to take the largest)",
            faces=len(faces),
            boxes=[list(f.box) for f in faces],
        )
    face = faces[0]  # largest first
    if face.size < min_size:
        raise FaceTooSmall(
            f"the face is {face.size}px; enrollment needs {min_size}px",
            size=face.size,
            min_size=min_size,
        )
    return face
