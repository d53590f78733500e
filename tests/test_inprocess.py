"""The gateway and two shard node groups built in this process by their app factories, the
gateway's shard client routed to them over ASGI; real Redis, real photos, real pipelines.
Faults a test cannot cause for real (a node that drops connections) are injected with
httpx.MockTransport. No server process starts: this is the fast loop (`make test-fast`)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import photo
from tests.inprocess import InProcess, apps_fixture, recognize

NODES = {"n1": ["store-a", "store-b"], "n2": ["store-c"]}


apps = apps_fixture("inprocess", NODES)


@pytest.mark.anyio
async def test_a_new_visitor_keeps_its_face_id(apps: InProcess, faces: Path) -> None:
    first = await recognize(apps.gateway, "store-a", photo(faces, "Juanes", 1))
    assert first.status_code == 200, first.text
    face = first.json()["faces"][0]
    assert face["is_new"] is True and face["visit"] == "new"
    again = (await recognize(apps.gateway, "store-a", photo(faces, "Juanes", 1))).json()
    assert again["faces"][0]["face_id"] == face["face_id"]
    assert again["faces"][0]["is_new"] is False


@pytest.mark.anyio
async def test_a_face_enrolled_on_another_group_is_found_there(
    apps: InProcess, faces: Path
) -> None:
    person = "Rebekah_Chantay_Revels"
    r = await apps.gateway.post(
        "/v1/stores/store-c/faces",
        files={"image": ("a.jpg", photo(faces, person, 1))},
        data={"label": person},
    )
    assert r.status_code == 201, r.text
    found = (await recognize(apps.gateway, "store-b", photo(faces, person, 1))).json()
    face = found["faces"][0]
    assert (face["face_id"], face["matched_store"], face["label"]) == (
        r.json()["face_id"],
        "store-c",
        person,
    )
    assert found["degraded"] == []


@pytest.mark.anyio
async def test_a_group_that_drops_connections_degrades_only_its_stores(
    apps: InProcess, faces: Path
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    apps.router.routes["n2"] = httpx.MockTransport(refuse)
    try:
        r = await recognize(apps.gateway, "store-a", photo(faces, "Mark_Gottfried", 1))
        assert r.status_code == 200, r.text
        assert r.json()["degraded"] == ["store-c"]
        assert r.json()["faces"][0]["is_new"] is True
        down = await recognize(apps.gateway, "store-c", photo(faces, "Mark_Gottfried", 1))
        assert down.status_code == 503
        assert down.json()["error"]["code"] == "shard_unavailable"
    finally:
        apps.router.routes["n2"] = apps.shards["n2"]


@pytest.mark.anyio
async def test_bad_uploads_are_clear_4xx_through_both_apps(apps: InProcess) -> None:
    r = await apps.gateway.post(
        "/v1/recognize", files={"image": ("x.txt", b"not an image")}, data={"store_id": "store-a"}
    )
    assert r.status_code == 415 and r.json()["error"]["code"] == "not_an_image"
    r = await apps.gateway.post("/v1/recognize", files={"image": ("x.jpg", b"\xff\xd8\xff")})
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_field"
    r = await recognize(apps.gateway, "nowhere", b"\xff\xd8\xff")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_store"


@pytest.mark.anyio
async def test_the_api_docs_load_nothing_from_the_internet(apps: InProcess) -> None:
    """A store network may have no internet: /docs must not point at a CDN."""
    page = await apps.gateway.get("/docs")
    assert page.status_code == 200
    assert "http://" not in page.text and "https://" not in page.text
    assert "/docs-assets/swagger-ui-bundle.js" in page.text  # served: tests/test_cluster.py
    assert (await apps.gateway.get("/openapi.json")).json()["info"]["title"] == "Storeface gateway"


def _pipeline_workers() -> list[int]:
    """This process's face-pipeline workers (spawned children), from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if ppid == os.getpid() and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.anyio
async def test_a_killed_pipeline_worker_costs_one_503_not_the_node(
    apps: InProcess, faces: Path
) -> None:
    """A worker killed mid-life (out of memory, an operator) breaks its whole process pool:
    the node answers 503 with Retry-After for what it held, restarts the pool, and serves;
    the gateway's one more try hides it from the camera."""
    workers = _pipeline_workers()
    assert workers, "no pipeline worker found to kill"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    image = photo(faces, "Juanes", 1)
    async with httpx.AsyncClient(transport=apps.shards["n1"], base_url="http://n1") as shard:
        codes = []
        for _ in range(30):
            r = await shard.post("/v1/stores/store-a/identify", files={"image": ("f.jpg", image)})
            if r.status_code == 200:
                break
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] == "1"
            codes.append(r.json()["error"]["code"])
    assert r.status_code == 200, codes
    assert "pipeline_restarting" in codes, "the kill went unnoticed: no request saw it"
    assert (await recognize(apps.gateway, "store-a", image)).status_code == 200
    assert not set(workers) & set(_pipeline_workers()), "new workers, not the killed ones"
