"""How often it is right: 1:N rank-1, true/false-match rates, a threshold sweep, a
door-camera simulation through a running cluster's /v1/recognize, and the gallery + door
protocol (people enrolled at one store, a door stream at another).

    python -m bench.accuracy                         # dlib and arcface on ../shared/faces
    python -m bench.accuracy --protocol-only         # only the gallery + door protocol
    python -m bench.accuracy --people DIR --distractors DIR --embedder dlib
    python -m bench.accuracy --no-door               # offline numbers only
    python -m bench.accuracy --pairs pairs.txt --lfw DIR   # LFW 10-fold verification
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import log, machine_info, table, write_results
from shard_node.faces.registry import embedder_info
from storeface.distances import distances
from storeface.paths import faces_dir
from tools.dataset import EmbeddedSet, embed_folder
from tools.evaluation import Split, nearest, split
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


@dataclass
class Protocol:
    """Who is enrolled, who never is, and the door's visits, in the order they happen."""

    gallery: list[tuple[str, Path]]  # one photo per enrolled person
    door: list[tuple[str, Path]]  # visits: enrolled people's other photos, never-enrolled people
    enrolled: set[str]
    split: Split  # the same people as embeddings, for TPIR at FPIR 1%


def protocol(
    dev: EmbeddedSet, dis: EmbeddedSet, gallery_size: int, never: int, seed: int = 11
) -> Protocol:
    """Half the people with several photos are enrolled (first photo) with distractors up to
    `gallery_size`; the other half and `never` distractors are never enrolled. The door sees
    the enrolled half's other photos, every photo of the other half (their first visit makes
    them a visitor, the rest are returns) and each never-enrolled distractor once."""
    rng = random.Random(seed)
    by_person: dict[str, list[int]] = {}
    for i, (person, ok) in enumerate(zip(dev.people, dev.ok, strict=True)):
        if ok:
            by_person.setdefault(person, []).append(i)
    people = sorted(p for p, idx in by_person.items() if len(idx) >= 2)
    rng.shuffle(people)
    enrolled, visitors = set(people[: len(people) // 2]), people[len(people) // 2 :]
    singles = [i for i in range(len(dis.paths)) if dis.ok[i]]
    rng.shuffle(singles)
    extra = max(0, min(gallery_size - len(enrolled), len(singles) - never))
    in_gallery, unseen = singles[:extra], singles[extra : extra + never]
    gallery = [(p, Path(dev.paths[by_person[p][0]])) for p in sorted(enrolled)]
    gallery += [(dis.people[i], Path(dis.paths[i])) for i in in_gallery]
    door = [(p, Path(dev.paths[i])) for p in sorted(enrolled) for i in by_person[p][1:]]
    door += [(p, Path(dev.paths[i])) for p in visitors for i in by_person[p]]
    door += [(dis.people[i], Path(dis.paths[i])) for i in unseen]
    rng.shuffle(door)
    probes = [i for p in sorted(enrolled) for i in by_person[p][1:]]
    firsts = [by_person[p][0] for p in visitors]
    emb = dev.embeddings
    split = Split(
        np.vstack([emb[[by_person[p][0] for p in sorted(enrolled)]], dis.embeddings[in_gallery]]),
        sorted(enrolled) + [dis.people[i] for i in in_gallery],
        emb[probes],
        [dev.people[i] for i in probes],
        np.vstack([emb[firsts], dis.embeddings[unseen]]),
    )
    return Protocol(gallery, door, enrolled, split)


def gallery_and_door(
    embedder: str,
    dev: EmbeddedSet,
    dis: EmbeddedSet,
    gallery_size: int,
    never: int,
    learn_views: bool = False,
) -> dict[str, Any]:
    """The protocol through a cluster: enroll at `gallery`, then the door stream at `door`."""
    p = protocol(dev, dis, gallery_size, never)
    n = nearest(p.split, embedder_info(embedder).metric)
    t1 = n.threshold_at_fmr(0.01)
    refused: dict[str, int] = {}
    gallery_id: dict[str, int] = {}
    people_of: dict[int, set[str]] = {}
    stores: list[dict[str, Any]] = [
        {"id": "gallery", "node": "n", "auto_register": False},
        {"id": "door", "node": "n", "fallback": "all"},
    ]
    if learn_views:
        for s in stores:
            s["learn_views"] = {}  # on, with its defaults (off unless a store sets it)
    with (
        running_cluster([{"id": "n", "replicas": 1, "embedder": embedder}], stores) as cluster,
        cluster.client() as c,
    ):
        for person, path in p.gallery:
            r = c.post(
                "/v1/stores/gallery/faces",
                files={"image": (path.name, path.read_bytes())},
                data={"label": person},
            )
            if r.status_code in (200, 201):
                gallery_id[person] = int(r.json()["face_id"])
                people_of.setdefault(gallery_id[person], set()).add(person)
            else:
                code = r.json()["error"]["code"]
                refused[code] = refused.get(code, 0) + 1
        first_id: dict[str, int] = {}
        hits = enrolled_visits = false_hits = never_visits = 0
        returning = returning_ok = not_counted = 0
        gallery_ids = set(gallery_id.values())
        for person, path in p.door:
            r = c.post(
                "/v1/recognize",
                files={"image": (path.name, path.read_bytes())},
                data={"store_id": "door"},
            )
            r.raise_for_status()
            faces = r.json()["faces"]
            fid = faces[0]["face_id"] if faces else None
            if person in p.enrolled:
                enrolled_visits += 1
                hits += fid is not None and fid == gallery_id.get(person)
            else:
                never_visits += 1
                false_hits += fid in gallery_ids
            if fid is None:
                not_counted += 1
                continue
            people_of.setdefault(fid, set()).add(person)
            known = first_id.get(person, gallery_id.get(person))
            if person in first_id:
                returning += 1
                returning_ok += fid == known
            first_id.setdefault(person, fid)
        counted_uv = c.get("/v1/stores/door/stats").json()["unique_visitors"]
    door_people = {person for person, _ in p.door}
    door_ids = set(first_id.values())
    merged_ids = {fid: sorted(ppl) for fid, ppl in people_of.items() if len(ppl) > 1}
    merged = {q for ppl in merged_ids.values() for q in ppl}
    return {
        "embedder": embedder,
        "learn_views": learn_views,
        "gallery_people": len(p.gallery),
        "enrollments_refused": refused,
        "tpir": hits / enrolled_visits if enrolled_visits else 0.0,
        "fpir": false_hits / never_visits if never_visits else 0.0,
        "enrolled_visits": enrolled_visits,
        "never_enrolled_visits": never_visits,
        "threshold": embedder_info(embedder).threshold,
        "threshold_at_fpir_1pct": t1,
        "tpir_at_fpir_1pct": n.tmr(t1),
        "door_visits": len(p.door),
        "door_true_uv": len(door_people),
        "door_face_ids": len(door_ids),
        "door_counted_uv": counted_uv,
        "uv_error": len(door_ids) / len(door_people) - 1,
        "counted_uv_error": counted_uv / len(door_people) - 1,
        "returning_visits": returning,
        "returning_matched": returning_ok / returning if returning else 0.0,
        "not_counted": not_counted,
        "people_merged": len(merged),
        "merged": {str(fid): ppl for fid, ppl in merged_ids.items()},
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


def print_protocol(rows: list[dict[str, Any]]) -> None:
    print("\ngallery + door protocol (enrolled at `gallery`, the door stream at `door`):")
    print(
        table(
            [
                "embedder",
                "views",
                "gallery",
                "refused",
                "TPIR",
                "FPIR",
                "TPIR@FPIR1%",
                "door visits",
                "true UV",
                "FaceIds",
                "UV error",
                "counted UV",
                "returning matched",
                "not counted",
                "merged",
            ],
            [
                [
                    r["embedder"],
                    "learned" if r["learn_views"] else "one",
                    r["gallery_people"],
                    sum(r["enrollments_refused"].values()),
                    r["tpir"],
                    r["fpir"],
                    r["tpir_at_fpir_1pct"],
                    r["door_visits"],
                    r["door_true_uv"],
                    r["door_face_ids"],
                    pct(r["uv_error"]),
                    r["door_counted_uv"],
                    r["returning_matched"],
                    r["not_counted"],
                    r["people_merged"],
                ]
                for r in rows
            ],
        )
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--embedder", action="append", help="dlib, arcface (default: both)")
    p.add_argument("--people", type=Path, default=faces_dir() / "lfw_dev")
    p.add_argument("--distractors", type=Path, default=faces_dir() / "lfw_distractors")
    p.add_argument("--strangers", type=int, default=200, help="one-off visitors at the door")
    p.add_argument("--no-door", action="store_true", help="skip the door-camera simulation")
    p.add_argument("--gallery", type=int, default=300, help="people enrolled (protocol)")
    p.add_argument("--never", type=int, default=300, help="never-enrolled people (protocol)")
    p.add_argument("--protocol-only", action="store_true", help="only the gallery + door protocol")
    p.add_argument(
        "--learn-views", action="store_true", help="protocol stores learn views (learn_views: {})"
    )
    p.add_argument("--pairs", type=Path, help="LFW pairs.txt, for the 10-fold protocol")
    p.add_argument("--lfw", type=Path, help="the LFW folder the pairs file refers to")
    args = p.parse_args(argv)
    embedders = args.embedder or ["dlib", "arcface"]
    results: dict[str, Any] = {
        "machine": machine_info(),
        "offline": [],
        "door": [],
        "lfw_pairs": [],
        "protocol": [],
    }
    for emb in embedders:
        log(f"gallery + door protocol: {emb}")
        dev = embed_folder(args.people, emb)
        dis = embed_folder(args.distractors, emb)
        results["protocol"].append(
            gallery_and_door(emb, dev, dis, args.gallery, args.never, learn_views=args.learn_views)
        )
    print_protocol(results["protocol"])
    if args.protocol_only:
        name = "accuracy-protocol" + ("-learn-views" if args.learn_views else "")
        print(f"\nresults: {write_results(name, results)}")
        return
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
