"""The gateway and node groups built in this process by their app factories, the gateway's
shard client routed to the shard apps over ASGI. Real Redis, real pipelines, no server
processes: what `make test-fast` tests through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
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
from tests.support import RedisServer

ADMIN = "in-process-admin"


class Router(httpx.AsyncBaseTransport):
    """Sends each request to the transport of its host: one in-process app per node group."""

    def __init__(self, routes: dict[str, httpx.AsyncBaseTransport]) -> None:
        self.routes = routes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.routes[request.url.host].handle_async_request(request)


@dataclass
class InProcess:
    gateway: httpx.AsyncClient  # with the admin key
    router: Router  # swap a group's transport to inject faults
    shards: dict[str, httpx.AsyncBaseTransport]


def _lifespan(app: Any) -> LifespanManager:
    """Start-up and shutdown may take a while on a busy machine: a shard's shutdown waits for
    its pool's worker processes (asgi-lifespan's default is 5 s)."""
    return LifespanManager(app, startup_timeout=120, shutdown_timeout=120)


@asynccontextmanager
async def in_process(
    work: Path,
    redis_url: str,
    nodes: dict[str, list[str]],
    region: str = "north",
    shard_options: dict[str, Any] | None = None,
    sentinels: str = "",
    store_options: dict[str, dict[str, Any]] | None = None,
    node_options: dict[str, dict[str, Any]] | None = None,
) -> AsyncIterator[InProcess]:
    """Node groups (id → its stores) and a gateway, all in this process, ready to serve;
    `shard_options` are more ShardSettings for every node; with `sentinels`, Redis is the
    primary they name; `store_options` and `node_options` are more stores.yaml settings per
    store and per node group (e.g. another embedder than dlib)."""
    stores_file = work / "stores.yaml"
    doc = {
        # dlib: what the shared lfw embeddings (conftest) these tests enroll are made with
        "nodes": [
            {
                "id": n,
                "replicas": 1,
                "urls": [f"http://{n}"],
                "embedder": "dlib",
                **(node_options or {}).get(n, {}),
            }
            for n in nodes
        ],
        "stores": [
            {"id": s, "node": n, "region": region, **(store_options or {}).get(s, {})}
            for n, stores in nodes.items()
            for s in stores
        ],
    }
    stores_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    async with AsyncExitStack() as stack:
        shards: dict[str, httpx.AsyncBaseTransport] = {}
        for node in nodes:
            settings = ShardSettings(
                node_id=node,
                stores_file=stores_file,
                redis_url=redis_url,
                redis_sentinels=sentinels,
                workers=1,
                snapshot_dir=work / node,
                feed_block_ms=100,
                **(shard_options or {}),
            )
            manager = await stack.enter_async_context(_lifespan(create_shard(settings)))
            shards[node] = httpx.ASGITransport(app=manager.app)
        for transport in shards.values():  # ready: every store loaded, workers up
            async with httpx.AsyncClient(transport=transport, base_url="http://n") as c:
                for _ in range(600):
                    if (await c.get("/readyz")).status_code == 200:
                        break
                    await anyio.sleep(0.1)
        router = Router(dict(shards))
        gw_settings = GatewaySettings(
            stores_file=stores_file,
            redis_url=redis_url,
            redis_sentinels=sentinels,
            admin_key=ADMIN,
            fanout_deadline_ms=2000,
        )
        gateway = await stack.enter_async_context(
            _lifespan(create_gateway(gw_settings, transport=router))
        )
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gateway.app),
                base_url="http://gateway",
                headers={"X-API-Key": ADMIN},
                timeout=60,
            )
        )
        yield InProcess(client, router, shards)


def apps_fixture(name: str, nodes: dict[str, list[str]], **options: Any) -> Any:
    """A module-scoped `apps` fixture: a flushed Redis, then `in_process(...)` with `options`."""

    @pytest.fixture(scope="module")
    async def apps(
        tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
    ) -> AsyncIterator[InProcess]:
        redis_lib.Redis(port=redis_server.port).flushall()
        async with in_process(
            tmp_path_factory.mktemp(name), redis_server.url, nodes, **options
        ) as apps:
            yield apps

    return apps


async def recognize(client: httpx.AsyncClient, store: str, image: bytes) -> httpx.Response:
    """POST a photo to /v1/recognize for `store`."""
    return await client.post(
        "/v1/recognize", files={"image": ("f.jpg", image)}, data={"store_id": store}
    )
