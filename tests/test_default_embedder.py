"""A store that names no embedder: arcface where its model files are, else dlib with a
warning; a store already built keeps its embedder; an explicit `embedder:` always wins."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis as redis_lib
import yaml
from asgi_lifespan import LifespanManager

from deploy.run import embedder_lines
from shard_node.app import create_app as create_shard
from shard_node.settings import ShardSettings
from storeface.embedders import AUTO, resolve_embedder
from storeface.paths import models_dir
from storeface.stores import parse_stores
from tests.conftest import photo

HAVE_MODELS = resolve_embedder(AUTO)[0] == "arcface"
needs_models = pytest.mark.skipif(not HAVE_MODELS, reason=f"no arcface models in {models_dir()}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_default_follows_the_model_files(tmp_path: Path) -> None:
    name, note = resolve_embedder(AUTO, {"models_dir": str(tmp_path)})
    assert name == "dlib"
    assert "missing" in note and str(tmp_path / "arcface_mobilefacenet_128.onnx") in note
    assert resolve_embedder("arcface", {"models_dir": str(tmp_path)}) == ("arcface", "")
    assert resolve_embedder("dlib") == ("dlib", "")
    if HAVE_MODELS:
        assert resolve_embedder(AUTO) == ("arcface", "")


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
            "arcface",
            "cosine",
            None,
        )
        r = await c.post(
            "/v1/stores/s1/faces",
            files={"image": ("p.jpg", photo(faces, "George_Clooney"), "image/jpeg")},
        )
        assert r.status_code == 201, r.text
    recorded = redis_lib.Redis.from_url(redis_url).hget("store:s1:meta", "embedder")
    assert recorded == b"arcface"


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
    assert info["embedder"] == "arcface"
    assert "holds dlib embeddings; this node runs arcface" in info["stores"][0]["refused"]
