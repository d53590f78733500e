"""Which embedder a node group runs when stores.yaml names none, and the identity of the
model a store records, so that vectors of two models never share an index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storeface.paths import models_dir

AUTO = "auto"  # stores.yaml named no embedder: arcface where its model files are, else dlib
DETECTOR_MODEL = "face_detection_yunet_2023mar.onnx"
RECOGNIZER_MODEL = "arcface_mobilefacenet_128.onnx"
SFACE_MODEL = "face_recognition_sface_2021dec.onnx"  # OpenCV Zoo, Apache-2.0: `make models`
W600K_MBF_MODEL = "w600k_mbf.onnx"  # InsightFace buffalo_s, non-commercial
# The recognizers arcface knows, in the order an unset `recognizer_model` takes them: the one
# whose threshold was measured here first.
KNOWN_RECOGNIZERS = (RECOGNIZER_MODEL, SFACE_MODEL, W600K_MBF_MODEL)


# What a store recorded as its embedder before stores named their arcface recognizer: then
# arcface ran the `recognizer_model` its group named, else arcface_mobilefacenet_128.onnx
# (legacy_identity); such a record stands for that model only, and is upgraded to it once.
LEGACY_ARCFACE = "arcface"


def arcface_identity(recognizer: str) -> str:
    """The identity of arcface running a recognizer file: its name, not its folder (which
    differs between hosts)."""
    return f"arcface:{Path(recognizer).name}"


def embedder_identity(name: str, options: dict[str, Any] | None = None) -> str:
    """What a store records of the embedder that made its vectors, so vectors of two models
    never share an index: "dlib", or "arcface:<recognizer file name>"."""
    name = resolve_embedder(name, options)[0]
    if name == "arcface":
        return arcface_identity(recognizer_model(options or {}))
    return name


def parse_identity(identity: str) -> tuple[str, dict[str, Any]]:
    """The embedder name and the options that pin its model, from an identity."""
    name, _, recognizer = identity.partition(":")
    return name, ({"recognizer_model": recognizer} if recognizer else {})


def legacy_identity(options: dict[str, Any] | None = None) -> str:
    """The one model a store recorded as plain "arcface" can have been built with, given its
    group's embedder options: the recognizer they name, else the only default there was."""
    return arcface_identity(str((options or {}).get("recognizer_model") or RECOGNIZER_MODEL))


def same_model(recorded: str, identity: str, options: dict[str, Any] | None = None) -> bool:
    """Whether a store recorded as `recorded` may be served by an embedder of `identity`;
    `options` (its group's embedder options) say what a legacy "arcface" record stands for."""
    if recorded == LEGACY_ARCFACE:
        recorded = legacy_identity(options)
    return recorded == identity


def configured_model(name: str, options: dict[str, Any] | None = None) -> str | None:
    """The identity a store's configuration pins without looking at any models folder;
    None where the node decides at start-up (`auto`, or arcface with no recognizer named)."""
    if name == AUTO:
        return None
    if name == "arcface":
        named = (options or {}).get("recognizer_model")
        return arcface_identity(str(named)) if named else None
    return name


def may_match(
    a: str,
    b: str,
    a_options: dict[str, Any] | None = None,
    b_options: dict[str, Any] | None = None,
) -> bool:
    """Whether two stores' configured embedders may be the same model: what `auto` or an
    unnamed recognizer resolves to is decided by each node at start-up, so only the fan-out's
    check of what a group runs can tell."""
    if AUTO in (a, b):
        return True
    if a != b:
        return False
    ma, mb = configured_model(a, a_options), configured_model(b, b_options)
    return ma is None or mb is None or ma == mb


def pick_recognizer(root: Path) -> str | None:
    """The first known recognizer whose file is in `root`, or None."""
    return next((name for name in KNOWN_RECOGNIZERS if (root / name).is_file()), None)


def recognizer_model(options: dict[str, Any]) -> str:
    """The recognizer the options name, else the first known one present, else the default."""
    named = options.get("recognizer_model")
    if named:
        return str(named)
    root = Path(options.get("models_dir") or models_dir())
    return pick_recognizer(root) or RECOGNIZER_MODEL


def resolve_embedder(name: str, options: dict[str, Any] | None = None) -> tuple[str, str]:
    """The embedder `name` stands for, and a note when `auto` fell back to dlib or to a
    recognizer whose threshold was not measured here."""
    if name != AUTO:
        return name, ""
    opts = options or {}
    root = Path(opts.get("models_dir") or models_dir())
    detector = root / str(opts.get("detector_model", DETECTOR_MODEL))
    named = opts.get("recognizer_model")
    recognizer = str(named) if named else pick_recognizer(root)
    missing = [] if detector.is_file() else [str(detector)]
    if recognizer is None:
        missing.append(
            f"a recognizer: {root / RECOGNIZER_MODEL} or {', '.join(KNOWN_RECOGNIZERS[1:])}"
        )
    elif not (root / recognizer).is_file():
        missing.append(str(root / recognizer))
    if not missing:
        if named or recognizer == RECOGNIZER_MODEL:
            return "arcface", ""
        return "arcface", (
            f"no embedder set: running arcface with {recognizer} (the first known recognizer "
            f"in {root}); its threshold was not measured here: measure it with "
            "`python -m bench.accuracy --embedder arcface` and set the store's `threshold:`"
        )
    return "dlib", (
        f"no embedder set and arcface's model files are missing ({'; '.join(missing)}): "
        "running dlib, which recognizes far fewer returning visitors; fetch them with "
        "`make models` (docs/models.md; or set STOREFACE_MODELS_DIR) or set `embedder:`"
    )
