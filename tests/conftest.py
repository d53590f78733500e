"""Shared fixtures: one real Redis per session, real photos from ../shared/faces."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib

from storeface.paths import faces_dir
from tests.support import RedisServer
from tools.dataset import EmbeddedSet, embed_folder


def pytest_configure(config: pytest.Config) -> None:
    """A run stopped with SIGTERM (`timeout`, CI giving up) tears its fixtures down as on
    Ctrl-C: the Redis, shard and nginx processes they started are stopped, not orphaned."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


FACES = faces_dir()


def _require_faces() -> Path:
    if not (FACES / "lfw_dev").is_dir():
        pytest.fail(f"the labelled photos are missing: {FACES}/lfw_dev (set STOREFACE_FACES_DIR)")
    return FACES


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """asyncio for every async test; session-wide so module-scoped async fixtures may use it."""
    return "asyncio"


@pytest.fixture(scope="session")
def faces() -> Path:
    return _require_faces()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean database for each test that asks for one."""
    client = redis_lib.Redis(port=redis_server.port)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture(scope="session")
def dev_set(faces: Path) -> EmbeddedSet:
    """Every lfw_dev photo through the real dlib pipeline, once per session (cached)."""
    return embed_folder(faces / "lfw_dev")


@pytest.fixture(scope="session")
def distractor_set(faces: Path) -> EmbeddedSet:
    return embed_folder(faces / "lfw_distractors")


def photo(faces_root: Path, person: str, n: int = 1) -> bytes:
    return (faces_root / "lfw_dev" / person / f"{person}_{n:04d}.jpg").read_bytes()
