"""The `storeface` command on real photos: vectorize, search (with plots), verify."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shard_node.faces.registry import make_pipeline
from tests.support import free_port
from tools.cli import Vectors, app, embed_largest, plot_matches, search_vectors, stats_rows

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
    assert different.exit_code == 0, different.output
    assert different.stdout.startswith("different people")


def test_verify_a_broken_photo_fails_with_its_code(gallery: tuple[Path, list[Path]]) -> None:
    broken = gallery[0] / "Broken_Files"
    result = runner.invoke(
        app, ["verify", str(broken / "text.jpg"), str(gallery[1][0]), "--embedder", "arcface"]
    )
    assert result.exit_code == 2
    assert "not_an_image" in result.output


def test_search_needs_a_vectors_file_or_a_store(gallery: tuple[Path, list[Path]]) -> None:
    result = runner.invoke(app, ["search", str(gallery[1][0])])
    assert result.exit_code == 2
    assert "--vectors" in result.output


def test_cluster_commands_say_when_the_gateway_is_down(gallery: tuple[Path, list[Path]]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (
        ["stats", "--store", "a"],
        ["erase", "42"],
        ["enroll", str(gallery[0]), "--store", "a"],
        ["search", str(gallery[1][0]), "--store", "a"],
    ):
        result = runner.invoke(app, [*args, "--url", url])
        assert result.exit_code == 1, result.output
        assert f"cannot reach {url}" in result.output


def test_stats_rows_accept_a_list_or_a_mapping_of_days() -> None:
    listed = {"days": [{"day": "2024-05-01", "pv": 3, "uv": 2}]}
    mapped = {"days": {"2024-05-01": {"pv": 3, "uv": 2}}}
    assert stats_rows(listed) == stats_rows(mapped) == [{"day": "2024-05-01", "pv": 3, "uv": 2}]
