"""Enrollment takes the face that clearly dominates a photo and refuses only the ambiguous
one, with every face's box; measured on the lfw photos (bench/enrollment in
docs/benchmarks.md, "Accuracy")."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tests.test_default_embedder import shard_client

pytestmark = pytest.mark.anyio


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _side_by_side(faces: Path, front: str, back: str, back_px: int) -> bytes:
    """Two real lfw photos: `front` at its 250 px, `back` scaled to `back_px`, on its right."""
    canvas = Image.new("RGB", (260 + back_px, 260), "gray")
    canvas.paste(Image.open(faces / "lfw_dev" / front.rsplit("_", 1)[0] / f"{front}.jpg"), (0, 5))
    other = Image.open(faces / "lfw_dev" / back.rsplit("_", 1)[0] / f"{back}.jpg")
    canvas.paste(other.resize((back_px, back_px)), (258, 5))
    return _jpeg(canvas)


async def test_dominant_face_is_enrolled_ambiguous_photo_refused_with_boxes(
    tmp_path: Path, redis_url: str, faces: Path
) -> None:
    dominant = _side_by_side(faces, "Eddy_Merckx_0001", "Barbra_Streisand_0001", 130)
    ambiguous = _side_by_side(faces, "Eddy_Merckx_0001", "Barbra_Streisand_0001", 250)
    async with shard_client(tmp_path, redis_url, {}) as c:
        url = "/v1/stores/s1/faces"
        shown = await c.post("/v1/stores/s1/identify", files={"image": ("d.jpg", dominant)})
        sizes = [f["quality"]["size"] for f in shown.json()["faces"]]
        assert len(sizes) == 2 and sizes[1] >= 40  # a real second face, not under min size
        r = await c.post(url, files={"image": ("d.jpg", dominant)}, data={"label": "Eddy"})
        assert r.status_code == 201, r.text
        eddy = r.json()["face_id"]
        # the face enrolled is Eddy's: another photo of him finds it
        probe = (faces / "lfw_dev/Eddy_Merckx/Eddy_Merckx_0002.jpg").read_bytes()
        found = (await c.post("/v1/stores/s1/identify", files={"image": ("p.jpg", probe)})).json()
        assert found["faces"][0]["matches"][0]["face_id"] == eddy

        r = await c.post(url, files={"image": ("a.jpg", ambiguous)})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "multiple_faces" and err["details"]["faces"] == 2
        boxes = err["details"]["boxes"]
        assert len(boxes) == 2 and all(len(b) == 4 for b in boxes)
        assert {b[0] < 258 for b in boxes} == {True, False}  # one face on each photo

        # largest=true still takes the largest face of the ambiguous photo
        r = await c.post(url, files={"image": ("a.jpg", ambiguous)}, data={"largest": "true"})
        assert r.status_code in (200, 201), r.text


async def test_real_news_photos(tmp_path: Path, redis_url: str, faces: Path) -> None:
    """A news photo with a clearly smaller face beside the subject is enrolled; one with two
    faces of the same size is refused."""
    with_bystander = (faces / "lfw_dev/Jon_Voight/Jon_Voight_0001.jpg").read_bytes()
    two_alike = (faces / "lfw_dev/Mark_Gottfried/Mark_Gottfried_0003.jpg").read_bytes()
    async with shard_client(tmp_path, redis_url, {}) as c:
        seen = await c.post("/v1/stores/s1/identify", files={"image": ("j.jpg", with_bystander)})
        assert len(seen.json()["faces"]) >= 2
        r = await c.post("/v1/stores/s1/faces", files={"image": ("j.jpg", with_bystander)})
        assert r.status_code == 201, r.text
        r = await c.post("/v1/stores/s1/faces", files={"image": ("m.jpg", two_alike)})
        assert r.status_code == 422 and r.json()["error"]["code"] == "multiple_faces", r.text
