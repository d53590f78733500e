"""A store that names no embedder: arcface where its model files are, else dlib with a
warning; a store already built keeps its embedder; an explicit `embedder:` always wins."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
import redis as redis_lib
import yaml
from asgi_lifespan import LifespanManager
from PIL import Image
from redis.asyncio import Redis

from deploy.run import embedder_lines
from gateway.routing import StoreMap
from shard_node.app import create_app as create_shard
from shard_node.faces.onnx_pipeline import THRESHOLD
from shard_node.faces.registry import embedder_info, make_pipeline
from shard_node.settings import ShardSettings
from storeface.distances import distances
from storeface.embedders import (
    AUTO,
    DETECTOR_MODEL,
    LEGACY_ARCFACE,
    RECOGNIZER_MODEL,
    SFACE_MODEL,
    W600K_MBF_MODEL,
    configured_model,
    embedder_identity,
    legacy_identity,
    may_match,
    resolve_embedder,
    same_model,
)
from storeface.facedb import FaceDB
from storeface.paths import models_dir
from storeface.stores import parse_stores
from tests.conftest import photo
from tests.inprocess import in_process, recognize
from tests.support import write_stores
from tools.dataset import model_files_key

HAVE_MODELS = resolve_embedder(AUTO)[0] == "arcface"
MBF = f"arcface:{RECOGNIZER_MODEL}"  # the identity a store records of the shared model
SFACE = f"arcface:{SFACE_MODEL}"
needs_models = pytest.mark.skipif(not HAVE_MODELS, reason=f"no arcface models in {models_dir()}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_default_follows_the_model_files(tmp_path: Path) -> None:
    name, note = resolve_embedder(AUTO, {"models_dir": str(tmp_path)})
    assert name == "dlib"
    assert "missing" in note and str(tmp_path / "arcface_mobilefacenet_128.onnx") in note
    assert SFACE_MODEL in note and "make models" in note
    assert resolve_embedder("arcface", {"models_dir": str(tmp_path)}) == ("arcface", "")
    assert resolve_embedder("dlib") == ("dlib", "")
    if HAVE_MODELS:
        assert resolve_embedder(AUTO) == ("arcface", "")


def _models(folder: Path, *names: str) -> dict[str, Any]:
    """A models folder holding YuNet and, under each of `names`, the shared test recognizer:
    copies under other names only test which file is chosen and how it is fed, not SFace or
    w600k_mbf themselves (they cannot be downloaded here)."""
    folder.mkdir()
    (folder / DETECTOR_MODEL).symlink_to(models_dir() / DETECTOR_MODEL)
    for name in names:
        (folder / name).symlink_to(models_dir() / RECOGNIZER_MODEL)
    return {"models_dir": str(folder)}


@needs_models
def test_auto_takes_the_first_known_recognizer_present(tmp_path: Path) -> None:
    sface = _models(tmp_path / "sface", SFACE_MODEL, W600K_MBF_MODEL)
    name, note = resolve_embedder(AUTO, sface)
    assert name == "arcface" and f"running arcface with {SFACE_MODEL}" in note
    assert "not measured here" in note
    info = embedder_info(AUTO, sface)
    assert (info.dim, info.threshold) == (128, 0.637)
    assert "OpenCV's published threshold" in info.threshold_note

    both = _models(tmp_path / "both", SFACE_MODEL, RECOGNIZER_MODEL)
    assert resolve_embedder(AUTO, both) == ("arcface", "")  # the measured one first, silently
    assert embedder_info(AUTO, both).threshold == THRESHOLD

    mbf = _models(tmp_path / "mbf", W600K_MBF_MODEL)
    assert resolve_embedder(AUTO, mbf)[0] == "arcface"
    assert embedder_info(AUTO, mbf).dim == 512  # the index is built for its 512-d vectors

    # A recognizer named in the options wins, and is the one that must be there.
    named = {**sface, "recognizer_model": RECOGNIZER_MODEL}
    name, note = resolve_embedder(AUTO, named)
    assert name == "dlib" and str(tmp_path / "sface" / RECOGNIZER_MODEL) in note
    assert embedder_info("arcface", {**sface, "recognizer_model": W600K_MBF_MODEL}).dim == 512


@needs_models
def test_auto_feeds_sface_its_own_input_scaling(tmp_path: Path, faces: Path) -> None:
    """The SFace-named copy is fed raw 0..255 pixels (SFace's profile), exactly as the same
    weights are when told so, and not as the default [-1, 1] input."""
    rgb = np.asarray(Image.open(faces / "lfw_dev/Barbra_Streisand/Barbra_Streisand_0001.jpg"))
    auto = make_pipeline(AUTO, {**_models(tmp_path / "m", SFACE_MODEL), "flip": False})
    (det,) = auto.detect(rgb)
    raw = make_pipeline("arcface", {"flip": False, "input_mean": 0, "input_std": 1})
    default = make_pipeline("arcface", {"flip": False})
    got = auto.embed(rgb, [det])
    assert np.allclose(got, raw.embed(rgb, [det]), atol=1e-5)
    assert float(distances(got, default.embed(rgb, [det]), "cosine")[0, 0]) > 0.5


def test_banner_says_which_embedder_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = parse_stores("nodes:\n  - id: n1\n  - id: n2\n    embedder: dlib\nstores:\n  - id: a\n")
    monkeypatch.setenv("STOREFACE_MODELS_DIR", str(tmp_path))
    text = embedder_lines(cfg)
    assert "n1 runs dlib (default)" in text and "WARNING n1: no embedder set" in text
    assert "n2 runs dlib\n" in text and "WARNING n2" not in text


def _write_stores(work: Path, node: dict[str, Any]) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    stores = work / "stores.yaml"
    doc = {"nodes": [{"id": "n1", "replicas": 1, **node}], "stores": [{"id": "s1", "node": "n1"}]}
    stores.write_text(yaml.safe_dump(doc))
    return stores


@asynccontextmanager
async def shard_client(
    work: Path, redis_url: str, node: dict[str, Any], **opts: Any
) -> AsyncIterator[httpx.AsyncClient]:
    stores = _write_stores(work, node)
    settings = ShardSettings(
        node_id="n1",
        stores_file=stores,
        redis_url=redis_url,
        workers=1,
        snapshot_dir=work / "snap",
        **opts,
    )
    async with (
        LifespanManager(create_shard(settings), startup_timeout=120, shutdown_timeout=120) as m,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=m.app), base_url="http://n1", timeout=60
        ) as c,
    ):
        for _ in range(600):
            if (await c.get("/readyz")).status_code == 200:
                break
            await anyio.sleep(0.1)
        yield c


@pytest.mark.anyio
async def test_no_models_runs_dlib_and_says_why(tmp_path: Path, redis_url: str) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    async with shard_client(tmp_path, redis_url, {}, models_dir=empty) as c:
        info = (await c.get("/v1/info")).json()
    assert (
        info["embedder"] == "dlib" and "arcface's model files are missing" in info["embedder_note"]
    )


@needs_models
@pytest.mark.anyio
async def test_models_present_runs_arcface_and_enrolls(
    tmp_path: Path, redis_url: str, faces: Path
) -> None:
    async with shard_client(tmp_path, redis_url, {}) as c:
        info = (await c.get("/v1/info")).json()
        assert (info["embedder"], info["metric"], info["embedder_note"]) == (
            MBF,
            "cosine",
            None,
        )
        r = await c.post(
            "/v1/stores/s1/faces",
            files={"image": ("p.jpg", photo(faces, "George_Clooney"), "image/jpeg")},
        )
        assert r.status_code == 201, r.text
    recorded = redis_lib.Redis.from_url(redis_url).hget("store:s1:meta", "embedder")
    assert recorded == MBF.encode()


@needs_models
@pytest.mark.anyio
async def test_a_store_built_with_dlib_keeps_it_and_explicit_arcface_is_refused(
    tmp_path: Path, redis_url: str
) -> None:
    redis_lib.Redis.from_url(redis_url).hset("store:s1:meta", "embedder", "dlib")
    async with shard_client(tmp_path / "auto", redis_url, {}) as c:
        info = (await c.get("/v1/info")).json()
    assert info["embedder"] == "dlib" and "built with" in info["embedder_note"]
    assert info["stores"][0]["refused"] == ""
    async with shard_client(tmp_path / "named", redis_url, {"embedder": "arcface"}) as c:
        info = (await c.get("/v1/info")).json()
    assert info["embedder"] == MBF
    assert f"holds dlib embeddings; this node runs {MBF}" in info["stores"][0]["refused"]


def test_the_identity_names_the_recognizer_not_its_folder(tmp_path: Path) -> None:
    assert embedder_identity("dlib") == embedder_info("dlib").identity == "dlib"
    sface = _models(tmp_path / "a", SFACE_MODEL, W600K_MBF_MODEL)
    elsewhere = _models(tmp_path / "b", SFACE_MODEL)
    assert embedder_identity(AUTO, sface) == embedder_identity("arcface", elsewhere) == SFACE
    assert embedder_info(AUTO, sface).identity == SFACE
    named = {**sface, "recognizer_model": W600K_MBF_MODEL}
    assert embedder_info("arcface", named).identity == f"arcface:{W600K_MBF_MODEL}"
    absolute = {"recognizer_model": str(tmp_path / "a" / SFACE_MODEL)}
    assert embedder_identity("arcface", absolute) == SFACE
    assert embedder_identity(AUTO, {"models_dir": str(tmp_path)}) == "dlib"  # no files


def test_which_configured_stores_may_search_each_other() -> None:
    """The gateway's static check: stores that name different recognizers never search each
    other; `auto` or an unnamed recognizer is left to the fan-out's check of what runs."""
    mbf, sface = {"recognizer_model": RECOGNIZER_MODEL}, {"recognizer_model": SFACE_MODEL}
    assert may_match("arcface", "arcface", mbf, {**mbf, "models_dir": "/elsewhere"})
    assert not may_match("arcface", "arcface", mbf, sface)
    assert may_match("arcface", "arcface", mbf, {})  # decided by the node
    assert may_match(AUTO, "arcface", {}, sface)
    assert not may_match("dlib", "arcface", {}, mbf)
    assert not may_match("dlib", "arcface")
    assert configured_model("arcface", sface) == SFACE
    assert configured_model("arcface") is None and configured_model(AUTO, sface) is None


def test_the_store_map_keeps_named_recognizers_apart(tmp_path: Path) -> None:
    path = write_stores(
        tmp_path / "stores.yaml",
        [
            {"id": "a", "embedder": "arcface", "embedder_options": {"recognizer_model": "x.onnx"}},
            {"id": "b", "embedder": "arcface", "embedder_options": {"recognizer_model": "y.onnx"}},
            {"id": "c", "embedder": "arcface"},
            {"id": "d", "embedder": AUTO},
            {"id": "e", "embedder": "arcface", "embedder_options": {"recognizer_model": "x.onnx"}},
        ],
    )
    m = StoreMap(path)
    assert [s.id for s in m.fallback_targets(m.route("a"))] == ["c", "d", "e"]
    assert [s.id for s in m.fallback_targets(m.route("b"))] == ["c", "d"]
    assert [s.id for s in m.fallback_targets(m.route("c"))] == ["a", "b", "d", "e"]


@pytest.mark.anyio
async def test_a_claim_records_the_identity_and_upgrades_a_legacy_record_once(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    r = Redis.from_url(redis_url)
    db = FaceDB(r)
    try:
        assert await db.claim_embedder("new", MBF) == MBF
        assert await db.claim_embedder("new", SFACE) == MBF  # the first claim stays
        await r.hset("store:old:meta", "embedder", LEGACY_ARCFACE)
        # Plain "arcface" was the default recognizer's: any other model finds a mismatch.
        assert await db.claim_embedder("old", SFACE) == LEGACY_ARCFACE
        assert await db.claim_embedder("old", SFACE, {"recognizer_model": RECOGNIZER_MODEL}) == (
            LEGACY_ARCFACE
        )
        with caplog.at_level(logging.WARNING, "storeface.facedb"):
            assert await db.claim_embedder("old", MBF) == MBF
        assert "upgraded" in caplog.text and "old" in caplog.text
        assert await r.hget("store:old:meta", "embedder") == MBF.encode()
        assert await db.claim_embedder("old", SFACE) == MBF  # once: now a real mismatch
        # A group that named its recognizer built its legacy stores with that one.
        await r.hset("store:named:meta", "embedder", LEGACY_ARCFACE)
        sface = {"recognizer_model": SFACE_MODEL, "models_dir": "/anywhere"}
        assert await db.claim_embedder("named", MBF, sface) == LEGACY_ARCFACE
        assert await db.claim_embedder("named", SFACE, sface) == SFACE
        await r.hset("store:legacy-dlib:meta", "embedder", LEGACY_ARCFACE)
        assert await db.claim_embedder("legacy-dlib", "dlib") == LEGACY_ARCFACE
        await r.hset("store:built-dlib:meta", "embedder", "dlib")
        assert await db.claim_embedder("built-dlib", MBF) == "dlib"
    finally:
        await r.aclose()


@needs_models
@pytest.mark.anyio
async def test_a_store_built_with_another_recognizer_is_refused_never_switched(
    tmp_path: Path, redis_url: str, faces: Path
) -> None:
    r = redis_lib.Redis.from_url(redis_url)
    r.hset("store:s1:meta", "embedder", SFACE)
    # Named: the group runs the shared model, so the SFace-built store is refused.
    async with shard_client(tmp_path / "named", redis_url, {"embedder": "arcface"}) as c:
        info = (await c.get("/v1/info")).json()
        refused = await c.post(
            "/v1/stores/s1/identify",
            files={"image": ("p.jpg", photo(faces, "George_Clooney"), "image/jpeg")},
        )
    assert info["embedder"] == MBF
    assert f"holds {SFACE} embeddings; this node runs {MBF}" in info["stores"][0]["refused"]
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "embedder_mismatch"
    # Default, SFace's file gone: the default is the shared model; refused too.
    only_mbf = Path(_models(tmp_path / "mbf", RECOGNIZER_MODEL)["models_dir"])
    async with shard_client(tmp_path / "gone", redis_url, {}, models_dir=only_mbf) as c:
        info = (await c.get("/v1/info")).json()
    assert info["embedder"] == MBF and SFACE in info["stores"][0]["refused"]
    # Default, both files here: the store's own model, though the default is another.
    both = Path(_models(tmp_path / "both", RECOGNIZER_MODEL, SFACE_MODEL)["models_dir"])
    async with shard_client(tmp_path / "auto", redis_url, {}, models_dir=both) as c:
        info = (await c.get("/v1/info")).json()
    assert (info["embedder"], info["stores"][0]["refused"]) == (SFACE, "")
    assert "built with" in info["embedder_note"] and f"would be {MBF}" in info["embedder_note"]
    assert info["stores"][0]["threshold"] == pytest.approx(0.637)  # SFace's, not 0.56
    assert r.hget("store:s1:meta", "embedder") == SFACE.encode()


def test_a_legacy_record_stands_for_one_model_only() -> None:
    assert same_model(LEGACY_ARCFACE, MBF) and same_model(MBF, MBF)
    assert not same_model(LEGACY_ARCFACE, SFACE) and not same_model(MBF, SFACE)
    assert not same_model(LEGACY_ARCFACE, "dlib")
    named = {"recognizer_model": str(models_dir() / SFACE_MODEL)}  # a path names its file
    assert legacy_identity(named) == SFACE
    assert same_model(LEGACY_ARCFACE, SFACE, named) and not same_model(LEGACY_ARCFACE, MBF, named)


@pytest.mark.anyio
async def test_a_faces_vectors_in_a_legacy_store_are_the_models_it_stands_for(
    redis_url: str,
) -> None:
    """A store not yet claimed by a node on this code still says plain "arcface": its
    vectors are the default recognizer's (or the one its group names), and no other's."""
    r = Redis.from_url(redis_url)
    db = FaceDB(r)
    try:
        fid = await db.new_face_id()
        vecs = np.random.default_rng(7).normal(size=(3, 128)).astype(np.float32)
        for sid, vec in zip(("legacy", "legacy", "sface"), vecs, strict=True):
            await db.add_vector(sid, fid, vec, embedder="arcface")
        await r.hset("store:legacy:meta", "embedder", LEGACY_ARCFACE)
        await r.hset("store:sface:meta", "embedder", SFACE)
        mbf = await db.face_vectors(fid, MBF)
        assert mbf is not None and sorted(map(tuple, mbf)) == sorted(map(tuple, vecs[:2]))
        sface = await db.face_vectors(fid, SFACE)
        assert sface is not None and np.array_equal(sface, vecs[2:])
        named = {"legacy": {"recognizer_model": SFACE_MODEL}}
        both = await db.face_vectors(fid, SFACE, named)
        assert both is not None and len(both) == 3
        assert await db.face_vectors(fid + 1, MBF) is None
    finally:
        await r.aclose()


@needs_models
@pytest.mark.anyio
async def test_a_legacy_arcface_store_is_upgraded_only_to_the_model_that_built_it(
    tmp_path: Path, redis_url: str
) -> None:
    r = redis_lib.Redis.from_url(redis_url)
    r.hset("store:s1:meta", "embedder", LEGACY_ARCFACE)
    # Only SFace here: `auto` runs it, but it cannot have built the store, which is refused.
    sface = Path(_models(tmp_path / "sface", SFACE_MODEL)["models_dir"])
    async with shard_client(tmp_path / "only-sface", redis_url, {}, models_dir=sface) as c:
        info = (await c.get("/v1/info")).json()
    assert info["embedder"] == SFACE
    assert (
        f"holds {LEGACY_ARCFACE} embeddings; this node runs {SFACE}"
        in (info["stores"][0]["refused"])
    )
    assert r.hget("store:s1:meta", "embedder") == LEGACY_ARCFACE.encode()
    # The default recognizer here: the store's own model, upgraded once.
    async with shard_client(tmp_path / "default", redis_url, {}) as c:
        info = (await c.get("/v1/info")).json()
    assert (info["embedder"], info["stores"][0]["refused"]) == (MBF, "")
    assert r.hget("store:s1:meta", "embedder") == MBF.encode()


@needs_models
@pytest.mark.anyio
async def test_groups_on_the_same_recognizer_search_each_other_and_others_never(
    tmp_path: Path, redis_url: str, faces: Path
) -> None:
    """`auto` resolving to the shared model and a group naming it search each other; a
    group running SFace is dropped from the fan-out (its distances would mean nothing)."""
    sface = _models(tmp_path / "sface", SFACE_MODEL)
    nodes: dict[str, dict[str, Any]] = {
        "auto": {"embedder": AUTO},
        "named": {
            "embedder": "arcface",
            "embedder_options": {"recognizer_model": RECOGNIZER_MODEL},
        },
        "other": {
            "embedder": "arcface",
            "embedder_options": {**sface, "recognizer_model": SFACE_MODEL},
        },
    }
    person = "Rebekah_Chantay_Revels"
    groups = {n: [f"s-{n}"] for n in nodes}
    async with in_process(tmp_path, redis_url, groups, node_options=nodes) as apps:
        gw = apps.gateway
        for store in ("s-named", "s-other"):
            r = await gw.post(
                f"/v1/stores/{store}/faces",
                files={"image": ("a.jpg", photo(faces, person, 1))},
                data={"label": person},
            )
            assert r.status_code == 201, r.text
        enrolled = (await gw.get("/v1/stores/s-named/health")).json()
        found = (await recognize(gw, "s-auto", photo(faces, person, 1))).json()
        other = (await recognize(gw, "s-other", photo(faces, person, 1))).json()
    assert enrolled["embedder"] == MBF
    face = found["faces"][0]
    assert (face["matched_store"], face["label"], face["is_new"]) == ("s-named", person, False)
    assert found["degraded"] == ["s-other"]  # asked (auto), and dropped: another model
    assert other["faces"][0]["matched_store"] == "s-other" and other["degraded"] == []


@needs_models
def test_cached_embeddings_are_keyed_by_the_model_files(tmp_path: Path) -> None:
    """Another recognizer, or another file under the same name, is not served the shared
    model's cached embeddings; the same files in another folder are."""
    shared = model_files_key({})
    assert model_files_key(_models(tmp_path / "copy", RECOGNIZER_MODEL)) == shared
    assert model_files_key(_models(tmp_path / "sface", SFACE_MODEL)) != shared
    other = tmp_path / "other"
    other.mkdir()
    (other / DETECTOR_MODEL).symlink_to(models_dir() / DETECTOR_MODEL)
    (other / RECOGNIZER_MODEL).write_bytes(b"not the shared weights")
    assert model_files_key({"models_dir": str(other)}) != shared
