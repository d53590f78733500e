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


def _stores(ports: dict[str, int], stores: list[str], replicas: dict[str, int]) -> dict:
    return {
        "cluster": {
            "front_port": ports["front"],
            "shard_proxy_port": ports["proxy"],
            "gateway_port": ports["gateway"],
            "gateway_replicas": 1,
            "redis_port": ports["redis"],
        },
        "stores": [{"id": s, "port": ports[s], "replicas": replicas[s]} for s in stores],
    }


class LocalCluster:
    def __init__(self, work: Path) -> None:
        self.work = work
        # Ports one apart would collide with the replicas laid out after them: space them.
        base = [free_port() for _ in range(7)]
        self.ports = dict(
            zip(
                ["front", "proxy", "gateway", "redis", "store-a", "store-b", "store-c"],
                base,
                strict=True,
            )
        )
        self.replicas = {"store-a": 2, "store-b": 1, "store-c": 1}
        self.stores_file = work / "stores.yaml"
        self.write(["store-a", "store-b"])
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
        )

    def write(self, stores: list[str]) -> None:
        self.stores_file.write_text(yaml.safe_dump(_stores(self.ports, stores, self.replicas)))

    @property
    def front(self) -> str:
        return f"http://127.0.0.1:{self.ports['front']}"

    def key(self) -> str:
        return str(yaml.safe_load((self.run_dir / "keys.yaml").read_text())["admin_key"])

    def pid(self, program: str) -> int:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "supervisor.supervisorctl",
                "-c",
                str(self.run_dir / "supervisord.conf"),
                "pid",
                program,
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return int(out)


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
    victim = cluster.pid("shard-store-a-1")
    subprocess.run(["kill", "-9", str(victim)], check=True)
    seen = len(statuses)
    wait_until(lambda: len(statuses) >= seen + 12, 120, what="requests after the kill")
    stop.set()
    for t in threads:
        t.join(60)
    assert statuses and set(statuses) == {200}, statuses
    # supervisord brings the replica back
    wait_until(
        lambda: cluster.pid("shard-store-a-1") not in (0, victim), 60, what="replica restarted"
    )


def test_a_store_added_to_stores_yaml_becomes_routable(cluster: LocalCluster, faces: Path) -> None:
    before = cluster.pid("shard-store-a-2")
    cluster.write(["store-a", "store-b", "store-c"])  # the launcher watches the file
    with httpx.Client(
        base_url=cluster.front, headers={"X-API-Key": cluster.key()}, timeout=60
    ) as c:
        img = photo(faces, "Mark_Gottfried", 1)

        def routable() -> bool:
            r = c.post(
                "/v1/recognize", files={"image": ("q.jpg", img)}, data={"store_id": "store-c"}
            )
            return r.status_code == 200

        wait_until(routable, 180, 1.0, what=f"store-c routable:\n{cluster.launcher.tail()}")
    assert cluster.pid("shard-store-a-2") == before, "other stores are untouched"
