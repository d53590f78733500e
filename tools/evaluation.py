"""The 1:N accuracy protocol: gallery vs probes vs never-enrolled strangers, in numpy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storeface.distances import distances
from tools.dataset import EmbeddedSet


@dataclass
class Split:
    """Gallery = first photo of each person + half the distractors; probes = the rest."""

    gallery: np.ndarray
    gallery_labels: list[str]
    probes: np.ndarray
    probe_labels: list[str]
    strangers: np.ndarray  # distractors never enrolled


def split(people: EmbeddedSet, distractors: EmbeddedSet | None = None) -> Split:
    """Photos with no detected face are left out on every side."""
    labels = people.people
    first = np.array([i == 0 or labels[i] != labels[i - 1] for i in range(len(labels))])
    g = np.flatnonzero(first & people.ok)
    p = np.flatnonzero(~first & people.ok)
    gallery = [people.embeddings[g]]
    gallery_labels = [labels[i] for i in g]
    strangers = np.zeros((0, people.embeddings.shape[1]), np.float32)
    if distractors is not None:
        d = np.flatnonzero(distractors.ok)
        enrolled, unseen = d[::2], d[1::2]
        gallery.append(distractors.embeddings[enrolled])
        gallery_labels += [distractors.people[i] for i in enrolled]
        strangers = distractors.embeddings[unseen]
    return Split(
        np.vstack(gallery), gallery_labels, people.embeddings[p], [labels[i] for i in p], strangers
    )


@dataclass
class Nearest:
    """Each probe's nearest gallery face: its distance and whether it is the right person."""

    probe_distance: np.ndarray
    probe_correct: np.ndarray
    stranger_distance: np.ndarray

    @property
    def rank1(self) -> float:
        return float(self.probe_correct.mean()) if len(self.probe_correct) else 0.0

    def tmr(self, threshold: float) -> float:
        """Share of enrolled people's probes answered with the right person."""
        return float((self.probe_correct & (self.probe_distance <= threshold)).mean())

    def fmr(self, threshold: float) -> float:
        """Share of never-enrolled strangers matched to somebody."""
        if not len(self.stranger_distance):
            return 0.0
        return float((self.stranger_distance <= threshold).mean())

    def threshold_at_fmr(self, target: float) -> float:
        """The largest threshold whose false-match rate stays at or under `target`."""
        d = np.sort(self.stranger_distance)
        allowed = int(np.floor(target * len(d)))
        if allowed >= len(d):
            return float(d[-1])
        return float(np.nextafter(d[allowed], -np.inf))

    def sweep(self, thresholds: np.ndarray) -> list[dict[str, float]]:
        return [
            {"threshold": round(float(t), 4), "tmr": self.tmr(t), "fmr": self.fmr(t)}
            for t in thresholds
        ]


def nearest(s: Split, metric: str) -> Nearest:
    dp = distances(s.probes, s.gallery, metric)
    j = dp.argmin(1)
    correct = np.array(
        [s.gallery_labels[k] == lab for k, lab in zip(j, s.probe_labels, strict=True)]
    )
    ds = distances(s.strangers, s.gallery, metric).min(1) if len(s.strangers) else np.zeros(0)
    return Nearest(dp[np.arange(len(j)), j], correct, ds)
