"""Redis primary + replica + Sentinels, one launcher for each process (`make run`, tests).

A node asks the Sentinels who the primary is before it starts and becomes its replica,
so a former primary that comes back never starts as a second primary; and a node that
comes back empty (its append-only file lost) waits for the Sentinels to promote a peer
that still has the data rather than start as an empty primary its replica would copy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# topology imports this module too (its plan starts these programs): use it as a module,
# read at call time, so the import cycle resolves either way round.
from deploy import topology

SERVICE = "storeface"
SENTINELS = 3
QUORUM = 2
DOWN_AFTER_MS = 3000  # make run: a primary silent this long is failed over (bench/failover.py)
FAILOVER_TIMEOUT_MS = 10000


def replica_port(primary_port: int) -> int:
    return primary_port + 1


def sentinel_ports(primary_port: int) -> list[int]:
    """The Sentinels listen just above the primary and its replica."""
    return [primary_port + 2 + i for i in range(SENTINELS)]


def sentinel_addrs(host: str, primary_port: int) -> str:
    return ",".join(f"{host}:{p}" for p in sentinel_ports(primary_port))


def node_command(
    port: int,
    host: str,
    directory: Path,
    primary: str,
    sentinels: str,
    peers: str = "",
    sentinel_wait_s: float = 3.0,
) -> list[str]:
    """One data node: `primary` is the first primary's host:port, used when no Sentinel
    answers within `sentinel_wait_s`."""
    argv = [sys.executable, "-m", "deploy.redis_ha", "node", "--port", str(port)]
    argv += ["--host", host, "--dir", str(directory), "--primary", primary]
    argv += ["--sentinels", sentinels, "--peers", peers]
    return [*argv, "--sentinel-wait-s", str(sentinel_wait_s)]


def sentinel_command(
    port: int, host: str, directory: Path, primary: str, down_after_ms: int = DOWN_AFTER_MS
) -> list[str]:
    argv = [sys.executable, "-m", "deploy.redis_ha", "sentinel", "--port", str(port)]
    argv += ["--host", host, "--dir", str(directory), "--primary", primary]
    return [*argv, "--down-after-ms", str(down_after_ms)]


def quick(host: str, port: int) -> redis.Redis:
    """One try, half a second: redis-py's default retries sleep seconds on a refused port."""
    return redis.Redis(
        host, port, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def ask_sentinels(sentinels: str, service: str = SERVICE) -> tuple[str, int] | None:
    """The primary the first Sentinel that answers names, or None if none answers."""
    for item in filter(None, sentinels.split(",")):
        host, port = _addr(item)
        try:
            with quick(host, port) as s:
                found = s.sentinel_get_master_addr_by_name(service)
        except redis.RedisError:
            continue
        if found:
            host = found[0].decode() if isinstance(found[0], bytes) else str(found[0])
            return host, int(found[1])
    return None


def _has_data(host: str, port: int) -> bool:
    try:
        with quick(host, port) as r:
            return int(r.dbsize()) > 0
    except redis.RedisError:
        return False


def _persisted(directory: Path) -> bool:
    return any((directory / "appendonlydir").glob("*.manifest"))


def choose_primary(args: argparse.Namespace) -> tuple[str, int] | None:
    """Whom to replicate from (None: start as the primary)."""
    me = (args.host, args.port)
    named = None
    deadline = time.monotonic() + args.sentinel_wait_s
    while True:  # Sentinels start alongside: give them a moment to answer
        named = ask_sentinels(args.sentinels)
        if named or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    primary = named or _addr(args.primary)
    if primary != me:
        return primary
    peers = [_addr(p) for p in filter(None, args.peers.split(","))]
    while not _persisted(args.dir) and any(_has_data(*p) for p in peers):
        # the trap: started empty as the primary, a replica would copy the empty set
        print("empty, while a peer has data: waiting for the Sentinels to promote it", flush=True)
        time.sleep(1)
        named = ask_sentinels(args.sentinels)
        if named and named != me:
            return named
    return None


def run_node(args: argparse.Namespace) -> None:
    args.dir.mkdir(parents=True, exist_ok=True)
    argv = topology.redis_command(args.port, args.host, args.dir)
    primary = choose_primary(args)
    if primary:
        argv += ["--replicaof", primary[0], str(primary[1])]
    print(f"redis node {args.host}:{args.port}: replica of {primary}", flush=True)
    os.execv(argv[0], argv)


def run_sentinel(args: argparse.Namespace) -> None:
    args.dir.mkdir(parents=True, exist_ok=True)
    conf = args.dir / "sentinel.conf"
    if not conf.exists():  # Sentinel rewrites it with what it learns: keep that on restart
        host, port = _addr(args.primary)
        conf.write_text(
            f"port {args.port}\nbind {args.host}\ndir {args.dir}\nprotected-mode no\n"
            f"sentinel monitor {SERVICE} {host} {port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {SERVICE} {args.down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
    binary = topology.find_binary("redis-server")
    os.execv(binary, [binary, str(conf), "--sentinel"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["node", "sentinel"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--primary", required=True)
    parser.add_argument("--sentinels", default="")
    parser.add_argument("--peers", default="")
    parser.add_argument("--down-after-ms", type=int, default=DOWN_AFTER_MS)
    parser.add_argument("--sentinel-wait-s", type=float, default=3.0)
    args = parser.parse_args()
    args.dir = args.dir.resolve()
    run_node(args) if args.role == "node" else run_sentinel(args)


if __name__ == "__main__":
    main()
