"""YuNet detection and ArcFace-format ONNX embeddings, both run with OpenCV's DNN module.

Its default threshold is measured by `python -m bench.accuracy --embedder arcface`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shard_node.faces.base import Detection, EmbedderInfo, iou
from storeface.embedders import (
    DETECTOR_MODEL,
    RECOGNIZER_MODEL,
    SFACE_MODEL,
    W600K_MBF_MODEL,
    arcface_identity,
    recognizer_model,
)
from storeface.errors import ConfigError, ModelMismatch, ModelMissing
from storeface.paths import models_dir

DEFAULT_DIM = 128
DEFAULT_MEAN = DEFAULT_STD = 127.5  # InsightFace's convention: pixels to [-1, 1]
DEFAULT_DET_SCORE = 0.6
INPUT_SIZE = 112
MIRROR_IOU = 0.4  # the face found again in its mirror image overlaps its mirrored box this much

# Where the eyes, nose tip and mouth corners sit in a 112×112 ArcFace input, in YuNet's
# landmark order (the eye on the image's left first).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)

# Measured by `python -m bench.accuracy --embedder arcface` on ../shared/faces, the same
# protocol as dlib's: gallery = first photo of each of the 42 lfw_dev people + every other
# distractor (662 faces); probes = the other 66 lfw_dev photos + 619 never-enrolled strangers.
THRESHOLD = 0.56
THRESHOLD_NOTE = (
    "cosine distance 0.56 for arcface_mobilefacenet_128.onnx + YuNet: false-match rate 0.65% "
    "(4/619 strangers), true-match rate 95.5% (63/66), rank-1 100%, on lfw_dev + 619 strangers "
    "vs a 662-face gallery (`python -m bench.accuracy --embedder arcface`). Small sample: one "
    "false match moves the FMR by 0.16 points; FMR reaches 1% at 0.566 (TMR 97.0%)."
)


@dataclass(frozen=True)
class RecognizerProfile:
    """What a recognizer file needs that its weights do not say: input scaling, the size of
    its embeddings (for the index, before any weights load) and its threshold."""

    dim: int
    input_mean: float
    input_std: float
    threshold: float
    threshold_note: str


def _unmeasured(name: str, why: str) -> str:
    return (
        f"{why}; not measured for {name} with this pipeline (flip TTA on): measure it with "
        f"`STOREFACE_MODELS_DIR=<its folder> python -m bench.accuracy --embedder arcface` "
        "and set the store's `threshold:`"
    )


# Known recognizers by file name; any other ArcFace-format file takes the InsightFace
# scaling and the measured 0.56, with a note that it was measured for another model.
PROFILES = {
    RECOGNIZER_MODEL: RecognizerProfile(
        DEFAULT_DIM, DEFAULT_MEAN, DEFAULT_STD, THRESHOLD, THRESHOLD_NOTE
    ),
    # OpenCV's FaceRecognizerSF feeds SFace blobFromImage(face, 1.0, mean 0, swapRB): RGB
    # 0..255, unscaled. 0.637 = 1 - its published cosine-similarity threshold 0.363.
    SFACE_MODEL: RecognizerProfile(
        128,
        0.0,
        1.0,
        0.637,
        _unmeasured(
            SFACE_MODEL,
            "cosine distance 0.637: OpenCV's published threshold (0.363 "
            "cosine similarity, FaceRecognizerSF, one view per face)",
        ),
    ),
    W600K_MBF_MODEL: RecognizerProfile(
        512,
        DEFAULT_MEAN,
        DEFAULT_STD,
        THRESHOLD,
        _unmeasured(W600K_MBF_MODEL, f"cosine distance {THRESHOLD}, {RECOGNIZER_MODEL}'s"),
    ),
}


def profile(recognizer: str) -> RecognizerProfile:
    """The known profile of a recognizer file (by its name), else the generic one."""
    known = PROFILES.get(Path(recognizer).name)
    if known is not None:
        return known
    note = f"cosine distance {THRESHOLD}, measured for {RECOGNIZER_MODEL}"
    return RecognizerProfile(
        DEFAULT_DIM, DEFAULT_MEAN, DEFAULT_STD, THRESHOLD, _unmeasured(recognizer, note)
    )


@dataclass(frozen=True)
class OnnxOptions:
    """Where the models are and how the pipeline uses them (the `embedder_options` of a store)."""

    models_dir: Path
    detector_model: str = DETECTOR_MODEL
    recognizer_model: str = RECOGNIZER_MODEL
    dim: int = DEFAULT_DIM
    # The recognizer's input is (RGB pixel - input_mean) / input_std.
    input_mean: float = DEFAULT_MEAN
    input_std: float = DEFAULT_STD
    det_score: float = DEFAULT_DET_SCORE
    # Embed the aligned face and its mirror, summed: docs/benchmarks.md, "Flip TTA".
    flip: bool = True

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> OnnxOptions:
        """Options as stores.yaml gives them; unset ones take the defaults, and those of the
        recognizer's profile (no `recognizer_model`: the first known one present)."""
        recognizer = recognizer_model(options)
        known = profile(recognizer)
        return cls(
            models_dir=Path(options.get("models_dir") or models_dir()),
            detector_model=str(options.get("detector_model", DETECTOR_MODEL)),
            recognizer_model=recognizer,
            dim=int(options.get("dim", known.dim)),
            input_mean=float(options.get("input_mean", known.input_mean)),
            input_std=float(options.get("input_std", known.input_std)),
            det_score=float(options.get("det_score", DEFAULT_DET_SCORE)),
            flip=bool(options.get("flip", True)),
        )

    @property
    def detector_path(self) -> Path:
        return self.models_dir / self.detector_model

    @property
    def recognizer_path(self) -> Path:
        return self.models_dir / self.recognizer_model


def require_model(path: Path) -> Path:
    """The path of a model file that exists, else a ModelMissing error naming it."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ModelMissing(
            f"ONNX model file not found: {path} "
            "(set the embedder's models_dir option or $STOREFACE_MODELS_DIR)",
            path=str(path),
        )
    return path


def arcface_info(options: OnnxOptions) -> EmbedderInfo:
    """What the index needs to know, from the options alone (no weights are loaded)."""
    known = profile(options.recognizer_model)
    return EmbedderInfo(
        name="arcface",
        dim=options.dim,
        metric="cosine",
        threshold=known.threshold,
        threshold_note=known.threshold_note,
        identity=arcface_identity(options.recognizer_model),
    )


@contextlib.contextmanager
def _opencv_quiet() -> Iterator[None]:
    """OpenCV 5 warns that YuNet's CPU target request is ignored by the new DNN engine: noise."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def align(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Warp a face onto the 112×112 ArcFace template by a similarity transform."""
    matrix, _ = cv2.estimateAffinePartial2D(landmarks, ARCFACE_TEMPLATE, method=cv2.LMEDS)
    if matrix is None:  # degenerate landmarks: fall back to the least-squares fit
        matrix = _similarity(landmarks, ARCFACE_TEMPLATE)
    return cv2.warpAffine(rgb, matrix, (INPUT_SIZE, INPUT_SIZE), borderValue=(0, 0, 0))


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama) from src to dst points, as a 2×3 matrix."""
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - src_mean, dst - dst_mean
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    fix = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ fix @ vt
    scale = float((sig * np.diag(fix)).sum() / max(s.var(axis=0).sum(), 1e-12))
    matrix = np.zeros((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rot
    matrix[:, 2] = dst_mean - scale * rot @ src_mean
    return matrix


def landmarks_of(det: Detection) -> np.ndarray:
    """The 5 landmarks of a detection; a detector without them gets the template on its box."""
    if len(det.landmarks) == 5:
        return np.asarray(det.landmarks, dtype=np.float32)
    return (ARCFACE_TEMPLATE / INPUT_SIZE * [det.w, det.h] + [det.x, det.y]).astype(np.float32)


def to_blob(
    crops: list[np.ndarray], mean: float = DEFAULT_MEAN, std: float = DEFAULT_STD
) -> np.ndarray:
    """RGB uint8 crops to an N×3×112×112 float32 batch of (pixel - mean) / std."""
    batch = (np.stack(crops).astype(np.float32) - mean) / std
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ArcFacePipeline:
    """YuNet boxes and landmarks, then ArcFace embeddings of the aligned faces (cosine)."""

    def __init__(self, options: OnnxOptions) -> None:
        self.options = options
        self.info = arcface_info(options)
        self._flip = options.flip
        detector = str(require_model(options.detector_path))
        recognizer = require_model(options.recognizer_path)
        with _opencv_quiet():
            self._detector = cv2.FaceDetectorYN.create(detector, "", (320, 320), options.det_score)
        self._input_size = (320, 320)
        if not options.input_std > 0:
            raise ConfigError(f"the embedder's input_std must be > 0, not {options.input_std}")
        self._mean, self._std = options.input_mean, options.input_std
        self._net = cv2.dnn.readNetFromONNX(str(recognizer))
        self._batched = True
        dim = self._forward(np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), np.float32)).shape[1]
        self._batched = self._takes_batches()
        if dim != options.dim:
            raise ModelMismatch(
                f"{recognizer} makes {dim}-d embeddings but the embedder's dim option is "
                f"{options.dim}; set dim: {dim}",
                path=str(recognizer),
                dim=dim,
            )

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        size = (rgb.shape[1], rgb.shape[0])
        if size != self._input_size:
            self._detector.setInputSize(size)
            self._input_size = size
        _, rows = self._detector.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if rows is None:
            return []
        return [
            Detection(
                x=float(r[0]),
                y=float(r[1]),
                w=float(r[2]),
                h=float(r[3]),
                score=float(r[14]),
                landmarks=[(float(r[4 + 2 * i]), float(r[5 + 2 * i])) for i in range(5)],
            )
            for r in rows
        ]

    def embed(self, rgb: np.ndarray, detections: list[Detection]) -> np.ndarray:
        if not detections:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        crops = [align(rgb, landmarks_of(d)) for d in detections]
        if not self._flip:
            return l2_normalize(self._forward(self._blob(crops)))
        crops += [self._mirrored(rgb, d) for d in detections]
        both = l2_normalize(self._forward(self._blob(crops)))
        n = len(detections)
        return l2_normalize(both[:n] + both[n:])

    def _mirrored(self, rgb: np.ndarray, det: Detection) -> np.ndarray:
        """The face aligned in a mirror image of its surroundings, its landmarks found again
        there: a second, independent alignment is what makes flip TTA pay."""
        pad = 0.5 * max(det.w, det.h)
        x0, y0 = max(0, int(det.x - pad)), max(0, int(det.y - pad))
        x1 = min(rgb.shape[1], int(det.x + det.w + pad) + 1)
        y1 = min(rgb.shape[0], int(det.y + det.h + pad) + 1)
        region = np.ascontiguousarray(rgb[y0:y1, x0:x1][:, ::-1])
        width = x1 - x0
        mirror = Detection(width - (det.x - x0) - det.w, det.y - y0, det.w, det.h, det.score)
        found = [d for d in self.detect(region) if iou(d, mirror) > MIRROR_IOU]
        if not found:  # not found again: the crop's own mirror
            return align(rgb, landmarks_of(det))[:, ::-1]
        return align(region, landmarks_of(max(found, key=lambda d: iou(d, mirror))))

    def _blob(self, crops: list[np.ndarray]) -> np.ndarray:
        return to_blob(crops, self._mean, self._std)

    def _takes_batches(self) -> bool:
        """Whether the model embeds a batch as it embeds each face: an export with its batch
        size fixed at 1 (OpenCV's own SFace wrapper feeds one face) may not, and then
        gets one face per forward pass."""
        rng = np.random.default_rng(0)
        probe = rng.uniform(-1, 1, (2, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
        try:
            both = self._forward(probe)
        except cv2.error:
            return False
        one = [self._forward(probe[i : i + 1])[0] for i in range(2)]
        return both.shape == (2, len(one[0])) and bool(
            np.allclose(l2_normalize(both), l2_normalize(np.stack(one)), atol=1e-4)
        )

    def _forward(self, blob: np.ndarray) -> np.ndarray:
        if not self._batched and len(blob) > 1:
            return np.vstack([self._forward(blob[i : i + 1]) for i in range(len(blob))])
        self._net.setInput(blob)
        out = np.asarray(self._net.forward(), dtype=np.float32)
        return out.reshape(out.shape[0], -1)
