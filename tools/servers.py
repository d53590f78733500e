"""Real servers as child processes, for tests and benchmarks alike: Redis, a shard node, a
gateway, and the whole `make run` cluster (the deploy.run launcher). Each start waits on the
server's own /readyz (Redis: PING), never on log text, and fails at once if it exits."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

from deploy import redis_ha
from deploy.topology import redis_command
from storeface.paths import ROOT


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(run: int = 1, taken: set[int] | None = None) -> int:
    """A free port whose next `run - 1` ports are free too (a group's replicas follow its
    first port), and none of them in `taken`, which then holds them."""
    taken = taken if taken is not None else set()
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = int(s.getsockname()[1])
        ports = set(range(first, first + run))
        if first + run > 65000 or ports & taken:
            continue
        if all(port_is_free(p) for p in ports if p != first):
            taken |= ports
            return first


class ProcessDied(RuntimeError):
    """A server exited while we waited for it: no point waiting longer."""


def wait_until(
    check: Any, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Call `check` until it returns something true; its last answer or error in the timeout."""
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
    """A child process in its own session, output to a log file; stopped gently, then killed."""

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
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Signal the whole process group and wait; SIGKILL it if it does not go in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, not a shutdown."""
        self.stop(signal.SIGKILL)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _wait_http(self, url: str, timeout: float, what: str) -> None:
        def ready() -> bool:
            if not self.alive:
                raise ProcessDied(f"{what} exited:\n{self.tail()}")
            return httpx.get(url, timeout=2).status_code == 200

        wait_until(ready, timeout, 0.1, what=f"{what} ready")


class RedisServer(Process):
    """redis-server as Storeface runs it (append-only file on), in its own directory."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(redis_command(self.port, "127.0.0.1", directory), directory / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        super().start()
        client = redis.Redis(port=self.port)

        def ping() -> bool:
            if not self.alive:
                raise ProcessDied(f"redis exited:\n{self.tail()}")
            return bool(client.ping())

        try:
            wait_until(ping, 10, what="redis")
        finally:
            client.close()
        return self


class RedisHA:
    """A Redis primary, its replica and three Sentinels on free ports, each started by the
    launcher `make run` uses (deploy/redis_ha.py), in one directory."""

    def __init__(self, directory: Path, down_after_ms: int = 1000) -> None:
        self.directory = directory
        self.port = free_port(2 + redis_ha.SENTINELS)  # laid out as make run lays them out
        self.sentinel_ports = redis_ha.sentinel_ports(self.port)
        self.sentinels = redis_ha.sentinel_addrs("127.0.0.1", self.port)
        primary, replica = f"127.0.0.1:{self.port}", f"127.0.0.1:{redis_ha.replica_port(self.port)}"
        self.nodes: dict[int, Process] = {}
        for me, peer in [(primary, replica), (replica, primary)]:
            port = int(me.rsplit(":", 1)[1])
            where = directory / f"redis-{port}"
            # started before the Sentinels (below): no point waiting for their answer
            argv = redis_ha.node_command(port, "127.0.0.1", where, primary, self.sentinels, peer, 0)
            self.nodes[port] = Process(argv, directory / f"redis-{port}.log")
        self.sentinel_procs = [
            Process(
                redis_ha.sentinel_command(
                    p, "127.0.0.1", directory / f"sentinel-{p}", primary, down_after_ms
                ),
                directory / f"sentinel-{p}.log",
            )
            for p in self.sentinel_ports
        ]

    @property
    def url(self) -> str:
        """The first primary's URL (its db number is what a Sentinel client takes from it)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def primary(self) -> int:
        """The port the Sentinels name as the primary now."""
        found = redis_ha.ask_sentinels(self.sentinels)
        assert found is not None, "no Sentinel answered"
        return found[1]

    def start(self, timeout: float = 20.0) -> RedisHA:
        """Start the primary and replica, then (once in sync, so that the Sentinels' first
        look finds the replica rather than one 10 s later) the Sentinels, and wait until each
        knows the replica and the other two (a failover needs both)."""
        try:
            for p in self.nodes.values():
                p.start()
            wait_until(self._in_sync, timeout, 0.05, what="redis primary + replica")
            for p in self.sentinel_procs:
                p.start()
            wait_until(self._ready, timeout, 0.1, what="redis primary + replica + sentinels")
        except BaseException:
            self.stop()
            raise
        return self

    def _in_sync(self) -> bool:
        for p in self.nodes.values():
            if not p.alive:
                raise ProcessDied(f"{p.args[:4]} exited:\n{p.tail()}")
        with redis_ha.quick("127.0.0.1", redis_ha.replica_port(self.port)) as r:
            return bool(r.info("replication").get("master_link_status") == "up")

    def _ready(self) -> bool:
        for p in [*self.sentinel_procs, *self.nodes.values()]:
            if not p.alive:
                raise ProcessDied(f"{p.args[:4]} exited:\n{p.tail()}")
        for port in self.sentinel_ports:
            with redis_ha.quick("127.0.0.1", port) as s:
                replicas = s.execute_command("SENTINEL", "REPLICAS", redis_ha.SERVICE)
                others = s.execute_command("SENTINEL", "SENTINELS", redis_ha.SERVICE)
                if len(replicas) < 1 or len(others) < redis_ha.SENTINELS - 1:
                    return False
        return True

    def stop(self) -> None:
        """SIGCONT first (a frozen process ignores SIGTERM until then), then stop each."""
        for p in [*self.nodes.values(), *self.sentinel_procs]:
            if p.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGCONT)
            p.stop(timeout=5)


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
        argv = [sys.executable, "-m", "shard_node", "serve", "--node", node_id]
        super().__init__(
            [*argv, "--port", str(self.port)],
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
        self._wait_http(f"{self.url}/readyz", timeout, f"shard node {self.node_id}")


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
        self._wait_http(f"{self.url}/readyz", 30, "gateway")
        return self


class LocalCluster(Process):
    """The whole cluster exactly as `make run` starts it (`python -m deploy.run`), on free
    ports, from the node groups and stores it is given; ready when the front door's /readyz
    says every store's group answers."""

    def __init__(
        self,
        work: Path,
        nodes: list[dict[str, Any]],
        stores: list[dict[str, Any]],
        gateways: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.work = work
        self.taken: set[int] = set()
        self.ports: dict[str, int] = {
            "front": free_port(taken=self.taken),
            "proxy": free_port(taken=self.taken),
            "gateway": free_port(gateways, self.taken),
            "redis": free_port(2 + redis_ha.SENTINELS, self.taken),  # + replica, Sentinels
        }
        self.gateways = gateways
        self.stores_file = work / "stores.yaml"
        self.run_dir = work / "run"
        self.write(nodes, stores)
        argv = [sys.executable, "-m", "deploy.run", "--stores", str(self.stores_file)]
        super().__init__(
            [*argv, "--run-dir", str(self.run_dir), "--nginx-conf", str(work / "nginx.conf")],
            work / "launcher.log",
            env=env,
        )

    def write(self, nodes: list[dict[str, Any]], stores: list[dict[str, Any]]) -> None:
        """(Re)write stores.yaml; a new group gets free ports, known ones keep theirs."""
        self.nodes, self.stores = [dict(n) for n in nodes], [dict(s) for s in stores]
        for entry in [*self.nodes, *(s for s in self.stores if not s.get("node"))]:
            if "urls" not in entry and "shard_urls" not in entry:
                if entry["id"] not in self.ports:
                    self.ports[entry["id"]] = free_port(int(entry.get("replicas", 2)), self.taken)
                entry.setdefault("port", self.ports[entry["id"]])
        doc = {
            "cluster": {
                "front_port": self.ports["front"],
                "shard_proxy_port": self.ports["proxy"],
                "gateway_port": self.ports["gateway"],
                "gateway_replicas": self.gateways,
                "redis_port": self.ports["redis"],
            },
            "nodes": self.nodes,
            "stores": self.stores,
        }
        self.stores_file.parent.mkdir(parents=True, exist_ok=True)
        self.stores_file.write_text(yaml.safe_dump(doc, sort_keys=False))

    @property
    def front(self) -> str:
        return f"http://127.0.0.1:{self.ports['front']}"

    def start(self, timeout: float = 300) -> LocalCluster:
        super().start()

        def ready() -> bool:
            if not self.alive:
                raise ProcessDied(f"the launcher exited:\n{self.tail()}")
            r = httpx.get(f"{self.front}/readyz", timeout=2)
            stores = r.json()["details"]["stores"]
            return r.status_code == 200 and all(stores.values()) and len(stores) > 0

        try:
            wait_until(ready, timeout, 0.5, what=f"the cluster in {self.work}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> None:
        """What Ctrl-C does: supervisord stops every program, then the launcher exits."""
        super().stop(sig, timeout)

    def admin_key(self) -> str:
        return str(yaml.safe_load((self.run_dir / "keys.yaml").read_text())["admin_key"])

    def client(self, timeout: float = 120) -> httpx.Client:
        headers = {"X-API-Key": self.admin_key()}
        return httpx.Client(base_url=self.front, headers=headers, timeout=timeout)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        conf = str(self.run_dir / "supervisord.conf")
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", conf, *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def programs(self) -> set[str]:
        return {line.split()[0] for line in self.ctl("status").stdout.splitlines() if line.strip()}

    def program_pid(self, program: str) -> int:
        return int(self.ctl("pid", program).stdout.strip())

    def node_info(self, node: str, replica: int = 0) -> dict[str, Any]:
        port = self.ports[node] + replica
        info: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/v1/info", timeout=10).json()
        return info


@contextlib.contextmanager
def running_cluster(
    nodes: list[dict[str, Any]],
    stores: list[dict[str, Any]],
    gateways: int = 1,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> Iterator[LocalCluster]:
    """A throwaway `make run` cluster in a temporary folder; Ctrl-C'd (SIGINT) on the way out,
    also when this process gets SIGTERM (`timeout`, a CI job cancelled), which would otherwise
    end it without running the `finally` and leave the cluster running."""
    work = Path(tempfile.mkdtemp(prefix="storeface-cluster-"))
    with _sigterm_as_interrupt():
        cluster = LocalCluster(work, nodes, stores, gateways, env).start(timeout)
        try:
            yield cluster
        finally:
            cluster.stop()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt meanwhile (only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
