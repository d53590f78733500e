"""Past capacity a node refuses at once with 503 `overloaded` and records nothing for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis as redis_lib

from tests.conftest import photo
from tests.inprocess import InProcess, in_process
from tests.support import RedisServer


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def apps(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> AsyncIterator[InProcess]:
    redis_lib.Redis(port=redis_server.port).flushall()
    # one worker, one photo in the pipeline at a time: a second concurrent one is refused
    async with in_process(
        tmp_path_factory.mktemp("overload"),
        redis_server.url,
        {"n1": ["store-a"]},
        shard_options={"max_queue": 1},
    ) as apps:
        yield apps


async def _recognize(c: httpx.AsyncClient, image: bytes) -> httpx.Response:
    return await c.post(
        "/v1/recognize", files={"image": ("f.jpg", image)}, data={"store_id": "store-a"}
    )


@pytest.mark.anyio
async def test_a_burst_past_capacity_is_refused_fast_and_not_counted(
    apps: InProcess, faces: Path
) -> None:
    people = ["Juanes", "Rebekah_Chantay_Revels", "Tom_Jones", "Eddy_Merckx", "Jon_Voight"]
    burst = await asyncio.gather(*(_recognize(apps.gateway, photo(faces, p, 1)) for p in people))
    served = [r for r in burst if r.status_code == 200]
    refused = [r for r in burst if r.status_code != 200]
    assert served, [r.text for r in burst]
    assert refused, "five photos at once past a queue of one: some must be refused"
    for r in refused:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "overloaded"
        assert r.headers["Retry-After"] == "1"
    stats = (await apps.gateway.get("/v1/stores/store-a/stats")).json()
    pv = sum(day["pv"] for day in stats["days"])
    assert pv == len(served), "a refused photo must leave no visit behind"
    # once the burst is over, a refused camera's retry is served
    retry = await _recognize(apps.gateway, photo(faces, people[-1], 1))
    assert retry.status_code == 200, retry.text
