"""When a nearest face counts as a match: a threshold that tightens as the store grows.

A stranger is compared with every face of a store, so the chance that one of them falls
under a fixed threshold grows with the store (FPIR ~ N x the per-comparison FMR: 0.18% at
100 faces, 2.1% at 1,200 for arcface at 0.56). The embedders' thresholds were measured at
about 660 faces; from `REFERENCE_FACES` on, the threshold drops by `per_decade` for every
tenfold growth (docs/benchmarks.md, "Gallery size and false matches").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

REFERENCE_FACES = 1000
# `python -m bench.gallery_size`: the door-optimal threshold (fewest returning visitors given
# a second FaceId plus new visitors merged, 30% returning) falls ~0.05 per decade for arcface
# (0.54, 0.50, 0.46, 0.43, 0.41 at 1k-1M faces, from the fitted impostor tail); keeping FPIR
# flat would take 0.064, at a larger TPIR cost. dlib's tail falls as fast (0.061). Keyed by
# embedder name, so arcface's other recognizers (SFace, w600k_mbf) borrow mobilefacenet's
# 0.05: nobody measured theirs (nor SFace's base threshold) here.
PER_DECADE = {"arcface": 0.05, "dlib": 0.05}


@dataclass(frozen=True)
class SizeRule:
    """A store's match threshold as a function of how many faces a search covers."""

    base: float  # the threshold up to `reference_faces`
    per_decade: float = 0.0  # 0: a fixed threshold
    reference_faces: int = REFERENCE_FACES

    def threshold(self, faces: int) -> float:
        """The effective threshold for a search over `faces` faces."""
        if self.per_decade <= 0 or faces <= self.reference_faces:
            return self.base
        drop = self.per_decade * math.log10(faces / self.reference_faces)
        return round(max(0.0, self.base - drop), 6)

    def describe(self) -> str:
        """The rule in words, for /v1/info."""
        if self.per_decade <= 0:
            return f"fixed at {self.base:g}"
        return (
            f"{self.base:g} up to {self.reference_faces:,} faces, then {self.per_decade:g} "
            f"lower for every tenfold more faces (a bigger store meets more look-alikes)"
        )


def rule_of(base: float, per_decade: float) -> SizeRule:
    """The rule a shard reported (`base_threshold`, `threshold_per_decade`)."""
    return SizeRule(base=base, per_decade=per_decade)


def size_rule_for(embedder: str, base: float, per_decade: float | None = None) -> SizeRule:
    """A store's rule: its `threshold_per_decade` where set, else its embedder's measured one
    (an embedder not measured here keeps a fixed threshold)."""
    return SizeRule(
        base=base, per_decade=PER_DECADE.get(embedder, 0.0) if per_decade is None else per_decade
    )
