"""The cluster under load, against the seed design, and against the pure compute limit.

    python -m bench.load                          # dlib, concurrency 1,2,4,16
    python -m bench.load --embedder arcface       # YuNet + ArcFace ONNX (../shared/models)
    python -m bench.load --quick                  # a smoke run: 2 levels, a few requests

Three measurements in one run, on the same photos:

1. The pure compute limit: cores ÷ CPU seconds per photo of decode + detect + embed, measured
   single-threaded through the product's own code (shard_node.faces.pool.analyze_bytes) in a
   process set up exactly like a FacePool worker (spawned, OMP/OpenCV on one thread), every
   probe photo once, before and again after the load; the lower figure counts (interference
   only adds CPU time). For reference, the same photos in `cores` such workers at once.
2. The cluster exactly as `make run` starts it (`python -m deploy.run` with a temporary
   stores.yaml on free ports): Redis, one store (store-a) with 2 shard replicas, 1 gateway
   replica and nginx, under supervisord. The default topology scaled down to one store:
   with one store there is no cross-store fan-out, so `fanout` is ~0. On this host each
   replica gets cores ÷ 2 pool workers (StoresFile.workers_per_replica). The gallery (first
   photo of each lfw_dev person) is enrolled through the front door with the admin key;
   then POST /v1/recognize through nginx at each concurrency level.
3. The seed design (bench/seed_server.py): one process, face_recognition inline, a faiss
   IndexIDMap(IndexFlatL2(128)) searched with k=1, the same gallery, photos and levels.

Both systems are up together and the levels alternate: the cluster at c=1, the seed at c=1,
the cluster at c=2, ... so that another tenant's load on a shared machine falls on both
alike. Each level records how much of the machine other processes used ("others %", from
/proc/stat minus our processes); above 10% the targets say so.

The probes are every lfw_dev photo plus the first lfw_distractors people (never enrolled:
the cluster registers each as a new visitor at first sight, then recognises it), in one
fixed shuffled order, cycled. Each level sends at most --requests-per-level requests from
`concurrency` threads (one keep-alive http.client connection each, bodies encoded
beforehand: the load generator shares the cores with what it measures) and issues none after
--max-seconds-per-level. Throughput = successful answers ÷ the level's wall time.

Stage shares (cluster) split the mean client latency into what the responses' `timings`
say, so they sum to 100%: decode/detect/embed (in the pool worker), pool wait (queue +
pickling: shard pool_ms − the three), search (faiss + labels), shard hop (gateway ↔ nginx ↔
shard HTTP: identify_ms − pool_ms − search_ms), fanout, register, redis, and front (client ↔
nginx ↔ gateway and the gateway's request handling: client latency − the gateway's
total_ms). "overhead" is everything but the shard pool: client latency − shard pool_ms.

CPU per request by process (from /proc, the launcher's process tree) says where the cores
went, which decides throughput once the cores are saturated.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import multiprocessing
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from bench.common import log, machine_info, percentiles, table, write_results
from shard_node.faces.pool import analyze_bytes
from shard_node.faces.registry import make_pipeline
from storeface.images import ImageLimits
from storeface.paths import faces_dir
from tools.dataset import list_photos
from tools.servers import LocalCluster, Process, free_port

STORE = "store-a"
REPLICAS = 2
DEFAULT_LEVELS = "1,2,4,16"
TARGET_LIMIT_PCT = 90.0
CLEAN_OTHERS = 0.10  # a level during which other processes used more of the machine is noisy
TARGET_SEED_RATIO = {"dlib": 1.8, "arcface": 10.0}
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The stages of a cluster answer, in the order they happen; they sum to the client latency.
STAGES = [
    "decode",
    "detect",
    "embed",
    "pool_wait",
    "search",
    "shard_hop",
    "fanout",
    "register",
    "redis",
    "front",
]
SEED_STAGES = ["decode", "wait", "detect", "embed", "search", "other"]
ROLES = ["pool", "shard", "shard_threads", "gateway", "nginx", "redis", "supervisor", "seed"]


# --- photos ------------------------------------------------------------------------------


@dataclass
class Photo:
    name: str
    data: bytes


def gallery_photos() -> list[tuple[str, Path]]:
    """The first photo of each lfw_dev person: what both systems enroll."""
    first: dict[str, Path] = {}
    for person, path in list_photos(faces_dir() / "lfw_dev"):
        first.setdefault(person, path)
    return sorted(first.items())


def probe_photos(distractors: int, limit: int | None) -> list[Photo]:
    """Every lfw_dev photo + the first `distractors` strangers, in a fixed shuffled order."""
    paths = [p for _, p in list_photos(faces_dir() / "lfw_dev")]
    paths += [p for _, p in list_photos(faces_dir() / "lfw_distractors")][:distractors]
    random.Random(0).shuffle(paths)
    if limit:
        paths = paths[:limit]
    return [Photo(p.name, p.read_bytes()) for p in paths]


# --- the pure compute limit --------------------------------------------------------------

_pipeline: Any = None


def _cpu_init(embedder: str) -> None:
    """Set up like shard_node.faces.pool's workers: one thread, the store's pipeline."""
    global _pipeline
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # here, not at the top: OpenCV must load after OMP_NUM_THREADS is set, as in the pool
    import cv2

    cv2.setNumThreads(1)
    _pipeline = make_pipeline(embedder, {})


def _cpu_measure(
    photos: list[bytes],
) -> tuple[list[dict[str, float]], tuple[float, ...], tuple[float, ...]]:
    """Each photo once through analyze_bytes: CPU and wall ms; and (time, machine busy,
    machine total) when the loop began and ended."""
    limits = ImageLimits()
    for data in photos[:5]:  # lazy initialisation, first-touch allocations: not measured
        analyze_bytes(_pipeline, data, limits, 10)
    out = []
    began = (time.time(), *machine_busy()[:2])
    for data in photos:
        c0, t0 = time.process_time(), time.perf_counter()
        analysis = analyze_bytes(_pipeline, data, limits, 10)
        out.append(
            {
                "cpu_ms": (time.process_time() - c0) * 1000,
                "wall_ms": (time.perf_counter() - t0) * 1000,
                "faces": float(len(analysis.faces)),
                **analysis.timings,
            }
        )
    return out, began, (time.time(), *machine_busy()[:2])


def _measure(
    embedder: str, parts: list[list[bytes]]
) -> tuple[list[dict[str, float]], float, float]:
    """Run the parts in as many worker processes at once: rows, photos per second, and the
    share of the machine that other processes used while the loops ran."""
    with ProcessPoolExecutor(
        len(parts),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_cpu_init,
        initargs=(embedder,),
    ) as ex:
        done = [f.result() for f in [ex.submit(_cpu_measure, part) for part in parts]]
    rows = [r for part, _, _ in done for r in part]
    first = min((began for _, began, _ in done), key=lambda b: b[0])
    last = max((end for _, _, end in done), key=lambda e: e[0])
    ours = sum(r["cpu_ms"] for r in rows) / 1000
    others = max(0.0, (last[1] - first[1]) - ours) / max(last[2] - first[2], 1e-9)
    return rows, len(rows) / (last[0] - first[0]), others


def single_cpu_ms(embedder: str, photos: list[Photo]) -> float:
    """Mean CPU ms per photo, one worker, every photo once."""
    rows, _, _ = _measure(embedder, [[p.data for p in photos]])
    return float(np.mean([r["cpu_ms"] for r in rows]))


def compute_limit(embedder: str, photos: list[Photo], cores: int) -> dict[str, Any]:
    """cores ÷ CPU seconds per photo, measured on one core with the product's pipeline.

    For reference, the same photos are then run in `cores` such workers at once (no HTTP,
    no queue): what the cores really give when all of them compute (shared caches, memory
    bandwidth, a co-tenant's load on the host).
    """
    data = [p.data for p in photos]
    rows, _, others_single = _measure(embedder, [data])
    par_rows, par_rps, others_parallel = _measure(embedder, [data[i::cores] for i in range(cores)])
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}

    return {
        "photos": len(rows),
        "cpu_ms_per_photo": mean["cpu_ms"],
        "wall_ms_per_photo": mean["wall_ms"],
        "stage_ms": {k: mean[f"{k}_ms"] for k in ("decode", "detect", "embed")},
        "faces_found_share": float(np.mean([r["faces"] > 0 for r in rows])),
        "cores": cores,
        "limit_rps": cores / (mean["cpu_ms"] / 1000),
        "others_share_single": others_single,
        "parallel_rps": par_rps,
        "parallel_cpu_ms_per_photo": float(np.mean([r["cpu_ms"] for r in par_rows])),
        "others_share_parallel": others_parallel,
    }


# --- CPU accounting from /proc -------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int  # start time in ticks: tells a reused pid apart
    cpu_s: float  # every thread, dead ones included
    main_cpu_s: float  # the main thread alone
    cmd: str


def _read_proc(pid: int) -> Proc | None:
    try:
        # the main thread first: read after the total, it could count more than the total
        main: float | None = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            task = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
            fields = task[task.rindex(")") + 2 :].split()
            main = (int(fields[11]) + int(fields[12])) / CLK_TCK
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2 :].split()
    # fields after the command: state(3) ppid(4) ... utime(14) stime(15) ... starttime(22)
    cpu = (int(rest[11]) + int(rest[12])) / CLK_TCK
    return Proc(pid, int(rest[1]), int(rest[19]), cpu, cpu if main is None else main, cmd.strip())


def _running(p: Proc) -> bool:
    """Still the same process (not a reused pid), and not a zombie."""
    try:
        stat = Path(f"/proc/{p.pid}/stat").read_text()
    except OSError:
        return False
    rest = stat[stat.rindex(")") + 2 :].split()
    return rest[0] != "Z" and int(rest[19]) == p.start


def process_tree(roots: list[int]) -> dict[int, Proc]:
    """Every live process under the given roots (themselves included)."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            p = _read_proc(int(entry.name))
            if p is not None:
                procs[p.pid] = p
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    out: dict[int, Proc] = {}
    todo = [r for r in roots if r in procs]
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out[pid] = procs[pid]
        todo += children.get(pid, [])
    return out


def role(p: Proc, tree: dict[int, Proc]) -> str:
    cmd = p.cmd
    if "redis-server" in cmd:
        return "redis"
    if "nginx" in cmd.split(" ")[0] or cmd.startswith("nginx:"):
        return "nginx"
    if "bench.seed_server" in cmd:
        return "seed"
    if "multiprocessing" in cmd or "spawn_main" in cmd:
        parent = tree.get(p.ppid)
        if parent is not None and role(parent, tree) == "shard":
            return "shard" if "resource_tracker" in cmd else "pool"
        return role(parent, tree) if parent is not None else "other"
    if "shard_node" in cmd:
        return "shard"
    if "-m gateway" in cmd:
        return "gateway"
    if "supervisord" in cmd or "deploy.run" in cmd:
        return "supervisor"
    return "other"


def machine_busy() -> tuple[float, float, float]:
    """(busy, total, steal) CPU seconds of the whole machine since boot, from /proc/stat;
    steal (the hypervisor ran someone else on our vCPU) counts as busy."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    total = sum(f[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK, f[7] / CLK_TCK


@dataclass
class CpuSample:
    tree: dict[int, Proc]
    busy: float
    total: float
    steal: float
    client: float
    wall: float


class CpuMeter:
    """CPU seconds by process role between two points in time, for one process tree."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.seen: dict[int, Proc] = {}

    def sample(self) -> CpuSample:
        tree = process_tree(self.roots)
        self.seen.update(tree)
        busy, total, steal = machine_busy()
        return CpuSample(tree, busy, total, steal, time.process_time(), time.perf_counter())

    def delta(self, a: CpuSample, b: CpuSample) -> dict[str, float]:
        out = dict.fromkeys(ROLES, 0.0)
        for pid, p in b.tree.items():
            before = a.tree.get(pid)
            same = before is not None and before.start == p.start
            used = p.cpu_s - (before.cpu_s if before and same else 0.0)
            r = role(p, b.tree)
            if r == "shard":  # the serving thread vs the rest (faiss/OpenMP, pool feeders)
                main = p.main_cpu_s - (before.main_cpu_s if before and same else 0.0)
                out["shard_threads"] += used - main
                used = main
            out[r] = out.get(r, 0.0) + used
        out["client"] = b.client - a.client
        wall = b.wall - a.wall
        out["machine_busy"] = b.busy - a.busy
        out["machine_share"] = (b.busy - a.busy) / max(b.total - a.total, 1e-9)
        out["steal_share"] = (b.steal - a.steal) / max(b.total - a.total, 1e-9)
        skip = ("machine_busy", "machine_share", "steal_share")
        ours = sum(v for k, v in out.items() if k not in skip)
        out["others"] = max(0.0, out["machine_busy"] - ours)  # other tenants of the machine
        out["wall"] = wall
        return out


# --- the load generator ---------------------------------------------------------------------


@dataclass
class Level:
    concurrency: int
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    def record(self, ms: float, status: str, answer: dict[str, Any] | None) -> None:
        """One request's outcome: an answer (with its timings), or an error by status."""
        self.sent += 1
        if answer is None:
            self.errors[status] = self.errors.get(status, 0) + 1
            return
        self.ok += 1
        self.latencies_ms.append(ms)
        self.timings.append({**(answer.get("timings") or {}), "client_ms": ms})

    @property
    def rps(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def summary(self) -> dict[str, Any]:
        p50, p95, p99 = percentiles(self.latencies_ms, (50, 95, 99))
        return {
            "concurrency": self.concurrency,
            "sent": self.sent,
            "ok": self.ok,
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
            "wall_s": self.wall_s,
            "rps": self.rps,
            "p50_ms": p50,
            "p95_ms": p95,
            "p99_ms": p99,
            "mean_ms": float(np.mean(self.latencies_ms)) if self.latencies_ms else None,
        }


def multipart(photo: Photo, form: dict[str, str] | None) -> tuple[str, bytes]:
    """A multipart/form-data body, encoded once: the load loop then only sends bytes."""
    boundary = f"----bench-load-{secrets.token_hex(8)}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in (form or {}).items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
        f'filename="{photo.name}"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
        + photo.data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def load(
    url: str,
    photos: list[Photo],
    concurrency: int,
    requests: int,
    max_seconds: float,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    offset: int = 0,
) -> Level:
    """`requests` POSTs from `concurrency` threads; none issued after `max_seconds`.

    Each thread holds one keep-alive connection (http.client: the load generator shares
    the machine's cores with the system under test, so it should cost as little as it can).
    """
    level = Level(concurrency)
    target = urlsplit(url)
    host = target.hostname or "127.0.0.1"
    bodies = [multipart(p, form) for p in photos]
    counter = itertools.count()
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker() -> None:
        conn: http.client.HTTPConnection | None = None
        start.wait()
        while True:
            i = next(counter)
            if i >= requests or time.perf_counter() > deadline[0]:
                break
            content_type, body = bodies[(offset + i) % len(bodies)]
            t0 = time.perf_counter()
            answer: dict[str, Any] | None = None
            retry_after = 0.0
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, target.port, timeout=120)
                conn.request(
                    "POST",
                    target.path,
                    body,
                    {**(headers or {}), "Content-Type": content_type},
                )
                r = conn.getresponse()
                raw = r.read()
                ms = (time.perf_counter() - t0) * 1000
                status = str(r.status)
                if r.status == 200:
                    answer = json.loads(raw)
                retry_after = float(r.getheader("Retry-After") or 0) if r.status == 503 else 0
                if r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                ms, status = (time.perf_counter() - t0) * 1000, type(exc).__name__
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                level.record(ms, status, answer)
            # A refused camera waits as told (503 overloaded + Retry-After), as a real one does.
            time.sleep(min(retry_after, max(0.0, deadline[0] - time.perf_counter())))
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + max_seconds
    start.wait()
    for t in threads:
        t.join()
    level.wall_s = time.perf_counter() - t0
    return level


@dataclass
class System:
    """A system under load: where to post, how, and the processes that make it up."""

    name: str
    url: str
    meter: CpuMeter
    photos: list[Photo]
    form: dict[str, str] | None = None
    headers: dict[str, str] | None = None
    levels: list[Level] = field(default_factory=list)
    offset: int = 0  # where in the photo cycle the next level starts


def run_level(system: System, concurrency: int, args: argparse.Namespace) -> Level:
    a = system.meter.sample()
    level = load(
        system.url,
        system.photos,
        concurrency,
        args.requests_per_level,
        args.max_seconds,
        system.form,
        system.headers,
        system.offset,
    )
    level.cpu = system.meter.delta(a, system.meter.sample())
    system.offset += level.sent
    system.levels.append(level)
    s = level.summary()
    log(
        f"{system.name} c={concurrency}: {level.ok}/{level.sent} ok in {level.wall_s:.1f}s = "
        f"{level.rps:.2f} req/s, p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms, "
        f"others {100 * others_share(level):.0f}%"
    )
    return level


def others_share(level: Level) -> float:
    """The share of the machine that processes outside the test used during the level."""
    return level.cpu.get("others", 0.0) / max(level.cpu.get("wall", 1.0), 1e-9) / _cores()


def stage_shares(level: Level, seed: bool = False) -> dict[str, float]:
    """Mean ms per stage as a share (%) of the mean client latency."""
    if not level.timings:
        return {}
    rows = []
    for t in level.timings:
        client = t["client_ms"]
        if seed:
            parts = {k: t.get(f"{k}_ms", 0.0) for k in SEED_STAGES[:-1]}
            parts["other"] = client - sum(parts.values())
        else:
            compute = {k: t.get(f"shard_{k}_ms", 0.0) for k in ("decode", "detect", "embed")}
            pool = t.get("shard_pool_ms", 0.0)
            search = t.get("shard_search_ms", 0.0)
            parts = {
                **compute,
                "pool_wait": pool - sum(compute.values()),
                "search": search,
                "shard_hop": t.get("identify_ms", 0.0) - pool - search,
                "fanout": t.get("fanout_ms", 0.0),
                "register": t.get("register_ms", 0.0),
                "redis": t.get("redis_ms", 0.0),
                "front": client - t.get("total_ms", 0.0),
                "overhead": client - pool,
            }
        parts["client"] = client
        rows.append(parts)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out = {k: 100 * v / mean["client"] for k, v in mean.items() if k != "client"}
    out.update({f"{k}_ms": v for k, v in mean.items()})
    return out


# --- the systems under test ------------------------------------------------------------------


class SeedServer(Process):
    """bench/seed_server.py on a free port, in its own session, output to seed.log."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "bench.seed_server", "--port", str(self.port)]
        super().__init__(argv, work / "seed.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SeedServer:
        super().start()
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        self._wait_http(f"{self.url}/healthz", timeout, "the seed server")


def stop_tree(proc: subprocess.Popen[bytes], sig: int, meter: CpuMeter, ports: list[int]) -> int:
    """Signal the launcher's group, wait, then end anything of its tree still alive by pid."""
    meter.sample()  # remember every pid of the tree before it goes
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def alive() -> list[Proc]:
        return [p for p in meter.seen.values() if _running(p)]

    deadline = time.monotonic() + 10  # supervisord's children may still be on their way out
    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    left = alive()
    if left:
        tree = dict(meter.seen)
        log(f"ending {len(left)} left over: {sorted(role(p, tree) for p in left)}")
    for attempt in (signal.SIGTERM, signal.SIGKILL):
        for p in alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, attempt)
        wait = time.monotonic() + 5
        while alive() and time.monotonic() < wait:
            time.sleep(0.2)
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                log(f"warning: port {port} still answers after the stop")
    return len(left)


@contextlib.contextmanager
def cluster(embedder: str, work: Path) -> Iterator[tuple[str, str, CpuMeter, dict[str, Any]]]:
    """`make run`'s launcher on free ports; yields (front URL, admin key, meter, info)."""
    store = {"id": STORE, "replicas": REPLICAS, "embedder": embedder}
    local = LocalCluster(work, [], [store])
    t0 = time.perf_counter()
    local.start()
    assert local.proc is not None
    meter = CpuMeter([local.pid])
    all_ports = [*local.ports.values(), local.ports[STORE] + 1]
    tree = process_tree([local.pid])
    info = {
        "topology": f"1 store ({STORE}) × {REPLICAS} shard replicas, 1 gateway, nginx, Redis",
        "start_s": time.perf_counter() - t0,
        "ports": local.ports,
        "processes": sorted({role(p, tree) for p in tree.values()}),
    }
    log(f"cluster up in {info['start_s']:.0f}s ({info['topology']})")
    try:
        yield local.front, local.admin_key(), meter, info
    finally:
        left = stop_tree(local.proc, signal.SIGINT, meter, all_ports)  # what Ctrl-C does
        code = local.proc.returncode
        log(f"cluster stopped (launcher exit {code}; {left} left over, ended by pid)")


@contextlib.contextmanager
def seed_server(work: Path) -> Iterator[tuple[str, CpuMeter]]:
    server = SeedServer(work).start()
    assert server.proc is not None
    meter = CpuMeter([server.pid])
    try:
        server.wait_ready()
        yield server.url, meter
    except BaseException:
        log("seed server log tail:\n" + server.tail(30))
        raise
    finally:
        stop_tree(server.proc, signal.SIGTERM, meter, [server.port])


def enroll(
    url: str,
    gallery: list[tuple[str, Path]],
    headers: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> dict[str, int]:
    """Each gallery photo once; returns how many answers of each status (and error code)."""

    def one(item: tuple[str, Path]) -> str:
        person, path = item
        try:
            with httpx.Client(headers=headers or {}, timeout=120) as c:
                r = c.post(
                    url,
                    files={"image": (path.name, path.read_bytes())},
                    data={"label": person, **(form or {})},
                )
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if r.status_code < 300:
            return str(r.status_code)
        try:
            err = r.json().get("error")
            code = err.get("code") if isinstance(err, dict) else err
        except ValueError:
            code = r.text[:40]
        return f"{r.status_code} {code}"

    with ThreadPoolExecutor(2) as ex:
        statuses = list(ex.map(one, gallery))
    return {s: statuses.count(s) for s in sorted(set(statuses))}


# --- the report ------------------------------------------------------------------------------


def _row(name: str, lv: Level) -> list[Any]:
    s = lv.summary()
    cpu = lv.cpu
    server = sum(cpu.get(r, 0.0) for r in ROLES)
    return [
        name,
        lv.concurrency,
        lv.sent,
        s["errors"],
        lv.rps,
        s["p50_ms"],
        s["p95_ms"],
        s["p99_ms"],
        1000 * server / lv.ok if lv.ok else None,
        1000 * cpu.get("client", 0.0) / lv.ok if lv.ok else None,
        100 * cpu.get("machine_share", 0.0),
        100 * others_share(lv),
    ]


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def where_time_goes(lv: Level, shares: dict[str, float], limit: dict[str, Any]) -> str:
    """CPU per request by process (what caps throughput on saturated cores), then latency."""
    per = {r: 1000 * lv.cpu.get(r, 0.0) / lv.ok for r in ROLES if lv.cpu.get(r, 0.0) > 0}
    per["client"] = 1000 * lv.cpu.get("client", 0.0) / lv.ok
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
    total = sum(per.values())
    ceiling = limit["cores"] / (total / 1000)
    top = sorted(((k, v) for k, v in shares.items() if k in STAGES), key=lambda kv: -kv[1])[:4]
    lat = ", ".join(f"{k} {v:.0f}%" for k, v in top)
    busy = 100 * lv.cpu.get("machine_share", 0.0)
    others = 100 * others_share(lv)
    return (
        f"at concurrency {lv.concurrency}, CPU ms per answered request by process: {cpu}; "
        f"{total:.0f} ms in all against {limit['cpu_ms_per_photo']:.0f} ms of pure compute, so "
        f"even with every core to itself the cluster tops out at {ceiling:.1f} req/s "
        f"({100 * ceiling / limit['limit_rps']:.0f}% of the limit). The machine was "
        f"{busy:.0f}% busy, {others:.0f}% of it other tenants. Latency shares: {lat}."
    )


def report(args: argparse.Namespace, res: dict[str, Any]) -> str:
    lines = []
    cl: list[Level] = res["cluster_levels"]
    sd: list[Level] = res["seed_levels"]
    headers = [
        "system",
        "conc",
        "reqs",
        "errors",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "server CPU ms/req",
        "client CPU ms/req",
        "machine busy %",
        "others %",
    ]
    rows = [_row("cluster", lv) for lv in cl] + [_row("seed", lv) for lv in sd]
    lines += [f"### Load: {args.embedder}, {res['info']['cluster']['topology']}", ""]
    lines += [table(headers, rows), ""]

    shares = [stage_shares(lv) for lv in cl]
    lines += ["Cluster: share of mean client latency per stage (%)", ""]
    lines += [
        table(
            ["conc", "mean ms", *STAGES, "overhead"],
            [
                [lv.concurrency, s.get("client_ms"), *[s.get(k) for k in [*STAGES, "overhead"]]]
                for lv, s in zip(cl, shares, strict=True)
            ],
        ),
        "",
    ]
    lines += [
        "Cluster: CPU ms per answered request, by process (shard = its serving thread, "
        "shard_threads = its other threads)",
        "",
    ]
    cpu_roles = [
        "pool",
        "shard",
        "shard_threads",
        "gateway",
        "nginx",
        "redis",
        "supervisor",
        "client",
    ]
    lines += [
        table(
            ["conc", *cpu_roles],
            [
                [lv.concurrency, *[1000 * lv.cpu.get(r, 0.0) / max(lv.ok, 1) for r in cpu_roles]]
                for lv in cl
            ],
        ),
        "",
    ]
    seed_shares = [stage_shares(lv, seed=True) for lv in sd]
    lines += ["Seed: share of mean client latency per stage (%)", ""]
    lines += [
        table(
            ["conc", "mean ms", *SEED_STAGES],
            [
                [lv.concurrency, s.get("client_ms"), *[s.get(k) for k in SEED_STAGES]]
                for lv, s in zip(sd, seed_shares, strict=True)
            ],
        ),
        "",
    ]
    lines += ["Cluster ÷ seed, per level", ""]
    lines += [
        table(
            ["conc", "throughput ×", "p99 ×"],
            [[r["concurrency"], r["throughput_x"], r["p99_x"]] for r in res["ratios"]],
        ),
        "",
    ]
    lim = res["compute_limit"]
    lines += [
        f"Pure compute limit: {lim['cores']} cores ÷ {lim['cpu_ms_per_photo']:.1f} ms CPU per "
        f"photo = {lim['limit_rps']:.1f} photos/s. CPU per photo on one core, every probe photo "
        f"once, before the load {lim.get('cpu_ms_per_photo_before', 0.0):.1f} ms and after it "
        f"{lim.get('cpu_ms_per_photo_after', 0.0):.1f} ms (the limit uses the lower one; "
        f"stage wall times before: decode {lim['stage_ms']['decode']:.1f}, detect "
        f"{lim['stage_ms']['detect']:.1f}, embed {lim['stage_ms']['embed']:.1f} ms; other "
        f"tenants used {100 * lim['others_share_single']:.0f}% of the machine). For reference, "
        f"{lim['cores']} such workers at once, no HTTP: {lim['parallel_rps']:.1f} photos/s, "
        f"{lim['parallel_cpu_ms_per_photo']:.1f} ms CPU per photo (others "
        f"{100 * lim['others_share_parallel']:.0f}%).",
        "",
    ]
    lines += [
        table(
            ["target", "figure", "met"],
            [[t["target"], t["figure"], t["met"]] for t in res["targets"]],
        ),
        "",
    ]
    if res.get("where"):
        lines += [f"Where the time goes: {res['where']}", ""]
    return "\n".join(lines)


def evaluate(args: argparse.Namespace, res: dict[str, Any]) -> None:
    cl: list[Level] = res["cluster_levels"]
    sd: list[Level] = res["seed_levels"]
    cores = res["compute_limit"]["cores"]
    ratios = []
    for c, s in zip(cl, sd, strict=True):
        cp99 = c.summary()["p99_ms"]
        sp99 = s.summary()["p99_ms"]
        ratios.append(
            {
                "concurrency": c.concurrency,
                "throughput_x": c.rps / s.rps if s.rps else None,
                "p99_x": cp99 / sp99 if sp99 else None,
            }
        )
    res["ratios"] = ratios

    def noisy(lv: Level, system: str = "cluster") -> str:
        share = others_share(lv)
        if share <= CLEAN_OTHERS:
            return ""
        return f"; others took {100 * share:.0f}% of the machine during {system} c={lv.concurrency}"

    saturated = [lv for lv in cl if lv.concurrency >= cores] or cl
    best = max(saturated, key=lambda lv: lv.rps)
    seed_best = max(sd, key=lambda lv: lv.rps)
    limit = res["compute_limit"]["limit_rps"]
    pct = 100 * best.rps / limit
    each = ", ".join(f"c={lv.concurrency}: {100 * lv.rps / limit:.0f}%" for lv in saturated)
    want = TARGET_SEED_RATIO.get(args.embedder, 1.8)
    x = best.rps / seed_best.rps if seed_best.rps else float("nan")
    res["targets"] = [
        {
            "target": f"cluster ≥ {TARGET_LIMIT_PCT:.0f}% of the compute limit",
            "figure": f"{pct:.0f}% ({best.rps:.1f} of {limit:.1f} req/s at c={best.concurrency};"
            f" {each}{noisy(best)})",
            "met": pct >= TARGET_LIMIT_PCT,
            "value": pct,
        },
        {
            "target": f"cluster ≥ {want:g}× the seed ({args.embedder})",
            "figure": f"{x:.2f}× ({best.rps:.1f} vs {seed_best.rps:.1f} req/s at c="
            f"{best.concurrency} and c={seed_best.concurrency}, the best levels"
            f"{noisy(best)}{noisy(seed_best, 'seed')})",
            "met": x >= want,
            "value": x,
        },
    ]
    if not all(t["met"] for t in res["targets"]):
        res["where"] = where_time_goes(best, stage_shares(best), res["compute_limit"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=doc)
    parser.add_argument("--concurrency", default=None, help=f"levels (default {DEFAULT_LEVELS})")
    parser.add_argument("--requests-per-level", type=int, default=None, help="default 240")
    parser.add_argument(
        "--max-seconds-per-level", dest="max_seconds", type=float, default=None, help="default 40"
    )
    parser.add_argument("--embedder", choices=["dlib", "arcface"], default="dlib")
    parser.add_argument("--distractors", type=int, default=None, help="default 40")
    parser.add_argument("--quick", action="store_true", help="2 levels, a few requests")
    args = parser.parse_args(argv)
    q = args.quick
    args.levels = [
        int(x) for x in (args.concurrency or ("1,4" if q else DEFAULT_LEVELS)).split(",")
    ]
    args.requests_per_level = args.requests_per_level or (16 if q else 240)
    args.max_seconds = args.max_seconds or (15.0 if q else 40.0)
    args.distractors = args.distractors if args.distractors is not None else (6 if q else 40)
    args.probe_limit = 30 if q else None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    cores = _cores()
    info = machine_info({"cores_usable": cores})
    gallery = gallery_photos()
    photos = probe_photos(args.distractors, args.probe_limit)
    log(f"{args.embedder}: gallery {len(gallery)} people, {len(photos)} probe photos")
    warm = max(8, 2 * max(args.levels)) if not args.quick else 4
    res: dict[str, Any] = {"info": info}

    log("compute limit: one core, the product's pipeline, every probe photo once")
    res["compute_limit"] = compute_limit(args.embedder, photos, cores)
    log(
        f"  {res['compute_limit']['cpu_ms_per_photo']:.1f} ms CPU per photo → "
        f"{res['compute_limit']['limit_rps']:.1f} photos/s on {cores} cores"
    )

    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-load-")))
        front, key, meter, cinfo = stack.enter_context(cluster(args.embedder, work))
        seed, smeter = stack.enter_context(seed_server(work))
        auth = {"X-API-Key": key}
        systems = [
            System("cluster", f"{front}/v1/recognize", meter, photos, {"store_id": STORE}, auth),
            System("seed", f"{seed}/recognize", smeter, photos),
        ]
        # largest=true: a photo with a second face in the background enrolls its largest
        # face, as the seed does
        for name, url, headers, form in [
            ("cluster", f"{front}/v1/stores/{STORE}/faces", auth, {"largest": "true"}),
            ("seed", f"{seed}/enroll", None, None),
        ]:
            t0 = time.perf_counter()
            answers = enroll(url, gallery, headers, form)
            info[name] = {"enroll": answers, "enroll_s": time.perf_counter() - t0}
            log(f"{name} gallery: {answers} in {info[name]['enroll_s']:.1f}s")
        for system in systems:  # warm-up, not recorded
            load(
                system.url, photos, min(4, max(args.levels)), warm, 60, system.form, system.headers
            )
        # Level by level, the cluster then the seed: a co-tenant's load on this shared
        # machine then falls on both alike rather than on one system's whole series.
        for c in args.levels:
            for system in systems:
                run_level(system, c, args)
        info["cluster"].update(cinfo)
        info["seed"]["design"] = "bench/seed_server.py: 1 process, a thread per connection"
    res["cluster_levels"] = systems[0].levels
    res["seed_levels"] = systems[1].levels

    log("compute limit again, after the load: how much the machine drifted")
    again = single_cpu_ms(args.embedder, photos)
    lim = res["compute_limit"]
    lim["cpu_ms_per_photo_before"] = lim["cpu_ms_per_photo"]
    lim["cpu_ms_per_photo_after"] = again
    # interference only ever adds CPU time (caches, a co-tenant): the lower one is the cleaner
    lim["cpu_ms_per_photo"] = min(lim["cpu_ms_per_photo_before"], again)
    lim["limit_rps"] = cores / (lim["cpu_ms_per_photo"] / 1000)
    log(f"  {again:.1f} ms CPU per photo; the limit takes the lower: {lim['limit_rps']:.1f}/s")

    evaluate(args, res)
    text = report(args, res)
    print(text)
    payload = {
        "machine": info,
        "config": {
            "embedder": args.embedder,
            "levels": args.levels,
            "requests_per_level": args.requests_per_level,
            "max_seconds_per_level": args.max_seconds,
            "gallery": len(gallery),
            "probe_photos": len(photos),
            "distractors": args.distractors,
            "quick": args.quick,
        },
        "compute_limit": res["compute_limit"],
        "cluster": [
            {
                **lv.summary(),
                "others_share": others_share(lv),
                "stage_share_pct": stage_shares(lv),
                "cpu_s": lv.cpu,
            }
            for lv in res["cluster_levels"]
        ],
        "seed": [
            {
                **lv.summary(),
                "others_share": others_share(lv),
                "stage_share_pct": stage_shares(lv, seed=True),
                "cpu_s": lv.cpu,
            }
            for lv in res["seed_levels"]
        ],
        "ratios": res["ratios"],
        "targets": res["targets"],
        "where_the_time_goes": res.get("where"),
        "report_markdown": text,
    }
    name = f"load-{args.embedder}" + ("-quick" if args.quick else "")
    log(f"wrote {write_results(name, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
