"""The `storeface` command and `python -m shard_node ingest` on real photos: vectorize,
search (with plots), verify, the cluster key, and no silent success."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import typer
import yaml
from PIL import Image
from typer.testing import CliRunner

from shard_node.faces.registry import make_pipeline
from tests.support import ROOT, GatewayNode, ShardNode, free_port, write_stores
from tools.cli import (
    Vectors,
    app,
    embed_largest,
    plot_matches,
    resolve_api_key,
    search_vectors,
    stats_rows,
)

pytestmark = pytest.mark.slow  # starts server processes or embeds many photos

PEOPLE = 10
DISTRACTORS = 10
# Measured: 10 of the 10 second photos find their person first (dlib, this gallery).
SEARCH_FLOOR = 9

runner = CliRunner()


@pytest.fixture(scope="module")
def gallery(faces: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """First photo of 10 lfw_dev people + 10 distractors + 2 broken files; the second
    photos of the 10 people are the probes."""
    root = tmp_path_factory.mktemp("gallery")
    probes = []
    dev = sorted(p for p in (faces / "lfw_dev").iterdir() if p.is_dir())[:PEOPLE]
    others = sorted(p for p in (faces / "lfw_distractors").iterdir() if p.is_dir())[:DISTRACTORS]
    for person in dev + others:
        photos = sorted(person.iterdir())
        (root / person.name).mkdir()
        (root / person.name / photos[0].name).symlink_to(photos[0])
        probes += photos[1:2]
    broken = root / "Broken_Files"
    broken.mkdir()
    (broken / "truncated.jpg").write_bytes(
        dev[0].joinpath(f"{dev[0].name}_0001.jpg").read_bytes()[:2000]
    )
    (broken / "text.jpg").write_text("not a photo")
    return root, probes


@pytest.fixture(scope="module")
def vectorized(
    gallery: tuple[Path, list[Path]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("vectors") / "gallery.npz"
    result = runner.invoke(
        app,
        ["vectorize", str(gallery[0]), "--out", str(out), "--embedder", "dlib", "--workers", "2"],
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def test_vectorize_writes_a_file_and_reports_skips(vectorized: tuple[Path, str]) -> None:
    out, output = vectorized
    assert "20 photos of 20 people vectorized with dlib" in output
    assert "not_an_image: 1" in output and "truncated_image: 1" in output
    vectors = Vectors.load(out)
    assert (vectors.embedder, vectors.dim, vectors.metric) == ("dlib", 128, "l2")
    assert vectors.embeddings.shape == (20, 128)
    assert len(vectors.people) == len(vectors.paths) == 20
    assert all(Path(p).is_file() for p in vectors.paths)


def test_search_finds_the_person_first(
    vectorized: tuple[Path, str], gallery: tuple[Path, list[Path]]
) -> None:
    out, _ = vectorized
    probes = gallery[1]
    assert len(probes) == PEOPLE
    right = 0
    for probe in probes:
        result = runner.invoke(
            app, ["search", str(probe), "--vectors", str(out), "-k", "3", "--json"]
        )
        assert result.exit_code == 0, result.output
        body = json.loads(result.stdout)
        assert [m["rank"] for m in body["matches"]] == [1, 2, 3]
        assert body["search_ms"] >= 0
        right += body["matches"][0]["person"] == probe.parent.name
    assert right >= SEARCH_FLOOR


def test_search_prints_a_table(
    vectorized: tuple[Path, str], gallery: tuple[Path, list[Path]]
) -> None:
    result = runner.invoke(app, ["search", str(gallery[1][2]), "--vectors", str(vectorized[0])])
    assert result.exit_code == 0, result.output
    assert "distance" in result.stdout and gallery[1][2].parent.name in result.stdout


def test_plot_has_a_panel_per_match_and_the_query(
    vectorized: tuple[Path, str], gallery: tuple[Path, list[Path]]
) -> None:
    vectors = Vectors.load(vectorized[0])
    probe = gallery[1][0]
    face = embed_largest(make_pipeline("dlib"), probe)
    hits, ms = search_vectors(vectors, face.embedding, 3)
    fig = plot_matches(np.asarray(Image.open(probe).convert("RGB")), face.box, hits, ms)
    assert len(fig.axes) == 4
    assert "search" in fig.axes[0].get_title()
    assert fig.axes[1].get_title().startswith(f"#1 {hits[0].person.replace('_', ' ')}")


def test_search_plot_writes_an_image_that_widens_with_k(
    vectorized: tuple[Path, str], gallery: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    widths = []
    for k in (1, 4):
        plot = tmp_path / f"k{k}.jpg"
        result = runner.invoke(
            app,
            [
                "search",
                str(gallery[1][0]),
                "--vectors",
                str(vectorized[0]),
                "-k",
                str(k),
                "--plot",
                str(plot),
            ],
        )
        assert result.exit_code == 0, result.output
        with Image.open(plot) as img:
            img.verify()
        with Image.open(plot) as img:
            widths.append(img.width)
            assert img.format == "JPEG"
    assert widths[1] > 2 * widths[0]


@pytest.mark.parametrize("embedder", ["dlib", "arcface"])
def test_verify_same_and_different(faces: Path, embedder: str) -> None:
    dev = faces / "lfw_dev"
    same = runner.invoke(
        app,
        [
            "verify",
            str(dev / "Barrett_Jackman/Barrett_Jackman_0001.jpg"),
            str(dev / "Barrett_Jackman/Barrett_Jackman_0002.jpg"),
            "--embedder",
            embedder,
        ],
    )
    assert same.exit_code == 0, same.output
    assert same.stdout.startswith("same person") and "threshold" in same.stdout
    different = runner.invoke(
        app,
        [
            "verify",
            str(dev / "Barbra_Streisand/Barbra_Streisand_0001.jpg"),
            str(dev / "Carlos_Bianchi/Carlos_Bianchi_0001.jpg"),
            "--embedder",
            embedder,
        ],
    )
    assert different.exit_code == 1, different.output
    assert different.stdout.startswith("different people") and "distance" in different.stdout


def test_verify_a_broken_photo_fails_with_its_code(
    gallery: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    broken = gallery[0] / "Broken_Files"
    result = runner.invoke(
        app, ["verify", str(broken / "text.jpg"), str(gallery[1][0]), "--embedder", "arcface"]
    )
    assert result.exit_code == 2
    assert "not_an_image" in result.output
    blank = tmp_path / "blank.jpg"
    Image.new("RGB", (200, 200), "white").save(blank)
    result = runner.invoke(app, ["verify", str(gallery[1][0]), str(blank)])
    assert result.exit_code == 2
    assert "no_face" in result.stderr


def test_search_needs_a_vectors_file_or_a_store(gallery: tuple[Path, list[Path]]) -> None:
    result = runner.invoke(app, ["search", str(gallery[1][0])])
    assert result.exit_code == 2
    assert "--vectors" in result.output


def _cluster_commands(gallery: tuple[Path, list[Path]]) -> list[list[str]]:
    """Every command that talks to a cluster, with arguments that would work."""
    return [
        ["stats", "--store", "a"],
        ["erase", "42"],
        ["enroll", str(gallery[0]), "--store", "a"],
        ["search", str(gallery[1][0]), "--store", "a"],
        ["retention", "sweep", "--dry-run"],
    ]


def test_cluster_commands_say_when_the_gateway_is_down(gallery: tuple[Path, list[Path]]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in _cluster_commands(gallery):
        result = runner.invoke(app, [*args, "--url", url], env={"STOREFACE_API_KEY": "k"})
        assert result.exit_code == 1, result.output
        assert f"cannot reach {url}" in result.output


def test_stats_rows_accept_a_list_or_a_mapping_of_days() -> None:
    listed = {"days": [{"day": "2024-05-01", "pv": 3, "uv": 2}]}
    mapped = {"days": {"2024-05-01": {"pv": 3, "uv": 2}}}
    assert stats_rows(listed) == stats_rows(mapped) == [{"day": "2024-05-01", "pv": 3, "uv": 2}]


# --- no silent success -------------------------------------------------------------------


def _no_people(tmp_path: Path, faces: Path) -> Path:
    """A photo straight in the folder and an empty subfolder: no <person>/<photo>."""
    folder = tmp_path / "flat"
    (folder / "Nobody").mkdir(parents=True)
    (folder / "Juanes_0001.jpg").symlink_to(faces / "lfw_dev/Juanes/Juanes_0001.jpg")
    return folder


def test_vectorize_and_enroll_refuse_a_folder_without_people(tmp_path: Path, faces: Path) -> None:
    folder = _no_people(tmp_path, faces)
    out = tmp_path / "out.npz"
    result = runner.invoke(app, ["vectorize", str(folder), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "has no <person>/<photo> subfolders" in result.stderr
    assert not out.exists()
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(
        app, ["enroll", str(folder), "--store", "a", "--url", url], env={"STOREFACE_API_KEY": "k"}
    )
    assert result.exit_code == 1, result.output
    assert "has no <person>/<photo> subfolders" in result.stderr
    assert "cannot reach" not in result.output  # refused before calling the gateway


def test_vectorize_writes_nothing_when_every_photo_is_skipped(
    gallery: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "Broken_Files").symlink_to(gallery[0] / "Broken_Files")
    out = tmp_path / "out.npz"
    result = runner.invoke(app, ["vectorize", str(folder), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 1, result.output
    assert "skipped" in result.stdout and "not written" in result.stderr
    assert not out.exists()


def _shard_ingest(folder: Path, store: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shard_node", "ingest", str(folder), "--store", store],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PATH": "/usr/bin:/bin", "STOREFACE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
        | env,
    )


def test_ingest_refuses_a_folder_without_people(tmp_path: Path, faces: Path) -> None:
    out = _shard_ingest(_no_people(tmp_path, faces), "store-a")
    assert out.returncode == 1, out.stderr
    assert "has no <person>/<photo> subfolders" in out.stderr
    assert "Traceback" not in out.stderr and "wrote" not in out.stdout


def test_ingest_into_an_unknown_store_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "Someone").mkdir()
    out = _shard_ingest(tmp_path, "unknown")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert "'unknown'" in out.stderr and "config/stores.yaml" in out.stderr
    assert "Traceback" not in out.stderr


def test_ingest_of_only_skipped_photos_fails(
    gallery: tuple[Path, list[Path]], tmp_path: Path, redis_url: str
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "Broken_Files").symlink_to(gallery[0] / "Broken_Files")
    stores = write_stores(tmp_path / "stores.yaml", [{"id": "gal"}])
    out = _shard_ingest(
        folder, "gal", STOREFACE_STORES_FILE=str(stores), STOREFACE_REDIS_URL=redis_url
    )
    assert out.returncode == 1, out.stderr
    assert "0 photos added" in out.stdout and "nothing was ingested into gal" in out.stderr


def test_search_plot_with_a_store_is_refused(
    gallery: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    plot = tmp_path / "out.jpg"
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(
        app,
        ["search", str(gallery[1][0]), "--store", "a", "--plot", str(plot), "--url", url],
        env={"STOREFACE_API_KEY": "k"},
    )
    assert result.exit_code == 2, result.output
    assert "--plot" in result.stderr and "--store" in result.stderr
    assert "cannot reach" not in result.output
    assert not plot.exists()


def test_search_plot_fails_loudly_where_it_cannot_be_written(
    vectorized: tuple[Path, str], gallery: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    search = ["search", str(gallery[1][0]), "--vectors", str(vectorized[0]), "--plot"]
    unknown = tmp_path / "out.xyz"
    result = runner.invoke(app, [*search, str(unknown)])
    assert result.exit_code == 2, result.output
    assert "--plot" in result.stderr and not unknown.exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    result = runner.invoke(app, [*search, str(a_file / "out.jpg")])
    assert result.exit_code == 1, result.output
    assert "cannot write the plot" in result.stderr


def _keys_file(path: Path, doc: object) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def test_resolve_api_key_falls_back_to_the_keys_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = _keys_file(tmp_path / "keys.yaml", {"admin_key": "from-file", "camera_keys": {}})
    monkeypatch.setenv("STOREFACE_KEYS_FILE", str(keys))
    assert resolve_api_key("given") == "given"
    assert resolve_api_key(None) == "from-file"
    _keys_file(keys, {"camera_keys": {"cam": ["store-a"]}})
    with pytest.raises(typer.BadParameter, match="holds no admin_key"):
        resolve_api_key(None)
    monkeypatch.setenv("STOREFACE_KEYS_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(typer.BadParameter, match=r"missing\.yaml"):
        resolve_api_key(None)


def test_cluster_commands_without_a_key_exit_2(
    gallery: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    env: dict[str, str | None] = {
        "STOREFACE_API_KEY": None,
        "STOREFACE_ADMIN_KEY": None,
        "STOREFACE_KEYS_FILE": str(tmp_path / "missing.yaml"),
    }
    url = f"http://127.0.0.1:{free_port()}"
    for args in _cluster_commands(gallery):
        result = runner.invoke(app, [*args, "--url", url], env=env)
        assert result.exit_code == 2, result.output
        assert "no API key" in result.stderr and "cannot reach" not in result.output


@pytest.fixture
def stub_gateway() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server that answers every call with 200 and records each X-API-Key sent."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(self.headers.get("X-API-Key", ""))
            body = json.dumps(
                {"face_id": 7, "faces": [], "days": [], "dry_run": True, "expired": 0, "scanned": 0}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_every_cluster_command_sends_the_one_key(
    stub_gateway: tuple[str, list[str]], faces: Path, tmp_path: Path
) -> None:
    url, seen = stub_gateway
    folder = tmp_path / "one"
    (folder / "Juanes").mkdir(parents=True)
    (folder / "Juanes" / "Juanes_0001.jpg").symlink_to(faces / "lfw_dev/Juanes/Juanes_0001.jpg")
    keys = _keys_file(tmp_path / "keys.yaml", {"admin_key": "from-file"})
    commands = (
        ["stats", "--store", "a"],
        ["erase", "42"],
        ["enroll", str(folder), "--store", "a"],
        ["search", str(folder / "Juanes" / "Juanes_0001.jpg"), "--store", "a"],
        ["retention", "sweep", "--dry-run"],
    )
    base = {"STOREFACE_KEYS_FILE": str(keys), "STOREFACE_API_KEY": None}
    for env, flag, expected in (
        (base | {"STOREFACE_ADMIN_KEY": None}, [], "from-file"),
        (base | {"STOREFACE_ADMIN_KEY": "admin-env"}, [], "admin-env"),
        (base | {"STOREFACE_ADMIN_KEY": "admin-env", "STOREFACE_API_KEY": "api"}, [], "api"),
        (base | {"STOREFACE_API_KEY": "api"}, ["--api-key", "flag"], "flag"),
    ):
        seen.clear()
        for args in commands:
            result = runner.invoke(app, [*args, *flag, "--url", url], env=env)
            assert result.exit_code == 0, result.output
        assert seen == [expected] * len(commands)


def test_the_local_admin_key_never_goes_to_another_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"admin_key": "local-secret"}))
    monkeypatch.setenv("STOREFACE_KEYS_FILE", str(keys))
    assert resolve_api_key(None, "http://127.0.0.1:8080") == "local-secret"
    with pytest.raises(typer.BadParameter, match="no API key for"):
        resolve_api_key(None, "https://gateway.example.net")
    assert resolve_api_key("given", "https://gateway.example.net") == "given"


def test_enroll_reports_known_people_and_erase_by_photo_forgets_them(
    tmp_path: Path, faces: Path, redis_url: str
) -> None:
    """Against a real gateway and shard: a person the store already saw joins their FaceId,
    with `--everywhere` also from another store (whose own recognition looks nowhere else),
    and `erase --photo` forgets them (exit 1 once nobody matches any more)."""
    stores = tmp_path / "stores.yaml"
    shard = ShardNode("cli", stores, redis_url, tmp_path)
    gateway = GatewayNode(stores, redis_url, tmp_path, admin_key="cli-admin")
    doc = {
        "nodes": [{"id": "cli", "urls": [shard.url], "embedder": "dlib"}],
        "stores": [
            {"id": "cli", "node": "cli"},
            {"id": "cli-2", "node": "cli", "fallback": "none"},
        ],
    }
    stores.write_text(yaml.safe_dump(doc, sort_keys=False))
    shard.start()
    gateway.start()
    try:
        first = httpx.post(
            f"{gateway.url}/v1/recognize",
            headers={"X-API-Key": "cli-admin"},
            files={"image": ("q.jpg", (faces / "lfw_dev/Juanes/Juanes_0001.jpg").read_bytes())},
            data={"store_id": "cli"},
            timeout=60,
        ).json()["faces"][0]
        folder = tmp_path / "people"
        for person in ("Juanes", "Mary_Carey"):
            (folder / person).mkdir(parents=True)
            name = f"{person}_0001.jpg"
            (folder / person / name).symlink_to(faces / "lfw_dev" / person / name)
        args = ["--url", gateway.url, "--api-key", "cli-admin"]
        done = runner.invoke(app, ["enroll", str(folder), "--store", "cli", *args])
        assert done.exit_code == 0, done.output
        assert f"Juanes: already known as FaceId {first['face_id']}" in done.output
        assert "1 already known under a FaceId" in done.output
        chain = runner.invoke(
            app, ["enroll", str(folder), "--store", "cli-2", "--everywhere", *args]
        )
        assert chain.exit_code == 0, chain.output
        assert f"Juanes: already known as FaceId {first['face_id']} in cli " in chain.output
        assert "2 already known under a FaceId" in chain.output
        photo = str(faces / "lfw_dev/Juanes/Juanes_0001.jpg")
        erased = runner.invoke(app, ["erase", "--photo", photo, *args])
        assert erased.exit_code == 0, erased.output
        assert f"erased face {first['face_id']}" in erased.output
        assert "cli, cli-2" in erased.output
        again = runner.invoke(app, ["erase", "--photo", photo, *args])
        assert again.exit_code == 1 and "face_not_found" in again.output
        both = runner.invoke(app, ["erase", "7", "--photo", photo, *args])
        assert both.exit_code == 2
    finally:
        gateway.stop()
        shard.stop()
