"""Redis HA costs: what `WAIT 1` adds to a write, and how long writes stop when the primary
freezes (SIGSTOP: freeze → first acknowledged write, and freeze → Sentinel's promotion).
Real processes: a primary, its replica and three Sentinels as `make run` starts them.

    python -m bench.failover --writes 2000 --failovers 3 --down-after-ms 3000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import log, machine_info, summarize_ms, table, write_results
from storeface.redis_client import DurableRedis, connect
from tools.servers import RedisHA, RedisServer

# A face enrollment's write: a small Lua script touching a few keys, as storeface.facedb does.
SCRIPT = """
local n = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], n, ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 1000, '*', 'n', n)
return n
"""


async def per_write(client: DurableRedis, writes: int) -> list[float]:
    """Milliseconds per sequential write (each one acknowledged before the next)."""
    script = client.register_script(SCRIPT)
    payload = "x" * 600  # about one embedding
    out = []
    for _ in range(writes):
        t0 = time.perf_counter()
        await script(keys=["bench:n", "bench:h", "bench:s"], args=[payload])
        out.append((time.perf_counter() - t0) * 1000)
    await client.delete("bench:n", "bench:h", "bench:s")
    return out


async def wait_cost(work: Path, writes: int) -> dict[str, dict[str, float]]:
    single = RedisServer(work / "single").start()
    ha = RedisHA(work / "ha-cost").start()
    try:
        cases = {
            "one Redis (URL, no WAIT)": connect(single.url),
            "HA primary, no WAIT": connect(ha.url),
            "HA via Sentinel, WAIT 1": connect(ha.url, ha.sentinels),
        }
        out = {}
        for name, client in cases.items():
            await per_write(client, 100)  # warm: connections, script cache
            out[name] = summarize_ms(await per_write(client, writes))
            await client.aclose()
            log(f"{name}: {out[name]['mean']:.3f} ms/write")
        return out
    finally:
        ha.stop()
        single.stop()


async def one_failover(work: Path, down_after_ms: int) -> dict[str, float]:
    ha = RedisHA(work, down_after_ms=down_after_ms).start()
    client = connect(ha.url, ha.sentinels)
    promoted: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if ha.primary() != ha.port:
                promoted.append(time.monotonic())
                return
            time.sleep(0.02)

    try:
        await client.set("n", 0)
        os.kill(ha.nodes[ha.port].pid, signal.SIGSTOP)
        frozen = time.monotonic()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        failed = 0
        while True:
            try:
                await client.incr("n")
                break
            except Exception:
                failed += 1
        acked = time.monotonic()
        stop.set()
        watcher.join(5)
        return {
            "promotion_s": (promoted[0] - frozen) if promoted else float("nan"),
            "first_ack_s": acked - frozen,
            "failed_calls": failed,
        }
    finally:
        stop.set()
        await client.aclose()
        ha.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--down-after-ms", type=int, default=3000, help="make run's: 3000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cost = await wait_cost(work, args.writes)
        runs = []
        for i in range(args.failovers):
            runs.append(await one_failover(work / f"failover-{i}", args.down_after_ms))
            log(f"failover {i + 1}: {runs[-1]}")
    print(f"\nper write (a small Lua script, sequential, {args.writes} writes)")
    rows: list[list[Any]] = [[name, s["mean"], s["p50"], s["p99"]] for name, s in cost.items()]
    print(table(["case", "mean (ms)", "p50 (ms)", "p99 (ms)"], rows))
    print(f"\nprimary frozen (SIGSTOP), Sentinel down-after {args.down_after_ms} ms")
    rows = [
        [i + 1, r["promotion_s"], r["first_ack_s"], r["failed_calls"]] for i, r in enumerate(runs)
    ]
    print(table(["run", "→ promotion (s)", "→ first ack (s)", "calls failed"], rows))
    out = {
        "machine": machine_info(),
        "writes": args.writes,
        "down_after_ms": args.down_after_ms,
        "per_write_ms": cost,
        "failovers": runs,
    }
    print(f"\nresults: {write_results('failover', out)}")


if __name__ == "__main__":
    asyncio.run(main())
