"""`storeface fetch-models` against a real local HTTP server standing in for the publishers."""

from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from storeface.paths import models_dir
from tools.cli import app


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "mirror"
    root.mkdir()
    yunet = models_dir() / "face_detection_yunet_2023mar.onnx"
    if not yunet.exists():
        pytest.fail(f"model file missing: {yunet} (set STOREFACE_MODELS_DIR)")
    (root / yunet.name).write_bytes(yunet.read_bytes())
    with zipfile.ZipFile(root / "buffalo_s.zip", "w") as z:
        z.writestr("buffalo_s/w600k_mbf.onnx", b"stand-in recognizer bytes")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetches_verifies_and_unpacks(mirror: tuple[Path, str], tmp_path: Path) -> None:
    root, url = mirror
    dest = tmp_path / "models"
    out = CliRunner().invoke(app, ["fetch-models", "--dest", str(dest), "--base-url", url])
    assert out.exit_code == 0, out.output
    assert (dest / "face_detection_yunet_2023mar.onnx").read_bytes() == (
        root / "face_detection_yunet_2023mar.onnx"
    ).read_bytes()
    assert (dest / "w600k_mbf.onnx").read_bytes() == b"stand-in recognizer bytes"
    assert "(verified)" in out.output and "non-commercial" in out.output
    assert hashlib.sha256(b"stand-in recognizer bytes").hexdigest() in out.output


def test_a_file_with_the_wrong_hash_is_not_installed(
    mirror: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = mirror
    (root / "face_detection_yunet_2023mar.onnx").write_bytes(b"tampered")
    dest = tmp_path / "models"
    out = CliRunner().invoke(app, ["fetch-models", "--dest", str(dest), "--base-url", url])
    assert out.exit_code == 1
    assert "is not the published" in out.output
    assert not dest.exists() or not any(dest.iterdir())


def test_python_dash_m_registers_every_command() -> None:
    """`python -m tools.cli` once ran its `__main__` guard before fetch-models existed."""
    out = subprocess.run(
        [sys.executable, "-m", "tools.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("vectorize", "search", "verify", "enroll", "stats", "erase", "fetch-models"):
        assert command in out, command
