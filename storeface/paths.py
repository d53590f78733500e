"""Where Storeface finds what it does not ship: model weights and labelled photos."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR_ENV = "STOREFACE_MODELS_DIR"
FACES_DIR_ENV = "STOREFACE_FACES_DIR"
# Beside the repository, as laid out on the development machines; never inside it.
DEFAULT_MODELS_DIR = ROOT.parent / "shared" / "models"
DEFAULT_FACES_DIR = ROOT.parent / "shared" / "faces"


def models_dir() -> Path:
    """ONNX weights: $STOREFACE_MODELS_DIR, else ../shared/models."""
    return Path(os.environ.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR)


def faces_dir() -> Path:
    """Labelled photos for tests and benchmarks: $STOREFACE_FACES_DIR, else ../shared/faces."""
    return Path(os.environ.get(FACES_DIR_ENV) or DEFAULT_FACES_DIR)
