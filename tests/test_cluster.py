"""The cluster as `make run` starts it: supervisord, Redis, shard replicas, gateway, nginx."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import photo
from tests.support import LocalCluster, wait_until

pytestmark = pytest.mark.slow  # starts server processes or embeds many photos

NODES = [{"id": "node-1", "replicas": 2}, {"id": "node-2", "replicas": 1}]
GROUPS: list[dict[str, Any]] = []  # the node groups, as stores.yaml now says
PLACEMENT: dict[str, str | None] = {}  # store → node group, as stores.yaml now says
FUZZ_EXAMPLES = 400  # about a minute through the front door here


def place(
    cluster: LocalCluster,
    placement: dict[str, str | None],
    groups: list[dict[str, Any]] | None = None,
) -> None:
    """Rewrite stores.yaml: each store on its node group, or (None) a group of its own;
    the node groups as they are, or as given."""
    placement = dict(placement)  # PLACEMENT itself may be what is given
    PLACEMENT.clear()
    PLACEMENT.update(placement)
    if groups is not None:
        GROUPS[:] = [dict(g) for g in groups]
    stores = [
        {"id": sid, "node": node} if node else {"id": sid, "replicas": 1}
        for sid, node in placement.items()
    ]
    cluster.write(GROUPS, stores)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # a store moved away is let go after 3 s here (30 s by default)
    # What these tests are about is failover, not load shedding (tests/test_overload.py):
    # with one replica killed, the other takes every request of the test's two clients plus
    # the retries of the killed one's, so its queue is made room for.
    # Ports are set aside for two replicas of every group (a group's replicas take the ports
    # after its first): test_raising_replicas_starts_only_the_new_replica gives node-2 one more.
    c = LocalCluster(
        tmp_path_factory.mktemp("cluster"),
        [{**n, "replicas": 2} for n in NODES],
        [],
        env={"STOREFACE_RELEASE_GRACE_S": "3", "STOREFACE_MAX_QUEUE": "8"},
    )
    place(c, {"store-a": "node-1", "store-b": "node-1", "store-c": "node-2"}, NODES)
    c.start(timeout=240)
    try:
        yield c
    finally:
        c.stop()  # what Ctrl-C does
        for name, port in c.ports.items():
            with httpx.Client() as probe:
                try:
                    probe.get(f"http://127.0.0.1:{port}/", timeout=0.5)
                    pytest.fail(f"{name} still listening on {port} after Ctrl-C")
                except httpx.TransportError:
                    pass


def test_end_to_end_through_nginx(cluster: LocalCluster, faces: Path) -> None:
    person = "Rebekah_Chantay_Revels"
    with httpx.Client(
        base_url=cluster.front, headers={"X-API-Key": cluster.admin_key()}, timeout=60
    ) as c:
        r = c.post(
            "/v1/stores/store-a/faces",
            files={"image": ("a.jpg", photo(faces, person, 1))},
            data={"label": person},
        )
        assert r.status_code == 201, r.text
        face_id = r.json()["face_id"]
        r = c.post(
            "/v1/recognize",
            files={"image": ("b.jpg", photo(faces, person, 3))},
            data={"store_id": "store-a"},
        )
        assert r.status_code == 200, r.text
        face = r.json()["faces"][0]
        assert (face["face_id"], face["label"], face["is_new"]) == (face_id, person, False)
        # a stranger gets a new visitor FaceId at once
        r = c.post(
            "/v1/recognize",
            files={"image": ("c.jpg", photo(faces, "Juanes", 1))},
            data={"store_id": "store-b"},
        )
        assert r.json()["faces"][0]["is_new"] is True
        stats = c.get("/v1/stores/store-a/stats").json()["days"][0]
        assert stats["pv"] == 1 and stats["uv"] == 1
        assert c.get("/docs").status_code == 200
        # Swagger UI's own files come from the gateway, through the front door
        script = c.get("/docs-assets/swagger-ui-bundle.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert len(script.content) > 100_000
        assert c.get("/docs-assets/swagger-ui.css").status_code == 200
        # each gateway's own counters, never two processes' mixed behind the balancer
        scraped = [c.get("/metrics/gateway-1") for _ in range(3)]
        assert all(r.status_code == 200 for r in scraped)
        counts = [_requests_counted(r.text) for r in scraped]
        assert counts == sorted(counts) and counts[-1] > counts[0], counts
        mixed = c.get("/metrics")
        assert mixed.status_code == 404 and "/metrics/gateway-1" in mixed.json()["error"]["message"]
        huge = c.post(
            "/v1/recognize",
            files={"image": ("h.jpg", b"\xff" * 11_000_000)},
            data={"store_id": "store-a"},
        )
        assert huge.status_code == 413
        assert huge.json()["error"]["code"] == "image_too_large"  # JSON even from nginx
    log = (cluster.run_dir / "nginx" / "access.log").read_text()
    assert "POST /v1/recognize" in log and "rt=" in log


def test_killing_a_replica_fails_no_request(cluster: LocalCluster, faces: Path) -> None:
    img = photo(faces, "Rebekah_Chantay_Revels", 2)
    statuses: list[int] = []
    stop = threading.Event()

    def flow() -> None:
        with httpx.Client(
            base_url=cluster.front, headers={"X-API-Key": cluster.admin_key()}, timeout=60
        ) as c:
            while not stop.is_set() and len(statuses) < 200:
                r = c.post(
                    "/v1/recognize", files={"image": ("q.jpg", img)}, data={"store_id": "store-a"}
                )
                statuses.append(r.status_code)
                if r.status_code != 200:
                    failures.append(r.text[:300])

    failures: list[str] = []
    threads = [threading.Thread(target=flow) for _ in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: len(statuses) >= 4, 60, what="requests flowing")
    victim = cluster.program_pid("shard-node-1-1")
    workers = _children(victim)  # its face-pipeline pool
    assert workers, "a shard replica runs its pipeline in worker processes"
    subprocess.run(["kill", "-9", str(victim)], check=True)
    seen = len(statuses)
    wait_until(lambda: len(statuses) >= seen + 12, 120, what="requests after the kill")
    stop.set()
    for t in threads:
        t.join(60)
    assert statuses and set(statuses) == {200}, (statuses, failures)
    # its pool workers die with it, instead of holding their models' memory forever
    wait_until(lambda: not any(_alive(w) for w in workers), 30, what="the workers to go")
    # supervisord brings the replica back
    wait_until(
        lambda: cluster.program_pid("shard-node-1-1") not in (0, victim),
        60,
        what="replica restarted",
    )


def _requests_counted(metrics: str) -> float:
    """Requests a gateway has timed, from its Prometheus text."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("storeface_http_request_seconds_count")
    )


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _recognize(c: httpx.Client, img: bytes, store: str) -> httpx.Response:
    return c.post("/v1/recognize", files={"image": ("q.jpg", img)}, data={"store_id": store})


def test_a_store_added_to_a_node_group_starts_no_process(
    cluster: LocalCluster, faces: Path
) -> None:
    """Adding a store to a group is an edit: no process starts, every replica hosts it."""
    programs, pids = cluster.programs(), {p: cluster.program_pid(p) for p in cluster.programs()}
    place(cluster, {**PLACEMENT, "store-d": "node-1"})  # the launcher watches the file
    with httpx.Client(
        base_url=cluster.front, headers={"X-API-Key": cluster.admin_key()}, timeout=60
    ) as c:
        img = photo(faces, "Mark_Gottfried", 1)
        wait_until(
            lambda: _recognize(c, img, "store-d").status_code == 200,
            120,
            0.5,
            what=f"store-d routable:\n{cluster.tail()}",
        )
    for replica in (0, 1):  # every replica picks the edit up within its reload interval
        wait_until(
            lambda r=replica: (
                [s["store_id"] for s in cluster.node_info("node-1", r)["stores"]]
                == ["store-a", "store-b", "store-d"]
            ),
            10,
            what=f"replica {replica + 1} of node-1 to host store-d",
        )
    assert cluster.programs() == programs
    assert {p: cluster.program_pid(p) for p in programs} == pids, "no process restarted"


def test_moving_a_store_to_another_group_drops_no_request(
    cluster: LocalCluster, faces: Path
) -> None:
    """Edit `node:`: the new group loads the store from Redis, the old one lets it go, and
    cameras posting all the while see only answers, with the FaceId they had before."""
    img = photo(faces, "Rebekah_Chantay_Revels", 2)
    answers: list[tuple[int, int | None]] = []
    stop = threading.Event()
    with httpx.Client(
        base_url=cluster.front, headers={"X-API-Key": cluster.admin_key()}, timeout=60
    ) as c:
        first = _recognize(c, img, "store-b")
        assert first.status_code == 200, first.text
        face_id = first.json()["faces"][0]["face_id"]

        def flow() -> None:
            with httpx.Client(
                base_url=cluster.front, headers={"X-API-Key": cluster.admin_key()}, timeout=60
            ) as c2:
                while not stop.is_set() and len(answers) < 300:
                    r = _recognize(c2, img, "store-b")
                    fid = r.json()["faces"][0]["face_id"] if r.status_code == 200 else None
                    answers.append((r.status_code, fid))

        thread = threading.Thread(target=flow)
        thread.start()
        try:
            wait_until(lambda: len(answers) >= 3, 60, what="requests flowing")
            place(cluster, {**PLACEMENT, "store-b": "node-2"})
            wait_until(
                lambda: (
                    "store-b" in [s["store_id"] for s in cluster.node_info("node-2")["stores"]]
                    and "store-b"
                    not in [s["store_id"] for s in cluster.node_info("node-1", 1)["stores"]]
                ),
                60,
                0.5,
                what="store-b on node-2 and let go by node-1",
            )
            seen = len(answers)
            wait_until(lambda: len(answers) >= seen + 3, 60, what="requests after the move")
        finally:
            stop.set()
            thread.join(60)
    assert answers and set(answers) == {(200, face_id)}, answers
    moved = next(s for s in cluster.node_info("node-2")["stores"] if s["store_id"] == "store-b")
    assert moved["loaded"] and moved["faces"] >= 1


def test_a_new_group_of_its_own_starts_its_replica(cluster: LocalCluster, faces: Path) -> None:
    """A store without `node:` is a group of its own, as before node groups: new replicas
    start, nginx reloads, the other groups' processes are untouched."""
    before = cluster.program_pid("shard-node-1-2")
    place(cluster, {**PLACEMENT, "store-e": None})
    with httpx.Client(
        base_url=cluster.front, headers={"X-API-Key": cluster.admin_key()}, timeout=60
    ) as c:
        img = photo(faces, "Mark_Gottfried", 1)
        wait_until(
            lambda: _recognize(c, img, "store-e").status_code == 200,
            180,
            1.0,
            what=f"store-e routable:\n{cluster.tail()}",
        )
    assert "shard-store-e-1" in cluster.programs()
    assert cluster.program_pid("shard-node-1-2") == before, "other groups are untouched"


def test_raising_replicas_starts_only_the_new_replica(cluster: LocalCluster, faces: Path) -> None:
    """`replicas:` 1 → 2 is an edit: one shard process starts, loads the group's stores from
    Redis, joins the group's nginx upstream and answers requests; nothing else restarts."""
    person = "Mark_Gottfried"
    new_port = cluster.ports["node-2"] + 1
    access_log = cluster.run_dir / "nginx" / "access.log"
    with cluster.client(timeout=60) as c:
        enrolled = c.post(
            "/v1/stores/store-c/faces",
            files={"image": ("e.jpg", photo(faces, person, 1))},
            data={"label": person},
        )
        assert enrolled.status_code in (200, 201), enrolled.text
        face_id = enrolled.json()["face_id"]
        before = {p: cluster.program_pid(p) for p in cluster.programs()}
        assert "shard-node-2-2" not in before
        seen = access_log.stat().st_size
        place(
            cluster, PLACEMENT, [{**g, "replicas": 2} if g["id"] == "node-2" else g for g in GROUPS]
        )
        wait_until(
            lambda: cluster.program_pid("shard-node-2-2") > 0,
            120,
            0.5,
            what=f"shard-node-2-2 started:\n{cluster.tail()}",
        )
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{new_port}/readyz", timeout=2).status_code == 200,
            180,
            0.5,
            what="the new replica ready",
        )
        # it hosts what the group's first replica hosts, loaded from Redis, face for face
        first, second = cluster.node_info("node-2", 0), cluster.node_info("node-2", 1)
        assert [(s["store_id"], s["faces"]) for s in second["stores"]] == [
            (s["store_id"], s["faces"]) for s in first["stores"]
        ]
        assert all(s["loaded"] for s in second["stores"])
        # cameras reach it through the gateway and the group's nginx upstream
        img = photo(faces, person, 1)  # the enrolled photo: which face is not in question here
        answers: list[tuple[int, Any]] = []

        def answered_by_new() -> bool:
            r = _recognize(c, img, "store-c")
            ok = r.status_code == 200
            answers.append((r.status_code, r.json()["faces"][0]["face_id"] if ok else r.text))
            with access_log.open("rb") as f:
                f.seek(seen)
                lines = f.read().decode(errors="replace").splitlines()
            return any(
                "/node-2/" in line and '" 200 ' in line and line.endswith(f":{new_port}")
                for line in lines
            )

        wait_until(answered_by_new, 60, 0.2, what=f"a request answered on port {new_port}")
    assert set(answers) == {(200, face_id)}, answers
    assert cluster.programs() == {*before, "shard-node-2-2"}
    assert {p: cluster.program_pid(p) for p in before} == before, "no process restarted"


def test_every_answer_is_in_the_openapi(cluster: LocalCluster) -> None:
    """A bounded, seeded fuzz of the public API through the front door: no server error,
    no status the OpenAPI does not declare, every body as its schema says."""
    schema = schemathesis.openapi.from_url(f"{cluster.front}/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    headers = {"X-API-Key": cluster.admin_key()}

    @hypothesis.settings(
        max_examples=FUZZ_EXAMPLES,
        derandomize=True,  # the same requests every run
        deadline=None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=schema.as_strategy())
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call(base_url=cluster.front, headers=headers, timeout=30)
        case.validate_response(response, checks=checks, headers=headers)

    fuzz()
