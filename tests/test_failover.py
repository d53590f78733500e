"""Redis HA: a primary, its replica and three Sentinels as real processes. The primary is
frozen (SIGSTOP: a host that hangs) while enrollments and recognitions flow; they succeed
again soon after the promotion, and every acknowledged one is on the new primary."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib

from storeface.redis_client import NotReplicated, connect
from tests.conftest import photo
from tests.inprocess import in_process
from tools.servers import Process, RedisHA, RedisServer, wait_until

pytestmark = pytest.mark.slow

STORE = "store-a"


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[RedisHA]:
    servers = RedisHA(tmp_path / "redis", down_after_ms=1000).start()
    try:
        yield servers
    finally:
        servers.stop()  # SIGCONT first: a frozen process would ignore the rest


def _wait_count(port: int) -> int:
    with redis_lib.Redis(port=port) as r:
        return int(r.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


@pytest.mark.anyio
async def test_wait_is_issued_only_with_a_replica(ha: RedisHA, tmp_path: Path) -> None:
    single = RedisServer(tmp_path / "single").start()
    try:
        plain = connect(single.url)
        await plain.set("k", "v")
        async with plain.pipeline(transaction=True) as pipe:
            pipe.hset("h", "f", "1")
            pipe.incr("n")
            await pipe.execute()
        await plain.aclose()
        assert _wait_count(single.port) == 0
    finally:
        single.stop()
    durable = connect(ha.url, ha.sentinels)
    await durable.get("k")  # reads never wait
    assert _wait_count(ha.port) == 0
    await durable.set("k", "v")
    async with durable.pipeline(transaction=False) as pipe:
        pipe.hset("h", "f", "1")
        pipe.incr("n")
        await pipe.execute()  # one WAIT for the batch
    assert _wait_count(ha.port) == 2
    with redis_lib.Redis(port=ha.port + 1) as replica:  # already there when acknowledged
        assert replica.get("k") == b"v" and replica.get("n") == b"1"
    await durable.aclose()


@pytest.mark.anyio
async def test_client_follows_a_failover(ha: RedisHA) -> None:
    client = connect(ha.url, ha.sentinels)
    await client.set("before", "1")
    os.kill(ha.nodes[ha.port].pid, signal.SIGSTOP)
    frozen = time.monotonic()
    while True:  # one call may give up (503 for its request); the next gets through
        try:
            await client.incr("after")
            break
        except redis_lib.RedisError:
            assert time.monotonic() - frozen < 20, "no write acknowledged after the freeze"
    assert ha.primary() == ha.port + 1
    assert await client.get("before") == b"1"
    await client.aclose()


@pytest.mark.anyio
async def test_frozen_primary_loses_nothing_acknowledged(
    ha: RedisHA, faces: Path, tmp_path: Path
) -> None:
    people = sorted(p.name for p in (faces / "lfw_dev").iterdir() if p.is_dir())
    enrolled: dict[int, str] = {}  # face_id → label, each acknowledged
    seen: set[int] = set()  # FaceIds of acknowledged recognitions: registered, visit counted
    ok_at: list[float] = []
    async with in_process(tmp_path, ha.url, {"n1": [STORE]}, sentinels=ha.sentinels) as apps:
        gw = apps.gateway

        async def enroll(i: int) -> None:
            person = people[i % 20]
            r = await gw.post(
                f"/v1/stores/{STORE}/faces",
                files={"image": ("p.jpg", photo(faces, person, 1))},
                data={"label": person, "largest": "true"},
            )
            assert r.status_code in (200, 201, 503), r.text
            if r.status_code != 503:
                enrolled[r.json()["face_id"]] = person
                ok_at.append(time.monotonic())

        async def recognize(i: int) -> None:
            image = photo(faces, people[20 + i % (len(people) - 20)], 1)
            r = await gw.post(
                "/v1/recognize", files={"image": ("q.jpg", image)}, data={"store_id": STORE}
            )
            assert r.status_code in (200, 503), r.text
            if r.status_code == 200:
                seen.update(f["face_id"] for f in r.json()["faces"] if f["face_id"])
                ok_at.append(time.monotonic())

        for i in range(3):
            await asyncio.gather(enroll(i), recognize(i))
        os.kill(ha.nodes[ha.port].pid, signal.SIGSTOP)
        frozen = time.monotonic()
        promoted = None
        i = 3
        while promoted is None or not [t for t in ok_at if t > promoted]:
            await asyncio.gather(enroll(i), recognize(i))
            i += 1
            if promoted is None and ha.primary() != ha.port:
                promoted = time.monotonic()
            assert time.monotonic() - frozen < 25, "no request succeeded after the freeze"
        assert promoted is not None
        first_ok = min(t for t in ok_at if t > frozen)
        after = first_ok - promoted
        assert after < 10, f"first success {after:.1f} s after the promotion"
        for j in range(i, i + 3):  # and they keep succeeding
            await asyncio.gather(enroll(j), recognize(j))
        r = await gw.get(f"/v1/stores/{STORE}/visits", params={"limit": 500})
        visited = {v["face_id"] for v in r.json()["visits"]}
    assert enrolled and seen
    with redis_lib.Redis(port=ha.primary()) as r:
        for face_id, label in enrolled.items():
            assert r.hget(f"face:{face_id}", "label") == label.encode(), face_id
        for face_id in seen:
            assert r.exists(f"face:{face_id}"), face_id
    assert seen <= visited


@pytest.mark.anyio
async def test_a_primary_back_empty_never_wipes_its_replica(ha: RedisHA) -> None:
    client = connect(ha.url, ha.sentinels)
    await client.set("kept", "1")  # acknowledged: the replica has it
    await client.aclose()
    node = ha.nodes[ha.port]
    node.kill()
    shutil.rmtree(ha.directory / f"redis-{ha.port}")  # its append-only file is lost too
    ha.nodes[ha.port] = Process(node.args, node.log_path).start()  # as supervisord would
    replica = ha.port + 1

    def settled() -> bool:
        with redis_lib.Redis(port=ha.port) as back:
            return bool(ha.primary() == replica and back.get("kept") == b"1")

    wait_until(settled, 20, 0.2, what="the old primary back as a replica, with the data")
    with redis_lib.Redis(port=replica) as r:
        assert r.get("kept") == b"1"


@pytest.mark.anyio
async def test_a_write_the_replica_does_not_confirm_is_not_acknowledged(ha: RedisHA) -> None:
    client = connect(ha.url, ha.sentinels, wait_timeout_ms=300)
    replica = ha.nodes[ha.port + 1]
    os.kill(replica.pid, signal.SIGSTOP)  # attached, but it answers nothing
    try:
        with pytest.raises(NotReplicated):  # the services answer it 503 storage_unavailable
            await client.set("unconfirmed", "1")
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    await client.set("confirmed", "1")
    await client.aclose()
