"""The dashboard's load time and the retention sweep's time, on real servers.

Page: a real gateway and shard node (tools.servers), --stores stores (default 16) with --days
days (default 30) of visits counted by the gateway's own analytics into real Redis, and the
page opened --loads times (default 5) by headless Debian chromium (Playwright), each in a
fresh browser context (a cold cache), signed in with the admin key through the `#key=`
fragment. Read from the browser's own clock: DOMContentLoaded, the first chart drawn (the
page's `storeface:first-chart` mark), everything shown (`storeface:loaded`: overview, charts,
health, recent visits, audit), and the overview call's duration.

Sweep: --visitors visitor FaceIds (default 100,000), one vector and one counted visit each,
spread over the stores; then POST /v1/retention/sweep to the gateway twice: once when none
has expired (the daily run's usual cost: the whole scan), once when all have (each erased
everywhere, visit traces removed, audit entries written).

    python -m bench.dashboard
    python -m bench.dashboard --visitors 10000 --loads 3 --screenshot docs/dashboard.png
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis as redis_lib
import yaml
from redis.asyncio import Redis

from bench.common import log, machine_info, table, write_results
from gateway.analytics import Analytics
from storeface.facedb import FaceDB
from tools.browser import chromium
from tools.browser import missing as browser_missing
from tools.servers import GatewayNode, RedisServer, ShardNode, free_port

ADMIN = "bench-admin"
CHUNK = 500
PARALLEL = 50  # calls in flight at once (the Redis client's pool is bounded)


async def bounded(calls: Iterable[Awaitable[Any]]) -> None:
    """Await all, at most PARALLEL at a time."""
    gate = asyncio.Semaphore(PARALLEL)

    async def one(call: Awaitable[Any]) -> None:
        async with gate:
            await call

    await asyncio.gather(*(one(c) for c in calls))


def stores(n: int) -> list[str]:
    return [f"store-{i:02d}" for i in range(n)]


async def seed_visits(url: str, names: list[str], days: int, per_day: int) -> int:
    """`per_day` sightings per store per day, from a pool of 4 × per_day visitor FaceIds per
    store, counted by Analytics.record at the scripted times (dedupe keys cleared daily)."""
    redis = Redis.from_url(url)
    db, analytics = FaceDB(redis), Analytics(redis, window_s=300)
    rng = np.random.default_rng(1)
    today = dt.datetime.now(dt.UTC).date()
    count = 0
    for store in names:
        pool = [await db.new_face_id() for _ in range(4 * per_day)]
        embs = rng.normal(size=(len(pool), 128)).astype(np.float32)
        await bounded(
            (
                db.add_vector(store, f, e, embedder="dlib", kind="visitor")
                for f, e in zip(pool, embs, strict=True)
            )
        )
        for ago in range(days - 1, -1, -1):
            noon = dt.datetime.combine(today - dt.timedelta(days=ago), dt.time(12), dt.UTC)
            people = [pool[int(i)] for i in rng.choice(len(pool), size=per_day, replace=False)]
            await bounded(
                (
                    analytics.record(store, p, p % 10 == 0, now=noon.timestamp() + i)
                    for i, p in enumerate(people)
                )
            )
            await redis.delete(*(f"seen:{store}:{p}" for p in people))
            count += len(people)
    await redis.aclose()
    return count


async def seed_visitors(url: str, names: list[str], count: int) -> None:
    """`count` visitor FaceIds, each with a vector at one store and one counted visit."""
    redis = Redis.from_url(url)
    db, analytics = FaceDB(redis), Analytics(redis, window_s=300)
    rng = np.random.default_rng(2)
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        embs = rng.normal(size=(n, 128)).astype(np.float32)
        ids = [await db.new_face_id() for _ in range(n)]
        homes = [names[(start + i) % len(names)] for i in range(n)]
        await bounded(
            (
                db.add_vector(h, f, e, embedder="dlib", kind="visitor")
                for h, f, e in zip(homes, ids, embs, strict=True)
            )
        )
        await bounded(analytics.record(h, f, False) for h, f in zip(homes, ids, strict=True))
        if start % 20_000 == 0:
            log(f"  {start + n:,} visitors")
    await redis.aclose()


def age_all(client: redis_lib.Redis, days: float) -> None:
    """Every visitor was last seen `days` ago."""
    when = f"{time.time() - days * 86400:.3f}"
    with client.pipeline(transaction=False) as pipe:
        for key in client.scan_iter(match="face:*", count=5000, _type="hash"):
            pipe.hset(key, "last_seen", when)
        pipe.execute()


def page_loads(url: str, loads: int, screenshot: Path | None) -> list[dict[str, float]]:
    out = []
    errors: list[str] = []
    with chromium() as browser:
        for i in range(loads + 1):  # the first warms the servers, not the browser's cache
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{url}/dashboard#key={ADMIN}")
            page.wait_for_selector("html[data-loaded='yes']", state="attached", timeout=60_000)
            t = page.evaluate(
                """() => {
                  const nav = performance.getEntriesByType('navigation')[0];
                  const mark = n => performance.getEntriesByName(n)[0].startTime;
                  const call = performance.getEntriesByType('resource')
                    .find(r => r.name.endsWith('/v1/stats/overview'));
                  return {dom_content_loaded_ms: nav.domContentLoadedEventEnd,
                          first_chart_ms: mark('storeface:first-chart'),
                          all_shown_ms: mark('storeface:loaded'),
                          overview_call_ms: call.duration};
                }"""
            )
            if errors:
                raise SystemExit(f"console errors on the page: {errors}")
            if i == 0:
                if screenshot is not None:
                    page.screenshot(path=str(screenshot), full_page=True)
                    log(f"screenshot: {screenshot}")
            else:
                out.append(t)
            context.close()
    return out


def sweep(url: str, body: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = httpx.post(
        f"{url}/v1/retention/sweep", json=body, headers={"X-API-Key": ADMIN}, timeout=1800
    )
    r.raise_for_status()
    done: dict[str, Any] = r.json()
    done["wall_s"] = round(time.perf_counter() - t0, 2)
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stores", type=int, default=16)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--per-day", type=int, default=40, help="sightings per store per day")
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--visitors", type=int, default=100_000)
    ap.add_argument("--screenshot", type=Path, default=None, help="save the page here")
    args = ap.parse_args()
    if why := browser_missing():
        sys.exit(why)

    work = Path(tempfile.mkdtemp(prefix="storeface-bench-dashboard-"))
    names = stores(args.stores)
    shard_port = free_port()
    stores_file = work / "stores.yaml"
    doc = {
        "nodes": [{"id": "n1", "replicas": 1, "urls": [f"http://127.0.0.1:{shard_port}"]}],
        "stores": [
            {"id": s, "node": "n1", "region": "north" if i % 2 else "south"}
            for i, s in enumerate(names)
        ],
    }
    stores_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    redis = RedisServer(work / "redis").start()
    shard = ShardNode("n1", stores_file, redis.url, work, port=shard_port)
    gateway = GatewayNode(stores_file, redis.url, work, admin_key=ADMIN, retention_interval_s="0")
    client = redis_lib.Redis(port=redis.port)
    results: dict[str, Any] = {"machine": machine_info()}  # the load before the run
    try:
        log(f"seeding {args.stores} stores × {args.days} days × {args.per_day} sightings")
        seen = asyncio.run(seed_visits(redis.url, names, args.days, args.per_day))
        shard.start()
        gateway.start()
        log(f"{seen:,} sightings counted; loading the page {args.loads} times")
        loads = page_loads(gateway.url, args.loads, args.screenshot)
        keys = list(loads[0])
        results["page"] = {
            "stores": args.stores,
            "days": args.days,
            "sightings": seen,
            "loads": loads,
            "median": {k: round(statistics.median(x[k] for x in loads), 1) for k in keys},
        }
        gateway.stop()
        shard.stop()
        client.flushall()
        log(f"seeding {args.visitors:,} visitors")
        t0 = time.perf_counter()
        asyncio.run(seed_visitors(redis.url, names, args.visitors))
        log(f"seeded in {time.perf_counter() - t0:.0f} s; sweeping (nothing expired)")
        gateway.start()
        none = sweep(gateway.url, {})
        age_all(client, 40)
        log("sweeping (all expired)")
        every = sweep(gateway.url, {})
        results["sweep"] = {
            "visitors": args.visitors,
            "none_expired": none,
            "all_expired": every,
            "audit_entries": client.xlen("audit:erase"),
        }
    finally:
        gateway.stop()
        shard.stop()
        client.close()
        redis.stop()

    page = results["page"]["median"]
    print(f"\nDashboard load, {args.stores} stores × {args.days} days, median of {args.loads}:\n")
    print(
        table(
            ["DOMContentLoaded ms", "first chart ms", "all shown ms", "overview call ms"],
            [[page[k] for k in keys]],
        )
    )
    s = results["sweep"]
    print(f"\nRetention sweep, {args.visitors:,} visitors:\n")
    print(
        table(
            ["case", "scanned", "erased", "sweep ms", "per visitor µs"],
            [
                [
                    case,
                    s[key]["scanned"],
                    s[key]["erased"],
                    s[key]["took_ms"],
                    1000 * s[key]["took_ms"] / max(1, s[key]["scanned"]),
                ]
                for case, key in (("none expired", "none_expired"), ("all expired", "all_expired"))
            ],
        )
    )
    path = write_results("dashboard", results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
