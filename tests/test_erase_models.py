"""Erase by photo reaches every store, whatever model its node group runs: two groups that
name no recognizer can run different ones, and each is searched with its own; a group
whose detector misses the face is reported, and the others still erase it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from PIL import Image

from storeface.embedders import (
    AUTO,
    DETECTOR_MODEL,
    RECOGNIZER_MODEL,
    SFACE_MODEL,
    resolve_embedder,
)
from storeface.paths import models_dir
from tests.conftest import photo
from tests.inprocess import in_process
from tests.support import RedisServer

pytestmark = pytest.mark.skipif(
    resolve_embedder(AUTO)[0] != "arcface", reason=f"no arcface models in {models_dir()}"
)
PERSON = "Rebekah_Chantay_Revels"


def _sface_folder(folder: Path) -> dict[str, Any]:
    """YuNet and the shared test recognizer under SFace's name: `auto` then runs it as SFace
    (another identity, fed differently), which is all this test needs of a second model."""
    folder.mkdir()
    (folder / DETECTOR_MODEL).symlink_to(models_dir() / DETECTOR_MODEL)
    (folder / SFACE_MODEL).symlink_to(models_dir() / RECOGNIZER_MODEL)
    return {"models_dir": str(folder)}


def _small(data: bytes, side: int = 60) -> bytes:
    """The photo shrunk onto a larger grey frame: YuNet still finds the face, dlib's HOG not."""
    frame = Image.new("RGB", (500, 500), (128, 128, 128))
    frame.paste(Image.open(io.BytesIO(data)).convert("RGB").resize((side, side)), (100, 100))
    out = io.BytesIO()
    frame.save(out, "JPEG", quality=95)
    return out.getvalue()


@pytest.mark.anyio
async def test_erase_by_photo_searches_each_group_with_its_own_model(
    tmp_path: Path, redis_server: RedisServer, faces: Path
) -> None:
    redis_lib.Redis(port=redis_server.port).flushall()
    # Neither group names an embedder or a recognizer: stores.yaml alone cannot tell them
    # apart; one finds the shared model, the other only SFace's file (the shared weights fed
    # as SFace: they tell people apart poorly, so the stranger is enrolled with the other).
    nodes = {"mbf": {"embedder": AUTO}, "sface": {"embedder": AUTO, **_options(tmp_path)}}
    groups = {n: [f"s-{n}"] for n in nodes}
    async with in_process(tmp_path, redis_server.url, groups, node_options=nodes) as apps:
        gw = apps.gateway
        embedders = {
            n: (await gw.get(f"/v1/stores/s-{n}/health")).json()["embedder"] for n in nodes
        }
        ids = {}
        for n in nodes:
            r = await gw.post(
                f"/v1/stores/s-{n}/faces",
                files={"image": ("a.jpg", photo(faces, PERSON, 1))},
                data={"label": PERSON},
            )
            assert r.status_code == 201, r.text
            ids[n] = r.json()["face_id"]
        other = await gw.post(
            "/v1/stores/s-mbf/faces", files={"image": ("b.jpg", photo(faces, "Juanes", 1))}
        )
        assert other.status_code == 201, other.text
        r = await gw.post("/v1/erase", files={"image": ("p.jpg", photo(faces, PERSON, 1))})
        assert r.status_code == 200, r.text
        body = r.json()
    assert embedders == {"mbf": f"arcface:{RECOGNIZER_MODEL}", "sface": f"arcface:{SFACE_MODEL}"}
    assert body["degraded"] == []
    assert {e["face_id"]: e["stores"] for e in body["erased"]} == {
        ids["mbf"]: ["s-mbf"],
        ids["sface"]: ["s-sface"],
    }
    raw = redis_lib.Redis(port=redis_server.port)
    assert not raw.exists(*(f"face:{fid}" for fid in ids.values()))
    assert raw.exists(f"face:{other.json()['face_id']}")  # someone else is untouched


def _options(tmp_path: Path) -> dict[str, Any]:
    return {"embedder_options": _sface_folder(tmp_path / "sface")}


@pytest.mark.anyio
async def test_a_group_whose_detector_misses_the_face_does_not_stop_the_erase(
    tmp_path: Path, redis_server: RedisServer, faces: Path
) -> None:
    """The photo's face is too small for dlib's detector: the dlib group is `degraded`, and
    the arcface group's FaceId is still erased (before, the whole request was a 422)."""
    redis_lib.Redis(port=redis_server.port).flushall()
    nodes = {"arc": {"embedder": "arcface"}, "hog": {"embedder": "dlib"}}
    groups = {n: [f"s-{n}"] for n in nodes}
    small = _small(photo(faces, PERSON, 1))
    async with in_process(tmp_path, redis_server.url, groups, node_options=nodes) as apps:
        gw = apps.gateway
        enrolled = await gw.post(
            "/v1/stores/s-arc/faces",
            files={"image": ("a.jpg", photo(faces, PERSON, 1))},
            data={"label": PERSON},
        )
        assert enrolled.status_code == 201, enrolled.text
        missed = await gw.post(
            "/v1/search", files={"image": ("p.jpg", small)}, data={"store_id": "s-hog"}
        )
        assert missed.status_code == 200 and missed.json()["faces"] == [], missed.text
        r = await gw.post(
            "/v1/erase", files={"image": ("p.jpg", small)}, data={"max_distance": "0.8"}
        )
        assert r.status_code == 200, r.text
    assert [e["face_id"] for e in r.json()["erased"]] == [enrolled.json()["face_id"]]
    assert r.json()["degraded"] == ["s-hog"]
