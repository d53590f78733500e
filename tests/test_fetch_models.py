"""`storeface fetch-models` and `make models` against a real local HTTP server standing in for
the publishers: stand-in files are served and their hashes pinned by the test, since the real
38 MB SFace cannot be downloaded here; YuNet is served as the real file under its real pin."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from storeface.embedders import AUTO, SFACE_MODEL, resolve_embedder
from storeface.paths import ROOT, models_dir
from tools.cli import app
from tools.fetch_models import BUFFALO_S_MBF, PACKS, SFACE, YUNET

STAND_IN_SFACE = b"stand-in SFace bytes"
STAND_IN_MBF = b"stand-in w600k_mbf bytes"


@dataclass
class Mirror:
    root: Path
    url: str

    def serve(self, name: str, data: bytes) -> None:
        (self.root / name).write_bytes(data)


def _zip(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"buffalo_s/{member}", data)
    return buf.getvalue()


def _pin(monkeypatch: pytest.MonkeyPatch, pack: str, index: int, data: bytes) -> None:
    """Pin a stand-in file in place of the publisher's (its hash and size)."""
    models = list(PACKS[pack])
    size = None if models[index].member else len(data)
    models[index] = replace(models[index], sha256=hashlib.sha256(data).hexdigest(), size=size)
    monkeypatch.setitem(PACKS, pack, tuple(models))


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    root = tmp_path / "mirror"
    root.mkdir()
    yunet = models_dir() / YUNET.name
    if not yunet.exists():
        pytest.fail(f"model file missing: {yunet} (set STOREFACE_MODELS_DIR)")
    m = Mirror(root, "")
    m.serve(YUNET.name, yunet.read_bytes())
    m.serve(SFACE.name, STAND_IN_SFACE)
    _pin(monkeypatch, "opencv", 1, STAND_IN_SFACE)
    zipped = _zip(BUFFALO_S_MBF.name, STAND_IN_MBF)
    m.serve("buffalo_s.zip", zipped)
    _pin(monkeypatch, "insightface", 1, zipped)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # a short poll: shutdown() waits for it, and every test tears a mirror down
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    m.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield m
    server.shutdown()
    server.server_close()


def _fetch(*args: str) -> tuple[int, str]:
    out = CliRunner().invoke(app, ["fetch-models", *args])
    return out.exit_code, out.output


def test_the_default_pack_is_fetched_verified_and_auto_runs_it(
    mirror: Mirror, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    code, out = _fetch("--dest", str(dest), "--mirror", mirror.url)
    assert code == 0, out
    assert (dest / YUNET.name).read_bytes() == (mirror.root / YUNET.name).read_bytes()
    assert (dest / SFACE_MODEL).read_bytes() == STAND_IN_SFACE
    assert sorted(p.name for p in dest.iterdir()) == sorted([YUNET.name, SFACE_MODEL])
    assert out.count("(verified)") == 2
    assert "licence: MIT" in out and "licence: Apache-2.0" in out
    assert hashlib.sha256(STAND_IN_SFACE).hexdigest() in out
    assert f"runs arcface with {SFACE_MODEL}" in out
    name, note = resolve_embedder(AUTO, {"models_dir": str(dest)})
    assert name == "arcface" and SFACE_MODEL in note


def test_a_second_run_keeps_verified_files_without_downloading(
    mirror: Mirror, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    assert _fetch("--dest", str(dest), "--mirror", mirror.url)[0] == 0
    for f in mirror.root.iterdir():
        f.unlink()  # the mirror now answers 404 to everything
    code, out = _fetch("--dest", str(dest), "--mirror", mirror.url)
    assert code == 0, out
    assert (dest / SFACE_MODEL).read_bytes() == STAND_IN_SFACE
    (dest / SFACE_MODEL).write_bytes(b"corrupted on disk")  # no longer matches: fetched again
    code, out = _fetch("--dest", str(dest), "--mirror", mirror.url)
    assert code == 1 and "404" in out


def test_a_file_with_the_wrong_hash_is_refused_and_nothing_is_written(
    mirror: Mirror, tmp_path: Path
) -> None:
    mirror.serve(SFACE.name, b"stand-in SFace byteZ")  # same size, other bytes
    dest = tmp_path / "models"
    code, out = _fetch("--dest", str(dest), "--mirror", mirror.url)
    assert code == 1
    assert f"{SFACE_MODEL}: sha256" in out and "is not the published" in out
    assert "nothing written" in out
    # YuNet, which verified, was not installed either: the set goes in whole or not at all.
    assert not dest.exists() or not any(dest.iterdir())


def test_a_file_of_the_wrong_size_is_refused(mirror: Mirror, tmp_path: Path) -> None:
    mirror.serve(SFACE.name, STAND_IN_SFACE + b"!")
    dest = tmp_path / "models"
    code, out = _fetch("--dest", str(dest), "--mirror", mirror.url)
    assert code == 1
    assert f"sent {len(STAND_IN_SFACE) + 1} bytes, not the published {len(STAND_IN_SFACE)}" in out
    assert not dest.exists() or not any(dest.iterdir())


def test_the_insightface_pack_unpacks_its_pinned_zip(mirror: Mirror, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    code, out = _fetch("--dest", str(dest), "--mirror", mirror.url, "--pack", "insightface")
    assert code == 0, out
    assert (dest / "w600k_mbf.onnx").read_bytes() == STAND_IN_MBF
    assert "non-commercial" in out and "(from buffalo_s.zip, verified)" in out
    assert hashlib.sha256(STAND_IN_MBF).hexdigest() in out
    assert "runs arcface with w600k_mbf.onnx" in out

    mirror.serve("buffalo_s.zip", _zip(BUFFALO_S_MBF.name, b"another recognizer"))
    other = tmp_path / "other"
    code, out = _fetch("--dest", str(other), "--mirror", mirror.url, "--pack", "insightface")
    assert code == 1 and "is not the published" in out and not other.exists()


def test_dest_defaults_to_storeface_models_dir(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "from-env"
    monkeypatch.setenv("STOREFACE_MODELS_DIR", str(target))
    code, out = _fetch("--base-url", mirror.url)  # the older name of --mirror
    assert code == 0, out
    assert (target / SFACE_MODEL).read_bytes() == STAND_IN_SFACE


def test_an_unknown_pack_is_a_usage_error(tmp_path: Path) -> None:
    code, out = _fetch("--dest", str(tmp_path), "--pack", "nope")
    assert code == 2 and "unknown pack 'nope'; known: opencv, insightface" in out


def test_every_pinned_file_comes_from_a_fixed_commit_or_release() -> None:
    """A branch URL (`/main/`) could serve other bytes than the pin one day."""
    for models in PACKS.values():
        for m in models:
            assert re.fullmatch(r"[0-9a-f]{64}", m.sha256), m.name
            assert "/main/" not in m.url and "/master/" not in m.url, m.url
            assert re.search(r"/[0-9a-f]{40}/|/releases/download/v[\d.]+/", m.url), m.url


@pytest.mark.slow  # runs make and a Python process
def test_make_models_runs_the_command(mirror: Mirror, tmp_path: Path) -> None:
    """The Makefile target, run for real against the mirror (STAMP= skips the venv rebuild)."""
    dest = tmp_path / "via-make"
    done = subprocess.run(
        [
            "make",
            "-s",
            "models",
            "STAMP=Makefile",
            f"BIN={Path(sys.executable).parent}",
            f"MODELS_ARGS=--dest {dest} --mirror {mirror.url}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # make runs a new process: the test's stand-in pins do not reach it, so the real pins
    # refuse the stand-in SFace (and YuNet, the real file, is not installed alone).
    assert done.returncode != 0
    assert f"sent {len(STAND_IN_SFACE)} bytes, not the published {SFACE.size}" in done.stderr
    assert not dest.exists() or not any(dest.iterdir())


@pytest.mark.slow  # a Python process
def test_python_dash_m_registers_every_command() -> None:
    """`python -m tools.cli` once ran its `__main__` guard before fetch-models existed."""
    out = subprocess.run(
        [sys.executable, "-m", "tools.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("vectorize", "search", "verify", "enroll", "stats", "erase", "fetch-models"):
        assert command in out, command
