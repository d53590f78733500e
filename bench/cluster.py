"""A throwaway cluster started exactly like `make run` (the deploy.run launcher), for benches."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningCluster:
    front: str
    admin_key: str
    run_dir: Path
    stores: list[str]
    pid: int  # the launcher's: every process of the cluster runs under it

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(
            base_url=self.front, headers={"X-API-Key": self.admin_key}, timeout=timeout
        )


@contextmanager
def local_cluster(
    stores: dict[str, dict[str, Any]],
    gateways: int = 1,
    timeout: float = 300,
    nodes: dict[str, dict[str, Any]] | None = None,
) -> Iterator[RunningCluster]:
    """Start `python -m deploy.run` on free ports; Ctrl-C (SIGINT) it on the way out.

    A store whose options name a `node` is hosted by that node group; others are groups of
    their own."""
    work = Path(tempfile.mkdtemp(prefix="storeface-bench-"))
    ports = {
        "front_port": free_port(),
        "shard_proxy_port": free_port(),
        "gateway_port": free_port(),
        "redis_port": free_port(),
    }
    doc = {
        "cluster": {**ports, "gateway_replicas": gateways},
        "nodes": [{"id": nid, "port": free_port(), **opts} for nid, opts in (nodes or {}).items()],
        "stores": [
            {"id": sid, **({} if "node" in opts else {"port": free_port()}), **opts}
            for sid, opts in stores.items()
        ],
    }
    (work / "stores.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    log = (work / "launcher.log").open("wb")
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploy.run",
            "--stores",
            str(work / "stores.yaml"),
            "--run-dir",
            str(work / "run"),
            "--nginx-conf",
            str(work / "nginx.conf"),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while "Storeface is up" not in (work / "launcher.log").read_text(errors="replace"):
            if launcher.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cluster did not start; see {work}/launcher.log")
            time.sleep(0.5)
        key = yaml.safe_load((work / "run" / "keys.yaml").read_text())["admin_key"]
        yield RunningCluster(
            f"http://127.0.0.1:{ports['front_port']}",
            key,
            work / "run",
            list(stores),
            launcher.pid,
        )
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)
            try:
                launcher.wait(60)
            except subprocess.TimeoutExpired:
                launcher.kill()
        log.close()
