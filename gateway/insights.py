"""What the dashboard reads through the public API: the caller's stores, the chain overview,
recent visits, store health, the erase audit trail, and the retention sweep's answer."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any

import httpx

from gateway import retention
from gateway.auth import KeyRing
from gateway.models import (
    AuditEntryOut,
    AuditPage,
    Me,
    Overview,
    StoreHealth,
    StoreOverview,
    SweepRequest,
    SweepResponse,
    Visit,
    VisitsResponse,
    WindowStats,
)
from gateway.recognition import Gateway
from storeface.errors import InvalidRequest

HEALTH_TIMEOUT_S = 2.0
CURSOR = re.compile(r"^\d{1,20}-\d{1,20}$")


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def visible_stores(gw: Gateway, scope: frozenset[str] | None) -> list[str]:
    """The stores of stores.yaml a key may see, in the file's order."""
    return [s.id for s in gw.stores.config.stores if scope is None or s.id in scope]


def me(gw: Gateway, keys: KeyRing, key: str | None) -> Me:
    scope = keys.scope(key)
    return Me(
        key_id=keys.key_id(key),
        role="admin" if scope is None else "camera",
        stores=visible_stores(gw, scope),
    )


def _window(counts: dict[str, Any], n: int, uv: int) -> WindowStats:
    """The last `n` days of a store's counters, with the distinct visitors over them."""
    new = sum(counts["new"][-n:])
    return WindowStats(
        pv=sum(counts["pv"][-n:]),
        uv=uv,
        new=new,
        returning=max(0, uv - new),
        member_visits=sum(counts["member_pv"][-n:]),
    )


async def overview(gw: Gateway, scope: frozenset[str] | None) -> Overview:
    """Every store the key may see: today, the last 7 and the last 30 days (UTC)."""
    today = dt.datetime.now(dt.UTC).date()
    stores = visible_stores(gw, scope)
    counts = await gw.analytics.recent_days(stores, today, 30)
    return Overview(
        day=f"{today}",
        stores=[
            StoreOverview(
                store_id=sid,
                region=gw.stores.route(sid).region,
                today=_window(counts[sid], 1, counts[sid]["uv_last_day"]),
                last_7_days=_window(counts[sid], 7, counts[sid]["uv_last_7"]),
                last_30_days=_window(counts[sid], 30, counts[sid]["uv_all"]),
            )
            for sid in stores
        ],
    )


async def visits(gw: Gateway, store_id: str, limit: int) -> VisitsResponse:
    """A store's latest counted visits: FaceId, time, new or returning, the face's kind."""
    rows = await gw.analytics.recent(store_id, limit)
    records = await gw.db.get_faces(sorted({r["face_id"] for r in rows}))
    return VisitsResponse(
        store_id=store_id,
        visits=[
            Visit(
                face_id=r["face_id"],
                time=_iso(r["ts"]),
                visit="new" if r["new"] else "returning",
                member=r["member"],
                kind=records[r["face_id"]].kind if r["face_id"] in records else "",
            )
            for r in rows
        ],
    )


async def _replica_up(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(f"{url}/readyz", timeout=HEALTH_TIMEOUT_S)).status_code == 200
    except httpx.HTTPError:
        return False


async def health(gw: Gateway, store_id: str) -> StoreHealth:
    """The store's node group, its replicas, and its index as a replica reports it."""
    store = gw.stores.route(store_id)
    group = gw.stores.group(store)
    replicas = gw.stores.replica_urls(group)
    client = gw.shards.client
    info, up = await asyncio.gather(
        gw.shards.store_info(gw.stores.urls(store), store_id, HEALTH_TIMEOUT_S),
        asyncio.gather(*(_replica_up(client, u) for u in replicas or [])),
    )
    return StoreHealth(
        store_id=store_id,
        node=group.id,
        replicas=len(replicas) if replicas is not None else group.replicas,
        replicas_up=sum(up) if replicas is not None else None,
        reachable=info is not None,
        faces=info.faces if info else None,
        vectors=info.vectors if info else None,
        index=info.index if info else None,
        embedder=info.embedder if info else group.embedder,
        threshold=info.threshold if info else store.threshold,
        loaded=info.loaded if info else None,
        visitor_retention_days=gw.stores.config.retention_days(store_id),
    )


async def sweep(gw: Gateway, body: SweepRequest, actor: str) -> SweepResponse:
    done = await retention.sweep(gw, body.older_than_days, body.dry_run, actor)
    return SweepResponse.model_validate(done, from_attributes=True)


async def audit(gw: Gateway, limit: int, before: str | None) -> AuditPage:
    """The erase trail, newest first, `limit` at a time."""
    if before is not None and not CURSOR.match(before):
        raise InvalidRequest("`before` is an entry id from a previous page, like 1767225600000-0")
    rows = await gw.db.audit(limit + 1, before)
    entries = [
        AuditEntryOut(
            id=e.id,
            time=_iso(e.ts),
            actor=e.actor,
            face_id=e.face_id,
            reason=e.reason,
            stores=e.stores,
        )
        for e in rows[:limit]
    ]
    return AuditPage(entries=entries, next=entries[-1].id if len(rows) > limit else None)
