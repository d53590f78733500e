"""Redis goes away and comes back: clear 503s meanwhile (never a 500), then answers again
on fresh connections without a restart. In-process apps, a real Redis of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import photo
from tests.inprocess import InProcess, in_process
from tests.support import RedisServer

pytestmark = pytest.mark.slow  # starts, kills and restarts a Redis process of its own


@pytest.fixture
async def chain(tmp_path: Path) -> AsyncIterator[tuple[InProcess, RedisServer]]:
    redis = RedisServer(tmp_path / "redis").start()
    try:
        async with in_process(tmp_path, redis.url, {"n1": ["store-a"]}) as apps:
            yield apps, redis
    finally:
        redis.stop()


@pytest.mark.anyio
async def test_redis_down_is_a_503_and_its_return_needs_no_restart(
    chain: tuple[InProcess, RedisServer], faces: Path, tmp_path: Path
) -> None:
    apps, redis = chain
    image = photo(faces, "Juanes", 1)

    async def recognize() -> tuple[int, dict]:
        r = await apps.gateway.post(
            "/v1/recognize", files={"image": ("q.jpg", image)}, data={"store_id": "store-a"}
        )
        return r.status_code, r.json()

    status, body = await recognize()
    assert status == 200, body
    face_id = body["faces"][0]["face_id"]
    redis.kill()  # the host hangs up: every pooled connection is dead
    status, body = await recognize()
    assert status == 503, body
    assert body["error"]["code"] in ("storage_unavailable", "shard_unavailable")
    r = await apps.gateway.get("/v1/stores/store-a/stats")
    assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable"
    # back, with its append-only file: the acknowledged visitor is still there
    back = RedisServer(redis.directory, port=redis.port).start()
    try:
        status, body = await recognize()
        assert status == 200, body
        assert body["faces"][0]["face_id"] == face_id
    finally:
        back.stop()
