"""The Redis client both services use: one Redis by URL, or the primary the Sentinels name.

Every call survives a dropped connection (retried with backoff on a fresh one, which under
Sentinel asks for the primary again, so a failover is followed). With Sentinel, every write
is acknowledged only once a replica has it too (`WAIT 1 <timeout>` on the write's own
connection), so a failover loses nothing acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

RETRIES = 4
# A frozen primary answers nothing: a call gives up on it after this and retries, which
# bounds a request's wait to about RETRIES × it. Above any blocking read (feed_block_ms)
# and WAIT_TIMEOUT_MS.
SOCKET_TIMEOUT_S = 2.0
WAIT_TIMEOUT_MS = 1000
DEFAULT_SERVICE = "storeface"

log = logging.getLogger("storeface.redis")

# Commands that change data: each is followed by WAIT when a replica must confirm it.
_WRITES = """append bitfield bitop copy decr decrby del eval evalsha expire expireat fcall
    geoadd getdel getex getset hdel hincrby hincrbyfloat hmset hset hsetnx incr incrby
    incrbyfloat linsert lmove lpop lpush lrem lset ltrim move mset msetnx persist pexpire
    pexpireat pfadd pfmerge psetex rename renamenx restore rpop rpush sadd sdiffstore set
    setex setnx setrange sinterstore smove spop srem sunionstore unlink xack xadd xautoclaim
    xclaim xdel xgroup xtrim zadd zincrby zpopmax zpopmin zrem zremrangebylex
    zremrangebyrank zremrangebyscore zunionstore exec"""
WRITES = frozenset(_WRITES.split())


class NotReplicated(RedisError):
    """The primary took a write but no replica confirmed it within the WAIT timeout."""


def _is_write(args: Sequence[Any]) -> bool:
    name = args[0]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return name.split(" ", 1)[0].lower() in WRITES


async def _call(conn: Connection, *args: Any) -> Any:
    await conn.send_command(*args)
    return await conn.read_response()


async def _attached(conn: Connection) -> int:
    """How many replicas the primary on `conn` has attached now."""
    role = await _call(conn, "ROLE")
    return len(role[2]) if role[0] in (b"master", "master") else 0


async def _check_primary(conn: Connection) -> None:
    """A primary alone may be a former one that Sentinel has not yet made a replica: a
    write it took is lost then, so it is not acknowledged but retried on the real one."""
    pool = getattr(conn, "connection_pool", None)
    if pool is not None and (conn.host, conn.port) != await pool.get_master_address():
        await conn.disconnect()
        raise RedisConnectionError(f"{conn.host}:{conn.port} is no longer the primary")


class Durability:
    """WAIT for `replicas` after each write, on the connection that wrote (WAIT counts that
    client's writes only). With no replica attached (after a failover, until the old
    primary returns as a replica) a write is acknowledged by the primary alone: the
    alternative is refusing every write until then."""

    def __init__(self, replicas: int, timeout_ms: int) -> None:
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self.alone = False

    async def confirm(self, conn: Connection) -> None:
        if self.alone:  # WAIT would block for its whole timeout: ask first (one round trip)
            if not await _attached(conn):
                await _check_primary(conn)
                return
            log.warning("a Redis replica is attached again: writes wait for it")
            self.alone = False
        acked = int(await _call(conn, "WAIT", self.replicas, self.timeout_ms))
        if acked >= self.replicas:
            return
        if not await _attached(conn):
            log.warning("no Redis replica attached: writes are acknowledged by the primary alone")
            self.alone = True
            await _check_primary(conn)
            return
        raise NotReplicated(
            f"{acked} of {self.replicas} replicas confirmed it in {self.timeout_ms} ms"
        )


class DurableRedis(Redis):
    """A client whose writes return only once its `durability` is met (None: at once)."""

    durability: Durability | None = None

    async def _send_command_parse_response(
        self, conn: Connection, command_name: str, *args: Any, **options: Any
    ) -> Any:
        result = await super()._send_command_parse_response(conn, command_name, *args, **options)
        if self.durability and _is_write((command_name,)):
            await self.durability.confirm(conn)
        return result

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = DurablePipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe.durability = self.durability
        return pipe


class DurablePipeline(Pipeline):
    """A pipeline (or MULTI/EXEC) followed by one WAIT when it wrote anything."""

    durability: Durability | None = None

    async def _durable(self, conn: Connection, commands: Iterable[Any]) -> None:
        if self.durability and any(_is_write(args) for args, _ in commands):
            await self.durability.confirm(conn)

    async def _execute_transaction(
        self, connection: Connection, commands: Any, raise_on_error: bool
    ) -> Any:
        result = await super()._execute_transaction(connection, commands, raise_on_error)
        await self._durable(connection, commands)
        return result

    async def _execute_pipeline(
        self, connection: Connection, commands: Any, raise_on_error: bool
    ) -> Any:
        result = await super()._execute_pipeline(connection, commands, raise_on_error)
        await self._durable(connection, commands)
        return result


class FollowingConnection(SentinelManagedConnection):
    """Asks the Sentinels for the primary on every reconnect: redis-py's retry reconnects a
    dropped connection to the address it had, so it kept retrying a frozen old primary."""

    async def connect_to(self, address: tuple[str, int]) -> None:
        self.host, self.port = address
        await super().connect_check_health(
            check_health=self.connection_pool.check_connection, retry_socket_connect=False
        )

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if not self.is_connected and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health, retry_socket_connect)


def parse_sentinels(sentinels: str) -> list[tuple[str, int]]:
    """ "host:port,host:port" → [(host, port), ...]."""
    out = []
    for item in sentinels.split(","):
        if item.strip():
            host, _, port = item.strip().rpartition(":")
            out.append((host or "127.0.0.1", int(port)))
    return out


def connect(
    url: str,
    sentinels: str = "",
    service: str = DEFAULT_SERVICE,
    wait_timeout_ms: int = WAIT_TIMEOUT_MS,
) -> DurableRedis:
    """A pooled client for `url`, or (with `sentinels`) for the primary of `service`, whose
    calls are retried with backoff on a fresh connection; under Sentinel each write waits
    for one replica."""
    options: dict[str, Any] = {
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.1), RETRIES),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "socket_connect_timeout": 2.0,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "health_check_interval": 30,
    }
    addrs = parse_sentinels(sentinels)
    if not addrs:
        plain = DurableRedis.from_url(url, **options)
        assert isinstance(plain, DurableRedis)
        return plain
    tail = url.rsplit("/", 1)[-1]
    db = int(tail) if tail.isdigit() else 0
    sentinel = Sentinel(
        addrs, sentinel_kwargs={"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
    )
    client = sentinel.master_for(
        service,
        redis_class=DurableRedis,
        connection_class=FollowingConnection,
        db=db,
        **options,
    )
    assert isinstance(client, DurableRedis)
    client.durability = Durability(1, wait_timeout_ms)
    return client
