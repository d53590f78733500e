"""Labelled face folders (`<person>/<photo>`) embedded once and cached, for tests and benches."""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shard_node.faces.pool import analyze_in_worker, init_worker
from shard_node.faces.registry import embedder_info
from storeface.embedders import (
    DETECTOR_MODEL,
    embedder_identity,
    recognizer_model,
    resolve_embedder,
)
from storeface.images import ImageLimits
from storeface.paths import models_dir

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def list_photos(folder: Path) -> list[tuple[str, Path]]:
    """(person, photo) pairs, sorted, for a `<person>/<photo>` folder."""
    return [
        (person.name, photo)
        for person in sorted(p for p in folder.iterdir() if p.is_dir())
        for photo in sorted(person.iterdir())
        if photo.suffix.lower() in PHOTO_SUFFIXES
    ]


@dataclass
class EmbeddedSet:
    """One embedding per photo (the largest face); `ok` is False where no face was found."""

    people: list[str]
    paths: list[str]
    embeddings: np.ndarray
    ok: np.ndarray
    ms_per_photo: np.ndarray

    def select(self, mask: np.ndarray) -> EmbeddedSet:
        idx = np.flatnonzero(mask)
        return EmbeddedSet(
            [self.people[i] for i in idx],
            [self.paths[i] for i in idx],
            self.embeddings[idx],
            self.ok[idx],
            self.ms_per_photo[idx],
        )


def _embed_one(path: str) -> tuple[np.ndarray | None, float]:
    t0 = time.perf_counter()
    analysis = analyze_in_worker(Path(path).read_bytes(), ImageLimits(), max_faces=1)
    ms = (time.perf_counter() - t0) * 1000
    return (analysis.faces[0].embedding if analysis.faces else None), ms


# Bumped when an embedder's pipeline embeds differently, so cached sets are made again.
PIPELINE_VERSION = {"arcface": 2}  # 2: flip TTA by default


@functools.cache
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    """A short hash of a model file's content, made once per process for each version."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


def model_files_key(options: dict[str, Any]) -> str:
    """The arcface identity and the content of its model files: another models folder, or
    another file under the same name, is not served embeddings cached for the first."""
    root = Path(options.get("models_dir") or models_dir())
    parts = [embedder_identity("arcface", options)]
    for name in (str(options.get("detector_model", DETECTOR_MODEL)), recognizer_model(options)):
        path = (root / name).resolve()
        if path.is_file():  # else the pipeline says it is missing
            st = path.stat()
            parts.append(f"{path.name}:{_file_digest(path, st.st_size, st.st_mtime_ns)}")
    return "|".join(parts)


def embed_folder(
    folder: Path,
    embedder: str = "dlib",
    options: dict[str, Any] | None = None,
    workers: int | None = None,
    cache_dir: Path | None = None,
) -> EmbeddedSet:
    """Embed every photo of a folder through the real pipeline, cached by content."""
    options = dict(options or {})
    info = embedder_info(embedder, options)
    embedder = resolve_embedder(embedder, options)[0]
    photos = list_photos(folder)
    digest = hashlib.sha256(repr(sorted(options.items())).encode())
    if embedder in PIPELINE_VERSION:
        digest.update(f"v{PIPELINE_VERSION[embedder]}".encode())
    if embedder == "arcface":  # dlib's models ship inside its wheel
        digest.update(model_files_key(options).encode())
    for _, p in photos:
        digest.update(str(p.relative_to(folder)).encode())
        digest.update(str(p.stat().st_size).encode())
    key = f"{embedder}-{info.dim}-{folder.name}-{digest.hexdigest()[:16]}.npz"
    cache = (cache_dir or Path(__file__).parents[1] / ".cache" / "embeddings") / key
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        return EmbeddedSet(list(z["people"]), list(z["paths"]), z["embeddings"], z["ok"], z["ms"])

    with ProcessPoolExecutor(
        workers or os.cpu_count(),
        initializer=init_worker,
        initargs=(embedder, options),
        mp_context=multiprocessing.get_context("spawn"),
    ) as ex:
        results = list(ex.map(_embed_one, [str(p) for _, p in photos], chunksize=4))
    ok = np.array([e is not None for e, _ in results])
    embs = np.vstack(
        [e if e is not None else np.zeros(info.dim, np.float32) for e, _ in results]
    ).astype(np.float32)
    out = EmbeddedSet(
        [n for n, _ in photos],
        [str(p) for _, p in photos],
        embs,
        ok,
        np.array([ms for _, ms in results]),
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        cache,
        people=np.array(out.people),
        paths=np.array(out.paths),
        embeddings=out.embeddings,
        ok=out.ok,
        ms=out.ms_per_photo,
    )
    return out
