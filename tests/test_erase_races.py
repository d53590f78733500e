"""An erase that lands mid-enrollment stays an erase: naming a face or filing a gallery photo
never brings the FaceId back; and a gallery ingest searches at the threshold its size calls
for. Real Redis, real photos, dlib."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from redis.asyncio import Redis

from shard_node.faces.base import EmbedderInfo
from shard_node.faces.pool import FacePool
from shard_node.faces.registry import embedder_info
from shard_node.gallery import ingest_folder, ingest_threshold, load_index
from shard_node.index import StoreIndex
from storeface.facedb import FaceDB, FaceRecord
from storeface.matching import REFERENCE_FACES
from storeface.stores import StoreConfig

PERSON = "Juanes"


@pytest.fixture
async def db(redis_url: str) -> AsyncIterator[FaceDB]:
    redis = Redis.from_url(redis_url)
    try:
        yield FaceDB(redis)
    finally:
        await redis.aclose()


@pytest.fixture(scope="module")
def pool() -> Iterator[FacePool]:
    pool = FacePool("dlib", workers=1)
    yield pool
    pool.close()


async def _embedding(pool: FacePool, path: Path) -> np.ndarray:
    return (
        (await pool.analyze(await asyncio.to_thread(path.read_bytes), wait=True)).faces[0].embedding
    )


async def _visitor(db: FaceDB, info: EmbedderInfo, embedding: np.ndarray) -> int:
    """A visitor FaceId in store-a, as a door camera's registration makes one."""
    fid = await db.new_face_id()
    await db.add_vector("store-a", fid, embedding, embedder=info.name, kind="visitor")
    return fid


async def _vector_owners(db: FaceDB, store: str) -> set[int]:
    raw = await db.redis.hvals(f"store:{store}:vec")
    return {int(v.partition(b"|")[0]) for v in raw}


@pytest.mark.anyio
async def test_naming_or_filing_an_erased_face_never_brings_it_back(
    db: FaceDB, pool: FacePool, faces: Path
) -> None:
    """The gateway names a FaceId after the shard's enroll returns: an erase in between must
    leave no `face:{fid}` record holding only the name (alive to get_faces, and never swept)."""
    info = embedder_info("dlib")
    emb = await _embedding(pool, faces / "lfw_dev" / PERSON / f"{PERSON}_0001.jpg")
    live, erased = await _visitor(db, info, emb), await _visitor(db, info, emb)
    assert (await db.erase_face(erased)).existed
    assert not await db.label_if_unlabelled(erased, PERSON)
    assert not await db.redis.exists(f"face:{erased}")
    assert not await db.set_gallery_face("store-a", PERSON, erased)
    assert await db.gallery_face("store-a", PERSON) is None
    assert await db.get_faces([live, erased]) == {live: await db.get_face(live)}
    # A live face is named once; a name it has is kept.
    assert await db.label_if_unlabelled(live, PERSON)
    assert not await db.label_if_unlabelled(live, "Someone_Else")
    record = await db.get_face(live)
    assert record is not None and (record.label, record.kind) == (PERSON, "visitor")


@pytest.mark.anyio
async def test_ingest_never_files_a_photo_under_a_face_erased_meanwhile(
    db: FaceDB, pool: FacePool, faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingest finds the person's photo is a visitor's FaceId, then the visitor is erased
    before the photo is filed: the photo is listed as skipped, nothing comes back, and a
    re-run files it under a new FaceId."""
    info = embedder_info("dlib")
    source = faces / "lfw_dev" / PERSON / f"{PERSON}_0001.jpg"
    visitor = await _visitor(db, info, await _embedding(pool, source))
    folder = tmp_path / "gallery"
    (folder / PERSON).mkdir(parents=True)
    (folder / PERSON / source.name).symlink_to(source)
    index = await load_index(db, info, "store-a")
    assert index.face_count == 1

    looked_up = db.get_face

    async def then_erased(face_id: int) -> FaceRecord | None:
        """The liveness check answers, then an erase lands (DELETE /v1/faces/{id})."""
        record = await looked_up(face_id)
        if face_id == visitor and record is not None:
            assert (await db.erase_face(face_id, reason="test")).existed
        return record

    monkeypatch.setattr(db, "get_face", then_erased)

    async def ingest() -> tuple[int, list[tuple[str, str]], dict[str, int]]:
        report = await ingest_folder(
            db, pool, "store-a", info, folder, index=index, threshold=info.threshold
        )
        return report.added, report.skipped, report.faces

    added, skipped, filed = await ingest()
    assert (added, skipped, filed) == (
        0,
        [(str(folder / PERSON / source.name), "face_not_found")],
        {},
    )
    assert not await db.redis.exists(f"face:{visitor}")
    assert not await db.redis.exists(f"face:{visitor}:vecs")
    assert visitor not in await _vector_owners(db, "store-a")
    assert await db.gallery_face("store-a", PERSON) is None

    added, skipped, filed = await ingest()  # the erased FaceId is found no more
    assert (added, skipped) == (1, [])
    assert filed[PERSON] != visitor
    assert await db.gallery_face("store-a", PERSON) == filed[PERSON]
    assert await _vector_owners(db, "store-a") == {filed[PERSON]}
    record = await looked_up(filed[PERSON])
    assert record is not None and (record.label, record.kind) == (PERSON, "gallery")
    assert not await db.redis.exists(f"face:{visitor}")


def _index(info: EmbedderInfo, faces: int, first_id: int) -> StoreIndex:
    """An index holding `faces` FaceIds (one vector each): only their number matters here."""
    index = StoreIndex(info.dim, info.metric, info.name)
    vecs = np.random.default_rng(first_id).normal(size=(faces, info.dim)).astype(np.float32)
    ids = list(range(first_id, first_id + faces))
    index.add(ids, ids, vecs)
    return index


def test_an_everywhere_ingest_searches_at_the_threshold_of_every_face_it_searches() -> None:
    """`ingest --everywhere` compares each person with the home's faces and the chain's: the
    size rule over all of them, as the gateway's fan-out, not the loose base threshold."""
    info = embedder_info("dlib")
    home, chain = _index(info, 800, 1), _index(info, 19_200, 10_000)
    store = StoreConfig(id="store-a", threshold=0.5)
    assert ingest_threshold(info, store, [home]) == 0.5  # under 1,000 faces: the base
    everywhere = ingest_threshold(info, store, [home, chain])
    per_decade = 0.5 - ingest_threshold(info, store, [_index(info, 10 * REFERENCE_FACES, 1)])
    assert per_decade > 0  # dlib's measured rule tightens
    assert everywhere == pytest.approx(
        0.5 - per_decade * math.log10(20_000 / REFERENCE_FACES), abs=1e-6
    )
    assert everywhere < 0.5
    fixed = StoreConfig(id="store-a", threshold=0.5, threshold_per_decade=0)
    assert ingest_threshold(info, fixed, [home, chain]) == 0.5
    default = StoreConfig(id="store-a")  # no threshold set: the embedder's, then tightened
    assert ingest_threshold(info, default, [home, chain]) < info.threshold


@pytest.mark.anyio
async def test_erase_and_merge_find_gallery_names_that_differ_from_the_label(
    db: FaceDB, pool: FacePool, faces: Path
) -> None:
    """A visitor labelled "Bob" filed in a gallery as "Robert": erase drops that name too
    (it named a person whose FaceId is gone), and a merge moves it to the kept FaceId."""
    info = embedder_info("dlib")
    emb = await _embedding(pool, faces / "lfw_dev" / PERSON / f"{PERSON}_0001.jpg")
    gone, keep = await _visitor(db, info, emb), await _visitor(db, info, emb)
    assert await db.label_if_unlabelled(gone, "Bob")
    assert await db.set_gallery_face("store-a", "Robert", gone)
    assert await db.set_gallery_face("store-b", "Rob", gone)
    await db.merge_faces(keep, gone)
    assert await db.gallery_face("store-a", "Robert") == keep
    assert await db.gallery_face("store-b", "Rob") == keep
    await db.erase_face(keep)
    assert await db.gallery_face("store-a", "Robert") is None
    assert await db.gallery_face("store-b", "Rob") is None
    assert not await db.redis.keys(f"face:{keep}*")
    assert not await db.redis.keys(f"face:{gone}*")
