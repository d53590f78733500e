"""The cluster as `make run` starts it: supervisord, Redis, shard replicas, gateway, nginx."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import photo
from tests.support import Process, free_port, wait_until


def _stores(ports: dict[str, int], placement: dict[str, str | None]) -> dict:
    """node-1 (2 replicas) and node-2 (1 replica); a store placed on None is its own group."""
    stores: list[dict] = []
    for sid, node in placement.items():
        stores.append(
            {"id": sid, "node": node} if node else {"id": sid, "port": ports[sid], "replicas": 1}
        )
    return {
        "cluster": {
            "front_port": ports["front"],
            "shard_proxy_port": ports["proxy"],
            "gateway_port": ports["gateway"],
            "gateway_replicas": 1,
            "redis_port": ports["redis"],
        },
        "nodes": [
            {"id": "node-1", "port": ports["node-1"], "replicas": 2},
            {"id": "node-2", "port": ports["node-2"], "replicas": 1},
        ],
        "stores": stores,
    }


class LocalCluster:
    def __init__(self, work: Path) -> None:
        self.work = work
        # Ports one apart would collide with the replicas laid out after them: space them.
        names = ["front", "proxy", "gateway", "redis", "node-1", "node-2", "store-e"]
        self.ports = dict(zip(names, [free_port() for _ in names], strict=True))
        self.stores_file = work / "stores.yaml"
        self.write({"store-a": "node-1", "store-b": "node-1", "store-c": "node-2"})
        self.run_dir = work / "run"
        self.launcher = Process(
            [
                sys.executable,
                "-m",
                "deploy.run",
                "--stores",
                str(self.stores_file),
                "--run-dir",
                str(self.run_dir),
                "--nginx-conf",
                str(work / "nginx.conf"),
            ],
            work / "launcher.log",
            # a store moved away is let go after 3 s here (30 s by default)
            env={"STOREFACE_RELEASE_GRACE_S": "3"},
        )

    def write(self, placement: dict[str, str | None]) -> None:
        self.placement = dict(placement)
        self.stores_file.write_text(yaml.safe_dump(_stores(self.ports, placement)))

    @property
    def front(self) -> str:
        return f"http://127.0.0.1:{self.ports['front']}"

    def key(self) -> str:
        return str(yaml.safe_load((self.run_dir / "keys.yaml").read_text())["admin_key"])

    def programs(self) -> set[str]:
        out = self.ctl("status").stdout
        return {line.split()[0] for line in out.splitlines() if line.strip()}

    def node_info(self, node: str, replica: int = 0) -> dict:
        port = self.ports[node] + replica
        return httpx.get(f"http://127.0.0.1:{port}/v1/info", timeout=10).json()

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "supervisor.supervisorctl",
                "-c",
                str(self.run_dir / "supervisord.conf"),
                *args,
            ],
            capture_output=True,
            text=True,
            check=False,
        )

    def pid(self, program: str) -> int:
        return int(self.ctl("pid", program).stdout.strip())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("cluster"))
    c.launcher.start()
    try:
        wait_until(
            lambda: "Storeface is up" in c.launcher.log_path.read_text(),
            240,
            0.5,
            what=f"cluster up:\n{c.launcher.tail()}",
        )
        yield c
    finally:
        c.launcher.stop(signal.SIGINT, timeout=60)  # what Ctrl-C does
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
        base_url=cluster.front, headers={"X-API-Key": cluster.key()}, timeout=60
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
            base_url=cluster.front, headers={"X-API-Key": cluster.key()}, timeout=60
        ) as c:
            while not stop.is_set() and len(statuses) < 200:
                r = c.post(
                    "/v1/recognize", files={"image": ("q.jpg", img)}, data={"store_id": "store-a"}
                )
                statuses.append(r.status_code)

    threads = [threading.Thread(target=flow) for _ in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: len(statuses) >= 4, 60, what="requests flowing")
    victim = cluster.pid("shard-node-1-1")
    subprocess.run(["kill", "-9", str(victim)], check=True)
    seen = len(statuses)
    wait_until(lambda: len(statuses) >= seen + 12, 120, what="requests after the kill")
    stop.set()
    for t in threads:
        t.join(60)
    assert statuses and set(statuses) == {200}, statuses
    # supervisord brings the replica back
    wait_until(
        lambda: cluster.pid("shard-node-1-1") not in (0, victim), 60, what="replica restarted"
    )


def _recognize(c: httpx.Client, img: bytes, store: str) -> httpx.Response:
    return c.post("/v1/recognize", files={"image": ("q.jpg", img)}, data={"store_id": store})


def test_a_store_added_to_a_node_group_starts_no_process(
    cluster: LocalCluster, faces: Path
) -> None:
    """Adding a store to a group is an edit: no process starts, every replica hosts it."""
    programs, pids = cluster.programs(), {p: cluster.pid(p) for p in cluster.programs()}
    cluster.write({**cluster.placement, "store-d": "node-1"})  # the launcher watches the file
    with httpx.Client(
        base_url=cluster.front, headers={"X-API-Key": cluster.key()}, timeout=60
    ) as c:
        img = photo(faces, "Mark_Gottfried", 1)
        wait_until(
            lambda: _recognize(c, img, "store-d").status_code == 200,
            120,
            0.5,
            what=f"store-d routable:\n{cluster.launcher.tail()}",
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
    assert {p: cluster.pid(p) for p in programs} == pids, "no process restarted"


def test_moving_a_store_to_another_group_drops_no_request(
    cluster: LocalCluster, faces: Path
) -> None:
    """Edit `node:`: the new group loads the store from Redis, the old one lets it go, and
    cameras posting all the while see only answers, with the FaceId they had before."""
    img = photo(faces, "Rebekah_Chantay_Revels", 2)
    answers: list[tuple[int, int | None]] = []
    stop = threading.Event()
    with httpx.Client(
        base_url=cluster.front, headers={"X-API-Key": cluster.key()}, timeout=60
    ) as c:
        first = _recognize(c, img, "store-b")
        assert first.status_code == 200, first.text
        face_id = first.json()["faces"][0]["face_id"]

        def flow() -> None:
            with httpx.Client(
                base_url=cluster.front, headers={"X-API-Key": cluster.key()}, timeout=60
            ) as c2:
                while not stop.is_set() and len(answers) < 300:
                    r = _recognize(c2, img, "store-b")
                    fid = r.json()["faces"][0]["face_id"] if r.status_code == 200 else None
                    answers.append((r.status_code, fid))

        thread = threading.Thread(target=flow)
        thread.start()
        try:
            wait_until(lambda: len(answers) >= 3, 60, what="requests flowing")
            cluster.write({**cluster.placement, "store-b": "node-2"})
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
    before = cluster.pid("shard-node-1-2")
    cluster.write({**cluster.placement, "store-e": None})
    with httpx.Client(
        base_url=cluster.front, headers={"X-API-Key": cluster.key()}, timeout=60
    ) as c:
        img = photo(faces, "Mark_Gottfried", 1)
        wait_until(
            lambda: _recognize(c, img, "store-e").status_code == 200,
            180,
            1.0,
            what=f"store-e routable:\n{cluster.launcher.tail()}",
        )
    assert "shard-store-e-1" in cluster.programs()
    assert cluster.pid("shard-node-1-2") == before, "other groups are untouched"
