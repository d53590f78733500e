"""More than one view per FaceId: does learning a confident, novel match's embedding help?

    python -m bench.views                           # arcface and dlib: photos + camera frames
    python -m bench.views --embedders arcface --shuffles 5

A door day, simulated on embeddings with the product's distances, threshold and quality
gates: every `lfw_dev` photo is a visit of its person (42 people, 2-9 photos) and a
sample of `lfw_distractors` are one-off strangers, in a shuffled order. A visit matches
the nearest FaceId (over all its vectors) within the threshold T; otherwise, if it
passes the registration gates (gateway.recognition.uncountable), it registers a new
FaceId. With learning, a match at distance d adds the visit's embedding to its FaceId
when d <= confident*T (confident), d > novel*T (a new view), the second-nearest FaceId
is at least margin*T further (not ambiguous), the face passes the gates, and the FaceId
holds fewer than K vectors.

Conditions: `photos` (the lfw photos as uploaded, cached by tools.dataset.embed_folder,
no gates: 10 of 1,347 lfw photos fail them) and camera frames (bench.quality.frame_with:
the face pasted into a 1280x720 frame at a size, Gaussian-blurred, analyzed as an
upload; sizes and sigmas drawn per visit).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import log, machine_info, table, write_results
from bench.quality import frame_with
from gateway.recognition import uncountable
from shard_node.faces.pool import analyze_bytes
from shard_node.faces.registry import embedder_info, make_pipeline
from storeface import wire
from storeface.distances import distances
from storeface.images import ImageLimits
from storeface.paths import faces_dir
from storeface.stores import StoreConfig
from tools.dataset import PIPELINE_VERSION, embed_folder, list_photos

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "views"


@dataclass(frozen=True)
class Condition:
    """How the visits look: the photos themselves, or faces in camera frames."""

    name: str
    sizes: tuple[int, int] = (0, 0)  # face px drawn uniformly from lo..hi; (0, 0): photos
    sigmas: tuple[float, float] = (0.0, 0.0)  # Gaussian blur sigma drawn from lo..hi


@dataclass(frozen=True)
class Policy:
    """When a match teaches its FaceId a new view; confident, novel, margin: fractions of T."""

    confident: float
    novel: float
    max_views: int
    margin: float


@dataclass
class Visits:
    """One embedding per visit (photo), whose person, and whether it may register/learn."""

    people: list[str]
    embeddings: np.ndarray
    countable: np.ndarray


def parse_condition(text: str) -> Condition:
    """`photos`, or `NAME:PX_LO-PX_HI:SIGMA_LO-SIGMA_HI` (e.g. cam48:48-48:0-1.5)."""
    if text == "photos":
        return Condition("photos")
    name, px, sigma = text.split(":")
    lo, hi = (int(v) for v in px.split("-"))
    slo, shi = (float(v) for v in sigma.split("-"))
    return Condition(name, (lo, hi), (slo, shi))


def stranger_paths(folder: Path, count: int) -> list[tuple[str, Path]]:
    """A fixed sample of one-off strangers (one photo each)."""
    photos = list_photos(folder)
    pick = np.random.default_rng(0).choice(len(photos), min(count, len(photos)), replace=False)
    return [photos[i] for i in sorted(pick)]


def photo_visits(
    embedder: str, people: Path, distractors: Path, strangers: list[tuple[str, Path]]
) -> Visits:
    """The lfw photos as uploaded (embed_folder's cache); every face countable."""
    dev = embed_folder(people, embedder)
    dis = embed_folder(distractors, embedder) if strangers else None
    names = [p for p, ok in zip(dev.people, dev.ok, strict=True) if ok]
    embs = [dev.embeddings[dev.ok]]
    if dis is not None:
        wanted = {_rel(p) for _, p in strangers}
        keep = np.array(
            [ok and _rel(Path(p)) in wanted for p, ok in zip(dis.paths, dis.ok, strict=True)]
        )
        names += [f"stranger:{p}" for p in np.asarray(dis.paths)[keep]]
        embs.append(dis.embeddings[keep])
    emb = np.vstack(embs)
    return Visits(names, emb, np.ones(len(emb), bool))


def _rel(photo: Path) -> str:
    """person/photo: cached sets may have been made from another working directory."""
    return f"{photo.parent.name}/{photo.name}"


def camera_visits(
    embedder: str, cond: Condition, photos: list[tuple[str, Path]], store: StoreConfig
) -> Visits:
    """Each photo's face in its own camera frame (size and blur drawn per visit), analyzed
    as an upload; cached, since dlib takes about a second a frame."""
    digest = hashlib.sha256(repr((cond, PIPELINE_VERSION.get(embedder))).encode())
    for _, p in photos:
        digest.update(f"{p}:{p.stat().st_size}".encode())
    cache = CACHE / f"{embedder}-{cond.name}-{digest.hexdigest()[:16]}.npz"
    if not cache.exists():
        pipeline = make_pipeline(embedder)
        rng = np.random.default_rng(13)
        rows = []
        for i, (_, path) in enumerate(photos):
            size = int(rng.integers(cond.sizes[0], cond.sizes[1] + 1))
            sigma = float(rng.uniform(*cond.sigmas))
            frame = frame_with(path, size, sigma, rng)
            faces = analyze_bytes(pipeline, frame, ImageLimits(), 5).faces
            f = faces[0] if faces else None
            if f is None:
                rows.append((np.zeros(pipeline.info.dim, np.float32), [0, 0, 0, np.nan]))
            else:
                yaw = np.nan if f.yaw is None else f.yaw
                rows.append((f.embedding, [1, f.size, f.blur, yaw]))
            if i % 50 == 49:
                log(f"{embedder} {cond.name}: {i + 1}/{len(photos)} frames")
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(
            cache,
            embeddings=np.vstack([e for e, _ in rows]).astype(np.float32),
            meta=np.asarray([m for _, m in rows], np.float64),
        )
    z = np.load(cache, allow_pickle=False)
    meta = z["meta"]
    found = meta[:, 0] > 0
    countable = np.array(
        [
            uncountable(
                store,
                wire.Quality(
                    size=int(m[1]),
                    blur=float(m[2]),
                    score=1.0,
                    yaw=None if np.isnan(m[3]) else float(m[3]),
                ),
            )
            is None
            for m in meta
        ]
    )
    return Visits(
        [n for (n, _), ok in zip(photos, found, strict=True) if ok],
        z["embeddings"][found],
        countable[found],
    )


def simulate(
    dist: np.ndarray,
    people: list[str],
    countable: np.ndarray,
    order: np.ndarray,
    threshold: float,
    policy: Policy | None,
) -> dict[str, float]:
    """One shuffled door day; `dist`: every visit-to-visit distance."""
    owner: list[str] = []  # per FaceId: the person whose visit registered it
    views: list[list[int]] = []  # per FaceId: the visits whose embeddings it holds
    stored: list[int] = []  # visit index of every stored vector
    stored_face: list[int] = []
    seen: set[str] = set()
    returning = matched_own = false_merges = learned = wrong_views = not_counted = 0
    for i in order:
        person = people[i]
        is_return = person in seen and not person.startswith("stranger:")
        seen.add(person)
        returning += is_return
        d1 = d2 = np.inf
        face = -1
        if stored:
            best = np.full(len(owner), np.inf)
            np.minimum.at(best, np.asarray(stored_face), dist[i, stored])
            if len(best) > 1:
                two = np.argpartition(best, 1)[:2]
                two = two[np.argsort(best[two])]
                face, d1, d2 = int(two[0]), best[two[0]], best[two[1]]
            else:
                face, d1 = 0, best[0]
        if d1 <= threshold:
            if owner[face] == person:
                matched_own += is_return
            else:
                false_merges += 1
            if (
                policy is not None
                and countable[i]
                and d1 <= policy.confident * threshold
                and d1 > policy.novel * threshold
                and d2 - d1 >= policy.margin * threshold
                and len(views[face]) < policy.max_views
            ):
                views[face].append(i)
                stored.append(i)
                stored_face.append(face)
                learned += 1
                wrong_views += owner[face] != person
        elif countable[i]:
            owner.append(person)
            views.append([i])
            stored.append(i)
            stored_face.append(len(owner) - 1)
        else:
            not_counted += 1
    known = [p for p in set(people) if not p.startswith("stranger:")]
    per_person = [sum(o == p for o in owner) for p in known]
    registered = [n for n in per_person if n]
    return {
        "returning": returning,
        "returning_matched": matched_own / max(1, returning),
        "faceids_per_person": float(np.mean(registered)) if registered else 0.0,
        "false_merges": false_merges,
        "wrong_views": wrong_views,
        "faceids": len(owner),
        "vectors": len(stored),
        "learned": learned,
        "not_counted": not_counted,
    }


def run(
    visits: Visits, metric: str, threshold: float, policies: list[Policy | None], shuffles: int
) -> list[dict[str, Any]]:
    """Every policy (None: no learning) over the same shuffles; means over them."""
    dist = distances(visits.embeddings, visits.embeddings, metric)
    orders = [
        np.random.default_rng(100 + s).permutation(len(visits.people)) for s in range(shuffles)
    ]
    rows = []
    for policy in policies:
        runs = [
            simulate(dist, visits.people, visits.countable, o, threshold, policy) for o in orders
        ]
        mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        mean["returning_matched_min"] = min(r["returning_matched"] for r in runs)
        mean["wrong_views_max"] = max(r["wrong_views"] for r in runs)
        rows.append({"policy": asdict(policy) if policy else None, **mean})
    return rows


def grid(args: argparse.Namespace) -> list[Policy | None]:
    return [None] + [
        Policy(c, n, k, m)
        for c, n, k, m in itertools.product(args.confident, args.novel, args.max_views, args.margin)
        if n < c
    ]


def best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The policy matching the most returning visits without more false merges than none,
    and never teaching a FaceId someone else's face; fewer vectors break ties."""
    base = rows[0]
    safe = [
        r
        for r in rows[1:]
        if r["false_merges"] <= base["false_merges"] and r["wrong_views_max"] == 0
    ]
    return max(safe, key=lambda r: (round(r["returning_matched"], 4), -r["vectors"]), default=base)


def _describe(r: dict[str, Any]) -> list[Any]:
    p = r["policy"]
    what = (
        "none"
        if p is None
        else f"{p['confident']:g} / {p['novel']:g} / {p['max_views']} / {p['margin']:g}"
    )
    return [
        what,
        f"{100 * r['returning_matched']:.1f}% (min {100 * r['returning_matched_min']:.1f}%)",
        round(r["faceids_per_person"], 3),
        round(r["false_merges"], 2),
        round(r["wrong_views"], 2),
        round(r["vectors"], 1),
        round(r["learned"], 1),
    ]


HEADERS = [
    "learning (confident / novel / K / margin)",
    "returning matched",
    "FaceIds per person",
    "false merges",
    "wrong views",
    "vectors",
    "learned",
]


def report(name: str, rows: list[dict[str, Any]], chosen: Policy) -> str:
    """The baseline, the best safe policy, the chosen default, and a slice of the sweep."""
    pick = best(rows)
    default = next((r for r in rows if r["policy"] == asdict(chosen)), None)
    shown = [rows[0]]
    for r in (pick, default):
        if r is not None and all(r is not s for s in shown):
            shown.append(r)
    by_k = [
        r
        for r in rows[1:]
        if r["policy"]["confident"] == chosen.confident
        and r["policy"]["novel"] == chosen.novel
        and r["policy"]["margin"] == chosen.margin
        and r not in shown
    ]
    by_conf = [
        r
        for r in rows[1:]
        if r["policy"]["max_views"] == chosen.max_views
        and r["policy"]["novel"] == chosen.novel
        and r["policy"]["margin"] == chosen.margin
        and r not in shown
        and r not in by_k
    ]
    return f"### {name}\n\n" + table(HEADERS, [_describe(r) for r in shown + by_k + by_conf])


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--embedders", default="arcface,dlib")
    ap.add_argument("--people", type=Path, default=faces_dir() / "lfw_dev")
    ap.add_argument("--distractors", type=Path, default=faces_dir() / "lfw_distractors")
    ap.add_argument("--strangers", type=int, default=200)
    ap.add_argument(
        "--conditions",
        type=lambda t: [parse_condition(c) for c in t.split(",")],
        default=[
            parse_condition(c) for c in ("photos", "cam48:48-48:0-1.5", "cam40-96:40-96:0-1.5")
        ],
    )
    ap.add_argument("--shuffles", type=int, default=20)
    ap.add_argument("--confident", type=_floats, default=[0.6, 0.7, 0.8, 0.9, 1.0])
    ap.add_argument("--novel", type=_floats, default=[0.0, 0.1, 0.2, 0.3])
    ap.add_argument(
        "--max-views", type=lambda t: [int(x) for x in t.split(",")], default=[2, 3, 5, 8]
    )
    ap.add_argument("--margin", type=_floats, default=[0.0, 0.1, 0.2])
    ap.add_argument("--default", type=_floats, default=[0.7, 0.2, 3, 0.1], help="shown policy")
    args = ap.parse_args(argv)
    store = StoreConfig(id="bench")
    strangers = stranger_paths(args.distractors, args.strangers)
    photos = list_photos(args.people) + [(f"stranger:{p}", p) for _, p in strangers]
    chosen = Policy(args.default[0], args.default[1], int(args.default[2]), args.default[3])
    policies = grid(args)
    results: dict[str, Any] = {"machine": machine_info(), "runs": []}
    out = []
    for embedder in args.embedders.split(","):
        info = embedder_info(embedder)
        for cond in args.conditions:
            log(f"{embedder} {cond.name}: embedding")
            if cond.name == "photos":
                visits = photo_visits(embedder, args.people, args.distractors, strangers)
            else:
                visits = camera_visits(embedder, cond, photos, store)
            log(f"{embedder} {cond.name}: {len(policies)} policies x {args.shuffles} shuffles")
            rows = run(visits, info.metric, info.threshold, policies, args.shuffles)
            name = f"{embedder}, {cond.name} (T {info.threshold}, {len(visits.people)} visits)"
            out.append(report(name, rows, chosen))
            print(out[-1] + "\n", flush=True)
            results["runs"].append(
                {
                    "embedder": embedder,
                    "threshold": info.threshold,
                    "condition": asdict(cond),
                    "visits": len(visits.people),
                    "countable": int(visits.countable.sum()),
                    "best": best(rows),
                    "rows": rows,
                }
            )
    path = write_results("views", results)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
