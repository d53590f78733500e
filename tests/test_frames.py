"""Frames as cameras send them: small faces in large frames, and exotic pixel formats.

Real lfw_dev photos pasted into large frames, through the real pipelines in-process
(make_pipeline + analyze_bytes, the pool worker's own code), and through the HTTP API
(in-process gateway and shard, tests/inprocess.py).
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shard_node.faces.base import (
    TILE_SIDE,
    Detection,
    Face,
    FacePipeline,
    dedupe,
    tile_overlap,
    tile_spans,
)
from shard_node.faces.pool import analyze_bytes
from shard_node.faces.registry import make_pipeline
from storeface.errors import ModelMissing, NotAnImage
from storeface.images import DecodedImage, ImageLimits, decode_image, samples_to_8bit
from tests.conftest import photo
from tests.inprocess import InProcess, apps_fixture, recognize

LIMITS = ImageLimits()
BEFORE = ImageLimits(detect_pixels=0)  # the downscaled frame only, as before the detail pass
CLOONEY = "George_Clooney"  # README's example: a 109×108 face in the 250×250 photo


@pytest.fixture(scope="module", params=["dlib", "arcface"])
def pipeline(request: pytest.FixtureRequest) -> Iterator[FacePipeline]:
    try:
        yield make_pipeline(request.param)
    except ModelMissing as exc:
        pytest.skip(f"no arcface models: {exc}")


def rgb_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def canvas(width: int, height: int) -> np.ndarray:
    """A smooth backdrop (a grey-blue gradient) of the given size."""
    x = np.linspace(90, 170, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0.9, 1.1, height, dtype=np.float32)[:, None, None]
    tint = np.asarray([1.0, 1.02, 1.08], dtype=np.float32)
    return np.clip(x * y * tint, 0, 255).astype(np.uint8)


def paste(frame: np.ndarray, rgb: np.ndarray, x: int, y: int, side: int | None = None) -> None:
    if side is not None and side != rgb.shape[0]:
        rgb = np.asarray(Image.fromarray(rgb).resize((side, side), Image.Resampling.LANCZOS))
    frame[y : y + rgb.shape[0], x : x + rgb.shape[1]] = rgb


def jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def distance(pipeline: FacePipeline, a: Face, b: Face) -> float:
    u, v = a.embedding, b.embedding
    if pipeline.info.metric == "cosine":
        return float(1 - u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
    return float(np.linalg.norm(u - v))


def alone(pipeline: FacePipeline, data: bytes) -> Face:
    faces = analyze_bytes(pipeline, data, LIMITS, max_faces=1).faces
    assert faces, "the photo alone has a face"
    return faces[0]


def covering(faces: list[Face], box: tuple[float, float, float, float]) -> list[Face]:
    """The faces whose box centre lies inside `box` (x, y, w, h)."""
    x, y, w, h = box
    return [
        f
        for f in faces
        if x <= f.box[0] + f.box[2] / 2 <= x + w and y <= f.box[1] + f.box[3] / 2 <= y + h
    ]


# --- small faces in large frames ---------------------------------------------------------


@pytest.mark.slow  # a 24 MP frame, detected in tiles
def test_108px_face_in_6000x4000_frame_found_where_pasted_with_its_own_embedding(
    pipeline: FacePipeline, faces: Path
) -> None:
    """The issue's frame: downscaled to 1600 px the face is ~29 px. Three copies of it: one
    inside a tile, one in the band two tiles share (found twice, kept once), one across the
    edge of a tile (cut there, whole in the next tile)."""
    data = photo(faces, CLOONEY)
    single = alone(pipeline, data)
    face_rgb = rgb_of(data)
    image = decode_image(jpeg(canvas(6000, 4000)), LIMITS)
    assert image.scale < 0.3 and image.detail_scale > 0
    spans = tile_spans(round(6000 * image.detail_scale), tile_overlap(image))
    assert len(spans) >= 2, "the detail frame needs tiles"
    to_upload = 1 / image.detail_scale
    shared_mid = round((spans[1].start + spans[0].stop) / 2 * to_upload)  # both tiles hold it
    edge = round(spans[0].stop * to_upload)  # tile 0's right edge
    spots = {"inside": (900, 1700), "shared": (shared_mid - 125, 300), "cut": (edge - 125, 3000)}
    frame = canvas(6000, 4000)
    for x, y in spots.values():
        paste(frame, face_rgb, x, y)

    found = analyze_bytes(pipeline, jpeg(frame), LIMITS, max_faces=10).faces

    assert len(found) == 3, [f.box for f in found]
    for name, (x, y) in spots.items():
        on_it = covering(found, (x, y, 250, 250))
        assert len(on_it) == 1, f"{name}: {[f.box for f in on_it]}"
        face = on_it[0]
        # Landmarks to a few px. Boxes less tightly: the size of dlib's box steps by a
        # pyramid level (~20 %) and its place by a HOG cell, wherever it looks.
        moved = np.asarray(face.landmarks) - np.asarray(single.landmarks) - (x, y)
        assert np.abs(moved).max() <= 4, (name, moved.tolist())
        x0, y0, w0, h0 = single.box
        x1, y1, w1, h1 = face.box
        centre = (x1 + w1 / 2 - (x + x0 + w0 / 2), y1 + h1 / 2 - (y + y0 + h0 / 2))
        assert max(abs(c) for c in centre) <= 0.1 * w0, (name, face.box, centre)
        assert abs(w1 - w0) <= 0.25 * w0 and abs(h1 - h0) <= 0.25 * h0, (name, face.box)
        assert distance(pipeline, face, single) < pipeline.info.threshold / 3, name
    assert [f.box[2] * f.box[3] for f in found] == sorted(
        (f.box[2] * f.box[3] for f in found), reverse=True
    )
    if pipeline.info.name == "dlib":  # the downscaled frame alone lost all three
        assert analyze_bytes(pipeline, jpeg(frame), BEFORE, max_faces=10).faces == []


@pytest.mark.slow  # an 8 MP frame, detected in tiles
def test_4k_frame_with_two_small_faces_finds_both_largest_first_within_max_faces(
    pipeline: FacePipeline, faces: Path
) -> None:
    # Faces the 1600 px frame makes too small for the detector: under ~31 px for dlib's
    # HOG, ~17 px for YuNet (bench/frames.py); the 0.85 detail frame keeps them above.
    sizes = (56, 48) if pipeline.info.name == "dlib" else (30, 26)
    people = ("Jon_Voight", "Barbra_Streisand")
    frame = canvas(3840, 2160)
    spots = [(700, 500), (2900, 1400)]
    for person, size, (x, y) in zip(people, sizes, spots, strict=True):
        paste(frame, rgb_of(photo(faces, person)), x, y, side=round(size / 0.44))
    data = jpeg(frame)

    found = analyze_bytes(pipeline, data, LIMITS, max_faces=10).faces

    assert len(found) == 2, [f.box for f in found]
    for size, (x, y) in zip(sizes, spots, strict=True):
        side = round(size / 0.44)
        (face,) = covering(found, (x, y, side, side))
        assert 0.6 * size <= face.size <= 1.6 * size, (face.box, size)
    assert found[0].box[2] * found[0].box[3] >= found[1].box[2] * found[1].box[3]
    assert covering(found[:1], (spots[0][0], spots[0][1], 200, 200)), "the larger face first"
    only = analyze_bytes(pipeline, data, LIMITS, max_faces=1).faces
    assert [f.box for f in only] == [found[0].box]
    assert analyze_bytes(pipeline, data, BEFORE, max_faces=10).faces == []


def test_frames_under_max_side_take_one_pass_as_before(faces: Path) -> None:
    image = decode_image(jpeg(canvas(1600, 900)), LIMITS)
    assert (image.scale, image.full, image.detail_scale) == (1.0, None, 0.0)
    # 1700×1000 is downscaled, but a 6 MP search would look only 6 % closer: not worth it.
    image = decode_image(jpeg(canvas(1700, 1000)), LIMITS)
    assert image.scale < 1 and image.full is not None and image.detail_scale == 0.0
    image = decode_image(jpeg(canvas(3840, 2160)), LIMITS)
    assert image.full is not None and image.full.shape == (2160, 3840, 3)
    assert image.rgb.shape == (900, 1600, 3)
    assert 0.84 < image.detail_scale < 0.86  # 6 MP of 8.3


def test_tile_spans_cover_with_overlap() -> None:
    assert tile_spans(1000, 200) == [range(0, 1000)]
    for length in (TILE_SIDE + 1, 3000, 3266, 6000, 7746):
        for overlap in (150, 400):
            spans = tile_spans(length, overlap)
            assert spans[0].start == 0 and spans[-1].stop == length
            assert all(len(s) <= TILE_SIDE for s in spans)
            assert all(a.stop - b.start >= overlap for a, b in itertools.pairwise(spans))
    # The largest face the tiles keep (80 px downscaled: 150 px in a 3000 px detail frame of
    # a 6000 px upload) fits in the overlap, with margin.
    image = DecodedImage(
        rgb=np.zeros((1067, 1600, 3), np.uint8),
        width=6000,
        height=4000,
        scale=1600 / 6000,
        full=np.zeros((1, 1, 3), np.uint8),
        detail_scale=0.5,
    )
    assert 150 * 1.2 < tile_overlap(image) <= TILE_SIDE // 2


def test_dedupe_keeps_one_box_per_face_earlier_groups_first() -> None:
    fine = [Detection(100, 100, 50, 50, 0.9), Detection(102, 101, 50, 50, 0.95)]
    coarse = [Detection(98, 99, 54, 54, 2.0), Detection(400, 100, 50, 50, 0.5)]
    kept = dedupe(fine, coarse)
    assert [(d.x, d.score) for d in kept] == [(102, 0.95), (400, 0.5)]


# --- pixel formats -----------------------------------------------------------------------


def test_16bit_grayscale_png_is_found_and_matches_8bit(pipeline: FacePipeline, faces: Path) -> None:
    rgb = rgb_of(photo(faces, CLOONEY)).astype(np.float32)
    grey = rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)  # 0..255, fractional
    sixteen = Image.fromarray(np.rint(grey * 257).astype(np.uint16))
    data16 = png(sixteen)
    assert Image.open(io.BytesIO(data16)).mode == "I;16"
    data8 = png(Image.fromarray(np.rint(grey).astype(np.uint8), mode="L"))

    image = decode_image(data16, LIMITS)
    assert image.rgb.dtype == np.uint8 and image.rgb.shape == (250, 250, 3)
    assert abs(float(image.rgb.mean()) - float(grey.mean())) < 1  # not white
    assert np.abs(image.rgb[..., 0].astype(int) - np.rint(grey)).max() <= 1

    face16 = alone(pipeline, data16)
    face8 = alone(pipeline, data8)
    assert face16.box == face8.box
    assert distance(pipeline, face16, face8) < pipeline.info.threshold / 10


def test_16bit_rgb_png_decodes_like_8bit(faces: Path) -> None:
    import cv2

    rgb = rgb_of(photo(faces, CLOONEY))
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb.astype(np.uint16) * 257, cv2.COLOR_RGB2BGR))
    assert ok
    decoded = decode_image(buf.tobytes(), LIMITS).rgb
    assert np.abs(decoded.astype(int) - rgb).max() <= 1


def _save(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _mode_cases() -> dict[str, tuple[bytes, str, tuple[int, int, int]]]:
    """Uploads in exotic modes: (data, the mode PIL opens, the colour of a pixel inside)."""
    orange = Image.new("RGB", (64, 48), (200, 100, 50))
    grey = np.full((48, 64), 0.5, dtype=np.float32)
    half_transparent = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    half_transparent.paste((200, 100, 50, 255), (0, 0, 32, 48))
    p_transparent = half_transparent.convert("P")  # palette with a transparent index
    la = Image.new("LA", (64, 48), (0, 0))
    la.paste((80, 255), (0, 0, 32, 48))
    return {
        "I;16 png": (png(Image.fromarray(np.full((48, 64), 40000, np.uint16))), "I;16", (156,) * 3),
        "I;16B tiff": (
            _save(
                Image.frombytes("I;16B", (64, 48), np.full((48, 64), 40000, ">u2").tobytes()),
                "TIFF",
            ),
            "I;16B",
            (156,) * 3,
        ),
        "I 16-bit tiff": (
            _save(Image.fromarray(np.full((48, 64), 40000, np.int32), mode="I"), "TIFF"),
            "I",
            (156,) * 3,
        ),
        "I 8-bit tiff": (_save(orange.convert("L").convert("I"), "TIFF"), "I", (124,) * 3),
        "F 0..1 tiff": (_save(Image.fromarray(grey, mode="F"), "TIFF"), "F", (128,) * 3),
        "F 0..255 tiff": (_save(Image.fromarray(grey * 200, mode="F"), "TIFF"), "F", (100,) * 3),
        "1-bit png": (png(Image.new("1", (64, 48), 1)), "1", (255,) * 3),
        "LA png (left opaque)": (png(la), "LA", (80,) * 3),
        "P with transparency png (left opaque)": (png(p_transparent), "P", (200, 100, 50)),
        "RGBA png (left opaque)": (png(half_transparent), "RGBA", (200, 100, 50)),
        "CMYK jpeg": (_save(orange.convert("CMYK"), "JPEG", quality=100), "CMYK", (200, 100, 50)),
        "CMYK tiff": (_save(orange.convert("CMYK"), "TIFF"), "CMYK", (200, 100, 50)),
        "YCbCr tiff": (_save(orange.convert("YCbCr"), "TIFF"), "YCbCr", (200, 100, 50)),
        "LAB tiff": (_save(orange.convert("LAB"), "TIFF"), "LAB", (200, 100, 50)),
    }


@pytest.mark.parametrize("case", sorted(_mode_cases()))
def test_exotic_modes_decode_to_rgb(case: str) -> None:
    data, mode, colour = _mode_cases()[case]
    assert Image.open(io.BytesIO(data)).mode == mode
    image = decode_image(data, LIMITS)
    assert image.rgb.dtype == np.uint8 and image.rgb.shape == (48, 64, 3)
    inside = image.rgb[24, 8].astype(int)  # the left half: opaque where there is alpha
    assert np.abs(inside - np.asarray(colour)).max() <= 6, (case, inside.tolist())
    if "(left opaque)" in case:
        assert image.rgb[24, 56].tolist() == [255, 255, 255], "transparent: over white"


@pytest.mark.parametrize(
    "samples",
    [
        pytest.param(np.full((8, 8), -5, np.int32), id="I with negative samples"),
        pytest.param(np.full((8, 8), 1 << 20, np.int32), id="I over 16 bits"),
        pytest.param(np.full((8, 8), np.nan, np.float32), id="F with NaN"),
        pytest.param(np.full((8, 8), -1.0, np.float32), id="F negative"),
    ],
)
def test_samples_outside_known_ranges_are_refused_415(samples: np.ndarray) -> None:
    mode = "F" if samples.dtype.kind == "f" else "I"
    data = _save(Image.fromarray(samples, mode=mode), "TIFF")
    with pytest.raises(NotAnImage) as err:
        decode_image(data, LIMITS)
    assert err.value.status_code == 415
    assert mode in err.value.message, err.value.message


def test_samples_to_8bit_scales_rather_than_clips() -> None:
    u16 = np.asarray([0, 257, 32896, 65535], dtype=np.uint16)
    assert samples_to_8bit(u16, "I;16").tolist() == [0, 1, 128, 255]
    dark16 = np.asarray([0, 200], dtype=np.uint16)  # a 16-bit container says its range
    assert samples_to_8bit(dark16, "I;16").tolist() == [0, 1]
    assert samples_to_8bit(np.asarray([0.0, 0.5, 1.0], np.float32), "F").tolist() == [0, 128, 255]


def test_bomb_and_pixel_limits_still_hold_for_exotic_modes() -> None:
    from storeface.errors import DecompressionBomb

    data = png(Image.fromarray(np.zeros((3000, 3000), np.uint16)))
    with pytest.raises(DecompressionBomb):
        decode_image(data, ImageLimits(max_pixels=4_000_000))


# --- through the HTTP API ----------------------------------------------------------------

apps = apps_fixture("frames", {"n1": ["frames"]})


async def _face(apps: InProcess, image: bytes) -> dict[str, Any]:
    """The one face /v1/recognize finds in `image`."""
    r = await recognize(apps.gateway, "frames", image)
    assert r.status_code == 200, r.text
    found = r.json()["faces"]
    assert len(found) == 1, found
    return dict(found[0])


@pytest.mark.slow  # a 24 MP upload, detected in tiles
@pytest.mark.anyio
async def test_recognize_finds_a_small_face_in_a_6000x4000_upload(
    apps: InProcess, faces: Path
) -> None:
    """The issue's frame through the API: the face, where it was pasted, with the FaceId the
    photo alone has."""
    data = photo(faces, "Jon_Voight")
    alone = await _face(apps, data)
    frame = canvas(6000, 4000)
    x, y = 3100, 2100
    paste(frame, rgb_of(data), x, y)
    upload = jpeg(frame)
    assert decode_image(upload, LIMITS).scale * alone["box"]["w"] < 40  # lost when downscaled

    face = await _face(apps, upload)

    assert (face["face_id"], face["is_new"]) == (alone["face_id"], False)
    bx, by, bw, bh = (face["box"][k] for k in "xywh")
    assert x <= bx + bw / 2 <= x + 250 and y <= by + bh / 2 <= y + 250, face["box"]
    assert face["box"]["w"] == pytest.approx(alone["box"]["w"], rel=0.25)


@pytest.mark.anyio
async def test_recognize_takes_a_16bit_grayscale_png(apps: InProcess, faces: Path) -> None:
    """A 16-bit grey PNG (`I;16`) is decoded as the grey photo it is, not white: it gets the
    FaceId the 8-bit grey copy gets."""
    rgb = rgb_of(photo(faces, "Barbra_Streisand")).astype(np.float32)
    grey = rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    data16 = png(Image.fromarray(np.rint(grey * 257).astype(np.uint16)))
    assert Image.open(io.BytesIO(data16)).mode == "I;16"
    data8 = png(Image.fromarray(np.rint(grey).astype(np.uint8), mode="L"))
    eight = await _face(apps, data8)

    sixteen = await _face(apps, data16)

    assert (sixteen["face_id"], sixteen["is_new"]) == (eight["face_id"], False)
    assert sixteen["box"] == eight["box"]
    assert sixteen["distance"] < 0.05
