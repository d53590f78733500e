"""Real servers for tests: Redis, shard nodes, gateways and nginx as child processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from deploy.topology import redis_command

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcessDied(RuntimeError):
    """A server under test exited while we waited for it: no point waiting longer."""


def wait_until(
    check: Any, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except ProcessDied:
            raise
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what} (last: {last!r})")


class Process:
    """A child process with its output in a log file; stopped gently, then killed."""

    def __init__(
        self, args: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
    ) -> None:
        self.args = list(args)
        self.log_path = log
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, not a shutdown."""
        self.stop(signal.SIGKILL)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class RedisServer(Process):
    """redis-server with the append-only file on, in its own directory."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(
            redis_command(self.port, "127.0.0.1", directory),
            directory / "redis.log",
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        super().start()
        import redis

        client = redis.Redis(port=self.port)
        wait_until(client.ping, 10, what="redis")
        client.close()
        return self


def enroll_embedding(url: str, store: str, emb: Any, label: str = "") -> int:
    """Enroll one embedding straight into a shard node's store; its new FaceId."""
    r = httpx.post(
        f"{url}/v1/stores/{store}/faces/embedding",
        json={"embedding": [float(v) for v in emb], "label": label},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return int(r.json()["face_id"])


def write_stores(path: Path, stores: list[dict[str, Any]], **cluster: Any) -> Path:
    doc: dict[str, Any] = {"stores": stores}
    if cluster:
        doc["cluster"] = cluster
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class ShardNode(Process):
    """One replica of one node group, started as `make run` starts it."""

    def __init__(
        self,
        node_id: str,
        stores_file: Path,
        redis_url: str,
        workdir: Path,
        port: int | None = None,
        workers: int = 1,
        **env: str,
    ) -> None:
        self.node_id = node_id
        self.port = port or free_port()
        self.workdir = workdir
        settings = {
            "STOREFACE_STORES_FILE": str(stores_file),
            "STOREFACE_REDIS_URL": redis_url,
            "STOREFACE_SNAPSHOT_DIR": str(workdir / "snapshots"),
            "STOREFACE_WORKERS": str(workers),
            "STOREFACE_FEED_BLOCK_MS": "200",
            **{f"STOREFACE_{k.upper()}": v for k, v in env.items()},
        }
        super().__init__(
            [
                sys.executable,
                "-m",
                "shard_node",
                "serve",
                "--node",
                node_id,
                "--port",
                str(self.port),
            ],
            workdir / f"shard-{node_id}-{self.port}.log",
            env=settings,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> ShardNode:
        super().start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 90.0) -> None:
        def ready() -> bool:
            if not self.alive:
                raise ProcessDied(f"shard {self.node_id} exited:\n{self.tail()}")
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200

        wait_until(ready, timeout, 0.2, what=f"shard {self.node_id} ready")


class GatewayNode(Process):
    """One gateway replica, started as `make run` starts it."""

    def __init__(
        self, stores_file: Path, redis_url: str, workdir: Path, port: int | None = None, **env: str
    ) -> None:
        self.port = port or free_port()
        settings = {
            "STOREFACE_STORES_FILE": str(stores_file),
            "STOREFACE_REDIS_URL": redis_url,
            "STOREFACE_RELOAD_INTERVAL_S": "0.2",
            **{f"STOREFACE_{k.upper()}": v for k, v in env.items()},
        }
        super().__init__(
            [sys.executable, "-m", "gateway", "--port", str(self.port)],
            workdir / f"gateway-{self.port}.log",
            env=settings,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayNode:
        super().start()

        def up() -> bool:
            if not self.alive:
                raise ProcessDied(f"gateway exited:\n{self.tail()}")
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200

        wait_until(up, 30, 0.1, what="gateway up")
        return self
