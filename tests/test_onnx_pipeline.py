"""The ONNX (YuNet + ArcFace) pipeline on real photos and the real model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shard_node.faces.base import Detection, FacePipeline
from shard_node.faces.onnx_pipeline import (
    ARCFACE_TEMPLATE,
    RECOGNIZER_MODEL,
    THRESHOLD,
    _similarity,
    to_blob,
)
from shard_node.faces.registry import embedder_info, make_pipeline
from storeface.distances import distances
from storeface.errors import ConfigError, ModelMismatch, ModelMissing
from storeface.paths import models_dir
from tools.dataset import EmbeddedSet, embed_folder
from tools.evaluation import Nearest, nearest, split

pytestmark = pytest.mark.slow  # starts server processes or embeds many photos

# Measured with arcface_mobilefacenet_128.onnx (docs/models.md): rank-1 100%, TMR 95.5% and
# FMR 0.97% at 0.56. The floors leave room for one or two photos, not for a broken pipeline.
RANK1_FLOOR = 0.97
TMR_FLOOR = 0.92
FMR_CEILING = 0.015


@pytest.fixture(scope="session")
def arcface() -> FacePipeline:
    return make_pipeline("arcface")


@pytest.fixture(scope="session")
def arcface_dev(faces: Path) -> EmbeddedSet:
    return embed_folder(faces / "lfw_dev", "arcface")


@pytest.fixture(scope="session")
def arcface_distractors(faces: Path) -> EmbeddedSet:
    return embed_folder(faces / "lfw_distractors", "arcface")


@pytest.fixture(scope="session")
def arcface_scores(arcface_dev: EmbeddedSet, arcface_distractors: EmbeddedSet) -> Nearest:
    return nearest(split(arcface_dev, arcface_distractors), "cosine")


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_finds_a_face_in_every_dev_photo(arcface_dev: EmbeddedSet) -> None:
    assert arcface_dev.ok.all()
    norms = np.linalg.norm(arcface_dev.embeddings, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)


def test_identifies_dev_probes_at_least_as_well_as_dlib(
    arcface_scores: Nearest, dev_set: EmbeddedSet, distractor_set: EmbeddedSet
) -> None:
    dlib = nearest(split(dev_set, distractor_set), "l2")
    assert len(arcface_scores.probe_correct) == len(dlib.probe_correct) == 66
    assert arcface_scores.rank1 >= dlib.rank1
    assert arcface_scores.rank1 >= RANK1_FLOOR


def test_default_threshold_keeps_its_measured_error_rates(arcface_scores: Nearest) -> None:
    threshold = embedder_info("arcface").threshold
    assert threshold == THRESHOLD
    assert arcface_scores.fmr(threshold) <= FMR_CEILING
    assert arcface_scores.tmr(threshold) >= TMR_FLOOR


def test_threshold_at_fmr_is_the_largest_within_the_target() -> None:
    strangers = np.array([0.30, 0.45, 0.52, 0.60, 0.70, 0.80, 0.90, 0.95, 0.97, 0.99])
    scores = Nearest(np.array([0.2]), np.array([True]), strangers)
    t = scores.threshold_at_fmr(0.10)
    assert 0.30 <= t < 0.45  # 0.45 would match 2 of 10 strangers
    assert scores.fmr(t) == pytest.approx(0.10)
    assert scores.fmr(scores.threshold_at_fmr(0.0)) == 0.0


def test_detects_two_small_faces_in_a_camera_frame(arcface: FacePipeline, faces: Path) -> None:
    canvas = np.full((720, 1280, 3), 90, dtype=np.uint8)
    photos = [
        faces / "lfw_dev/Barbra_Streisand/Barbra_Streisand_0001.jpg",
        faces / "lfw_dev/Carlos_Bianchi/Carlos_Bianchi_0001.jpg",
    ]
    expected, originals = [], []
    for photo, (ox, oy) in zip(photos, [(150, 120), (900, 420)], strict=True):
        small = np.asarray(Image.open(photo).convert("RGB").resize((160, 160)))
        canvas[oy : oy + 160, ox : ox + 160] = small
        (det,) = arcface.detect(_rgb(photo))
        s = 160 / 250
        expected.append((det.x * s + ox, det.y * s + oy, det.w * s, det.h * s))
        originals.append(arcface.embed(_rgb(photo), [det])[0])

    found = sorted(arcface.detect(canvas), key=lambda d: d.x)
    assert len(found) == 2
    for det, box in zip(found, expected, strict=True):
        assert _iou((det.x, det.y, det.w, det.h), box) > 0.6
        assert len(det.landmarks) == 5
        assert all(
            det.x <= x <= det.x + det.w and det.y <= y <= det.y + det.h for x, y in det.landmarks
        )
    embedded = arcface.embed(canvas, found)
    assert embedded.shape == (2, 128) and embedded.dtype == np.float32
    # The downscaled faces still match their originals, and not each other.
    d = distances(embedded, np.array(originals), "cosine")
    assert d[0, 0] < THRESHOLD and d[1, 1] < THRESHOLD
    assert d[0, 1] > THRESHOLD and d[1, 0] > THRESHOLD


def test_a_face_without_landmarks_is_still_embedded(arcface: FacePipeline, faces: Path) -> None:
    rgb = _rgb(faces / "lfw_dev/Barbra_Streisand/Barbra_Streisand_0001.jpg")
    (det,) = arcface.detect(rgb)
    bare = Detection(det.x, det.y, det.w, det.h, det.score)
    assert arcface.embed(rgb, [bare]).shape == (1, 128)
    assert arcface.embed(rgb, []).shape == (0, 128)


def test_the_fallback_similarity_inverts_a_known_transform() -> None:
    a = np.deg2rad(20)
    rot = 1.7 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    src = ARCFACE_TEMPLATE @ rot.T + [300.0, 120.0]
    matrix = _similarity(src, ARCFACE_TEMPLATE)
    assert np.allclose(src @ matrix[:, :2].T + matrix[:, 2], ARCFACE_TEMPLATE, atol=1e-3)


def test_info_needs_no_weights(tmp_path: Path) -> None:
    info = embedder_info("arcface", {"models_dir": str(tmp_path), "dim": 512})
    assert (info.name, info.dim, info.metric) == ("arcface", 512, "cosine")
    note = embedder_info("arcface").threshold_note
    assert "false-match rate" in note and "true-match rate" in note


def test_missing_detector_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing) as err:
        make_pipeline("arcface", {"models_dir": str(tmp_path)})
    assert str(tmp_path.resolve() / "face_detection_yunet_2023mar.onnx") in str(err.value)


def test_missing_recognizer_names_its_path() -> None:
    with pytest.raises(ModelMissing) as err:
        make_pipeline("arcface", {"recognizer_model": "no_such_model.onnx"})
    assert str(models_dir().resolve() / "no_such_model.onnx") in str(err.value)


def test_input_scaling_options_reach_the_recognizer(arcface: FacePipeline, faces: Path) -> None:
    rgb = _rgb(faces / "lfw_dev/Barbra_Streisand/Barbra_Streisand_0001.jpg")
    (det,) = arcface.detect(rgb)
    default = make_pipeline("arcface", {"flip": False}).embed(rgb, [det])
    same = make_pipeline("arcface", {"flip": False, "input_mean": 127.5, "input_std": 127.5})
    raw = make_pipeline("arcface", {"flip": False, "input_mean": 0, "input_std": 1})
    assert np.array_equal(same.embed(rgb, [det]), default)  # the default is [-1, 1]
    # This model was trained on [-1, 1]: fed 0..255 it makes an unrelated vector.
    assert float(distances(raw.embed(rgb, [det]), default, "cosine")[0, 0]) > 0.5
    assert np.array_equal(
        to_blob([np.full((112, 112, 3), 255, np.uint8)], 55.0, 100.0),
        np.full((1, 3, 112, 112), 2.0),
    )
    with pytest.raises(ConfigError, match="input_std must be > 0"):
        make_pipeline("arcface", {"input_std": 0})


def test_wrong_dim_is_refused() -> None:
    with pytest.raises(ModelMismatch, match=f"{RECOGNIZER_MODEL} makes 128-d"):
        make_pipeline("arcface", {"dim": 512})


def test_flip_tta_is_the_default_and_stays_near_the_plain_embedding(
    arcface: FacePipeline, faces: Path
) -> None:
    plain = make_pipeline("arcface", {"flip": False})
    rgb = _rgb(faces / "lfw_dev/Barbra_Streisand/Barbra_Streisand_0001.jpg")
    (det,) = arcface.detect(rgb)
    a, b = plain.embed(rgb, [det]), arcface.embed(rgb, [det])
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-4)
    d = float(distances(a, b, "cosine")[0, 0])
    assert 0.0 < d < 0.15, d  # the mirror adds a second view of the same face
    # a face at the frame's edge, whose mirror region is cut, is still embedded
    edge = np.ascontiguousarray(rgb[:, int(det.x + det.w / 2) :])
    found = arcface.detect(edge)
    if found:
        assert arcface.embed(edge, found[:1]).shape == (1, 128)
