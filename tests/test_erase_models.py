"""Erase by photo reaches every store, whatever model its node group picked: two groups
that name no recognizer can run different ones, and each is searched with its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis as redis_lib
import yaml
from asgi_lifespan import LifespanManager

from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from shard_node.app import create_app as create_shard
from shard_node.settings import ShardSettings
from storeface.embedders import (
    AUTO,
    DETECTOR_MODEL,
    RECOGNIZER_MODEL,
    SFACE_MODEL,
    resolve_embedder,
)
from storeface.paths import models_dir
from tests.conftest import photo
from tests.inprocess import ADMIN, Router
from tests.support import RedisServer

pytestmark = pytest.mark.skipif(
    resolve_embedder(AUTO)[0] != "arcface", reason=f"no arcface models in {models_dir()}"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _sface_folder(folder: Path) -> dict[str, Any]:
    """YuNet and the shared test recognizer under SFace's name: `auto` then runs it as SFace
    (another identity, fed differently), which is all this test needs of a second model."""
    folder.mkdir()
    (folder / DETECTOR_MODEL).symlink_to(models_dir() / DETECTOR_MODEL)
    (folder / SFACE_MODEL).symlink_to(models_dir() / RECOGNIZER_MODEL)
    return {"models_dir": str(folder)}


@asynccontextmanager
async def chain(
    work: Path, redis_url: str, nodes: dict[str, dict[str, Any]]
) -> AsyncIterator[httpx.AsyncClient]:
    """One store per node group (`s-<group>`), the groups and a gateway in this process."""
    stores = work / "stores.yaml"
    doc = {
        "nodes": [{"id": n, "replicas": 1, "urls": [f"http://{n}"], **o} for n, o in nodes.items()],
        "stores": [{"id": f"s-{n}", "node": n} for n in nodes],
    }
    stores.write_text(yaml.safe_dump(doc))
    async with AsyncExitStack() as stack:
        shards: dict[str, httpx.AsyncBaseTransport] = {}
        for n in nodes:
            settings = ShardSettings(
                node_id=n,
                stores_file=stores,
                redis_url=redis_url,
                workers=1,
                snapshot_dir=work / n,
                feed_block_ms=100,
            )
            m = await stack.enter_async_context(
                LifespanManager(create_shard(settings), startup_timeout=120, shutdown_timeout=120)
            )
            shards[n] = httpx.ASGITransport(app=m.app)
            async with httpx.AsyncClient(transport=shards[n], base_url="http://n") as c:
                for _ in range(600):
                    if (await c.get("/readyz")).status_code == 200:
                        break
                    await anyio.sleep(0.1)
        gw = GatewaySettings(
            stores_file=stores, redis_url=redis_url, admin_key=ADMIN, fanout_deadline_ms=5000
        )
        g = await stack.enter_async_context(
            LifespanManager(
                create_gateway(gw, transport=Router(shards)),
                startup_timeout=120,
                shutdown_timeout=120,
            )
        )
        yield await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=g.app),
                base_url="http://gateway",
                headers={"X-API-Key": ADMIN},
                timeout=60,
            )
        )


@pytest.mark.anyio
async def test_erase_by_photo_searches_each_group_with_its_own_model(
    tmp_path: Path, redis_server: RedisServer, faces: Path
) -> None:
    redis_lib.Redis(port=redis_server.port).flushall()
    # Neither group names an embedder or a recognizer: stores.yaml alone cannot tell them
    # apart; one finds the shared model, the other only SFace's file (the shared weights fed
    # as SFace: they tell people apart poorly, so the stranger is enrolled with the other).
    nodes = {"mbf": {}, "sface": {"embedder_options": _sface_folder(tmp_path / "sface")}}
    person = "Rebekah_Chantay_Revels"
    async with chain(tmp_path, redis_server.url, nodes) as gw:
        embedders = {
            n: (await gw.get(f"/v1/stores/s-{n}/health")).json()["embedder"] for n in nodes
        }
        ids = {}
        for n in nodes:
            r = await gw.post(
                f"/v1/stores/s-{n}/faces",
                files={"image": ("a.jpg", photo(faces, person, 1))},
                data={"label": person},
            )
            assert r.status_code == 201, r.text
            ids[n] = r.json()["face_id"]
        other = await gw.post(
            "/v1/stores/s-mbf/faces", files={"image": ("b.jpg", photo(faces, "Juanes", 1))}
        )
        assert other.status_code == 201, other.text
        r = await gw.post("/v1/erase", files={"image": ("p.jpg", photo(faces, person, 1))})
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
