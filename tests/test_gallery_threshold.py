"""A store's match threshold follows its size (issue 13): the rule, real embeddings, a shard."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
import redis as redis_lib

from gateway.recognition import FanOut
from shard_node.faces.registry import embedder_info
from storeface import wire
from storeface.distances import distances
from storeface.errors import ConfigError
from storeface.matching import REFERENCE_FACES, SizeRule, size_rule_for
from storeface.stores import parse_stores
from tests.inprocess import InProcess, in_process, recognize
from tests.support import RedisServer
from tools.dataset import EmbeddedSet

SIZES = [1, 10, 500, REFERENCE_FACES, REFERENCE_FACES + 1, 5_000, 10**4, 10**5, 10**6, 10**8]


def test_threshold_is_the_base_for_small_stores_then_falls_with_size() -> None:
    rule = SizeRule(base=0.56, per_decade=0.05)
    got = [rule.threshold(n) for n in SIZES]
    assert all(t == 0.56 for n, t in zip(SIZES, got, strict=True) if n <= REFERENCE_FACES)
    assert all(a > b for a, b in itertools.pairwise(got[3:]))  # strictly, past 1,000
    assert rule.threshold(REFERENCE_FACES * 10) == pytest.approx(0.51)
    assert rule.threshold(REFERENCE_FACES * 1000) == pytest.approx(0.41)
    assert rule.threshold(10**30) >= 0.0
    assert "tenfold" in rule.describe()


def test_a_fixed_rule_and_the_embedders_defaults() -> None:
    fixed = SizeRule(base=0.43, per_decade=0.0)
    assert {fixed.threshold(n) for n in SIZES} == {0.43}
    assert fixed.describe() == "fixed at 0.43"
    assert size_rule_for("arcface", 0.56).per_decade > 0
    assert size_rule_for("arcface", 0.56, per_decade=0.0).threshold(10**6) == 0.56
    assert size_rule_for("some-onnx-model", 0.3).threshold(10**6) == 0.3  # not measured: fixed
    assert size_rule_for("dlib", 0.5, per_decade=0.1).threshold(10**5) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("value", "needle"),
    [("-0.01", "stores.yaml:3: stores.0.threshold_per_decade"), ("1", "stores.yaml:3")],
)
def test_stores_yaml_validates_threshold_per_decade(value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_stores(f"stores:\n  - id: a\n    threshold_per_decade: {value}\n")
    assert needle in err.value.message
    ok = parse_stores("stores:\n  - id: a\n    threshold_per_decade: 0\n")
    assert ok.stores[0].threshold_per_decade == 0


def _fpir(strangers: np.ndarray, gallery: np.ndarray, threshold: float) -> float:
    return float((distances(strangers, gallery, "l2").min(1) <= threshold).mean())


def test_false_matches_grow_with_the_gallery_and_the_rule_holds_them(
    distractor_set: EmbeddedSet,
) -> None:
    """Real faces (dlib, lfw distractors): strangers meet more look-alikes in a bigger
    gallery at a fixed threshold; the size rule's threshold gives back fewer of them."""
    base = embedder_info("dlib").threshold
    x = distractor_set.embeddings[distractor_set.ok]
    rng = np.random.default_rng(7)
    small, big, ruled = [], [], []
    rule = size_rule_for("dlib", base, per_decade=0.05)
    for _ in range(10):
        perm = rng.permutation(len(x))
        strangers, gallery = x[perm[:100]], x[perm[100:]]
        small.append(_fpir(strangers, gallery[:100], base))
        big.append(_fpir(strangers, gallery, base))
        # as if the gallery were 100x bigger than it is: the threshold it would get
        ruled.append(_fpir(strangers, gallery, rule.threshold(len(gallery) * 100)))
    assert np.mean(big) > 3 * np.mean(small)
    assert np.mean(ruled) < np.mean(big)


def test_the_closest_different_people_are_kept_apart_in_a_big_store(
    distractor_set: EmbeddedSet,
) -> None:
    """The nearest two different people of the lfw distractors: one match for the other in a
    small store at dlib's threshold; apart once the store is big enough."""
    base = embedder_info("dlib").threshold
    x = distractor_set.embeddings[distractor_set.ok]
    d = distances(x, x, "l2")
    np.fill_diagonal(d, np.inf)
    closest = float(d.min())
    rule = size_rule_for("dlib", base)
    assert closest <= rule.threshold(500)
    big = next(n for n in (10**k for k in range(3, 12)) if rule.threshold(n) < closest)
    assert rule.threshold(big) < closest <= rule.threshold(big // 10)


# --- through a real shard app ----------------------------------------------------------

PER_DECADE = 0.2  # steep, so a ~1,200-face store is measurably tighter than a small one


def _pair(dev: EmbeddedSet, others: np.ndarray, low: float, high: float) -> tuple[int, int]:
    """Two photos of one person at a distance between `low` and `high`, whose second photo
    has no distractor under `high`: only the rule decides whether they match."""
    for i in range(len(dev.people)):
        for j in range(len(dev.people)):
            if i == j or dev.people[i] != dev.people[j] or not (dev.ok[i] and dev.ok[j]):
                continue
            dij = float(distances(dev.embeddings[[i]], dev.embeddings[[j]], "l2")[0, 0])
            near = float(distances(dev.embeddings[[j]], others, "l2").min())
            if low + 0.005 < dij < high - 0.005 and near > high:
                return i, j
    raise AssertionError("no lfw_dev pair between the two thresholds")


@pytest.fixture(scope="module")
async def apps(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> AsyncIterator[InProcess]:
    redis_lib.Redis(port=redis_server.port).flushall()
    options: dict[str, dict[str, Any]] = {
        "small": {"fallback": "none"},
        "big": {"fallback": "none", "threshold_per_decade": PER_DECADE},
    }
    async with in_process(
        tmp_path_factory.mktemp("gallery_threshold"),
        redis_server.url,
        {"g1": ["small", "big"]},
        store_options=options,
    ) as apps:
        yield apps


@pytest.mark.slow  # enrolls a store past 1,000 faces
@pytest.mark.anyio
async def test_a_big_store_reports_and_uses_its_tighter_threshold(
    apps: InProcess, dev_set: EmbeddedSet, distractor_set: EmbeddedSet
) -> None:
    base = embedder_info("dlib").threshold
    strangers = distractor_set.embeddings[distractor_set.ok]
    size = len(strangers) + 1
    expected = SizeRule(base=base, per_decade=PER_DECADE).threshold(size)
    assert expected < base - 0.01
    i, j = _pair(dev_set, strangers, expected, base)
    person = dev_set.people[i]
    async with httpx.AsyncClient(
        transport=apps.shards["g1"], base_url="http://g1", timeout=60
    ) as shard:
        for k in range(0, len(strangers), 50):  # the big store: every distractor
            rs = [
                await shard.post("/v1/stores/big/faces/embedding", json={"embedding": e.tolist()})
                for e in strangers[k : k + 50]
            ]
            assert all(r.status_code == 201 for r in rs), rs[0].text
        enrolled = {}
        for sid in ("small", "big"):
            r = await shard.post(
                f"/v1/stores/{sid}/faces/embedding",
                json={"embedding": dev_set.embeddings[i].tolist(), "label": person},
            )
            assert r.status_code == 201, r.text
            enrolled[sid] = r.json()["face_id"]
        big = (await shard.get("/v1/stores/big/info")).json()
        small = (await shard.get("/v1/stores/small/info")).json()
        assert big["faces"] == size
        assert big["threshold"] == pytest.approx(expected)
        assert big["base_threshold"] == base
        assert "tenfold" in big["threshold_rule"]
        assert (small["threshold"], small["base_threshold"]) == (base, base)

        image = await anyio.Path(dev_set.paths[j]).read_bytes()
        ident = (
            await shard.post("/v1/stores/big/identify", files={"image": ("f.jpg", image)})
        ).json()
        assert ident["threshold"] == pytest.approx(expected)
        assert ident["gallery_faces"] == size
        nearest = ident["faces"][0]["matches"][0]
        assert nearest["face_id"] == enrolled["big"]
        assert expected < nearest["distance"] <= base  # a match at 0.43, not at this size
        found = (
            await shard.post(
                "/v1/search",
                json={"embeddings": [ident["faces"][0]["embedding"]], "top_k": 1},
            )
        ).json()
        assert found["gallery_faces"] == size + 1

    at_small = (await recognize(apps.gateway, "small", image)).json()["faces"][0]
    assert (at_small["face_id"], at_small["is_new"]) == (enrolled["small"], False)
    at_big = (await recognize(apps.gateway, "big", image)).json()["faces"][0]
    assert at_big["is_new"] and at_big["face_id"] != enrolled["big"]  # not merged with them
    health = (await apps.gateway.get("/v1/stores/big/health")).json()
    assert health["threshold"] == pytest.approx(expected, abs=1e-3)


def test_a_search_of_other_stores_follows_the_faces_it_covers() -> None:
    """A face unknown at home is compared with the other stores' faces too: the chain's size,
    not the home's, sets how strict the match must be."""
    home = wire.IdentifyResponse(
        store_id="s",
        embedder="arcface",
        threshold=0.56,
        gallery_faces=500,
        base_threshold=0.56,
        threshold_per_decade=0.05,
        width=1,
        height=1,
        faces=[],
        timings={},
    )
    assert FanOut([], [], faces=0).threshold(home) == 0.56  # 500 faces: the base
    assert FanOut([], [], faces=99_500).threshold(home) == pytest.approx(0.46)  # 100k
    fixed = home.model_copy(update={"threshold_per_decade": 0.0})
    assert FanOut([], [], faces=10**6).threshold(fixed) == 0.56
