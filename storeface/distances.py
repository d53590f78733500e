"""Distances between embeddings, as the embedders' thresholds mean them."""

from __future__ import annotations

import numpy as np


def distances(queries: np.ndarray, gallery: np.ndarray, metric: str) -> np.ndarray:
    """All query-to-gallery distances: L2, or 1 - cosine."""
    if metric == "cosine":
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        return np.asarray(1.0 - q @ g.T)
    sq = (queries**2).sum(1)[:, None] + (gallery**2).sum(1)[None, :] - 2 * queries @ gallery.T
    return np.asarray(np.sqrt(np.maximum(sq, 0.0)))
