"""Downloading the model files `auto` uses, for users with internet: pinned, checked, then
moved in place together."""

from __future__ import annotations

import hashlib
import io
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from storeface.embedders import DETECTOR_MODEL, SFACE_MODEL, W600K_MBF_MODEL
from storeface.errors import ModelFetchFailed

# A commit, not a branch: the bytes behind these URLs cannot change under the pinned hashes.
OPENCV_ZOO = (
    "https://media.githubusercontent.com/media/opencv/opencv_zoo/"
    "47534e27c9851bb1128ccc0102f1145e27f23f98/models"
)
INSIGHTFACE = "https://github.com/deepinsight/insightface/releases/download/v0.7"


@dataclass(frozen=True)
class ModelFile:
    """One file to fetch: from a URL, or from a member of a zip at that URL."""

    name: str
    url: str
    licence: str
    sha256: str  # of what the URL serves (the zip, for a member)
    size: int | None = None  # bytes the URL serves, where published
    member: str | None = None  # the file inside a zip archive


YUNET = ModelFile(
    DETECTOR_MODEL,
    f"{OPENCV_ZOO}/face_detection_yunet/{DETECTOR_MODEL}",
    "MIT (OpenCV Zoo)",
    "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    232_589,
)
SFACE = ModelFile(
    SFACE_MODEL,
    f"{OPENCV_ZOO}/face_recognition_sface/{SFACE_MODEL}",
    "Apache-2.0 (OpenCV Zoo): commercial use allowed",
    "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
    38_696_353,
)
BUFFALO_S_MBF = ModelFile(
    W600K_MBF_MODEL,
    f"{INSIGHTFACE}/buffalo_s.zip",
    "InsightFace: non-commercial research only",
    # The zip's hash as one public install script pins it; InsightFace publishes none, and
    # no second source confirmed it.
    "d85a87f503f691807cd8bb97128bdf7a0660326cd9cd02657127fa978bab8b5e",
    member=W600K_MBF_MODEL,
)
# `fetch-models --pack NAME`: a detector and a recognizer each.
PACKS = {"opencv": (YUNET, SFACE), "insightface": (YUNET, BUFFALO_S_MBF)}
DEFAULT_PACK = "opencv"


def relocate(model: ModelFile, base_url: str | None) -> ModelFile:
    """The same file from a mirror: `base_url` + the URL's file name."""
    if not base_url:
        return model
    name = model.url.rsplit("/", 1)[1]
    return replace(model, url=f"{base_url.rstrip('/')}/{name}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def installed(model: ModelFile, dest: Path) -> bool:
    """Whether `dest` already holds the file, checked. A zip member never is: only the zip's
    hash is pinned, so `--pack insightface` downloads buffalo_s.zip again on every run."""
    path = dest / model.name
    return model.member is None and path.is_file() and sha256_of(path) == model.sha256


def download(model: ModelFile, client: httpx.Client) -> bytes:
    """The file's bytes, once they match the pinned size and hash (and unpacked)."""
    r = client.get(model.url, follow_redirects=True)
    r.raise_for_status()
    data = r.content
    if model.size is not None and len(data) != model.size:
        raise ModelFetchFailed(
            f"{model.name}: {model.url} sent {len(data)} bytes, not the published {model.size}"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != model.sha256:
        raise ModelFetchFailed(f"{model.name}: sha256 {digest} is not the published {model.sha256}")
    if model.member is None:
        return data
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            member = next((n for n in z.namelist() if n.rsplit("/", 1)[-1] == model.member), None)
            if member is None:
                raise ModelFetchFailed(f"{model.url} holds no {model.member}")
            return z.read(member)
    except zipfile.BadZipFile as exc:
        raise ModelFetchFailed(f"{model.url} is not a zip archive: {exc}") from exc


def install(name: str, data: bytes, dest: Path) -> Path:
    """Write the file under a temporary name, then rename it: never a half-written model."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest, delete=False, suffix=".part") as tmp:
        tmp.write(data)
    return Path(tmp.name).replace(dest / name)


def fetch_all(
    models: tuple[ModelFile, ...], dest: Path, client: httpx.Client
) -> list[tuple[ModelFile, str]]:
    """Download and verify every file first, then install them one by one: a download or
    check that fails leaves `dest` as it was; a write that fails (OSError) can leave the
    files before it installed. Returns each file with the sha256 of what was (or is)
    installed."""
    fetched = [(m, None if installed(m, dest) else download(m, client)) for m in models]
    done = []
    for model, data in fetched:
        if data is None:
            done.append((model, model.sha256))
        else:
            install(model.name, data, dest)
            done.append((model, hashlib.sha256(data).hexdigest()))
    return done
