"""Small faces in large frames: detection recall and cost, before and after the detail pass.

    python -m bench.frames                  # 1280×720, 3840×2160, 6000×4000; dlib and arcface
    python -m bench.frames --quick          # 2 frames a size
    python -m bench.frames --sizes 6000x4000 --big 0 --detect-pixels 4000000,12000000

Frames are made here: a smooth backdrop with sensor noise and lfw_dev photos pasted so
that each face is 40–120 px wide, JPEG-encoded at quality 90 as a camera would post them;
and 2400×1800 frames with one photo enlarged so the face is 200–480 px, which the
downscaled frame always found (the detail pass must not cost those).

* `before`: the code before the detail pass, replayed here: the upload downscaled to
  `max_side` (1600), detection and embedding on that frame only.
* `after`: the product's `analyze_bytes` with its default limits: the same whole-frame pass,
  then (an upload over `max_side`) tiles of a frame of at most `detect_pixels` searched for
  the faces the downscale lost, and every face embedded from the upload's own pixels.
* `after@N`: the same with `detect_pixels = N` (a sweep, with --detect-pixels).

A pasted face is found when a box's centre lies within half a face of its centre and the box
is between half and twice its size (bench.pipeline's rule). For each found face, the distance
between its embedding and that of its lfw photo alone (the embedder's metric) says whether
the face would still be recognised: "matched" = at or under the embedder's threshold.
One process, one core (OMP_NUM_THREADS=1, cv2.setNumThreads(1)), as each pool worker runs.
"""

from __future__ import annotations

import os

# One core per process, set before numpy, OpenCV or dlib start their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import itertools  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import log, machine_info, summarize_ms, table, write_results  # noqa: E402
from bench.pipeline import FACE_SHARE, _feather  # noqa: E402
from shard_node.faces.pool import analyze_bytes  # noqa: E402
from shard_node.faces.registry import make_pipeline  # noqa: E402
from storeface.images import ImageLimits, decode_image  # noqa: E402
from storeface.paths import faces_dir  # noqa: E402
from tools.dataset import list_photos  # noqa: E402

EMBEDDERS = ("dlib", "arcface")
SIZE_BUCKETS = (40, 60, 80, 100, 121)  # recall by face width: 40–59, 60–79, 80–99, 100–120
BIG_FACES = (200, 480)  # the face of the "big" frames: a photo enlarged 1.8–4.4×


@dataclass
class Pasted:
    cx: int
    cy: int
    size: int  # face width, px
    photo: Path


@dataclass
class Frame:
    data: bytes
    width: int
    height: int
    faces: list[Pasted]


@dataclass
class Result:
    ms: float
    detect_ms: float
    embed_ms: float
    boxes: int
    hits: list[bool] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)  # of the faces found


# --- frames ------------------------------------------------------------------------------


def _backdrop(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth colour field with a few flat shapes and sensor noise, float32 RGB."""
    low = rng.uniform(60, 200, size=(9, 16, 3)).astype(np.float32)
    bg = np.asarray(cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC), np.float32)
    for _ in range(int(rng.integers(3, 8))):
        w, h = (
            int(rng.integers(width // 30, width // 3)),
            int(rng.integers(height // 30, height // 2)),
        )
        x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        colour = np.asarray(rng.uniform(20, 235, size=3), dtype=np.float32)
        bg[y0 : y0 + h, x0 : x0 + w] = 0.3 * bg[y0 : y0 + h, x0 : x0 + w] + 0.7 * colour
    bg += rng.standard_normal((height, width, 3), dtype=np.float32) * 4
    return bg


def _place(
    width: int, height: int, side: int, placed: list[tuple[int, int, int]], rng: np.random.Generator
) -> tuple[int, int] | None:
    for _ in range(100):
        x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        if all(
            x + side <= px or px + ps <= x or y + side <= py or py + ps <= y
            for px, py, ps in placed
        ):
            return x, y
    return None


def paste_faces(
    canvas: np.ndarray,
    photos: list[Path],
    count: int,
    sizes: tuple[int, int],
    rng: np.random.Generator,
) -> list[Pasted]:
    """Paste `count` lfw photos, scaled so each face is sizes[0]..sizes[1] px wide."""
    height, width = canvas.shape[:2]
    placed: list[tuple[int, int, int]] = []
    faces = []
    for _ in range(count):
        face = int(rng.integers(sizes[0], sizes[1] + 1))
        side = round(face / FACE_SHARE)
        spot = _place(width, height, side, placed, rng)
        if spot is None:
            continue
        x, y = spot
        path = photos[int(rng.integers(len(photos)))]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"cannot read {path}")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
        interp = cv2.INTER_AREA if side < rgb.shape[0] else cv2.INTER_CUBIC
        patch = cv2.resize(rgb, (side, side), interpolation=interp)
        alpha = _feather(side)
        region = canvas[y : y + side, x : x + side]
        canvas[y : y + side, x : x + side] = alpha * patch + (1 - alpha) * region
        placed.append((x, y, side))
        faces.append(Pasted(x + side // 2, y + side // 2, face, path))
    return faces


def make_frame(
    width: int,
    height: int,
    photos: list[Path],
    count: int,
    sizes: tuple[int, int],
    rng: np.random.Generator,
) -> Frame:
    canvas = _backdrop(width, height, rng)
    faces = paste_faces(canvas, photos, count, sizes, rng)
    img = np.clip(canvas, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    assert ok
    return Frame(buf.tobytes(), width, height, faces)


def matched_box(face: Pasted, boxes: list[tuple[int, int, int, int]]) -> int | None:
    """The index of the box on a pasted face (bench.pipeline's rule), or None."""
    for i, (bx, by, bw, bh) in enumerate(boxes):
        if (
            abs(bx + bw / 2 - face.cx) <= face.size / 2
            and abs(by + bh / 2 - face.cy) <= face.size / 2
            and face.size / 2 <= max(bw, bh) <= face.size * 2
        ):
            return i
    return None


# --- the two code paths ------------------------------------------------------------------


def analyze_before(
    pipeline: Any, data: bytes, max_faces: int
) -> tuple[list[tuple[int, int, int, int]], list[np.ndarray], dict[str, float]]:
    """The code before the detail pass: detect and embed on the downscaled frame only."""
    t0 = time.perf_counter()
    image = decode_image(data, ImageLimits(detect_pixels=0))
    t1 = time.perf_counter()
    dets = sorted(pipeline.detect(image.rgb), key=lambda d: d.w * d.h, reverse=True)[:max_faces]
    t2 = time.perf_counter()
    embs = list(pipeline.embed(image.rgb, dets)) if dets else []
    t3 = time.perf_counter()
    inv = 1.0 / image.scale
    boxes = [(round(d.x * inv), round(d.y * inv), round(d.w * inv), round(d.h * inv)) for d in dets]
    timings = {
        "decode_ms": (t1 - t0) * 1000,
        "detect_ms": (t2 - t1) * 1000,
        "embed_ms": (t3 - t2) * 1000,
    }
    return boxes, embs, timings


def analyze_after(
    pipeline: Any, data: bytes, max_faces: int, detect_pixels: int | None
) -> tuple[list[tuple[int, int, int, int]], list[np.ndarray], dict[str, float]]:
    limits = ImageLimits() if detect_pixels is None else ImageLimits(detect_pixels=detect_pixels)
    a = analyze_bytes(pipeline, data, limits, max_faces)
    return [f.box for f in a.faces], [f.embedding for f in a.faces], a.timings


def distance(metric: str, a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if metric == "cosine":
        return float(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.linalg.norm(a - b))


def run_mode(
    pipeline: Any,
    mode: str,
    frames: list[Frame],
    alone: dict[Path, np.ndarray],
    max_faces: int,
) -> list[Result]:
    detect_pixels = int(mode.split("@")[1]) if "@" in mode else None
    out = []
    for frame in frames:
        t0 = time.perf_counter()
        if mode == "before":
            boxes, embs, timings = analyze_before(pipeline, frame.data, max_faces)
        else:
            boxes, embs, timings = analyze_after(pipeline, frame.data, max_faces, detect_pixels)
        r = Result(
            ms=(time.perf_counter() - t0) * 1000,
            detect_ms=timings["detect_ms"],
            embed_ms=timings["embed_ms"],
            boxes=len(boxes),
        )
        for face in frame.faces:
            i = matched_box(face, boxes)
            r.hits.append(i is not None)
            if i is not None and face.photo in alone:
                r.distances.append(distance(pipeline.info.metric, embs[i], alone[face.photo]))
        out.append(r)
    return out


def summarize(results: list[Result], frames: list[Frame], threshold: float) -> dict[str, Any]:
    sizes = [f.size for fr in frames for f in fr.faces]
    hits = [h for r in results for h in r.hits]
    dists = [d for r in results for d in r.distances]
    by_size = {}
    for lo, hi in itertools.pairwise(SIZE_BUCKETS):
        sel = [h for s, h in zip(sizes, hits, strict=True) if lo <= s < hi]
        if sel:
            by_size[f"{lo}-{hi - 1}px"] = {"pasted": len(sel), "recall": sum(sel) / len(sel)}
    return {
        "frames": len(results),
        "faces_pasted": len(hits),
        "faces_found": sum(hits),
        "recall": sum(hits) / len(hits) if hits else None,
        "recall_by_face_size": by_size,
        "other_boxes": sum(r.boxes for r in results) - sum(hits),
        "total_ms": summarize_ms([r.ms for r in results]),
        "detect_ms": summarize_ms([r.detect_ms for r in results]),
        "embed_ms": summarize_ms([r.embed_ms for r in results]),
        "distance_to_alone": {
            "median": float(np.median(dists)) if dists else None,
            "max": float(np.max(dists)) if dists else None,
            "matched": sum(d <= threshold for d in dists),
            "of": len(dists),
        },
    }


def bench_embedder(
    name: str, sets: dict[str, list[Frame]], modes: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    try:
        pipeline = make_pipeline(name)
    except Exception as exc:
        msg = f"{name}: not available ({type(exc).__name__}: {exc})"
        log(msg)
        return {"embedder": name, "available": False, "error": msg}
    photos = {f.photo for frames in sets.values() for fr in frames for f in fr.faces}
    alone = {}
    for path in sorted(photos):
        _, embs, _ = analyze_after(pipeline, path.read_bytes(), 1, None)
        if embs:
            alone[path] = embs[0]
    out: dict[str, Any] = {
        "embedder": name,
        "available": True,
        "metric": pipeline.info.metric,
        "threshold": pipeline.info.threshold,
        "sets": {},
    }
    for set_name, frames in sets.items():
        analyze_after(pipeline, frames[0].data, args.max_faces, None)  # warm-up
        for mode in modes:
            samples = run_mode(pipeline, mode, frames, alone, args.max_faces)
            s = summarize(samples, frames, pipeline.info.threshold)
            out["sets"].setdefault(set_name, {})[mode] = s
            log(
                f"{name} {set_name} {mode}: recall {s['faces_found']}/{s['faces_pasted']}, "
                f"total p50 {s['total_ms']['p50']:.0f} ms"
            )
    return out


# --- output ------------------------------------------------------------------------------


def print_table(payload: dict[str, Any]) -> None:
    labels = [f"{lo}-{hi - 1}px" for lo, hi in itertools.pairwise(SIZE_BUCKETS)]
    rows = []
    for r in payload["results"]:
        if not r["available"]:
            continue
        for set_name, modes in r["sets"].items():
            for mode, s in modes.items():
                d = s["distance_to_alone"]
                rows.append(
                    [
                        r["embedder"],
                        set_name,
                        mode,
                        f"{s['faces_found']}/{s['faces_pasted']}",
                        s["recall"],
                        *[
                            f"{s['recall_by_face_size'][k]['recall']:.2f}"
                            if k in s["recall_by_face_size"]
                            else "–"
                            for k in labels
                        ],
                        s["other_boxes"],
                        f"{s['detect_ms']['p50']:.0f}",
                        f"{s['embed_ms']['p50']:.0f}",
                        f"{s['total_ms']['p50']:.0f} / {s['total_ms']['p90']:.0f}",
                        d["median"],
                        f"{d['matched']}/{d['of']}",
                    ]
                )
    print("\n## Faces 40–120 px in camera frames, one core (ms per frame)\n")
    print(
        table(
            [
                "embedder",
                "frame",
                "code",
                "found",
                "recall",
                *labels,
                "other boxes",
                "detect p50",
                "embed p50",
                "total p50 / p90",
                "dist. to alone (median)",
                "matched",
            ],
            rows,
        )
    )
    for r in payload["results"]:
        if not r["available"]:
            print(f"\n{r['error']}")


def _sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        w, h = item.lower().split("x")
        out.append((int(w), int(h)))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.frames", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 frames a size")
    p.add_argument("--embedders", default=",".join(EMBEDDERS))
    p.add_argument("--sizes", type=_sizes, default=_sizes("1280x720,3840x2160,6000x4000"))
    p.add_argument("--frames", type=int, default=8, help="frames per size")
    p.add_argument("--faces", type=int, default=6, help="faces per frame (3 in 1280×720)")
    p.add_argument("--face-min", type=int, default=40)
    p.add_argument("--face-max", type=int, default=120)
    p.add_argument(
        "--detect-pixels", default="", help="also run the detail pass at these budgets (a sweep)"
    )
    p.add_argument("--big", type=int, default=6, help="2400×1800 frames with one large face")
    p.add_argument("--no-before", action="store_true", help="skip the code before the change")
    p.add_argument("--max-faces", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="results file name (default frames[-quick])")
    args = p.parse_args(argv)
    if args.quick:
        args.frames = min(args.frames, 2)
    args.embedders = [e.strip() for e in args.embedders.split(",") if e.strip()]
    args.sweep = [int(v) for v in args.detect_pixels.split(",") if v.strip()]
    args.name = args.name or ("frames-quick" if args.quick else "frames")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cv2.setNumThreads(1)
    started = time.perf_counter()
    machine = machine_info({"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "processes": 1})
    photos = [p for _, p in list_photos(faces_dir() / "lfw_dev")]
    rng = np.random.default_rng(args.seed)
    sets: dict[str, list[Frame]] = {}
    for w, h in args.sizes:
        count = args.faces if max(w, h) > 1600 else min(args.faces, 3)
        sets[f"{w}×{h}"] = [
            make_frame(w, h, photos, count, (args.face_min, args.face_max), rng)
            for _ in range(args.frames)
        ]
        log(f"made {args.frames} {w}×{h} frames ({count} faces each)")
    if args.big:  # faces the downscaled frame always found: the detail pass must not hurt them
        sets["2400×1800 big"] = [
            make_frame(2400, 1800, photos, 1, BIG_FACES, rng) for _ in range(args.big)
        ]
        log(f"made {args.big} 2400×1800 frames with one face of {BIG_FACES} px")
    modes = [] if args.no_before else ["before"]
    modes += ["after"] + [f"after@{n}" for n in args.sweep]
    results = [bench_embedder(name, sets, modes, args) for name in args.embedders]
    limits = ImageLimits()
    payload: dict[str, Any] = {
        "benchmark": "frames",
        "machine": {**machine, "finished": machine_info()["date"]},
        "settings": {k: v for k, v in vars(args).items() if k != "sizes"},
        "limits": {"max_side": limits.max_side, "detect_pixels": limits.detect_pixels},
        "sets": {
            name: {
                "frames": len(frames),
                "faces_pasted": sum(len(f.faces) for f in frames),
                "mean_bytes": float(np.mean([len(f.data) for f in frames])),
            }
            for name, frames in sets.items()
        },
        "results": results,
        "wall_s": time.perf_counter() - started,
    }
    print_table(payload)
    path = write_results(args.name, payload)
    print(f"\nwall time {payload['wall_s']:.0f}s; results in {path}")


if __name__ == "__main__":
    main()
