"""Which embedder a node group runs when stores.yaml names none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storeface.paths import models_dir

AUTO = "auto"  # stores.yaml named no embedder: arcface where its model files are, else dlib
DETECTOR_MODEL = "face_detection_yunet_2023mar.onnx"
RECOGNIZER_MODEL = "arcface_mobilefacenet_128.onnx"


def may_match(a: str, b: str) -> bool:
    """Whether two stores' configured embedders may be the same: `auto` is decided by each
    node at start-up, so only the fan-out's check of what a group runs can tell."""
    return a == b or AUTO in (a, b)


def resolve_embedder(name: str, options: dict[str, Any] | None = None) -> tuple[str, str]:
    """The embedder `name` stands for, and a warning when `auto` had to fall back to dlib."""
    if name != AUTO:
        return name, ""
    opts = options or {}
    root = Path(opts.get("models_dir") or models_dir())
    files = (
        root / str(opts.get("detector_model", DETECTOR_MODEL)),
        root / str(opts.get("recognizer_model", RECOGNIZER_MODEL)),
    )
    missing = [str(p) for p in files if not p.is_file()]
    if not missing:
        return "arcface", ""
    return "dlib", (
        f"no embedder set and arcface's model files are missing ({', '.join(missing)}): "
        "running dlib, which recognizes far fewer returning visitors; put an ArcFace-format "
        "model there (docs/models.md; or set STOREFACE_MODELS_DIR) or set `embedder:`"
    )
