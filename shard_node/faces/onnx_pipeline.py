"""YuNet detection and ArcFace-format ONNX embeddings, both run with OpenCV's DNN module.

Reproduce the default threshold: `python -m shard_node.faces.onnx_pipeline` (see docs/models.md).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shard_node.faces.base import Detection, EmbedderInfo, Metric
from storeface.errors import ConfigError

DETECTOR_MODEL = "face_detection_yunet_2023mar.onnx"
RECOGNIZER_MODEL = "arcface_mobilefacenet_128.onnx"
DEFAULT_DIM = 128
DEFAULT_DET_SCORE = 0.6
INPUT_SIZE = 112

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

# Measured by `python -m shard_node.faces.onnx_pipeline` on ../shared/faces (see docs/models.md):
# the largest threshold (0.01 grid) whose 1:N false-match rate is at most 1%.
THRESHOLD = 0.56
THRESHOLD_NOTE = (
    "cosine distance 0.56 for arcface_mobilefacenet_128.onnx + YuNet, measured by "
    "`python -m shard_node.faces.onnx_pipeline` on ../shared/faces: gallery = first photo of "
    "each of the 42 lfw_dev people + the first 620 lfw_distractors (sorted), probes = the 66 "
    "other lfw_dev photos + the other 619 distractors (never enrolled). At 0.56: false-match "
    "rate 0.97% (6/619 distractors), true-match rate 95.5% (63/66; false-reject 4.5%), rank-1 "
    "100%. Small sample: one false match moves the FMR by 0.16 points (0.54: FMR 0.65%, TMR "
    "93.9%; 0.58: FMR 1.45%, TMR 98.5%)."
)


class ModelMissing(ConfigError):
    code = "model_missing"
    default_message = "an ONNX model file is missing"


class ModelMismatch(ConfigError):
    code = "model_mismatch"
    default_message = "the ONNX model does not produce what the configuration says"


@dataclass(frozen=True)
class OnnxOptions:
    """Where the models are and how the pipeline uses them (the `embedder_options` of a store)."""

    models_dir: Path
    detector_model: str = DETECTOR_MODEL
    recognizer_model: str = RECOGNIZER_MODEL
    dim: int = DEFAULT_DIM
    det_score: float = DEFAULT_DET_SCORE

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> OnnxOptions:
        """Options as stores.yaml gives them; unset ones take the defaults."""
        from storeface.dataset import models_dir

        return cls(
            models_dir=Path(options.get("models_dir") or models_dir()),
            detector_model=str(options.get("detector_model", DETECTOR_MODEL)),
            recognizer_model=str(options.get("recognizer_model", RECOGNIZER_MODEL)),
            dim=int(options.get("dim", DEFAULT_DIM)),
            det_score=float(options.get("det_score", DEFAULT_DET_SCORE)),
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
    note = THRESHOLD_NOTE
    if options.recognizer_model != RECOGNIZER_MODEL:
        note = (
            f"measured for {RECOGNIZER_MODEL}, not for {options.recognizer_model}; measure "
            f"yours with `python -m shard_node.faces.onnx_pipeline`. {note}"
        )
    return EmbedderInfo(
        name="arcface", dim=options.dim, metric="cosine", threshold=THRESHOLD, threshold_note=note
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


def to_blob(crops: list[np.ndarray]) -> np.ndarray:
    """RGB uint8 crops to an N×3×112×112 float32 batch scaled to [-1, 1]."""
    batch = (np.stack(crops).astype(np.float32) - 127.5) / 127.5
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ArcFacePipeline:
    """YuNet boxes and landmarks, then ArcFace embeddings of the aligned faces (cosine)."""

    def __init__(self, options: OnnxOptions) -> None:
        self.options = options
        self.info = arcface_info(options)
        detector = str(require_model(options.detector_path))
        recognizer = require_model(options.recognizer_path)
        with _opencv_quiet():
            self._detector = cv2.FaceDetectorYN.create(detector, "", (320, 320), options.det_score)
        self._input_size = (320, 320)
        self._net = cv2.dnn.readNetFromONNX(str(recognizer))
        dim = self._forward(np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), np.float32)).shape[1]
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
        return l2_normalize(self._forward(to_blob(crops)))

    def _forward(self, blob: np.ndarray) -> np.ndarray:
        self._net.setInput(blob)
        out = np.asarray(self._net.forward(), dtype=np.float32)
        return out.reshape(out.shape[0], -1)


# --- measuring the threshold -------------------------------------------------------------


@dataclass(frozen=True)
class Identification:
    """1:N results at one threshold on the lfw_dev + lfw_distractors protocol."""

    embedder: str
    threshold: float
    rank1: float  # positive probes whose nearest gallery face is the right person
    tmr: float  # ... and within the threshold
    fmr: float  # distractor probes whose nearest gallery face is within the threshold
    gallery: int
    positives: int
    distractors: int

    def summary(self) -> str:
        return (
            f"{self.embedder}: threshold {self.threshold:.2f}, rank-1 {self.rank1:.1%}, "
            f"TMR {self.tmr:.1%}, FMR {self.fmr:.2%} (gallery {self.gallery}: one photo of each "
            f"lfw_dev person + first half of lfw_distractors; probes: {self.positives} other "
            f"lfw_dev photos, {self.distractors} never-enrolled distractors)"
        )


def distances(gallery: np.ndarray, probes: np.ndarray, metric: Metric) -> np.ndarray:
    """Probe × gallery distance matrix: 1 - cosine, or Euclidean."""
    if metric == "cosine":
        return 1.0 - l2_normalize(probes) @ l2_normalize(gallery).T
    sq = (probes**2).sum(1)[:, None] + (gallery**2).sum(1)[None, :] - 2.0 * probes @ gallery.T
    return np.sqrt(np.maximum(sq, 0.0))


@dataclass(frozen=True)
class ProtocolScores:
    """Each probe's nearest gallery face: its distance, and whether it is the right person."""

    pos_dist: np.ndarray
    pos_correct: np.ndarray
    neg_dist: np.ndarray
    gallery: int

    def at(self, embedder: str, threshold: float) -> Identification:
        return Identification(
            embedder=embedder,
            threshold=threshold,
            rank1=float(self.pos_correct.mean()),
            tmr=float((self.pos_correct & (self.pos_dist <= threshold)).mean()),
            fmr=float((self.neg_dist <= threshold).mean()),
            gallery=self.gallery,
            positives=len(self.pos_dist),
            distractors=len(self.neg_dist),
        )

    def threshold_for(self, target_fmr: float, step: float = 0.01) -> float:
        """The largest threshold on a `step` grid whose false-match rate is at most the target."""
        neg = np.sort(self.neg_dist[np.isfinite(self.neg_dist)])
        allowed = int(np.floor(target_fmr * len(self.neg_dist)))
        ceiling = neg[allowed] if allowed < len(neg) else np.inf
        t = np.floor(min(ceiling, 4.0) / step) * step
        while t > 0 and (self.neg_dist <= t).mean() > target_fmr:  # floating-point edge
            t -= step
        return round(float(t), 4)


def protocol_scores(dev: Any, distractors: Any, metric: Metric) -> ProtocolScores:
    """Score two EmbeddedSets: gallery = each dev person's first photo with a face + the first
    half (sorted) of the distractors; probes = the other dev photos + the other distractors.
    A probe without a face counts as unmatched."""
    first: dict[str, int] = {}
    for i, (person, ok) in enumerate(zip(dev.people, dev.ok, strict=True)):
        if ok and person not in first:
            first[person] = i
    half = (len(distractors.people) + 1) // 2
    enrolled_d = [i for i in range(half) if distractors.ok[i]]
    gallery = np.vstack([dev.embeddings[list(first.values())], distractors.embeddings[enrolled_d]])
    labels = np.array(list(first) + [distractors.people[i] for i in enrolled_d])
    pos = [i for i in range(len(dev.people)) if i not in set(first.values())]
    neg = list(range(half, len(distractors.people)))
    pos_d, pos_label = _nearest(gallery, labels, dev.embeddings[pos], dev.ok[pos], metric)
    neg_d, _ = _nearest(gallery, labels, distractors.embeddings[neg], distractors.ok[neg], metric)
    correct = pos_label == np.array([dev.people[i] for i in pos])
    return ProtocolScores(pos_d, correct, neg_d, len(labels))


def _nearest(
    gallery: np.ndarray, labels: np.ndarray, probes: np.ndarray, ok: np.ndarray, metric: Metric
) -> tuple[np.ndarray, np.ndarray]:
    d = distances(gallery, probes, metric)
    best = d.argmin(axis=1)
    dist = np.where(ok, d[np.arange(len(probes)), best], np.inf)
    return dist, np.where(ok, labels[best], "")


def measure(
    embedder: str = "arcface",
    options: dict[str, Any] | None = None,
    target_fmr: float = 0.01,
    threshold: float | None = None,
    cache_dir: Path | None = None,
) -> tuple[Identification, np.ndarray, np.ndarray]:
    """Measure on ../shared/faces: results at the picked (or given) threshold, and the
    per-photo ms of lfw_dev and lfw_distractors (from the run that filled the cache)."""
    from shard_node.faces.registry import embedder_info
    from storeface.dataset import embed_folder, faces_dir

    info = embedder_info(embedder, options)
    dev = embed_folder(faces_dir() / "lfw_dev", embedder, options, cache_dir=cache_dir)
    distractors = embed_folder(
        faces_dir() / "lfw_distractors", embedder, options, cache_dir=cache_dir
    )
    scores = protocol_scores(dev, distractors, info.metric)
    t = scores.threshold_for(target_fmr) if threshold is None else threshold
    return scores.at(embedder, t), dev.ms_per_photo, distractors.ms_per_photo


def ms_per_photo(embedder: str, folder: Path) -> dict[str, float]:
    """Median ms per photo of decode, detect and embed (largest face), one photo at a time."""
    import time

    from shard_node.faces.pool import analyze_bytes
    from shard_node.faces.registry import make_pipeline
    from storeface.dataset import list_photos
    from storeface.images import ImageLimits

    pipeline = make_pipeline(embedder)
    photos = [p.read_bytes() for _, p in list_photos(folder)]
    analyze_bytes(pipeline, photos[0], ImageLimits(), 1)  # first call pays lazy set-up
    rows: dict[str, list[float]] = {"total_ms": [], "detect_ms": [], "embed_ms": []}
    for data in photos:
        t0 = time.perf_counter()
        timings = analyze_bytes(pipeline, data, ImageLimits(), 1).timings
        rows["total_ms"].append((time.perf_counter() - t0) * 1000)
        rows["detect_ms"].append(timings["detect_ms"])
        rows["embed_ms"].append(timings["embed_ms"])
    return {k: float(np.median(v)) for k, v in rows.items()}


def main(argv: list[str] | None = None) -> None:
    """Print the measured threshold, rank-1, TMR and FMR of an embedder, or its speed."""
    parser = argparse.ArgumentParser(prog="python -m shard_node.faces.onnx_pipeline")
    parser.add_argument("--embedder", action="append", help="repeatable; default arcface")
    parser.add_argument("--target-fmr", type=float, default=0.01)
    parser.add_argument("--threshold", type=float, help="report at this threshold instead")
    parser.add_argument(
        "--cache-dir", type=Path, help="embedding cache (default .cache/embeddings)"
    )
    parser.add_argument(
        "--speed", action="store_true", help="time each embedder on lfw_dev, one core"
    )
    args = parser.parse_args(argv)
    for embedder in args.embedder or ["arcface"]:
        if args.speed:
            # One core, one photo at a time: the cost a single pool worker pays.
            cv2.setNumThreads(1)
            ms = ms_per_photo(embedder, _faces_dir() / "lfw_dev")
            print(f"{embedder}: " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items()))
            continue
        result, dev_ms, distractor_ms = measure(
            embedder, target_fmr=args.target_fmr, threshold=args.threshold, cache_dir=args.cache_dir
        )
        print(result.summary())
        print(
            f"ms per photo (decode+detect+embed, median, from the run that filled the cache): "
            f"lfw_dev {np.median(dev_ms):.1f}, lfw_distractors {np.median(distractor_ms):.1f}"
        )


def _faces_dir() -> Path:
    from storeface.dataset import faces_dir

    return faces_dir()


if __name__ == "__main__":
    main()
