"""Which faces a camera frame should not count as new visitors: too small, blurred or turned.

    python -m bench.quality                       # arcface on ../shared/faces/lfw_dev
    python -m bench.quality --embedder dlib --sizes 40,80 --sigmas 0,2

Each lfw_dev person's first photo is the gallery; every other photo is pasted into a
1280×720 frame (bench/pipeline's backdrop) at a face size, the frame blurred by a Gaussian
sigma, and analyzed as an upload. A returning visitor whose face does not match its own
gallery face under the threshold would get a second FaceId: the tables give that match rate
per face size, blur (Laplacian variance of the crop) and yaw (degrees, from the landmarks),
and how many faces each candidate gate sets aside.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.common import log, machine_info, table, write_results
from bench.pipeline import FACE_SHARE, FRAME_H, FRAME_W, _background, _feather
from shard_node.faces.base import Face
from shard_node.faces.pool import analyze_bytes
from shard_node.faces.registry import make_pipeline
from storeface.distances import distances
from storeface.images import ImageLimits
from storeface.paths import faces_dir


def frame_with(photo: Path, face_px: int, sigma: float, rng: np.random.Generator) -> bytes:
    """A 1280×720 JPEG with the photo's face pasted at `face_px`, then blurred by `sigma`."""
    canvas = _background(rng)
    side = round(face_px / FACE_SHARE)
    x, y = int(rng.integers(0, FRAME_W - side)), int(rng.integers(0, FRAME_H - side))
    bgr = cv2.imread(str(photo))
    assert bgr is not None, photo
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
    interp = cv2.INTER_AREA if side < rgb.shape[0] else cv2.INTER_CUBIC
    alpha = _feather(side)
    region = canvas[y : y + side, x : x + side]
    canvas[y : y + side, x : x + side] = (
        alpha * cv2.resize(rgb, (side, side), interpolation=interp) + (1 - alpha) * region
    )
    if sigma > 0:
        canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
    img = cv2.cvtColor(np.clip(canvas, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One row per pasted probe: its quality and whether it matched its own gallery face."""
    pipeline = make_pipeline(args.embedder)
    info = pipeline.info
    people = sorted(p for p in (args.people).iterdir() if p.is_dir())
    limits = ImageLimits()
    gallery, names = [], []
    probes: list[tuple[str, Path]] = []
    for person in people:
        photos = sorted(person.glob("*.jpg"))
        faces = analyze_bytes(pipeline, photos[0].read_bytes(), limits, 5).faces
        if not faces:
            continue
        gallery.append(faces[0].embedding)
        names.append(person.name)
        probes += [(person.name, p) for p in photos[1:]]
    g = np.vstack(gallery)
    rng = np.random.default_rng(7)
    rows = []
    for size in args.sizes:
        for sigma in args.sigmas:
            for name, path in probes:
                faces = analyze_bytes(pipeline, frame_with(path, size, sigma, rng), limits, 5).faces
                if not faces:
                    rows.append({"size": size, "sigma": sigma, "found": False})
                    continue
                f: Face = faces[0]
                d = distances(f.embedding[None, :], g, info.metric)[0]
                best = int(np.argmin(d))
                rows.append(
                    {
                        "size": size,
                        "sigma": sigma,
                        "found": True,
                        "face_px": f.size,
                        "blur": f.blur,
                        "yaw": f.yaw,
                        "matched": bool(names[best] == name and d[best] <= info.threshold),
                        "wrong": bool(names[best] != name and d[best] <= info.threshold),
                    }
                )
    return {"embedder": info.name, "threshold": info.threshold, "rows": rows}


def _rate(rows: list[dict[str, Any]]) -> str:
    return f"{sum(r['matched'] for r in rows)}/{len(rows)}" if rows else "-"


def _binned(
    name: str,
    rows: list[dict[str, Any]],
    edges: Sequence[float],
    value: Callable[[dict[str, Any]], float | None],
) -> str:
    """Faces and how many matched, per bin of `value` (rows without one left out)."""
    bins = []
    for lo, hi in itertools.pairwise(edges):
        b = [r for r in rows if (v := value(r)) is not None and lo <= v < hi]
        if b:
            bins.append([f"{lo:g}–{hi:g}", len(b), _rate(b)])
    return table([name, "faces", "matched"], bins)


def tables(res: dict[str, Any], blur_gates: list[float], yaw_gates: list[float]) -> str:
    found = [r for r in res["rows"] if r["found"]]
    out = [f"### Returning visitors matched, {res['embedder']} (threshold {res['threshold']})", ""]
    sizes = sorted({r["size"] for r in found})
    sigmas = sorted({r["sigma"] for r in found})
    out.append(
        table(
            ["face px \\ blur sigma", *[str(s) for s in sigmas]],
            [
                [
                    s,
                    *[
                        _rate([r for r in found if r["size"] == s and r["sigma"] == g])
                        for g in sigmas
                    ],
                ]
                for s in sizes
            ],
        )
    )
    edges = [0, 10, 20, 40, 80, 160, 1e9]
    out += ["", "by blur (Laplacian variance of the face crop):", ""]
    out.append(_binned("blur", found, edges, lambda r: r["blur"]))
    yaws = [0, 10, 20, 30, 45, 90]
    out += ["", "by |yaw| (degrees, from the landmarks):", ""]
    out.append(_binned("|yaw|", found, yaws, lambda r: None if r["yaw"] is None else abs(r["yaw"])))
    out += ["", "gates: faces set aside, and the match rate of those kept / set aside:", ""]
    rows = []
    for bg in blur_gates:
        for yg in yaw_gates:
            out_ = [r for r in found if r["blur"] < bg or abs(r["yaw"] or 0) > yg]
            kept = [r for r in found if r not in out_]
            rows.append([bg, yg, f"{len(out_)}/{len(found)}", _rate(kept), _rate(out_)])
    out.append(table(["min blur", "max |yaw|", "set aside", "kept matched", "aside matched"], rows))
    return "\n".join(out)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--embedder", default="arcface")
    ap.add_argument("--people", type=Path, default=faces_dir() / "lfw_dev")
    ap.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")], default=[32, 48, 80])
    ap.add_argument("--sigmas", type=_floats, default=[0.0, 1.5, 3.0])
    ap.add_argument("--blur-gates", type=_floats, default=[0, 10, 20, 40])
    ap.add_argument("--yaw-gates", type=_floats, default=[90, 45, 35])
    args = ap.parse_args(argv)
    log(f"{args.embedder}: {args.sizes} px × sigma {args.sigmas} on {args.people}")
    res = measure(args)
    print(tables(res, args.blur_gates, args.yaw_gates))
    path = write_results(f"quality-{args.embedder}", {"machine": machine_info(), **res})
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
