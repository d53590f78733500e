"""A confident, unambiguous recognition of a good face teaches its FaceId one more view (an
embedding), up to a cap enforced in Redis; far, ambiguous or poor faces teach nothing, and
erase takes the learned views with it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import anyio
import httpx
import numpy as np
import pytest
import redis as redis_lib

from shard_node.faces.registry import embedder_info
from storeface.distances import distances
from storeface.errors import ConfigError
from storeface.stores import LearnViews, parse_stores
from tests.conftest import photo
from tests.inprocess import InProcess, apps_fixture, recognize
from tests.support import RedisServer
from tools.dataset import EmbeddedSet

pytestmark = pytest.mark.slow

CONFIDENT, NOVEL = 0.9, 0.1  # of the threshold; chosen so dlib's lfw_dev pairs fall on both sides
LEARN = {"max_per_face": 3, "confident": CONFIDENT, "novel": NOVEL, "margin": 0.0}
STORES = ["learn", "cap", "margin", "blurry", "race", "plain"]
apps = apps_fixture(
    "views",
    {"n1": STORES},
    store_options={
        "learn": {"fallback": "none", "learn_views": LEARN},
        "cap": {"fallback": "none", "learn_views": {**LEARN, "max_per_face": 2}},
        "margin": {"fallback": "none", "learn_views": {**LEARN, "margin": 1.0}},
        "blurry": {"fallback": "none", "learn_views": LEARN, "min_face_blur": 1e6},
        "race": {"fallback": "none", "learn_views": LEARN},
        "plain": {"fallback": "none"},  # learn_views unset: off
    },
)


@dataclass
class Case:
    person: str
    enrolled: int  # photo number enrolled
    others: list[int]  # photo numbers recognized after it


@dataclass
class Cases:
    """People whose photos fall where each test needs them, found from their embeddings."""

    threshold: float
    confident: list[Case]  # one other photo within the learning band of the enrolled one
    two_views: Case  # two other photos in the band, apart from each other by more than novel
    uncertain: Case  # one other photo matched, but further than confident


def _number(path: str) -> int:
    return int(Path(path).stem.rsplit("_", 1)[1])


def _index(dev_set: EmbeddedSet, person: str, n: int) -> int:
    name = f"{person}_{n:04d}.jpg"
    return next(i for i, p in enumerate(dev_set.paths) if Path(p).name == name)


@pytest.fixture(scope="module")
def cases(dev_set: EmbeddedSet) -> Cases:
    t = embedder_info("dlib").threshold
    lo, hi = NOVEL * t, CONFIDENT * t
    d = distances(dev_set.embeddings, dev_set.embeddings, "l2")
    people = np.asarray(dev_set.people)
    confident, two, uncertain = [], [], []
    for person in sorted(set(dev_set.people)):
        idx = np.flatnonzero((people == person) & dev_set.ok)
        a, rest = idx[0], idx[1:]
        near = [j for j in rest if lo < d[a, j] <= hi]
        if near:
            confident.append(
                Case(person, _number(dev_set.paths[a]), [_number(dev_set.paths[near[0]])])
            )
        pairs = [(j, k) for j in near for k in near if j < k and d[j, k] > lo]
        if pairs:
            j, k = pairs[0]
            two.append(
                Case(person, _number(dev_set.paths[a]), [_number(dev_set.paths[x]) for x in (j, k)])
            )
        far = [j for j in rest if hi < d[a, j] <= t]
        if far:
            uncertain.append(
                Case(person, _number(dev_set.paths[a]), [_number(dev_set.paths[far[0]])])
            )
    assert len(confident) >= 6 and two and uncertain, (len(confident), len(two), len(uncertain))
    return Cases(t, confident, two[0], uncertain[0])


@pytest.fixture
def rdb(redis_server: RedisServer) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis(port=redis_server.port)
    yield client
    client.close()


async def _enroll(apps: InProcess, faces: Path, store: str, person: str, n: int) -> int:
    r = await apps.gateway.post(
        f"/v1/stores/{store}/faces",
        files={"image": ("a.jpg", photo(faces, person, n))},
        data={"label": person, "largest": "true"},
    )
    assert r.status_code == 201, r.text
    return int(r.json()["face_id"])


async def _seen(apps: InProcess, faces: Path, store: str, person: str, n: int) -> dict:
    """A recognition, once whatever it learned after answering is done."""
    r = await recognize(apps.gateway, store, photo(faces, person, n))
    assert r.status_code == 200, r.text
    await _settled(apps)
    return r.json()["faces"][0]


async def _metric(apps: InProcess, name: str) -> float:
    text = (await apps.gateway.get("/metrics")).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, text[:500]
    return float(m.group(1))


async def _settled(apps: InProcess) -> None:
    """Wait until the gateway learns no view in the background."""
    for _ in range(3000):
        if await _metric(apps, "storeface_learning") == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the gateway is still learning views")


def _views(rdb: redis_lib.Redis, face_id: int) -> int:
    return int(rdb.scard(f"face:{face_id}:vecs"))


async def _learned_total(apps: InProcess) -> float:
    return await _metric(apps, "storeface_learned_views_total")


@pytest.mark.anyio
async def test_a_confident_match_of_another_photo_adds_a_view(
    apps: InProcess, faces: Path, cases: Cases, rdb: redis_lib.Redis
) -> None:
    case = cases.confident[0]
    fid = await _enroll(apps, faces, "learn", case.person, case.enrolled)
    before = await _learned_total(apps)
    face = await _seen(apps, faces, "learn", case.person, case.others[0])
    assert face["face_id"] == fid
    assert NOVEL * cases.threshold < face["distance"] <= CONFIDENT * cases.threshold
    assert _views(rdb, fid) == 2
    assert await _learned_total(apps) == before + 1
    again = await _seen(apps, faces, "learn", case.person, case.others[0])
    assert again["face_id"] == fid and again["distance"] < 1e-3  # now matched by its own view
    assert _views(rdb, fid) == 2  # and not learned twice


@pytest.mark.anyio
async def test_the_cap_holds(
    apps: InProcess, faces: Path, cases: Cases, rdb: redis_lib.Redis
) -> None:
    case = cases.two_views
    fid = await _enroll(apps, faces, "cap", case.person, case.enrolled)
    first = await _seen(apps, faces, "cap", case.person, case.others[0])
    assert first["face_id"] == fid and _views(rdb, fid) == 2
    second = await _seen(apps, faces, "cap", case.person, case.others[1])
    assert second["face_id"] == fid
    assert second["distance"] > NOVEL * cases.threshold  # novel enough: only the cap stops it
    assert _views(rdb, fid) == 2


@pytest.mark.anyio
async def test_the_cap_holds_for_concurrent_learners(
    apps: InProcess, dev_set: EmbeddedSet, rdb: redis_lib.Redis
) -> None:
    """Two gateways learning at once: the shard's Redis script checks the cap, not the caller."""
    embs = dev_set.embeddings[dev_set.ok]
    async with httpx.AsyncClient(transport=apps.shards["n1"], base_url="http://n1") as shard:
        url = "/v1/stores/race/faces/embedding"
        r = await shard.post(url, json={"embedding": embs[0].tolist(), "kind": "visitor"})
        assert r.status_code == 201, r.text
        fid = r.json()["face_id"]
        learns = [{"embedding": e.tolist(), "face_id": fid, "max_vectors": 2} for e in embs[1:9]]
        answers = await asyncio.gather(*(shard.post(url, json=body) for body in learns))
        assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
        stored = [a.json() for a in answers if a.json()["vec_id"]]
        assert len(stored) == 1
        assert sorted(a.json()["skipped"] or "" for a in answers) == [""] + ["capped"] * 7
        assert _views(rdb, fid) == 2
        # a retry of the stored view is a no-op, not a second copy
        winner = next(b for b, a in zip(learns, answers, strict=True) if a.json()["vec_id"])
        retry = await shard.post(url, json={**winner, "max_vectors": 3})
        assert retry.json()["duplicate"] is True and _views(rdb, fid) == 2


@pytest.mark.anyio
async def test_an_uncertain_match_adds_nothing(
    apps: InProcess, faces: Path, cases: Cases, rdb: redis_lib.Redis
) -> None:
    case = cases.uncertain
    fid = await _enroll(apps, faces, "learn", case.person, case.enrolled)
    face = await _seen(apps, faces, "learn", case.person, case.others[0])
    assert face["face_id"] == fid and face["distance"] > CONFIDENT * cases.threshold
    assert _views(rdb, fid) == 1


@pytest.mark.anyio
async def test_a_match_close_to_another_faceid_adds_nothing(
    apps: InProcess, faces: Path, cases: Cases, dev_set: EmbeddedSet, rdb: redis_lib.Redis
) -> None:
    """`margin: 1.0`: the next FaceId would have to be a whole threshold further; the other
    person enrolled is the one whose photo lies nearest to the probe."""
    case = cases.confident[1]
    probe = dev_set.embeddings[_index(dev_set, case.person, case.others[0])]
    ok = dev_set.ok & (np.asarray(dev_set.people) != case.person)
    d = distances(probe[None, :], dev_set.embeddings, "l2")[0]
    nearest = int(np.argmin(np.where(ok, d, np.inf)))
    fid = await _enroll(apps, faces, "margin", case.person, case.enrolled)
    other = dev_set.paths[nearest]
    await _enroll(apps, faces, "margin", dev_set.people[nearest], _number(other))
    image = photo(faces, case.person, case.others[0])
    found = await apps.gateway.post(
        "/v1/search", files={"image": ("f.jpg", image)}, data={"store_id": "margin", "top_k": 2}
    )
    first, second = found.json()["faces"][0]["matches"]
    assert first["face_id"] == fid and first["distance"] <= CONFIDENT * cases.threshold
    assert second["distance"] - first["distance"] < cases.threshold  # under the margin
    face = await _seen(apps, faces, "margin", case.person, case.others[0])
    assert face["face_id"] == fid
    assert _views(rdb, fid) == 1


@pytest.mark.anyio
async def test_a_face_under_the_quality_gates_adds_nothing(
    apps: InProcess, faces: Path, cases: Cases, rdb: redis_lib.Redis
) -> None:
    """The store's blur gate sets every face aside: matched as before, never learned from."""
    case = cases.confident[3]
    fid = await _enroll(apps, faces, "blurry", case.person, case.enrolled)
    face = await _seen(apps, faces, "blurry", case.person, case.others[0])
    assert face["face_id"] == fid and face["distance"] <= CONFIDENT * cases.threshold
    assert _views(rdb, fid) == 1
    stranger_case = cases.confident[4]
    stranger = await _seen(apps, faces, "blurry", stranger_case.person, stranger_case.enrolled)
    assert (stranger["face_id"], stranger["visit"]) == (None, "not_counted")


@pytest.mark.anyio
async def test_erase_takes_the_learned_views_and_none_comes_back(
    apps: InProcess, faces: Path, cases: Cases, dev_set: EmbeddedSet, rdb: redis_lib.Redis
) -> None:
    case = cases.confident[4]
    fid = await _enroll(apps, faces, "learn", case.person, case.enrolled)
    learned = photo(faces, case.person, case.others[0])
    assert (await _seen(apps, faces, "learn", case.person, case.others[0]))["face_id"] == fid
    assert _views(rdb, fid) == 2
    entries = cast(set[bytes], rdb.smembers(f"face:{fid}:photos"))
    assert any(e.startswith(b"learn:view-") for e in entries)  # the view's hash, kept
    r = await apps.gateway.delete(f"/v1/faces/{fid}")
    assert r.status_code == 200, r.text
    found = await apps.gateway.post(
        "/v1/search", files={"image": ("f.jpg", learned)}, data={"store_id": "learn"}
    )
    assert found.status_code == 200, found.text
    assert all(m["face_id"] != fid for f in found.json()["faces"] for m in f["matches"])
    assert not rdb.exists(f"face:{fid}", f"face:{fid}:vecs")
    # a learner that matched before the erase must not bring the FaceId back
    i = _index(dev_set, case.person, case.enrolled)
    async with httpx.AsyncClient(transport=apps.shards["n1"], base_url="http://n1") as shard:
        late = await shard.post(
            "/v1/stores/learn/faces/embedding",
            json={"embedding": dev_set.embeddings[i].tolist(), "face_id": fid, "max_vectors": 3},
        )
    assert late.status_code == 404 and late.json()["error"]["code"] == "face_not_found"
    assert not rdb.exists(f"face:{fid}", f"face:{fid}:vecs", f"face:{fid}:photos")
    rows = cast(list[bytes], rdb.hvals("store:learn:vec"))
    assert fid not in [int(v.split(b"|")[0]) for v in rows]
    # the learned view's hash (`view-<sha>`) went with the photo's: none maps to the FaceId
    hashes = cast(dict[bytes, bytes], rdb.hgetall("store:learn:photo"))
    assert fid not in [int(v) for v in hashes.values()]


class _Held(httpx.AsyncBaseTransport):
    """A node group whose embedding enrollments (learned views) wait until released."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.release = asyncio.Event()
        self.waiting = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/faces/embedding"):
            self.waiting += 1
            await self.release.wait()
        return await self.inner.handle_async_request(request)


@pytest.mark.anyio
async def test_the_answer_does_not_wait_for_the_view_to_be_learned(
    apps: InProcess, faces: Path, cases: Cases, rdb: redis_lib.Redis
) -> None:
    case = cases.confident[2]
    fid = await _enroll(apps, faces, "learn", case.person, case.enrolled)
    held = _Held(apps.shards["n1"])
    apps.router.routes["n1"] = held
    try:
        # were the view learned before answering, this would wait for the release: never
        with anyio.fail_after(120):
            r = await recognize(apps.gateway, "learn", photo(faces, case.person, case.others[0]))
        assert r.status_code == 200 and r.json()["faces"][0]["face_id"] == fid
        for _ in range(3000):
            if held.waiting:
                break
            await asyncio.sleep(0.01)
        assert held.waiting == 1 and await _metric(apps, "storeface_learning") == 1
        assert _views(rdb, fid) == 1
        held.release.set()
        await _settled(apps)
    finally:
        held.release.set()
        apps.router.routes["n1"] = apps.shards["n1"]
    assert _views(rdb, fid) == 2


@pytest.mark.anyio
async def test_a_view_waits_briefly_for_the_registration_lock_and_is_skipped(
    apps: InProcess, dev_set: EmbeddedSet, rdb: redis_lib.Redis
) -> None:
    """A registration holding the store's lock: the view's novelty check does not wait for
    it (`busy`, nothing stored); once the lock is free, the same view is learned."""
    embs = dev_set.embeddings[dev_set.ok]
    async with httpx.AsyncClient(transport=apps.shards["n1"], base_url="http://n1") as shard:
        url = "/v1/stores/race/faces/embedding"
        r = await shard.post(url, json={"embedding": embs[20].tolist(), "kind": "visitor"})
        assert r.status_code == 201, r.text
        fid = r.json()["face_id"]
        view = {"embedding": embs[21].tolist(), "face_id": fid, "max_vectors": 3}
        lock = rdb.lock("lock:register:race", timeout=60)
        assert lock.acquire(blocking=False)
        try:
            busy = await shard.post(url, json={**view, "min_distance": 0.0})
        finally:
            lock.release()
        assert busy.status_code == 201, busy.text
        assert (busy.json()["skipped"], busy.json()["vec_id"]) == ("busy", 0)
        assert _views(rdb, fid) == 1
        learned = await shard.post(url, json={**view, "min_distance": 0.0})
        assert learned.json()["skipped"] is None and learned.json()["vec_id"]
        assert _views(rdb, fid) == 2


@pytest.mark.anyio
async def test_learning_options_without_a_face_id_mint_no_face_id(
    apps: InProcess, dev_set: EmbeddedSet, rdb: redis_lib.Redis
) -> None:
    embs = dev_set.embeddings[dev_set.ok]
    before = rdb.get("seq:face")
    async with httpx.AsyncClient(transport=apps.shards["n1"], base_url="http://n1") as shard:
        for extra in ({"max_vectors": 3}, {"min_distance": 0.1}):
            r = await shard.post(
                "/v1/stores/race/faces/embedding",
                json={"embedding": embs[30].tolist(), **extra},
            )
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "invalid_request"
            assert "need face_id" in r.json()["error"]["message"]
    assert rdb.get("seq:face") == before


@pytest.mark.anyio
async def test_learning_is_off_where_a_store_does_not_set_it(
    apps: InProcess, faces: Path, cases: Cases, rdb: redis_lib.Redis
) -> None:
    case = cases.confident[5]
    fid = await _enroll(apps, faces, "plain", case.person, case.enrolled)
    face = await _seen(apps, faces, "plain", case.person, case.others[0])
    assert face["face_id"] == fid and face["distance"] <= CONFIDENT * cases.threshold
    assert _views(rdb, fid) == 1


def test_learning_views_is_off_unless_a_store_sets_it() -> None:
    unset = parse_stores("stores:\n  - id: a\n").stores[0]
    assert unset.learn_views is None
    defaults = parse_stores("stores:\n  - id: a\n    learn_views: {}\n").stores[0]
    assert defaults.learn_views == LearnViews()
    explicit = parse_stores("stores:\n  - id: a\n    learn_views: {max_per_face: 4}\n").stores[0]
    assert explicit.learn_views == LearnViews(max_per_face=4)


def test_learn_views_options_are_checked_with_their_line() -> None:
    text = "stores:\n  - id: a\n    learn_views:\n      confident: 0.5\n      novel: 0.6\n"
    with pytest.raises(ConfigError, match=r"stores.yaml:4: stores.0.learn_views: .*novel"):
        parse_stores(text)
    with pytest.raises(ConfigError, match=r"stores.yaml:4: stores.0.learn_views.max_per_face"):
        parse_stores("stores:\n  - id: a\n    learn_views:\n      max_per_face: 0\n")
    off = parse_stores("stores:\n  - id: a\n    learn_views: null\n")
    assert off.stores[0].learn_views is None
