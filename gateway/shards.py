"""Talking to shard node groups: one pooled httpx client, failover across a group's URLs."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import httpx

from storeface import wire
from storeface.errors import Overloaded, RemoteError, ShardUnavailable

log = logging.getLogger("gateway.shards")
BUSY_RETRIES = 1  # a group behind nginx: how many more replicas to ask when one is busy


def _raise_for_error(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        err = r.json()["error"]
        code, message, details = err["code"], err["message"], err.get("details") or {}
    except (ValueError, KeyError, TypeError):
        code, message, details = "shard_error", r.text[:200], {}
    if code == Overloaded.code:  # a busy replica (429): another may have room
        raise Overloaded(f"the store's shard is at capacity: {message}")
    if r.status_code >= 500:
        raise ShardUnavailable(f"shard answered {r.status_code}: {message}", code=code)
    raise RemoteError(r.status_code, code, message, **details)


class ShardClient:
    """Calls to a node group; each URL is tried in turn on connection errors and 5xx."""

    def __init__(self, client: httpx.AsyncClient, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self._turn = itertools.count()

    async def _call(
        self,
        urls: list[str],
        method: str,
        path: str,
        *,
        deadline_s: float | None = None,
        retry: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        last: Exception | None = None
        if len(urls) > 1:  # a plain replica list: spread the load, keep the failover
            start = next(self._turn) % len(urls)
            urls = urls[start:] + urls[:start]
        attempts = list(urls if retry else urls[:1])
        # A busy replica recorded nothing, so even a write may try again; through nginx (one
        # URL) the next try goes to its next replica.
        busy_retries = BUSY_RETRIES if len(attempts) == 1 else 0
        # Through nginx: a replica that just died can leave it with no live upstream for a
        # moment (its 502), which it clears at once: one more try, not a failed request.
        relay_retries = 1 if retry and len(attempts) == 1 else 0
        while attempts:
            url = attempts.pop(0)
            try:
                r = await self.client.request(
                    method, f"{url}{path}", timeout=deadline_s or self.timeout, **kwargs
                )
                _raise_for_error(r)
                return r
            except Overloaded as exc:
                last = exc
                if busy_retries:
                    busy_retries -= 1
                    attempts.append(url)
            except (httpx.TransportError, ShardUnavailable) as exc:
                last = exc
                log.warning("shard %s%s failed: %s", url, path, exc)
                if relay_retries and isinstance(exc, ShardUnavailable):
                    relay_retries -= 1
                    attempts.append(url)
        if isinstance(last, Overloaded):  # every replica is busy: say so, not "down"
            raise last
        raise ShardUnavailable(f"no replica answered: {last}")

    async def identify(
        self, urls: list[str], store_id: str, image: bytes, top_k: int
    ) -> wire.IdentifyResponse:
        r = await self._call(
            urls,
            "POST",
            f"/v1/stores/{store_id}/identify",
            files={"image": ("image", image)},
            data={"top_k": str(top_k)},
        )
        return wire.IdentifyResponse.model_validate_json(r.content)

    async def search(
        self,
        urls: list[str],
        stores: list[str],
        embeddings: list[list[float]],
        top_k: int,
        deadline_s: float | None = None,
    ) -> wire.SearchResponse:
        """One call searches every listed store the group hosts."""
        body = wire.SearchRequest(embeddings=embeddings, top_k=top_k, stores=stores).model_dump()
        r = await self._call(urls, "POST", "/v1/search", json=body, deadline_s=deadline_s)
        return wire.SearchResponse.model_validate_json(r.content)

    async def enroll_embedding(
        self, urls: list[str], store_id: str, req: wire.EnrollEmbeddingRequest
    ) -> wire.EnrollResponse:
        # Not retried on another replica: the first may have stored it before failing;
        # a learned view (max_vectors) is, since the same embedding is stored once.
        r = await self._call(
            urls,
            "POST",
            f"/v1/stores/{store_id}/faces/embedding",
            json=req.model_dump(),
            retry=req.max_vectors is not None,
        )
        return wire.EnrollResponse.model_validate_json(r.content)

    async def register(
        self, urls: list[str], store_id: str, req: wire.RegisterRequest
    ) -> wire.EnrollResponse:
        # Retry is safe: a retry finds the face the failed attempt may have stored.
        r = await self._call(urls, "POST", f"/v1/stores/{store_id}/register", json=req.model_dump())
        return wire.EnrollResponse.model_validate_json(r.content)

    async def enroll_image(
        self, urls: list[str], store_id: str, image: bytes, form: dict[str, str]
    ) -> wire.EnrollResponse:
        # Retry is safe: the same photo is recognised by its hash and not added twice.
        r = await self._call(
            urls,
            "POST",
            f"/v1/stores/{store_id}/faces",
            files={"image": ("image", image)},
            data=form,
        )
        return wire.EnrollResponse.model_validate_json(r.content)

    async def store_info(
        self, urls: list[str], store_id: str, timeout_s: float
    ) -> wire.InfoResponse | None:
        """A store's index as one replica of its group sees it; None when none answers."""
        try:
            r = await self._call(urls, "GET", f"/v1/stores/{store_id}/info", deadline_s=timeout_s)
        except (ShardUnavailable, RemoteError):
            return None
        return wire.InfoResponse.model_validate_json(r.content)

    async def node_info(self, urls: list[str], timeout_s: float) -> wire.NodeInfoResponse | None:
        """What a group runs (its embedder's identity) and its stores, as one replica sees
        them; None when none answers (or every replica is busy)."""
        try:
            r = await self._call(urls, "GET", "/v1/info", deadline_s=timeout_s)
        except (ShardUnavailable, RemoteError, Overloaded):
            return None
        return wire.NodeInfoResponse.model_validate_json(r.content)

    async def ready(self, urls: list[str]) -> bool:
        async def one(url: str) -> bool:
            try:
                r = await self.client.get(f"{url}/readyz", timeout=1.0)
                return r.status_code == 200
            except httpx.TransportError:
                return False

        return any(await asyncio.gather(*(one(u) for u in urls)))
