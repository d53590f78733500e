"""Visitor retention: an unbound visitor FaceId unseen for its home store's period is erased
everywhere, by the same erase as DELETE /v1/faces/{id}. One sweep at a time across every
gateway replica (a lock in Redis); daily, and on demand."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from gateway.recognition import Gateway
from storeface.errors import SweepRunning
from storeface.stores import StoresFile

log = logging.getLogger("gateway.retention")

LOCK_KEY = "retention:lock"
LAST_RUN_KEY = "retention:last_run"  # when the last scheduled sweep finished (epoch seconds)
LOCK_TTL_MS = 300_000  # renewed after every batch: a sweeper that died frees it within this
BATCH = 2000  # face records looked at per step
ERASE_CHUNK = 200  # erases per Redis call: Redis serves others between calls
VISITS_FLUSH = 20_000  # erased FaceIds whose recent visit events are dropped in one pass
SCHEDULED_ACTOR = "retention-schedule"
DAY_S = 86400.0

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass
class SweepResult:
    """What one sweep looked at and did."""

    scanned: int  # unbound, unlabelled visitors looked at
    expired: int  # of those, unseen for longer than their period
    erased: int  # erased (0 in a dry run; fewer than expired if some were seen meanwhile)
    dry_run: bool
    older_than_days: int | None
    took_ms: float


@contextlib.asynccontextmanager
async def sweep_lock(gw: Gateway) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Hold the chain-wide sweep lock, or raise SweepRunning; yields a renewal to call while
    working, so a long sweep keeps it and a dead one loses it."""
    redis = gw.db.redis
    token = secrets.token_hex(16)
    if not await redis.set(LOCK_KEY, token, nx=True, px=LOCK_TTL_MS):
        raise SweepRunning()

    async def renew() -> None:
        await redis.eval(_RENEW, 1, LOCK_KEY, token, LOCK_TTL_MS)

    try:
        yield renew
    finally:
        await redis.eval(_RELEASE, 1, LOCK_KEY, token)


async def sweep(
    gw: Gateway,
    older_than_days: int | None = None,
    dry_run: bool = False,
    actor: str = SCHEDULED_ACTOR,
    now: float | None = None,
) -> SweepResult:
    """Erase every unbound visitor unseen for its home store's `visitor_retention_days` (or
    `older_than_days`, for this run, for every store); members and gallery faces never."""
    async with sweep_lock(gw) as renew:
        return await _sweep_locked(gw, older_than_days, dry_run, actor, now, renew)


def _expired(
    batch: list[tuple[int, str, float]],
    config: StoresFile,
    older_than_days: int | None,
    now: float,
) -> tuple[list[int], list[float]]:
    """The visitors of a batch unseen for longer than their period, and each one's cutoff."""
    due: list[int] = []
    cutoffs: list[float] = []
    for face_id, home, last_seen in batch:
        days = older_than_days if older_than_days is not None else config.retention_days(home)
        if days is not None and last_seen < now - days * DAY_S:
            due.append(face_id)
            cutoffs.append(now - days * DAY_S)
    return due, cutoffs


async def _sweep_locked(
    gw: Gateway,
    older_than_days: int | None,
    dry_run: bool,
    actor: str,
    now: float | None,
    renew: Callable[[], Awaitable[None]],
) -> SweepResult:
    start = time.perf_counter()
    now = time.time() if now is None else now
    config = gw.stores.config
    scanned = expired = erased = 0
    pending: dict[str, set[int]] = {}  # recent visit events still to drop, per store
    try:
        async for batch in gw.db.visitor_batches(BATCH):
            scanned += len(batch)
            due, cutoffs = _expired(batch, config, older_than_days, now)
            expired += len(due)
            for first in range(0, 0 if dry_run else len(due), ERASE_CHUNK):
                part = slice(first, first + ERASE_CHUNK)
                done = await gw.db.erase_faces(
                    due[part], cutoffs[part], actor=actor, reason="retention"
                )
                gone = [fid for fid, r in done.items() if r.existed]
                for sid, fids in (await gw.analytics.erase_faces(gone, visits=False)).items():
                    pending.setdefault(sid, set()).update(fids)
                erased += len(gone)
            if sum(len(f) for f in pending.values()) >= VISITS_FLUSH:
                await gw.analytics.drop_visits(pending)
                pending = {}
            await renew()
    finally:
        await gw.analytics.drop_visits(pending)
    took_ms = round((time.perf_counter() - start) * 1000, 1)
    if not dry_run and erased:
        log.info("retention sweep by %s: %d of %d visitors erased", actor, erased, scanned)
    return SweepResult(scanned, expired, erased, dry_run, older_than_days, took_ms)


async def run_if_due(
    gw: Gateway, interval_s: float, now: float | None = None
) -> SweepResult | None:
    """The scheduled sweep, if none finished within `interval_s` on any replica; None when
    not due or another replica is sweeping."""
    now = time.time() if now is None else now
    redis = gw.db.redis
    last = await redis.get(LAST_RUN_KEY)
    if last is not None and now - float(last) < interval_s:
        return None
    try:
        async with sweep_lock(gw) as renew:
            last = await redis.get(LAST_RUN_KEY)  # another replica may have just finished
            if last is not None and now - float(last) < interval_s:
                return None
            result = await _sweep_locked(gw, None, False, SCHEDULED_ACTOR, now, renew)
            await redis.set(LAST_RUN_KEY, f"{time.time():.3f}")
            return result
    except SweepRunning:
        return None


async def run_schedule(gw: Gateway, interval_s: float, check_s: float) -> None:
    """Every replica runs this; the lock and the last-run time make it one sweep per interval."""
    if interval_s <= 0:
        return
    while True:
        # jitter: replicas started together do not all reach for the lock at once
        await asyncio.sleep(check_s * random.uniform(0.8, 1.2))
        try:
            await run_if_due(gw, interval_s)
        except Exception as exc:  # Redis down, a bad batch: log it, try again next round
            log.warning("scheduled retention sweep failed: %s", exc)
