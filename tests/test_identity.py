"""One person, one FaceId: enrollment that knows who it has, members bound once, erase by
photo. In-process apps over ASGI (tests/inprocess.py), real Redis, real photos."""

from __future__ import annotations

import io
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
import redis as redis_lib
from PIL import Image
from redis.asyncio import Redis

from gateway import service
from gateway.analytics import Analytics
from gateway.recognition import Gateway
from gateway.routing import StoreMap
from gateway.shards import ShardClient
from shard_node.faces.pool import FacePool
from shard_node.faces.registry import embedder_info
from shard_node.gallery import ingest_folder
from shard_node.index import StoreIndex
from storeface.errors import MemberTaken
from storeface.facedb import FaceDB
from tests.conftest import photo
from tests.inprocess import InProcess, in_process
from tests.support import RedisServer, run_ingest

NODES = {"n1": ["store-a", "store-b"], "n2": ["store-c"]}
# store-c is in another region and its recognition looks no further: only enrollment's
# `everywhere` (the chain) reaches it from store-a's people, and store-a's from it.
SOUTH = {"store-c": {"region": "south", "fallback": "region"}}


@pytest.fixture
async def apps(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[InProcess]:
    """A fresh chain for each test: what one test enrolls cannot answer another's."""
    redis_lib.Redis(port=redis_server.port).flushall()
    async with in_process(tmp_path, redis_server.url, NODES, store_options=SOUTH) as apps:
        yield apps


def reencoded(data: bytes, quality: int = 70) -> bytes:
    """The same photo saved again: other bytes, (almost) the same face."""
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


async def enroll(apps: InProcess, store: str, image: bytes, **form: str) -> httpx.Response:
    return await apps.gateway.post(
        f"/v1/stores/{store}/faces", files={"image": ("p.jpg", image)}, data=form
    )


async def _second_face_id(apps: InProcess, image: bytes) -> int:
    """The photo's face enrolled again at store-c (group n2) straight through the shard's
    embedding endpoint, which does not deduplicate: one person under a second FaceId."""
    async with httpx.AsyncClient(transport=apps.shards["n1"], base_url="http://n1") as n1:
        ident = await n1.post("/v1/stores/store-a/identify", files={"image": ("p.jpg", image)})
        embedding = ident.json()["faces"][0]["embedding"]
    async with httpx.AsyncClient(transport=apps.shards["n2"], base_url="http://n2") as n2:
        dup = await n2.post("/v1/stores/store-c/faces/embedding", json={"embedding": embedding})
    assert dup.status_code == 201, dup.text
    return int(dup.json()["face_id"])


async def recognize(apps: InProcess, store: str, image: bytes) -> dict:
    r = await apps.gateway.post(
        "/v1/recognize", files={"image": ("q.jpg", image)}, data={"store_id": store}
    )
    assert r.status_code == 200, r.text
    return dict(r.json()["faces"][0])


@pytest.mark.anyio
async def test_enrolling_a_known_face_answers_its_face_id(apps: InProcess, faces: Path) -> None:
    clooney = photo(faces, "George_Clooney", 1)
    visitor = await recognize(apps, "store-a", clooney)
    assert visitor["is_new"] is True
    # the same photo, and a re-encoded copy, enrolled afterwards: the visitor's FaceId
    for image in (clooney, reencoded(clooney)):
        r = await enroll(apps, "store-a", image, label="George_Clooney")
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["face_id"], body["created"]) == (visitor["face_id"], False)
        assert body["distance"] is not None and body["distance"] < 0.2
        assert body["matched_store"] == "store-a"
    # the visitor had no name: the enrollment's label is now theirs
    assert (await recognize(apps, "store-a", clooney))["label"] == "George_Clooney"
    # asked for a new person explicitly: a clear 409 naming who it is, for the very same
    # photo (known by its bytes) as for another copy of it
    for image in (clooney, reencoded(clooney, 50)):
        r = await enroll(apps, "store-a", image, new_person="true")
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "already_enrolled"
        assert r.json()["error"]["details"]["face_id"] == visitor["face_id"]


@pytest.mark.anyio
async def test_everywhere_finds_the_face_in_another_group(apps: InProcess, faces: Path) -> None:
    """The option searches the chain: another node group, another region, whatever the
    store's fallback policy (store-c's is `region`); without it, this store only."""
    person = "Rebekah_Chantay_Revels"
    first = await enroll(apps, "store-a", photo(faces, person, 1), label=person)
    assert first.status_code == 201, first.text
    fid = first.json()["face_id"]
    again = photo(faces, person, 1)
    # store-c alone does not know her: a new FaceId without the option
    alone = await enroll(apps, "store-c", reencoded(again))
    assert alone.status_code == 201, alone.text
    assert alone.json()["face_id"] != fid
    assert (await apps.gateway.delete(f"/v1/faces/{alone.json()['face_id']}")).status_code == 200
    # with it, her FaceId from store-a (another group and region), and the photo filed here
    r = await enroll(apps, "store-c", reencoded(again, 60), everywhere="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["face_id"], body["created"], body["matched_store"]) == (fid, False, "store-a")
    assert 0 <= body["distance"] < 0.2
    seen = await recognize(apps, "store-c", again)
    assert (seen["face_id"], seen["matched_store"], seen["label"]) == (fid, "store-c", person)
    # asked for a new person: refused, naming the store she was found in
    r = await enroll(apps, "store-b", reencoded(again, 50), everywhere="true", new_person="true")
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "already_enrolled"
    assert r.json()["error"]["details"]["face_id"] == fid
    erased = await apps.gateway.delete(f"/v1/faces/{fid}")
    assert sorted(erased.json()["stores"]) == ["store-a", "store-c"]


@pytest.mark.anyio
async def test_a_member_enrolled_again_keeps_their_face_id(apps: InProcess, faces: Path) -> None:
    """Another photo of a member, with their member id: the same FaceId, found at home or
    (with `everywhere`) in another store; not member_taken."""
    a = await enroll(apps, "store-a", photo(faces, "Juanes", 1), member_id="M-5")
    assert a.status_code == 201, a.text
    fid = a.json()["face_id"]
    home = await enroll(apps, "store-a", reencoded(photo(faces, "Juanes", 1)), member_id="M-5")
    assert home.status_code == 200, home.text
    assert (home.json()["face_id"], home.json()["member_moved_from"]) == (fid, None)
    far = await enroll(
        apps,
        "store-c",
        reencoded(photo(faces, "Juanes", 1), 60),
        member_id="M-5",
        everywhere="true",
    )
    assert far.status_code == 200, far.text
    assert (far.json()["face_id"], far.json()["matched_store"]) == (fid, "store-a")
    # someone else with that member id is still refused, with or without the option
    for extra in ({}, {"everywhere": "true"}):
        other = await enroll(
            apps, "store-c", photo(faces, "Mary_Carey", 1), member_id="M-5", **extra
        )
        assert other.status_code == 409, other.text
        assert other.json()["error"]["code"] == "member_taken"
        assert other.json()["error"]["details"]["face_id"] == fid
    seen = await recognize(apps, "store-c", photo(faces, "Juanes", 1))
    assert seen["face_id"] == fid and seen["member"]["member_id"] == "M-5"


@pytest.mark.anyio
async def test_a_photo_filed_under_someone_else_is_refused(apps: InProcess, faces: Path) -> None:
    tom = await enroll(apps, "store-a", photo(faces, "Juanes", 1), label="Juanes")
    assert tom.status_code == 201
    fid = tom.json()["face_id"]
    wrong = await enroll(apps, "store-a", photo(faces, "George_Clooney", 1), face_id=str(fid))
    assert wrong.status_code == 409, wrong.text
    err = wrong.json()["error"]
    assert (
        err["code"] == "face_mismatch" and err["details"]["distance"] > err["details"]["threshold"]
    )
    # the index did not take it: Clooney is still nobody's
    assert (await recognize(apps, "store-b", photo(faces, "George_Clooney", 1)))["is_new"] is True
    # the same person's other photo is taken, with its distance
    same = await enroll(apps, "store-a", reencoded(photo(faces, "Juanes", 1)), face_id=str(fid))
    assert same.status_code == 200 and same.json()["distance"] < 0.2
    forced = await enroll(
        apps, "store-a", photo(faces, "Mark_Gottfried", 1), face_id=str(fid), force="true"
    )
    assert forced.status_code == 200 and forced.json()["face_id"] == fid


@pytest.mark.anyio
async def test_a_member_is_bound_to_one_face_at_a_time(apps: InProcess, faces: Path) -> None:
    a = await enroll(apps, "store-a", photo(faces, "Juanes", 1), member_id="M-77")
    assert a.status_code == 201, a.text
    fa = a.json()["face_id"]
    b = await enroll(apps, "store-a", photo(faces, "George_Clooney", 1), member_id="M-77")
    assert b.status_code == 409 and b.json()["error"]["code"] == "member_taken"
    assert b.json()["error"]["details"]["face_id"] == fa
    moved = await enroll(
        apps, "store-a", photo(faces, "George_Clooney", 1), member_id="M-77", move_member="true"
    )
    assert moved.status_code == 201, moved.text
    fb = moved.json()["face_id"]
    assert moved.json()["member_moved_from"] == fa
    seen = await recognize(apps, "store-a", photo(faces, "Juanes", 1))
    assert seen["face_id"] == fa and seen["member"] is None and seen["kind"] == "visitor"
    seen = await recognize(apps, "store-a", photo(faces, "George_Clooney", 1))
    assert seen["face_id"] == fb and seen["member"]["member_id"] == "M-77"
    # binding by hand: the same rule
    r = await apps.gateway.put(f"/v1/faces/{fa}/member", json={"member_id": "M-77"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "member_taken"
    r = await apps.gateway.put(f"/v1/faces/{fa}/member", json={"member_id": "M-77", "move": True})
    assert r.status_code == 200 and r.json()["moved_from"] == fb


@pytest.mark.anyio
async def test_erase_by_photo_forgets_every_face_id_of_the_person(
    apps: InProcess, faces: Path
) -> None:
    person = "Rebekah_Chantay_Revels"
    enrolled = await enroll(apps, "store-a", photo(faces, person, 1), label=person)
    assert enrolled.status_code == 201
    other = await enroll(apps, "store-b", photo(faces, "Juanes", 1), label="Juanes")
    # the same person under a second FaceId in another group, as older data may hold
    ids = {enrolled.json()["face_id"], await _second_face_id(apps, photo(faces, person, 1))}
    assert len(ids) == 2
    r = await apps.gateway.post(
        "/v1/erase", files={"image": ("p.jpg", reencoded(photo(faces, person, 1)))}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert {e["face_id"] for e in body["erased"]} == ids
    assert all(e["distance"] <= body["max_distance"] for e in body["erased"])
    assert sorted(s for e in body["erased"] for s in e["stores"]) == ["store-a", "store-c"]
    # forgotten everywhere; someone else is untouched
    assert (await recognize(apps, "store-b", photo(faces, person, 1)))["face_id"] not in ids
    juanes = await recognize(apps, "store-b", photo(faces, "Juanes", 1))
    assert juanes["face_id"] == other.json()["face_id"]
    # a photo of nobody known: a clear 404, nothing erased
    r = await apps.gateway.post(
        "/v1/erase", files={"image": ("x.jpg", photo(faces, "Mark_Gottfried", 1))}
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "face_not_found"


@pytest.mark.anyio
async def test_folder_ingest_joins_a_face_the_store_already_has(
    apps: InProcess, faces: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    """A gallery folder whose person already visited: the visitor's FaceId, now labelled."""
    visitor = await recognize(apps, "store-a", photo(faces, "Juanes", 1))
    folder = tmp_path / "gallery"
    for person in ("Juanes", "Mary_Carey"):
        (folder / person).mkdir(parents=True)
        for n in (1, 2):
            name = f"{person}_{n:04d}.jpg"
            (folder / person / name).symlink_to(faces / "lfw_dev" / person / name)
    redis = Redis.from_url(redis_server.url)
    db = FaceDB(redis)
    info = embedder_info("dlib")
    index = StoreIndex(info.dim, info.metric, info.name)
    async for vids, fids, embs in db.scan_vectors("store-a"):
        index.add(vids, fids, embs)
    pool = FacePool("dlib", workers=1)
    try:
        report = await ingest_folder(
            db,
            pool,
            "store-a",
            info,
            folder,
            index=index,
            threshold=info.threshold,
            on_added=lambda gen, vid, fid, emb: _add(index, vid, fid, emb),
        )
        assert report.known["Juanes"][0] == visitor["face_id"]
        assert report.faces["Juanes"] == visitor["face_id"]
        assert report.faces["Mary_Carey"] != visitor["face_id"]
        assert "1 people already known" in report.summary()
        record = await db.get_face(visitor["face_id"])
        assert record is not None and record.label == "Juanes"
    finally:
        pool.close()
        await redis.aclose()


def _add(index: StoreIndex, vec_id: int, face_id: int, embedding: np.ndarray) -> None:
    index.add([vec_id], [face_id], embedding)


@pytest.mark.anyio
async def test_merge_makes_two_face_ids_one_person(apps: InProcess, faces: Path) -> None:
    """Older data may hold one person twice: merge keeps one FaceId, everywhere."""
    person = "Rebekah_Chantay_Revels"
    kept = await enroll(apps, "store-a", photo(faces, person, 1), label=person)
    keep = kept.json()["face_id"]
    gone = await _second_face_id(apps, photo(faces, person, 1))
    bound = await apps.gateway.put(f"/v1/faces/{gone}/member", json={"member_id": "M-9"})
    assert bound.status_code == 200
    r = await apps.gateway.post(f"/v1/faces/{keep}/merge", json={"other": gone})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["face_id"], body["merged"], body["stores"]) == (keep, gone, ["store-c"])
    assert (body["label"], body["member_id"]) == (person, "M-9")
    # store-c's own index now answers with the kept FaceId, and its member
    seen = await recognize(apps, "store-c", photo(faces, person, 1))
    assert seen["face_id"] == keep and seen["member"]["member_id"] == "M-9"
    gone_now = await apps.gateway.post(f"/v1/faces/{keep}/merge", json={"other": gone})
    assert gone_now.status_code == 404 and gone_now.json()["error"]["details"]["face_id"] == gone
    # erase of the kept FaceId now reaches both stores
    erased = await apps.gateway.delete(f"/v1/faces/{keep}")
    assert erased.json()["stores"] == ["store-a", "store-c"]


@pytest.mark.anyio
async def test_merge_of_two_members_is_refused(apps: InProcess, faces: Path) -> None:
    """Two FaceIds bound to different members: which member the person is, is the
    operator's call (unbind one first); nothing is merged."""
    person = "Rebekah_Chantay_Revels"
    kept = await enroll(apps, "store-a", photo(faces, person, 1), member_id="M-1")
    keep = kept.json()["face_id"]
    gone = await _second_face_id(apps, photo(faces, person, 1))
    bound = await apps.gateway.put(f"/v1/faces/{gone}/member", json={"member_id": "M-2"})
    assert bound.status_code == 200, bound.text
    r = await apps.gateway.post(f"/v1/faces/{keep}/merge", json={"other": gone})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "member_taken"
    seen = await recognize(apps, "store-c", photo(faces, person, 1))
    assert seen["face_id"] == gone and seen["member"]["member_id"] == "M-2"
    seen = await recognize(apps, "store-a", photo(faces, person, 1))
    assert seen["face_id"] == keep and seen["member"]["member_id"] == "M-1"
    # unbound, the merge goes through and the kept FaceId's member stays
    assert (await apps.gateway.delete(f"/v1/faces/{gone}/member")).status_code == 200
    r = await apps.gateway.post(f"/v1/faces/{keep}/merge", json={"other": gone})
    assert r.status_code == 200 and r.json()["member_id"] == "M-1", r.text


async def _today(apps: InProcess, store: str) -> dict:
    r = await apps.gateway.get(f"/v1/stores/{store}/stats")
    assert r.status_code == 200, r.text
    return dict(r.json()["days"][-1])


@pytest.mark.anyio
async def test_merge_carries_the_visit_history(
    apps: InProcess, faces: Path, redis_server: RedisServer
) -> None:
    """After a merge the person's visits read as one person's: inside the dedupe window of
    the ended FaceId's last visit a sighting is `deduped`, after it `returning` (its first
    sighting at that store passed over), never a second `new` visitor."""
    person = "Rebekah_Chantay_Revels"
    keep = (await enroll(apps, "store-a", photo(faces, person, 1))).json()["face_id"]
    gone = await _second_face_id(apps, photo(faces, person, 1))
    first = await recognize(apps, "store-c", photo(faces, person, 1))
    assert (first["face_id"], first["visit"]) == (gone, "new")
    assert (await recognize(apps, "store-a", photo(faces, person, 1)))["visit"] == "new"
    r = await apps.gateway.post(f"/v1/faces/{keep}/merge", json={"other": gone})
    assert r.status_code == 200, r.text
    seen = await recognize(apps, "store-c", photo(faces, person, 1))
    assert (seen["face_id"], seen["visit"]) == (keep, "deduped")
    # the dedupe window passes (its key expires)
    redis_lib.Redis(port=redis_server.port).delete(f"seen:store-c:{keep}")
    seen = await recognize(apps, "store-c", photo(faces, person, 1))
    assert (seen["face_id"], seen["visit"]) == (keep, "returning")
    today = await _today(apps, "store-c")
    assert (today["pv"], today["new"]) == (2, 1)
    # nothing of the ended FaceId is left to count or to forget
    raw = redis_lib.Redis(port=redis_server.port)
    assert raw.hget("store:store-c:first_seen", str(gone)) is None
    assert not raw.exists(f"face:{gone}:visited", f"seen:store-c:{gone}")
    assert raw.sismember(f"face:{keep}:visited", "store-c")


class _BindsFirst(FaceDB):
    """Another request binds a member to `gone` just before the face merge runs."""

    async def merge_faces(self, keep: int, gone: int) -> list[str]:
        await self.bind_member(gone, "M-late", {})
        return await super().merge_faces(keep, gone)


@pytest.mark.anyio
async def test_visit_history_moves_only_with_the_face_merge(
    apps: InProcess, faces: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    """A face merge refused after the request began leaves both visit histories where they
    were; a gateway that died right after the face merge left the ended FaceId's history,
    and a re-run of the merge moves it."""
    person = "Rebekah_Chantay_Revels"
    kept = await enroll(apps, "store-a", photo(faces, person, 1), member_id="M-1")
    keep = kept.json()["face_id"]
    gone = await _second_face_id(apps, photo(faces, person, 1))
    assert (await recognize(apps, "store-c", photo(faces, person, 1)))["face_id"] == gone
    raw = redis_lib.Redis(port=redis_server.port)

    def history() -> tuple[bool, bool, bool]:
        """(gone's first sighting at store-c, keep's, gone's visited set)"""
        first = "store:store-c:first_seen"
        return (
            raw.hget(first, str(gone)) is not None,
            raw.hget(first, str(keep)) is not None,
            bool(raw.exists(f"face:{gone}:visited")),
        )

    redis = Redis.from_url(redis_server.url)
    try:
        async with httpx.AsyncClient() as client:
            racing = Gateway(
                stores=StoreMap(tmp_path / "stores.yaml"),
                shards=ShardClient(client, 5.0),
                db=_BindsFirst(redis),
                analytics=Analytics(redis, 1800),
                fanout_deadline_s=5.0,
            )
            with pytest.raises(MemberTaken):
                await service.merge(racing, keep, gone)
        assert history() == (True, False, True)
        assert (await apps.gateway.delete(f"/v1/faces/{gone}/member")).status_code == 200
        await FaceDB(redis).merge_faces(keep, gone)  # and the gateway died here
        assert history() == (True, False, True)
        again = await apps.gateway.post(f"/v1/faces/{keep}/merge", json={"other": gone})
        assert again.status_code == 404 and again.json()["error"]["details"]["face_id"] == gone
        assert history() == (False, True, False)
        assert raw.sismember(f"face:{keep}:visited", "store-c")
    finally:
        await redis.aclose()


@pytest.mark.slow
@pytest.mark.anyio
async def test_ingest_everywhere_joins_a_face_of_another_store(
    apps: InProcess, faces: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    """`python -m shard_node ingest --everywhere`: a person another group's store already
    saw joins that FaceId; without the option, the store's own faces only."""
    visitor = await recognize(apps, "store-c", photo(faces, "Juanes", 1))
    folder = tmp_path / "gallery"
    for person in ("Juanes", "Mary_Carey"):
        (folder / person).mkdir(parents=True)
        name = f"{person}_0002.jpg"
        (folder / person / name).symlink_to(faces / "lfw_dev" / person / name)

    def ingest(store: str, *flags: str) -> subprocess.CompletedProcess[str]:
        return run_ingest(tmp_path / "stores.yaml", redis_server.url, folder, store, *flags)

    done = await anyio.to_thread.run_sync(ingest, "store-b", "--everywhere")
    assert done.returncode == 0, done.stderr
    assert f"Juanes: already known as FaceId {visitor['face_id']} in store-c" in done.stdout
    assert "1 people already known" in done.stdout
    seen = await recognize(apps, "store-b", photo(faces, "Juanes", 1))
    assert (seen["face_id"], seen["matched_store"], seen["label"]) == (
        visitor["face_id"],
        "store-b",
        "Juanes",
    )
    alone = await anyio.to_thread.run_sync(ingest, "store-a")
    assert alone.returncode == 0, alone.stderr
    assert "0 people already known" in alone.stdout
    assert "already known as FaceId" not in alone.stdout
