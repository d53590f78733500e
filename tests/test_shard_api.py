"""The shard node over real HTTP, real Redis and real photos."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis as redis_lib
from PIL import Image

from tests.conftest import photo
from tests.support import RedisServer, ShardNode, wait_until, write_stores

pytestmark = pytest.mark.slow  # starts server processes or embeds many photos

STORE = "shard-test"


@pytest.fixture(scope="module")
def shard(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShardNode]:

    redis_lib.Redis(port=redis_server.port).flushall()
    work = tmp_path_factory.mktemp("shard")
    stores = write_stores(work / "stores.yaml", [{"id": STORE}, {"id": "other"}])
    node = ShardNode(
        STORE, stores, redis_server.url, work, max_image_bytes="2000000", max_pixels="4000000"
    ).start()
    yield node
    node.stop()


@pytest.fixture
def client(shard: ShardNode) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shard.url, timeout=60) as c:
        yield c


def enroll(client: httpx.Client, data: bytes, **form: str) -> httpx.Response:
    return client.post(
        f"/v1/stores/{STORE}/faces", files={"image": ("p.jpg", data, "image/jpeg")}, data=form
    )


def info(client: httpx.Client) -> dict:
    return client.get(f"/v1/stores/{STORE}/info").json()


def test_info_describes_store_and_embedder(client: httpx.Client) -> None:
    body = info(client)
    assert body["store_id"] == STORE
    assert (body["embedder"], body["dim"], body["metric"]) == ("dlib", 128, "l2")
    assert body["index"] == "flat" and body["rebuilding"] is False
    assert 0 < body["threshold"] < 0.6


def test_enroll_then_identify_same_person_other_photo(client: httpx.Client, faces: Path) -> None:
    r = enroll(client, photo(faces, "Rebekah_Chantay_Revels", 1), label="Rebekah_Chantay_Revels")
    assert r.status_code == 201, r.text
    face_id = r.json()["face_id"]
    assert r.json()["created"] is True

    r = client.post(
        f"/v1/stores/{STORE}/identify",
        files={"image": ("q.jpg", photo(faces, "Rebekah_Chantay_Revels", 3))},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["faces"]) == 1
    face = body["faces"][0]
    assert face["matches"][0]["face_id"] == face_id
    assert face["matches"][0]["label"] == "Rebekah_Chantay_Revels"
    assert face["matches"][0]["distance"] <= body["threshold"]
    assert len(face["embedding"]) == 128
    assert face["quality"]["size"] > 60
    assert set(body["timings"]) >= {"decode_ms", "detect_ms", "embed_ms", "search_ms"}


def test_same_photo_twice_is_not_added_twice(client: httpx.Client, faces: Path) -> None:
    data = photo(faces, "Eddy_Merckx", 1)
    first = enroll(client, data, label="Eddy_Merckx").json()
    before = info(client)["vectors"]
    second = enroll(client, data, label="Eddy_Merckx").json()
    assert second["duplicate"] is True and second["face_id"] == first["face_id"]
    assert info(client)["vectors"] == before


def test_add_photo_to_existing_face_and_erase_all_vectors(
    client: httpx.Client, faces: Path
) -> None:
    face_id = enroll(client, photo(faces, "George_Clooney", 1)).json()["face_id"]
    # dlib puts these two photos of him beyond its threshold: refused unless forced
    r = enroll(client, photo(faces, "George_Clooney", 2), face_id=str(face_id))
    assert r.status_code == 409 and r.json()["error"]["code"] == "face_mismatch"
    r = enroll(client, photo(faces, "George_Clooney", 2), face_id=str(face_id), force="true")
    assert r.status_code == 200 and r.json()["face_id"] == face_id and not r.json()["created"]
    before = info(client)
    r = client.delete(f"/v1/faces/{face_id}")
    assert r.status_code == 200 and r.json()["erased"]
    after = info(client)
    assert after["vectors"] == before["vectors"] - 2
    assert after["faces"] == before["faces"] - 1
    probe = client.post(
        f"/v1/stores/{STORE}/identify",
        files={"image": ("q.jpg", photo(faces, "George_Clooney", 3))},
    ).json()
    assert all(m["face_id"] != face_id for m in probe["faces"][0]["matches"])
    assert client.delete(f"/v1/faces/{face_id}").status_code == 404


def test_search_by_embedding_returns_distinct_faces(client: httpx.Client, faces: Path) -> None:
    enroll(client, photo(faces, "Barbra_Streisand", 1), label="Barbra_Streisand")
    ident = client.post(
        f"/v1/stores/{STORE}/identify",
        files={"image": ("q.jpg", photo(faces, "Barbra_Streisand", 3))},
    ).json()
    emb = ident["faces"][0]["embedding"]
    r = client.post("/v1/search", json={"embeddings": [emb], "top_k": 3})
    assert r.status_code == 200
    rows = r.json()["results"]
    ids = [m["face_id"] for m in rows[0]]
    assert len(ids) == len(set(ids))
    assert [m["distance"] for m in rows[0]] == sorted(m["distance"] for m in rows[0])
    assert rows[0][0]["label"] == "Barbra_Streisand"


def test_enroll_embedding_with_register_threshold_reuses_close_face(
    client: httpx.Client, faces: Path
) -> None:
    ident = client.post(
        f"/v1/stores/{STORE}/identify",
        files={"image": ("q.jpg", photo(faces, "Barbra_Streisand", 3))},
    ).json()
    emb = ident["faces"][0]["embedding"]
    r = client.post(
        f"/v1/stores/{STORE}/faces/embedding",
        json={"embedding": emb, "kind": "visitor", "register_threshold": 0.45},
    )
    assert r.status_code == 201
    assert r.json()["created"] is False
    assert r.json()["face_id"] == ident["faces"][0]["matches"][0]["face_id"]


# --- bad input: a clear 4xx with a stable code, and the index unchanged -----------------


def _jpeg(size: tuple[int, int], color: str = "white") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def _bomb() -> bytes:
    """A small PNG whose header promises 10k x 10k pixels."""
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, "PNG")
    return buf.getvalue()


def _group(faces: Path) -> bytes:
    canvas = Image.new("RGB", (560, 300), "gray")
    canvas.paste(Image.open(io.BytesIO(photo(faces, "Barbra_Streisand", 1))), (0, 25))
    canvas.paste(Image.open(io.BytesIO(photo(faces, "Eddy_Merckx", 1))), (300, 25))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG")
    return buf.getvalue()


BAD = {
    "not_an_image": (lambda f: b"%PDF-1.4 definitely not a photo" * 10, 415, "not_an_image"),
    "truncated": (lambda f: photo(f, "Eddy_Merckx", 2)[:3000], 400, "truncated_image"),
    "empty": (lambda f: b"", 400, "empty_image"),
    "huge_file": (lambda f: b"\xff\xd8" + b"\0" * 2_100_000, 413, "image_too_large"),
    "bomb": (lambda f: _bomb(), 413, "decompression_bomb"),
    "no_face": (lambda f: _jpeg((300, 300)), 422, "no_face"),
    "two_faces": (_group, 422, "multiple_faces"),
    "tiny_face": (lambda f: _small_face(f), 422, "face_too_small"),
}


def _small_face(faces: Path) -> bytes:
    img = Image.open(io.BytesIO(photo(faces, "Barbra_Streisand", 1))).resize((90, 90))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_enrollment_is_4xx_and_changes_nothing(
    client: httpx.Client, faces: Path, case: str
) -> None:
    make, status, code = BAD[case]
    before = info(client)
    r = enroll(client, make(faces))
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert info(client)["vectors"] == before["vectors"]


@pytest.mark.parametrize("case", ["not_an_image", "truncated", "empty", "huge_file", "bomb"])
def test_bad_identify_is_4xx(client: httpx.Client, faces: Path, case: str) -> None:
    make, status, code = BAD[case]
    r = client.post(f"/v1/stores/{STORE}/identify", files={"image": ("x.jpg", make(faces))})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_identify_without_image_is_missing_field(client: httpx.Client) -> None:
    r = client.post(f"/v1/stores/{STORE}/identify", data={"top_k": "3"})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "missing_field"


def test_identify_no_face_is_empty_list_not_error(client: httpx.Client) -> None:
    r = client.post(f"/v1/stores/{STORE}/identify", files={"image": ("x.jpg", _jpeg((200, 200)))})
    assert r.status_code == 200 and r.json()["faces"] == []


def test_embedding_of_wrong_dimension_is_refused(client: httpx.Client) -> None:
    r = client.post("/v1/search", json={"embeddings": [[0.1] * 12]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_embedding"
    r = client.post(f"/v1/stores/{STORE}/faces/embedding", json={"embedding": [0.1] * 512})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_embedding"


def test_group_photo_answers_every_face_largest_first(client: httpx.Client, faces: Path) -> None:
    r = client.post(f"/v1/stores/{STORE}/identify", files={"image": ("g.jpg", _group(faces))})
    body = r.json()
    assert len(body["faces"]) == 2
    sizes = [f["box"]["w"] * f["box"]["h"] for f in body["faces"]]
    assert sizes == sorted(sizes, reverse=True)


def test_exif_orientation_is_applied(client: httpx.Client, faces: Path) -> None:
    """A photo stored sideways with an EXIF 'rotate' tag is still seen upright."""
    img = Image.open(io.BytesIO(photo(faces, "Eddy_Merckx", 1))).rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    r = client.post(f"/v1/stores/{STORE}/identify", files={"image": ("r.jpg", buf.getvalue())})
    assert len(r.json()["faces"]) == 1
    plain = io.BytesIO()
    img.save(plain, "JPEG")
    r2 = client.post(f"/v1/stores/{STORE}/identify", files={"image": ("r.jpg", plain.getvalue())})
    assert r2.json()["faces"] == []  # sideways without the tag: HOG finds nobody


def test_metrics_and_health(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json()["status"] == "ready"
    text = client.get("/metrics").text
    assert "storeface_http_request_seconds" in text
    assert "storeface_shard_vectors" in text
    assert 'storeface_stage_seconds_count{service="shard",stage="embed"}' in text


def test_unknown_face_for_photo_add_is_404(client: httpx.Client, faces: Path) -> None:
    r = enroll(client, photo(faces, "Carlos_Bianchi", 1), face_id="999999")
    assert r.status_code == 404 and r.json()["error"]["code"] == "face_not_found"
    wait_until(lambda: True)
