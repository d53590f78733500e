"""Does horizontal-flip test-time augmentation pay? The face's embedding vs the mean of it
and its mirror's, on the 1:N protocol of bench.accuracy (tools/evaluation.py).

    python -m bench.tta                       # arcface on ../shared/faces
    python -m bench.tta --embedder dlib --scale 0.3
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import log, machine_info, table, write_results
from shard_node.faces.pool import analyze_bytes
from shard_node.faces.registry import make_pipeline
from storeface.images import ImageLimits
from storeface.paths import faces_dir
from tools.dataset import EmbeddedSet
from tools.evaluation import nearest, split


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _photo(path: Path, scale: float) -> Image.Image:
    """A photo as RGB, scaled (LANCZOS) unless `scale` is 1."""
    img = Image.open(path).convert("RGB")
    if scale == 1:
        return img
    size = (round(img.width * scale), round(img.height * scale))
    return img.resize(size, Image.Resampling.LANCZOS)


def embed_option(folder: Path, embedder: str, scale: float) -> EmbeddedSet:
    """The largest face of every photo through the pipeline's own flip (`flip: true`)."""
    pipeline = make_pipeline(embedder, {"flip": True})
    paths = sorted(folder.glob("*/*.jpg"))
    embs, ok = [], []
    for path in paths:
        img = _photo(path, scale)
        a = analyze_bytes(pipeline, _jpeg(img), ImageLimits(), 5).faces
        embs.append(a[0].embedding if a else np.zeros(pipeline.info.dim, np.float32))
        ok.append(bool(a))
    return EmbeddedSet(
        [p.parent.name for p in paths],
        [str(p) for p in paths],
        np.vstack(embs).astype(np.float32),
        np.array(ok),
        np.zeros(len(paths)),
    )


def embed(folder: Path, embedder: str, scale: float) -> tuple[EmbeddedSet, EmbeddedSet]:
    """(plain, flip-averaged) embeddings of the largest face of every photo."""
    pipeline = make_pipeline(embedder, {"flip": False})
    paths = sorted(folder.glob("*/*.jpg"))
    people = [p.parent.name for p in paths]
    plain, tta, ok = [], [], []
    for path in paths:
        img = _photo(path, scale)
        a = analyze_bytes(pipeline, _jpeg(img), ImageLimits(), 5).faces
        b = analyze_bytes(
            pipeline, _jpeg(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)), ImageLimits(), 5
        ).faces
        found = bool(a and b)
        e = a[0].embedding if a else np.zeros(pipeline.info.dim, np.float32)
        plain.append(e)
        if found:
            m = e / np.linalg.norm(e) + b[0].embedding / np.linalg.norm(b[0].embedding)
            # L2 embedders keep their scale: the mean, not the unit vector
            tta.append(m / 2 * np.linalg.norm(e) if pipeline.info.metric == "l2" else m)
        else:
            tta.append(e)
        ok.append(found)
    ms = np.zeros(len(paths))
    mask = np.array(ok)
    strs = [str(p) for p in paths]
    return (
        EmbeddedSet(people, strs, np.vstack(plain).astype(np.float32), mask, ms),
        EmbeddedSet(people, strs, np.vstack(tta).astype(np.float32), mask, ms),
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--embedder", default="arcface")
    ap.add_argument(
        "--scale", type=float, default=1.0, help="downscale photos first (0.3: ~30 px faces)"
    )
    args = ap.parse_args(argv)
    pipeline_info = make_pipeline(args.embedder).info
    log(f"{args.embedder}, scale {args.scale}")
    dev = embed(faces_dir() / "lfw_dev", args.embedder, args.scale)
    dis = embed(faces_dir() / "lfw_distractors", args.embedder, args.scale)
    sets: list[tuple[EmbeddedSet, ...]] = [dev, dis]
    if args.embedder == "arcface":  # its aligned crop mirrored: no second detection
        sets = [
            (*dev, embed_option(faces_dir() / "lfw_dev", args.embedder, args.scale)),
            (*dis, embed_option(faces_dir() / "lfw_distractors", args.embedder, args.scale)),
        ]
    names = [
        "plain",
        "flip TTA (mirrored photo)",
        "flip TTA (`flip: true`: face found again in its mirror)",
    ]
    rows: list[list[Any]] = []
    out: dict[str, Any] = {"embedder": args.embedder, "scale": args.scale}
    for i, name in enumerate(names[: len(sets[0])]):
        s = split(sets[0][i], sets[1][i])
        n = nearest(s, pipeline_info.metric)
        t = pipeline_info.threshold
        t1 = n.threshold_at_fmr(0.01)
        out[name] = {
            "rank1": n.rank1,
            "tmr": n.tmr(t),
            "fmr": n.fmr(t),
            "tmr_at_fmr_1pct": n.tmr(t1),
        }
        rows.append(
            [
                name,
                len(s.gallery),
                len(s.probes),
                len(s.strangers),
                f"{n.rank1:.3f}",
                f"{n.tmr(t):.3f}",
                f"{n.fmr(t):.4f}",
                f"{t1:.3f}",
                f"{n.tmr(t1):.3f}",
            ]
        )
    print(
        f"### Flip TTA, {args.embedder}, photos scaled ×{args.scale} "
        f"(threshold {pipeline_info.threshold})\n"
    )
    print(
        table(
            [
                "embedding",
                "gallery",
                "probes",
                "strangers",
                "rank-1",
                "TMR",
                "FMR",
                "thr @ FMR 1%",
                "TMR @ FMR 1%",
            ],
            rows,
        )
    )
    path = write_results(f"tta-{args.embedder}-{args.scale:g}", {"machine": machine_info(), **out})
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
