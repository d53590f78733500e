"""The gallery-size effect (issue 13): an open-set search's false matches grow with the gallery.

For galleries from 100 faces to as many as ../shared/faces allows, over random splits:
FPIR (a never-enrolled face matched to anybody under the threshold) and TPIR (a returning
person's photo matched to them, rank-1, under the threshold) at the embedder's fixed
threshold, at a threshold that follows the gallery's size (storeface/matching.py), and with
a margin to the second-best FaceId; then a per-comparison impostor tail fitted on every
pair of different people, to say what happens at 10k-1M faces (extrapolated, not measured).

    python -m bench.gallery_size                       # arcface and dlib, 40 splits
    python -m bench.gallery_size --embedder arcface --splits 100
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.common import log, machine_info, table, write_results
from shard_node.faces.registry import embedder_info
from storeface.distances import distances
from storeface.matching import size_rule_for
from storeface.paths import faces_dir
from tools.dataset import embed_folder

MIN_STRANGERS = 40  # strangers left out of the largest gallery, per split
MARGINS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.08)
RETURNING_SHARES = (0.3, 0.5)
EXTRAPOLATE = (1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000)
TAIL_QUANTILES = np.logspace(-5, -3, 9)  # the fitted range of the per-comparison impostor FMR


@dataclass
class Data:
    """Distances the splits draw from: dev people (first photo enrolled) and distractors."""

    metric: str
    base: float
    dd: np.ndarray  # distractor x distractor
    sd: np.ndarray  # distractor x dev gallery (first photos)
    pd: np.ndarray  # probe x distractor
    pg: np.ndarray  # probe x dev gallery
    probe_owner: np.ndarray  # index into the dev gallery
    impostors: np.ndarray  # every pair of different people, for the tail fit
    genuine: np.ndarray  # each probe to its own first photo


def load(embedder: str) -> Data:
    info = embedder_info(embedder)
    dev = embed_folder(faces_dir() / "lfw_dev", embedder)
    dis = embed_folder(faces_dir() / "lfw_distractors", embedder)
    d = dis.embeddings[dis.ok]
    people = [p for p, ok in zip(dev.people, dev.ok, strict=True) if ok]
    x = dev.embeddings[dev.ok]
    first = np.array([i == 0 or people[i] != people[i - 1] for i in range(len(people))])
    g, p = x[first], x[~first]
    names = [people[i] for i in np.flatnonzero(first)]
    owner = np.array([names.index(people[i]) for i in np.flatnonzero(~first)])
    dd = distances(d, d, info.metric)
    np.fill_diagonal(dd, np.inf)
    pg = distances(p, g, info.metric)
    allx = np.vstack([d, x])
    labels = np.array([f"d{i}" for i in range(len(d))] + people)
    full = distances(allx, allx, info.metric)
    iu = np.triu_indices(len(allx), 1)
    impostors = full[iu][labels[iu[0]] != labels[iu[1]]]
    return Data(
        metric=info.metric,
        base=info.threshold,
        dd=dd,
        sd=distances(d, g, info.metric),
        pd=distances(p, d, info.metric),
        pg=pg,
        probe_owner=owner,
        impostors=np.sort(impostors),
        genuine=pg[np.arange(len(p)), owner],
    )


@dataclass
class Trial:
    """One split at one gallery size: each stranger's and probe's two nearest FaceIds."""

    size: int
    s_best: np.ndarray
    s_second: np.ndarray
    p_best: np.ndarray
    p_second: np.ndarray
    p_correct: np.ndarray


def two_nearest(dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    part = np.partition(dist, 1, axis=1)
    return part[:, 0], part[:, 1], dist.argmin(1)


def trial(data: Data, size: int, rng: np.random.Generator) -> Trial:
    """Dev first photos + (size - 42) random distractors enrolled; the other distractors are
    the strangers."""
    n_dev = data.pg.shape[1]
    perm = rng.permutation(len(data.dd))
    enrolled, strangers = perm[: size - n_dev], perm[size - n_dev :]
    s_dist = np.hstack([data.sd[strangers], data.dd[np.ix_(strangers, enrolled)]])
    p_dist = np.hstack([data.pg, data.pd[:, enrolled]])
    s_best, s_second, _ = two_nearest(s_dist)
    p_best, p_second, p_arg = two_nearest(p_dist)
    return Trial(size, s_best, s_second, p_best, p_second, p_arg == data.probe_owner)


def rates(t: Trial, threshold: float, margin: float = 0.0) -> tuple[float, float]:
    """(FPIR, TPIR) when a match needs `best <= threshold` and `second - best >= margin`."""
    s_ok = (t.s_best <= threshold) & (t.s_second - t.s_best >= margin)
    p_ok = t.p_correct & (t.p_best <= threshold) & (t.p_second - t.p_best >= margin)
    return float(s_ok.mean()), float(p_ok.mean())


@dataclass
class Tail:
    """Per-comparison impostor FMR(t) = 10**(a + b*t), fitted on FMR 1e-5..1e-3."""

    a: float
    b: float
    mu: float  # a normal fitted to the whole impostor distribution, the lighter-tailed view
    sigma: float

    def fmr(self, t: float | np.ndarray) -> np.ndarray:
        return np.minimum(1.0, 10 ** (self.a + self.b * np.asarray(t, dtype=np.float64)))

    def fmr_normal(self, t: float) -> float:
        return 0.5 * math.erfc((self.mu - t) / (self.sigma * math.sqrt(2)))

    def threshold_for(self, fmr: float) -> float:
        return float((np.log10(fmr) - self.a) / self.b)

    @property
    def per_decade(self) -> float:
        """How much the threshold drops for each tenfold growth of the gallery."""
        return float(1.0 / self.b)


def fit_tail(impostors: np.ndarray) -> Tail:
    ts = np.quantile(impostors, TAIL_QUANTILES)
    b, a = np.polyfit(ts, np.log10(TAIL_QUANTILES), 1)
    return Tail(float(a), float(b), float(impostors.mean()), float(impostors.std()))


def fpir_model(fmr: np.ndarray | float, n: float) -> np.ndarray:
    """1 - (1 - FMR)^N: a stranger against N independent faces."""
    return np.asarray(-np.expm1(n * np.log1p(-np.minimum(np.asarray(fmr), 1 - 1e-15))))


def tpir_model(data: Data, tail: Tail, threshold: float, n: float) -> float:
    """A probe is found if its own face is under the threshold and no impostor is closer."""
    g = data.genuine
    keep = g <= threshold
    return float((keep * (1 - fpir_model(tail.fmr(g), n))).mean())


def door_optimal(data: Data, tail: Tail, n: float, share: float) -> float:
    """The threshold with the fewest door errors per visit under the fitted model: returning
    visitors missed (a second FaceId) plus new visitors merged into somebody."""
    ts = np.arange(0.2, data.base + 0.05, 0.005)
    errors = [
        share * (1 - tpir_model(data, tail, t, n)) + (1 - share) * float(fpir_model(tail.fmr(t), n))
        for t in ts
    ]
    return round(float(ts[int(np.argmin(errors))]), 3)


def summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {
        "mean": float(a.mean()),
        "median": float(np.median(a)),
        "p5": float(np.percentile(a, 5)),
        "p95": float(np.percentile(a, 95)),
    }


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def spread(s: dict[str, float]) -> str:
    return f"{pct(s['mean'])} ({pct(s['p5'])}-{pct(s['p95'])})"


def run(embedder: str, sizes: list[int], splits: int, seed: int) -> dict[str, Any]:
    log(f"{embedder}: embeddings (cached under .cache/embeddings)")
    data = load(embedder)
    rule = size_rule_for(embedder, data.base)
    tail = fit_tail(data.impostors)
    biggest = data.pg.shape[1] + len(data.dd) - MIN_STRANGERS
    sizes = sorted({min(s, biggest) for s in sizes})
    rng = np.random.default_rng(seed)
    fmr_at_base = float((data.impostors <= data.base).mean())
    rows: list[dict[str, Any]] = []
    margins: list[dict[str, Any]] = []
    for size in sizes:
        trials = [trial(data, size, rng) for _ in range(splits)]
        ruled = rule.threshold(size)
        fixed = [rates(t, data.base) for t in trials]
        sized = [rates(t, ruled) for t in trials]
        rows.append(
            {
                "gallery": size,
                "strangers_per_split": len(trials[0].s_best),
                "probes": len(trials[0].p_best),
                "fixed_threshold": data.base,
                "fpir_fixed": summary([f for f, _ in fixed]),
                "tpir_fixed": summary([t for _, t in fixed]),
                "fpir_model_fixed": float(fpir_model(fmr_at_base, size)),
                "size_rule_threshold": ruled,
                "fpir_size_rule": summary([f for f, _ in sized]),
                "tpir_size_rule": summary([t for _, t in sized]),
            }
        )
        for m in MARGINS:
            got = [rates(t, data.base, m) for t in trials]
            margins.append(
                {
                    "gallery": size,
                    "margin": m,
                    "fpir": summary([f for f, _ in got]),
                    "tpir": summary([t for _, t in got]),
                }
            )
        log(f"{embedder}: gallery {size}: {splits} splits")
    extrapolated = []
    for n in EXTRAPOLATE:
        ruled = rule.threshold(n)
        extrapolated.append(
            {
                "gallery": n,
                "fpir_fixed": float(fpir_model(tail.fmr(data.base), n)),
                "fpir_fixed_normal_tail": float(fpir_model(tail.fmr_normal(data.base), n)),
                "tpir_fixed": tpir_model(data, tail, data.base, n),
                "size_rule_threshold": ruled,
                "fpir_size_rule": float(fpir_model(tail.fmr(ruled), n)),
                "tpir_size_rule": tpir_model(data, tail, ruled, n),
                "door_errors_per_1000_visits": {
                    str(share): {
                        name: 1000
                        * (
                            share * (1 - tpir_model(data, tail, t, n))
                            + (1 - share) * float(fpir_model(tail.fmr(t), n))
                        )
                        for name, t in (("fixed", data.base), ("size_rule", ruled))
                    }
                    for share in RETURNING_SHARES
                },
                "door_optimal_threshold": {
                    str(share): door_optimal(data, tail, n, share) for share in RETURNING_SHARES
                },
            }
        )
    observed = {
        f"{q:.0e}": float(np.quantile(data.impostors, q)) for q in (1e-6, 3e-6, 1e-5, 1e-4, 1e-3)
    }
    return {
        "embedder": embedder,
        "metric": data.metric,
        "fixed_threshold": data.base,
        "size_rule": rule.describe(),
        "impostor_pairs": len(data.impostors),
        "impostor_fmr_at_fixed": float((data.impostors <= data.base).mean()),
        "tail_fit": {
            "log10_fmr_intercept": tail.a,
            "log10_fmr_slope": tail.b,
            "threshold_drop_per_decade": tail.per_decade,
            "fitted_fmr_range": [float(TAIL_QUANTILES[0]), float(TAIL_QUANTILES[-1])],
            "observed_threshold_at_fmr": observed,
            "fitted_threshold_at_fmr": {
                f"{q:.0e}": tail.threshold_for(q) for q in (1e-6, 3e-6, 1e-5, 1e-4, 1e-3)
            },
            "normal_mu": tail.mu,
            "normal_sigma": tail.sigma,
        },
        "rows": rows,
        "margins": margins,
        "door": door(rows, data.base),
        "extrapolated": extrapolated,
    }


def door(rows: list[dict[str, Any]], base: float) -> list[dict[str, Any]]:
    """Per 1,000 door visits with a share of returning visitors: returning visitors given a
    second FaceId (1 - TPIR) and new visitors merged into somebody (FPIR)."""
    out = []
    for r in rows:
        for share in RETURNING_SHARES:
            item: dict[str, Any] = {"gallery": r["gallery"], "returning_share": share}
            for name in ("fixed", "size_rule"):
                dup = 1000 * share * (1 - r[f"tpir_{name}"]["mean"])
                merged = 1000 * (1 - share) * r[f"fpir_{name}"]["mean"]
                item[name] = {"duplicates": dup, "merged": merged, "errors": dup + merged}
            out.append(item)
    return out


def print_report(r: dict[str, Any]) -> None:
    e = r["embedder"]
    print(f"\n{e} ({r['metric']}), fixed threshold {r['fixed_threshold']}; {r['size_rule']}")
    print(
        table(
            [
                "gallery",
                "strangers/split",
                "FPIR fixed (p5-p95)",
                "model (pairwise FMR)",
                "TPIR fixed",
                "size-rule threshold",
                "FPIR size rule",
                "TPIR size rule",
            ],
            [
                [
                    x["gallery"],
                    x["strangers_per_split"],
                    spread(x["fpir_fixed"]),
                    pct(x["fpir_model_fixed"]),
                    pct(x["tpir_fixed"]["mean"]),
                    round(x["size_rule_threshold"], 4),
                    spread(x["fpir_size_rule"]),
                    pct(x["tpir_size_rule"]["mean"]),
                ]
                for x in r["rows"]
            ],
        )
    )
    print(f"\n{e}: margin to the second-best FaceId, at the fixed threshold (FPIR / TPIR, mean)")
    sizes = sorted({m["gallery"] for m in r["margins"]})
    print(
        table(
            ["margin", *[str(s) for s in sizes]],
            [
                [
                    m,
                    *[
                        f"{pct(x['fpir']['mean'])} / {pct(x['tpir']['mean'])}"
                        for s in sizes
                        for x in r["margins"]
                        if x["gallery"] == s and x["margin"] == m
                    ],
                ]
                for m in MARGINS
            ],
        )
    )
    print(f"\n{e}: per 1,000 door visits (duplicates = returning visitor given a new FaceId)")
    print(
        table(
            ["gallery", "returning", "fixed: dup / merged", "size rule: dup / merged"],
            [
                [
                    d["gallery"],
                    f"{100 * d['returning_share']:.0f}%",
                    f"{d['fixed']['duplicates']:.1f} / {d['fixed']['merged']:.1f}",
                    f"{d['size_rule']['duplicates']:.1f} / {d['size_rule']['merged']:.1f}",
                ]
                for d in r["door"]
            ],
        )
    )
    tf = r["tail_fit"]
    print(
        f"\n{e}: impostor tail over {r['impostor_pairs']:,} pairs: FMR at the fixed threshold "
        f"{r['impostor_fmr_at_fixed']:.2e}; fitted log10 FMR = {tf['log10_fmr_intercept']:.2f} "
        f"+ {tf['log10_fmr_slope']:.2f} t (threshold drop per decade "
        f"{tf['threshold_drop_per_decade']:.4f})"
    )
    print(
        table(
            ["per-comparison FMR", "observed threshold", "fitted threshold"],
            [
                [
                    q,
                    round(tf["observed_threshold_at_fmr"][q], 4),
                    round(tf["fitted_threshold_at_fmr"][q], 4),
                ]
                for q in tf["observed_threshold_at_fmr"]
            ],
        )
    )
    print(f"\n{e}: EXTRAPOLATED from the fitted tail (not measured)")
    print(
        table(
            [
                "gallery",
                "FPIR fixed",
                "(normal tail)",
                "TPIR fixed",
                "size-rule threshold",
                "FPIR size rule",
                "TPIR size rule",
                "door errors /1000, 30% returning: fixed → rule",
                "door-optimal (30% / 50% returning)",
            ],
            [
                [
                    x["gallery"],
                    pct(x["fpir_fixed"]),
                    pct(x["fpir_fixed_normal_tail"]),
                    pct(x["tpir_fixed"]),
                    round(x["size_rule_threshold"], 4),
                    pct(x["fpir_size_rule"]),
                    pct(x["tpir_size_rule"]),
                    "{fixed:.1f} → {size_rule:.1f}".format(
                        **x["door_errors_per_1000_visits"][str(RETURNING_SHARES[0])]
                    ),
                    " / ".join(f"{v:.3f}" for v in x["door_optimal_threshold"].values()),
                ]
                for x in r["extrapolated"]
            ],
        )
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--embedder", action="append", help="arcface, dlib (default: both)")
    ap.add_argument("--sizes", default="100,200,400,800,1200,1300")
    ap.add_argument("--splits", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, Any] = {"machine": machine_info(), "splits": args.splits, "runs": []}
    for emb in args.embedder or ["arcface", "dlib"]:
        r = run(emb, sizes, args.splits, args.seed)
        results["runs"].append(r)
        print_report(r)
    path = write_results("gallery_size", results)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
