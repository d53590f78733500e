"""Ingesting a <person>/<photo> folder: one FaceId per person, skips reported, idempotent."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support import RedisServer, ShardNode, run_ingest, wait_until, write_stores

pytestmark = pytest.mark.slow  # starts server processes or embeds many photos

PEOPLE = {"Paul_Tagliabue": 3, "Mary_Carey": 2, "Juanes": 2}


def _folder(root: Path, faces: Path) -> Path:
    """Three people (links to real photos), a blank photo and a two-person photo."""
    for person, n in PEOPLE.items():
        (root / person).mkdir(parents=True)
        for i in range(1, n + 1):
            name = f"{person}_{i:04d}.jpg"
            (root / person / name).symlink_to(faces / "lfw_dev" / person / name)
    Image.new("RGB", (200, 200), "white").save(root / "Juanes" / "blank.jpg")
    group = Image.new("RGB", (520, 260), "gray")
    group.paste(Image.open(faces / "lfw_dev/Mary_Carey/Mary_Carey_0001.jpg"), (0, 5))
    group.paste(Image.open(faces / "lfw_dev/Juanes/Juanes_0001.jpg"), (265, 5))
    group.save(root / "Mary_Carey" / "group.jpg")
    # Paul in front, someone small behind him: his face dominates, so it is enrolled
    front = Image.new("RGB", (400, 260), "gray")
    front.paste(Image.open(faces / "lfw_dev/Paul_Tagliabue/Paul_Tagliabue_0002.jpg"), (0, 5))
    behind = Image.open(faces / "lfw_dev/Juanes/Juanes_0002.jpg").resize((120, 120))
    front.paste(behind, (270, 20))
    front.save(root / "Paul_Tagliabue" / "dominant.jpg")
    (root / "Mary_Carey" / "notes.txt").write_text("not a photo")
    broken = io.BytesIO()
    Image.new("RGB", (50, 50)).save(broken, "JPEG")
    (root / "Paul_Tagliabue" / "broken.jpg").write_bytes(broken.getvalue()[:100])
    return root


def _ingest(stores: Path, redis_url: str, folder: Path, *extra: str) -> str:
    out = run_ingest(stores, redis_url, folder, "gal", *extra, workers=2)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_ingest_command_reports_skips_and_is_idempotent(
    tmp_path: Path, faces: Path, redis_url: str
) -> None:
    folder = _folder(tmp_path / "gallery", faces)
    stores = write_stores(tmp_path / "stores.yaml", [{"id": "gal"}])
    report = _ingest(stores, redis_url, folder)
    assert "3 people, 8 photos added, 0 already ingested, 3 skipped" in report
    assert f"several faces in {folder / 'Paul_Tagliabue' / 'dominant.jpg'}: enrolled" in report
    assert "blank.jpg: no_face" in report
    assert "group.jpg: multiple_faces" in report
    assert "broken.jpg: truncated_image" in report
    again = _ingest(stores, redis_url, folder)
    assert "0 photos added, 8 already ingested" in again
    # the same face under another folder name (re-encoded: new bytes) joins its FaceId
    alias = tmp_path / "alias" / "Someone"
    alias.mkdir(parents=True)
    Image.open(faces / "lfw_dev/Juanes/Juanes_0001.jpg").save(alias / "x.jpg", quality=80)
    known = _ingest(stores, redis_url, alias.parent)
    assert "1 people already known under a FaceId" in known
    assert "Someone: already known as FaceId" in known
    # --largest takes the bigger face of the group photo instead of skipping it
    assert "1 photos added" in _ingest(stores, redis_url, folder, "--largest")

    node = ShardNode("gal", stores, redis_url, tmp_path).start()
    try:
        info = httpx.get(f"{node.url}/v1/stores/gal/info").json()
        assert (info["faces"], info["vectors"]) == (3, 10)  # the alias joined Juanes: no 4th face
        probe = (faces / "lfw_dev/Paul_Tagliabue/Paul_Tagliabue_0004.jpg").read_bytes()
        r = httpx.post(
            f"{node.url}/v1/stores/gal/identify", files={"image": ("p.jpg", probe)}, timeout=60
        ).json()
        assert r["faces"][0]["matches"][0]["label"] == "Paul_Tagliabue"
    finally:
        node.stop()


def test_gallery_in_stores_yaml_is_ingested_at_start(
    tmp_path: Path, faces: Path, redis_server: RedisServer, redis_url: str
) -> None:
    folder = _folder(tmp_path / "gallery", faces)
    stores = write_stores(tmp_path / "stores.yaml", [{"id": "gal", "gallery": str(folder)}])
    a = ShardNode("gal", stores, redis_url, tmp_path / "a").start(wait=False)
    b = ShardNode("gal", stores, redis_url, tmp_path / "b").start(wait=False)
    try:
        for n in (a, b):
            n.wait_ready()
            wait_until(
                lambda n=n: httpx.get(f"{n.url}/v1/stores/gal/info").json()["vectors"] == 8,
                120,
                what="gallery ingested and seen by every replica",
            )
        labels = httpx.post(
            f"{a.url}/v1/search", json={"embeddings": [[0.0] * 128], "top_k": 10}
        ).json()["results"][0]
        assert sorted(m["label"] for m in labels) == sorted(PEOPLE)
    finally:
        a.stop()
        b.stop()
