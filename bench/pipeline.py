"""A photo's cost per embedder: decode, detect, align+embed, on one core.

    python -m bench.pipeline            # lfw_dev photos + 40 camera frames, every embedder
    python -m bench.pipeline --quick    # 20 photos + 8 frames

Runs in-process through the product's own code (registry.make_pipeline and
pool.analyze_bytes, which time each stage), with OMP_NUM_THREADS=1 and
cv2.setNumThreads(1): one process on one core, as each FacePool worker runs.

Two sets: the lfw_dev photos (250×250, one tightly framed face), and camera-sized frames
made here: a 1280×720 canvas (smooth background, shelves, sensor noise) with one to three
lfw_dev photos pasted so that the face is 48–160 px wide, JPEG-encoded like an upload.
Detection recall on the frames = pasted faces with a detection on them / faces pasted.
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
from shard_node.faces.pool import analyze_bytes  # noqa: E402
from shard_node.faces.registry import make_pipeline  # noqa: E402
from storeface.images import ImageLimits  # noqa: E402
from storeface.paths import faces_dir  # noqa: E402
from tools.dataset import list_photos  # noqa: E402

# In LFW's deep-funneled 250×250 photos the face sits in the centre. Measured on every third
# lfw_dev photo: dlib's HOG box is 109 px (median), YuNet's 92×122 px. A pasted photo of side
# s therefore holds a face of about 0.44·s px; "face size" below means that.
FACE_SHARE = 0.44

FRAME_W, FRAME_H = 1280, 720

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "dlib": ("dlib", {}),  # upsample 1, the product's default
    "dlib-up0": ("dlib", {"upsample": 0}),
    "arcface": ("arcface", {}),  # YuNet + ArcFace ONNX from ../shared/models
}


@dataclass
class Frame:
    data: bytes
    faces: list[tuple[int, int, int]]  # centre x, centre y, face size (px) of each pasted face
    label: str = ""


@dataclass
class Sample:
    decode_ms: float
    detect_ms: float
    embed_ms: float
    total_ms: float
    faces: int
    hits: int = 0  # pasted faces with a detection on them (frames only)
    pasted: int = 0
    sizes_hit: list[tuple[int, bool]] = field(default_factory=list)


# --- camera-sized frames -----------------------------------------------------------------


def _background(rng: np.random.Generator) -> np.ndarray:
    """A plausible shop-entrance backdrop: smooth colours, a floor, shelves, sensor noise."""
    low = rng.uniform(60, 200, size=(9, 16, 3)).astype(np.float32)
    bg = cv2.resize(low, (FRAME_W, FRAME_H), interpolation=cv2.INTER_CUBIC)
    ramp = np.linspace(0.85, 1.1, FRAME_H, dtype=np.float32)[:, None, None]
    bg = bg * ramp
    for _ in range(int(rng.integers(3, 8))):  # shelves, door frames, posters
        x0, y0 = int(rng.integers(0, FRAME_W - 40)), int(rng.integers(0, FRAME_H - 40))
        w, h = int(rng.integers(40, 400)), int(rng.integers(20, 300))
        colour = np.asarray(rng.uniform(20, 235, size=3), dtype=np.float32)
        bg[y0 : y0 + h, x0 : x0 + w] = 0.3 * bg[y0 : y0 + h, x0 : x0 + w] + 0.7 * colour
    bg = cv2.GaussianBlur(bg, (0, 0), 1.5)
    bg = bg + rng.standard_normal((FRAME_H, FRAME_W, 3), dtype=np.float32) * 4
    return bg


def _feather(size: int) -> np.ndarray:
    """An alpha mask that fades the pasted photo's border into the background."""
    ramp = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    edge = max(2.0, size * 0.12)
    a = np.clip(ramp / edge, 0, 1)
    return (a[:, None] * a[None, :])[..., None]


def make_frames(
    photos: list[Path], count: int, rng: np.random.Generator, sizes: tuple[int, int]
) -> list[Frame]:
    """1280×720 JPEG frames with 1–3 lfw faces pasted at sizes[0]..sizes[1] px."""
    frames = []
    for f in range(count):
        canvas = _background(rng)
        placed: list[tuple[int, int, int]] = []  # x, y, side of each pasted photo
        faces = []
        for _ in range(int(rng.integers(1, 4))):
            face = int(rng.integers(sizes[0], sizes[1] + 1))
            side = round(face / FACE_SHARE)
            for _attempt in range(50):
                x = int(rng.integers(0, FRAME_W - side))
                y = int(rng.integers(0, FRAME_H - side))
                if all(
                    x + side <= px or px + ps <= x or y + side <= py or py + ps <= y
                    for px, py, ps in placed
                ):
                    break
            else:
                continue
            path = photos[int(rng.integers(len(photos)))]
            photo = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if photo is None:
                raise SystemExit(f"cannot read {path}")
            rgb = cv2.cvtColor(photo, cv2.COLOR_BGR2RGB).astype(np.float32)
            interp = cv2.INTER_AREA if side < rgb.shape[0] else cv2.INTER_CUBIC
            patch = cv2.resize(rgb, (side, side), interpolation=interp)
            alpha = _feather(side)
            region = canvas[y : y + side, x : x + side]
            canvas[y : y + side, x : x + side] = alpha * patch + (1 - alpha) * region
            placed.append((x, y, side))
            faces.append((x + side // 2, y + side // 2, face))
        img = np.clip(canvas, 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(
            ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85]
        )
        assert ok
        frames.append(Frame(data=buf.tobytes(), faces=faces, label=f"frame{f}"))
    return frames


def match_faces(
    pasted: list[tuple[int, int, int]], boxes: list[tuple[int, int, int, int]]
) -> list[bool]:
    """A pasted face is found when a box's centre is within half a face of its centre and
    the box is between half and twice its size."""
    found = []
    for cx, cy, size in pasted:
        hit = False
        for bx, by, bw, bh in boxes:
            mx, my = bx + bw / 2, by + bh / 2
            if (
                abs(mx - cx) <= size / 2
                and abs(my - cy) <= size / 2
                and size / 2 <= max(bw, bh) <= size * 2
            ):
                hit = True
                break
        found.append(hit)
    return found


# --- running one embedder ----------------------------------------------------------------


def run_set(pipeline: Any, items: list[Frame], warmup: int) -> list[Sample]:
    limits = ImageLimits()
    for item in items[:warmup]:
        analyze_bytes(pipeline, item.data, limits, max_faces=10)
    out = []
    for item in items:
        t0 = time.perf_counter()
        a = analyze_bytes(pipeline, item.data, limits, max_faces=10)
        total = (time.perf_counter() - t0) * 1000
        s = Sample(
            decode_ms=a.timings["decode_ms"],
            detect_ms=a.timings["detect_ms"],
            embed_ms=a.timings["embed_ms"],
            total_ms=total,
            faces=len(a.faces),
        )
        if item.faces:
            found = match_faces(item.faces, [f.box for f in a.faces])
            s.pasted = len(item.faces)
            s.hits = sum(found)
            s.sizes_hit = [(size, hit) for (_, _, size), hit in zip(item.faces, found, strict=True)]
        out.append(s)
    return out


def bucket_edges(args: argparse.Namespace) -> list[int]:
    return [*args.size_buckets, args.face_max + 1]


def summarize_set(samples: list[Sample], camera: bool, edges: list[int]) -> dict[str, Any]:
    total = summarize_ms([s.total_ms for s in samples])
    faces = sum(s.faces for s in samples)
    embed_per_face = [s.embed_ms / s.faces for s in samples if s.faces]
    out: dict[str, Any] = {
        "images": len(samples),
        "decode_ms": summarize_ms([s.decode_ms for s in samples]),
        "detect_ms": summarize_ms([s.detect_ms for s in samples]),
        "embed_ms": summarize_ms([s.embed_ms for s in samples]),
        "embed_ms_per_face": summarize_ms(embed_per_face),
        # analyze()'s own work after embedding: grayscale of the frame, blur of each face
        "other_ms": summarize_ms(
            [s.total_ms - s.decode_ms - s.detect_ms - s.embed_ms for s in samples]
        ),
        "total_ms": total,
        "photos_per_s_per_core": 1000 / total["mean"],
        "faces_found": faces,
        "images_with_a_face": sum(1 for s in samples if s.faces),
    }
    if camera:
        pasted = sum(s.pasted for s in samples)
        hits = sum(s.hits for s in samples)
        out["faces_pasted"] = pasted
        out["faces_detected"] = hits
        out["detection_recall"] = hits / pasted if pasted else None
        out["other_detections"] = faces - hits  # background faces in lfw photos, false alarms
        pairs = [p for s in samples for p in s.sizes_hit]
        by_size = {}
        for lo, hi in itertools.pairwise(edges):
            sel = [hit for size, hit in pairs if lo <= size < hi]
            if sel:
                by_size[f"{lo}-{hi - 1}px"] = {
                    "pasted": len(sel),
                    "recall": sum(sel) / len(sel),
                }
        out["recall_by_face_size"] = by_size
    return out


def bench_variant(
    name: str, sets: dict[str, list[Frame]], args: argparse.Namespace
) -> dict[str, Any]:
    embedder, options = VARIANTS[name]
    t0 = time.perf_counter()
    try:
        pipeline = make_pipeline(embedder, options)
    except Exception as exc:
        msg = f"{name}: not available ({type(exc).__name__}: {exc})"
        log(msg)
        return {"variant": name, "available": False, "error": msg}
    load_s = time.perf_counter() - t0
    log(f"{name}: loaded in {load_s:.1f}s")
    result: dict[str, Any] = {
        "variant": name,
        "embedder": embedder,
        "options": options,
        "available": True,
        "load_s": load_s,
    }
    for set_name, items in sets.items():
        samples = run_set(pipeline, items, args.warmup)
        result[set_name] = summarize_set(samples, set_name == "camera", bucket_edges(args))
        s = result[set_name]
        log(
            f"{name} on {set_name}: total p50 {s['total_ms']['p50']:.0f} ms, "
            f"{s['photos_per_s_per_core']:.1f} photos/s/core"
            + (f", recall {s['detection_recall']:.2f}" if set_name == "camera" else "")
        )
    return result


# --- output ------------------------------------------------------------------------------


def print_tables(payload: dict[str, Any]) -> None:
    rows = []
    for r in payload["results"]:
        if not r["available"]:
            continue
        for set_name in ("lfw_dev", "camera"):
            s = r.get(set_name)
            if not s:
                continue
            rows.append(
                [
                    r["variant"],
                    set_name,
                    s["images"],
                    f"{s['decode_ms']['p50']:.1f} / {s['decode_ms']['p90']:.1f}",
                    f"{s['detect_ms']['p50']:.0f} / {s['detect_ms']['p90']:.0f}",
                    f"{s['embed_ms']['p50']:.0f} / {s['embed_ms']['p90']:.0f}",
                    f"{s['embed_ms_per_face']['p50']:.0f}",
                    f"{s['other_ms']['p50']:.1f}",
                    f"{s['total_ms']['p50']:.0f} / {s['total_ms']['p90']:.0f}",
                    s["photos_per_s_per_core"],
                    f"{s['faces_found']}",
                    s.get("detection_recall"),
                ]
            )
    print("\n## Cost per photo, one core (ms, median / p90)\n")
    print(
        table(
            [
                "embedder",
                "set",
                "photos",
                "decode",
                "detect",
                "align+embed",
                "embed/face",
                "other",
                "total",
                "photos/s/core",
                "faces",
                "det. recall",
            ],
            rows,
        )
    )
    rows = []
    for r in payload["results"]:
        cam = r.get("camera")
        if not r["available"] or not cam:
            continue
        by_size = cam["recall_by_face_size"]
        rows.append(
            [
                r["variant"],
                f"{cam['faces_detected']}/{cam['faces_pasted']}",
                cam["detection_recall"],
                *[
                    (
                        f"{by_size[k]['recall']:.2f} ({by_size[k]['pasted']})"
                        if k in by_size
                        else "–"
                    )
                    for k in payload["size_bucket_labels"]
                ],
                cam["other_detections"],
            ]
        )
    if rows:
        print("\n## Detection on camera frames (1280×720, 1–3 pasted faces)\n")
        print(
            table(
                [
                    "embedder",
                    "found/pasted",
                    "recall",
                    *[f"recall {k}" for k in payload["size_bucket_labels"]],
                    "other boxes",
                ],
                rows,
            )
        )
    for r in payload["results"]:
        if not r["available"]:
            print(f"\n{r['error']}")


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="20 photos and 8 frames")
    p.add_argument("--embedders", default="dlib,dlib-up0,arcface", help=f"of {', '.join(VARIANTS)}")
    p.add_argument("--photos", type=int, default=0, help="lfw_dev photos (0: all)")
    p.add_argument("--frames", type=int, default=40, help="camera frames to make")
    p.add_argument("--face-min", type=int, default=48, help="smallest pasted face, px")
    p.add_argument("--face-max", type=int, default=160, help="largest pasted face, px")
    p.add_argument("--size-buckets", type=_ints, default=[48, 64, 80, 120], help="recall by size")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="results file name (default pipeline[-quick])")
    args = p.parse_args(argv)
    if args.quick:
        args.photos = args.photos or 20
        args.frames = min(args.frames, 8)
    args.embedders = [e.strip() for e in args.embedders.split(",") if e.strip()]
    for e in args.embedders:
        if e not in VARIANTS:
            p.error(f"unknown embedder {e!r}; known: {', '.join(VARIANTS)}")
    args.name = args.name or ("pipeline-quick" if args.quick else "pipeline")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cv2.setNumThreads(1)
    started = time.perf_counter()
    machine = machine_info(
        {
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "cv2_threads": cv2.getNumThreads(),
            "processes": 1,
        }
    )
    folder = faces_dir() / "lfw_dev"
    photos = [p for _, p in list_photos(folder)]
    if args.photos:
        photos = photos[: args.photos]
    rng = np.random.default_rng(args.seed)
    log(f"{len(photos)} lfw_dev photos from {folder.resolve()}; making {args.frames} frames")
    frames = make_frames(
        [p for _, p in list_photos(folder)], args.frames, rng, (args.face_min, args.face_max)
    )
    sets = {
        "lfw_dev": [Frame(data=p.read_bytes(), faces=[], label=p.name) for p in photos],
        "camera": frames,
    }
    results = [bench_variant(name, sets, args) for name in args.embedders]
    edges = bucket_edges(args)
    labels = [f"{lo}-{hi - 1}px" for lo, hi in itertools.pairwise(edges)]
    payload: dict[str, Any] = {
        "benchmark": "pipeline",
        "machine": {**machine, "finished": machine_info()["date"]},
        "settings": vars(args),
        "sets": {
            "lfw_dev": {"photos": len(photos), "size": "250×250 JPEG"},
            "camera": {
                "frames": len(frames),
                "size": f"{FRAME_W}×{FRAME_H} JPEG q85",
                "faces_pasted": sum(len(f.faces) for f in frames),
                "face_px": [args.face_min, args.face_max],
                "mean_bytes": float(np.mean([len(f.data) for f in frames])) if frames else 0,
            },
        },
        "size_bucket_labels": labels,
        "results": results,
        "wall_s": time.perf_counter() - started,
    }
    print_tables(payload)
    path = write_results(args.name, payload)
    print(f"\nwall time {payload['wall_s']:.0f}s; results in {path}")


if __name__ == "__main__":
    main()
