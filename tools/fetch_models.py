"""Downloading the default model files, for users with internet: checked, then moved in place."""

from __future__ import annotations

import hashlib
import io
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from storeface.errors import ModelFetchFailed

OPENCV_ZOO = "https://github.com/opencv/opencv_zoo/raw/main/models"
INSIGHTFACE = "https://github.com/deepinsight/insightface/releases/download/v0.7"


@dataclass(frozen=True)
class ModelFile:
    """One file to fetch: from a URL, or from a member of a zip at that URL."""

    name: str
    url: str
    licence: str
    sha256: str | None = None  # pinned where the publisher's hash is known
    member: str | None = None  # the file inside a zip archive


DEFAULTS = (
    ModelFile(
        "face_detection_yunet_2023mar.onnx",
        f"{OPENCV_ZOO}/face_detection_yunet/face_detection_yunet_2023mar.onnx",
        "MIT (OpenCV Zoo)",
        "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    ),
    ModelFile(
        "w600k_mbf.onnx",
        f"{INSIGHTFACE}/buffalo_s.zip",
        "InsightFace: non-commercial research only",
        member="w600k_mbf.onnx",
    ),
)


def relocate(model: ModelFile, base_url: str | None) -> ModelFile:
    """The same file from a mirror: `base_url` + the URL's file name."""
    if not base_url:
        return model
    name = model.url.rsplit("/", 1)[1]
    return ModelFile(
        model.name, f"{base_url.rstrip('/')}/{name}", model.licence, model.sha256, model.member
    )


def fetch(model: ModelFile, dest: Path, client: httpx.Client) -> str:
    """Download, unpack, verify; the file appears in `dest` only when all of that passed."""
    r = client.get(model.url, follow_redirects=True)
    r.raise_for_status()
    data = r.content
    if model.member:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            member = next((n for n in z.namelist() if n.rsplit("/", 1)[-1] == model.member), None)
            if member is None:
                raise ModelFetchFailed(f"{model.url} holds no {model.member}")
            data = z.read(member)
    digest = hashlib.sha256(data).hexdigest()
    if model.sha256 and digest != model.sha256:
        raise ModelFetchFailed(f"{model.name}: sha256 {digest} is not the published {model.sha256}")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest, delete=False, suffix=".part") as tmp:
        tmp.write(data)
    Path(tmp.name).replace(dest / model.name)
    return digest
