"""When does one face of a photo clearly dominate? Measured on the lfw photos, where the
labelled person is the centred face: for each rule, the multi-face photos it enrolls and
how many of those it would enroll by the wrong (not the centred) face.

    python -m bench.enrollment                 # arcface on lfw_dev + lfw_distractors
    python -m bench.enrollment --embedder dlib
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import log, machine_info, table, write_results
from shard_node.faces.base import DOMINANT_RATIO
from shard_node.faces.pool import analyze_bytes
from shard_node.faces.registry import make_pipeline
from storeface.images import ImageLimits
from storeface.paths import faces_dir

RATIOS = [0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0]


def several(embedder: str, folders: list[Path]) -> tuple[int, list[dict[str, Any]]]:
    """(photos, the multi-face ones: face sizes largest first, is the largest the centred one)."""
    pipeline = make_pipeline(embedder)
    paths = [p for f in folders for p in sorted(f.glob("*/*.jpg"))]
    rows = []
    for path in paths:
        a = analyze_bytes(pipeline, path.read_bytes(), ImageLimits(), 20)
        if len(a.faces) < 2:
            continue
        cx, cy = a.width / 2, a.height / 2
        off = [
            (f.box[0] + f.box[2] / 2 - cx) ** 2 + (f.box[1] + f.box[3] / 2 - cy) ** 2
            for f in a.faces
        ]
        rows.append(
            {
                "path": str(path),
                "sizes": [f.size for f in a.faces],
                "largest_is_subject": off.index(min(off)) == 0,
            }
        )
    return len(paths), rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--embedder", default="arcface")
    ap.add_argument("--min-face-size", type=int, default=40)
    args = ap.parse_args(argv)
    folders = [faces_dir() / "lfw_dev", faces_dir() / "lfw_distractors"]
    total, rows = several(args.embedder, folders)
    log(f"{args.embedder}: {len(rows)} of {total} photos hold several faces")
    out = []
    for r in RATIOS:
        taken = [
            x
            for x in rows
            if x["sizes"][1] < args.min_face_size or x["sizes"][1] <= r * x["sizes"][0]
        ]
        wrong = [x["path"] for x in taken if not x["largest_is_subject"]]
        out.append(
            [
                f"{r:g}" + (" (default)" if r == DOMINANT_RATIO else ""),
                len(taken),
                len(rows) - len(taken),
                len(wrong),
                ", ".join(Path(w).name for w in wrong),
            ]
        )
    print(
        f"### Dominant face, {args.embedder}: {len(rows)} of {total} lfw photos hold several "
        f"faces (the others under {args.min_face_size} px, or at most R× the largest)\n"
    )
    print(table(["R", "enrolled", "refused", "wrong face", "which"], out))
    write_results(f"enrollment-{args.embedder}", {"machine": machine_info(), "rows": rows})


if __name__ == "__main__":
    main()
