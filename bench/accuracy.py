"""How often it is right: 1:N rank-1, true/false-match rates, a threshold sweep, and a
door-camera simulation through a running cluster's /v1/recognize.

    python -m bench.accuracy                         # dlib and arcface on ../shared/faces
    python -m bench.accuracy --people DIR --distractors DIR --embedder dlib
    python -m bench.accuracy --no-door               # offline numbers only
    python -m bench.accuracy --pairs pairs.txt --lfw DIR   # LFW 10-fold verification
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import log, machine_info, table, write_results
from shard_node.faces.registry import embedder_info
from storeface.distances import distances
from storeface.paths import faces_dir
from tools.dataset import EmbeddedSet, embed_folder
from tools.evaluation import nearest, split
from tools.servers import running_cluster


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def offline(embedder: str, people: Path, distractors: Path | None) -> dict[str, Any]:
    """Gallery = first photo per person (+ every other distractor); probes = the rest."""
    info = embedder_info(embedder)
    dev = embed_folder(people, embedder)
    dis = embed_folder(distractors, embedder) if distractors else None
    s = split(dev, dis)
    n = nearest(s, info.metric)
    t1 = n.threshold_at_fmr(0.01)
    lo, hi = (0.3, 0.65) if info.metric == "l2" else (0.35, 0.8)
    photos = np.concatenate([dev.ms_per_photo] + ([dis.ms_per_photo] if dis else []))
    return {
        "embedder": embedder,
        "metric": info.metric,
        "default_threshold": info.threshold,
        "gallery": len(s.gallery),
        "probes": len(s.probes),
        "strangers": len(s.strangers),
        "no_face": int((~dev.ok).sum() + ((~dis.ok).sum() if dis else 0)),
        "rank1": n.rank1,
        "tmr": n.tmr(info.threshold),
        "fmr": n.fmr(info.threshold),
        "threshold_at_fmr_1pct": t1,
        "tmr_at_fmr_1pct": n.tmr(t1),
        "ms_per_photo_median": float(np.median(photos)),
        "sweep": n.sweep(np.round(np.arange(lo, hi, 0.02), 4)),
    }


def door_camera(
    embedder: str, dev: EmbeddedSet, dis: EmbeddedSet, strangers: int, seed: int = 7
) -> dict[str, Any]:
    """A shuffled day at one door: first visits, returning visits and one-off visitors."""
    events = [
        (p, Path(path)) for p, path, ok in zip(dev.people, dev.paths, dev.ok, strict=True) if ok
    ]
    rng = random.Random(seed)
    ones = [i for i in range(len(dis.paths)) if dis.ok[i]]
    events += [(dis.people[i], Path(dis.paths[i])) for i in rng.sample(ones, strangers)]
    rng.shuffle(events)
    first_id: dict[str, int] = {}
    ids_of_face: dict[int, set[str]] = {}
    returning = returning_ok = 0
    latencies = []
    with (
        running_cluster([], [{"id": "door", "replicas": 1, "embedder": embedder}]) as cluster,
        cluster.client() as c,
    ):
        for person, path in events:
            t0 = time.perf_counter()
            r = c.post(
                "/v1/recognize",
                files={"image": (path.name, path.read_bytes())},
                data={"store_id": "door"},
            )
            latencies.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            faces = r.json()["faces"]
            if not faces or faces[0]["face_id"] is None:
                continue
            fid = int(faces[0]["face_id"])
            ids_of_face.setdefault(fid, set()).add(person)
            if person in first_id:
                returning += 1
                returning_ok += fid == first_id[person]
            else:
                first_id[person] = fid
        counted_uv = c.get("/v1/stores/door/stats").json()["unique_visitors"]
    merged_people = {p for people in ids_of_face.values() if len(people) > 1 for p in people}
    return {
        "embedder": embedder,
        "visits": len(events),
        "true_uv": len(first_id),
        "counted_uv": counted_uv,
        "face_ids": len(ids_of_face),
        "returning_visits": returning,
        "returning_got_first_face_id": returning_ok / returning if returning else 0.0,
        "people_merged": len(merged_people),
        "face_ids_holding_several_people": sum(len(p) > 1 for p in ids_of_face.values()),
        "recognize_ms_median": float(np.median(latencies)),
    }


def lfw_pairs(embedder: str, pairs_file: Path, lfw_dir: Path) -> dict[str, Any]:
    """LFW's 10-fold protocol: threshold fit on 9 folds, accuracy on the tenth."""
    lines = pairs_file.read_text().split("\n")
    folds, per = (int(x) for x in lines[0].split())
    rows = [ln.split() for ln in lines[1:] if ln.strip()]
    path_of = {}
    for r in rows:
        names = (
            [(r[0], int(r[1])), (r[0], int(r[2]))]
            if len(r) == 3
            else [(r[0], int(r[1])), (r[2], int(r[3]))]
        )
        for name, n in names:
            path_of[(name, n)] = lfw_dir / name / f"{name}_{n:04d}.jpg"
    embedded = embed_folder(lfw_dir, embedder)
    vec = {
        Path(p): e
        for p, e, ok in zip(embedded.paths, embedded.embeddings, embedded.ok, strict=True)
        if ok
    }
    metric = embedder_info(embedder).metric
    d, same = [], []
    for r in rows:
        a, b = (
            ((r[0], int(r[1])), (r[0], int(r[2])))
            if len(r) == 3
            else ((r[0], int(r[1])), (r[2], int(r[3])))
        )
        va, vb = vec.get(path_of[a]), vec.get(path_of[b])
        d.append(
            np.inf
            if va is None or vb is None
            else float(distances(va[None], vb[None], metric)[0, 0])
        )
        same.append(len(r) == 3)
    dist, truth = np.array(d), np.array(same)
    accs = []
    for k in range(folds):
        test = np.zeros(len(dist), bool)
        test[k * 2 * per : (k + 1) * 2 * per] = True
        cands = np.unique(dist[~test & np.isfinite(dist)])
        best = max(cands, key=lambda t: ((dist[~test] <= t) == truth[~test]).mean())
        accs.append(((dist[test] <= best) == truth[test]).mean())
    return {"embedder": embedder, "accuracy": float(np.mean(accs)), "std": float(np.std(accs))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--embedder", action="append", help="dlib, arcface (default: both)")
    p.add_argument("--people", type=Path, default=faces_dir() / "lfw_dev")
    p.add_argument("--distractors", type=Path, default=faces_dir() / "lfw_distractors")
    p.add_argument("--strangers", type=int, default=200, help="one-off visitors at the door")
    p.add_argument("--no-door", action="store_true", help="skip the door-camera simulation")
    p.add_argument("--pairs", type=Path, help="LFW pairs.txt, for the 10-fold protocol")
    p.add_argument("--lfw", type=Path, help="the LFW folder the pairs file refers to")
    args = p.parse_args(argv)
    embedders = args.embedder or ["dlib", "arcface"]
    results: dict[str, Any] = {
        "machine": machine_info(),
        "offline": [],
        "door": [],
        "lfw_pairs": [],
    }
    for emb in embedders:
        log(f"offline 1:N accuracy: {emb}")
        results["offline"].append(offline(emb, args.people, args.distractors))
    print(
        table(
            [
                "embedder",
                "gallery",
                "probes",
                "strangers",
                "rank-1",
                "threshold",
                "TMR",
                "FMR",
                "thr@FMR1%",
                "TMR@FMR1%",
                "ms/photo",
            ],
            [
                [
                    r["embedder"],
                    r["gallery"],
                    r["probes"],
                    r["strangers"],
                    r["rank1"],
                    r["default_threshold"],
                    r["tmr"],
                    r["fmr"],
                    r["threshold_at_fmr_1pct"],
                    r["tmr_at_fmr_1pct"],
                    r["ms_per_photo_median"],
                ]
                for r in results["offline"]
            ],
        )
    )
    for r in results["offline"]:
        print(f"\nthreshold sweep, {r['embedder']} ({r['metric']}):")
        print(
            table(
                ["threshold", "TMR", "FMR"],
                [[s["threshold"], s["tmr"], s["fmr"]] for s in r["sweep"]],
            )
        )
    if not args.no_door:
        for emb in embedders:
            log(f"door-camera simulation through /v1/recognize: {emb}")
            dev = embed_folder(args.people, emb)
            dis = embed_folder(args.distractors, emb)
            results["door"].append(door_camera(emb, dev, dis, args.strangers))
        print("\ndoor camera (auto-registration, one store):")
        print(
            table(
                [
                    "embedder",
                    "visits",
                    "true UV",
                    "counted UV",
                    "FaceIds",
                    "returning got first FaceId",
                    "people merged",
                    "recognize ms p50",
                ],
                [
                    [
                        d["embedder"],
                        d["visits"],
                        d["true_uv"],
                        d["counted_uv"],
                        d["face_ids"],
                        d["returning_got_first_face_id"],
                        d["people_merged"],
                        d["recognize_ms_median"],
                    ]
                    for d in results["door"]
                ],
            )
        )
    if args.pairs and args.lfw:
        for emb in embedders:
            results["lfw_pairs"].append(lfw_pairs(emb, args.pairs, args.lfw))
        print(
            table(
                ["embedder", "LFW 10-fold accuracy", "std"],
                [[r["embedder"], r["accuracy"], r["std"]] for r in results["lfw_pairs"]],
            )
        )
    else:
        print(
            "\nLFW 10-fold pairs: not run (give --pairs pairs.txt --lfw DIR; the full LFW "
            "set is not in ../shared/faces)"
        )
    print(f"\nresults: {write_results('accuracy', results)}")


if __name__ == "__main__":
    main()
