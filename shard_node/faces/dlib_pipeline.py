"""dlib's HOG detector, 5-point landmarks and 128-d ResNet embedder (face_recognition's models)."""

from __future__ import annotations

import dlib
import face_recognition_models
import numpy as np

from shard_node.faces.base import Detection, EmbedderInfo

# Measured by `python -m bench.accuracy --embedder dlib` on ../shared/faces (one run, 2 cores):
# gallery = first photo of each of the 42 lfw_dev people + every other distractor (655 faces);
# probes = the other 66 lfw_dev photos + 613 never-enrolled distractors. At 0.43: false-match
# rate 1.1%, true-match rate 36%, rank-1 94%. face_recognition's 0.6 is a 1:1 verification
# setting: here it matches 83% of strangers to somebody. docs/benchmarks.md has the sweep.
INFO = EmbedderInfo(
    name="dlib",
    dim=128,
    metric="l2",
    eyes_nose=((2, 3), (0, 1), 4),  # the 5-point model: two corners per eye, the nose base
    threshold=0.43,
    threshold_note=(
        "L2 0.43: FMR 1.1%, TMR 36%, rank-1 94% on lfw_dev + 613 strangers vs a 655-face "
        "gallery; 0.6 (face_recognition's default) gives FMR 83%"
    ),
)


class DlibPipeline:
    """HOG detection (with upsampling for small faces) and dlib ResNet embeddings."""

    info = INFO

    def __init__(self, upsample: int = 1, jitters: int = 1) -> None:
        self.upsample = upsample
        self.jitters = jitters
        self._detector = dlib.get_frontal_face_detector()
        self._shapes = dlib.shape_predictor(
            face_recognition_models.pose_predictor_five_point_model_location()
        )
        self._encoder = dlib.face_recognition_model_v1(
            face_recognition_models.face_recognition_model_location()
        )

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        rects, scores, _ = self._detector.run(rgb, self.upsample, 0.0)
        out = []
        for rect, score in zip(rects, scores, strict=True):
            shape = self._shapes(rgb, rect)
            out.append(
                Detection(
                    x=rect.left(),
                    y=rect.top(),
                    w=rect.width(),
                    h=rect.height(),
                    score=float(score),
                    landmarks=[(float(p.x), float(p.y)) for p in shape.parts()],
                )
            )
        return out

    def embed(self, rgb: np.ndarray, detections: list[Detection]) -> np.ndarray:
        shapes = dlib.full_object_detections()
        for d in detections:
            rect = dlib.rectangle(int(d.x), int(d.y), int(d.x + d.w), int(d.y + d.h))
            shapes.append(self._shapes(rgb, rect))
        vectors = self._encoder.compute_face_descriptor(rgb, shapes, self.jitters)
        return np.asarray([np.asarray(v) for v in vectors], dtype=np.float32).reshape(
            len(detections), INFO.dim
        )
