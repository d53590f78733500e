"""Image decoding with EXIF orientation and guards against hostile or broken uploads."""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from storeface.errors import (
    DecompressionBomb,
    EmptyImage,
    ImageTooLarge,
    NotAnImage,
    TruncatedImage,
)

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})


MAX_IMAGE_BYTES = 10 * 1024 * 1024  # uploads above this are refused (nginx caps bodies too)
# A 6000×4000 upload is searched at half size (3000×2000), a 3840×2160 one at 0.85: faces
# down to ~31 px (dlib) or ~17 px (YuNet) at that scale are found (docs/benchmarks.md).
DETECT_PIXELS = 6_000_000
# The detail pass is skipped when it would not look at least this much closer than the
# downscaled frame (a 1700×1000 upload gains too little for the second pass's cost).
MIN_DETAIL_GAIN = 1.25


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on what an upload may cost us before any face work starts."""

    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = 40_000_000
    max_side: int = 1600  # frames larger than this are downscaled for whole-frame detection
    # ... and searched again for the faces that downscale loses, in tiles of a frame of at
    # most this many pixels (the upload itself where it fits); 0: the downscaled frame only.
    detect_pixels: int = DETECT_PIXELS


@dataclass(frozen=True)
class DecodedImage:
    """An RGB frame ready for detection, and how to map boxes back to the upload."""

    rgb: np.ndarray  # the frame for whole-frame detection: the upload, or downscaled to max_side
    width: int
    height: int
    scale: float  # detection-frame pixels per original pixel (≤ 1)
    full: np.ndarray | None = None  # the upload at full resolution, where `rgb` is downscaled
    detail_scale: float = 0.0  # scale of the tiled search of `full` for small faces (0: none)


def decode_image(data: bytes, limits: ImageLimits | None = None) -> DecodedImage:
    """Decode an upload to 8-bit RGB, upright per EXIF, downscaled to `max_side` for the
    whole-frame detection; a downscaled upload keeps its full-resolution pixels too."""
    limits = limits or ImageLimits()
    if not data:
        raise EmptyImage()
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(size_bytes=len(data), limit_bytes=limits.max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            fmt = img.format
            # Checked on the header, before a single pixel is decoded.
            if img.width * img.height > limits.max_pixels:
                raise DecompressionBomb(
                    pixels=img.width * img.height, limit_pixels=limits.max_pixels
                )
            if fmt not in ALLOWED_FORMATS:
                raise NotAnImage(f"unsupported image format {fmt}")
            img.load()
    except (DecompressionBomb, NotAnImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecompressionBomb(str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise NotAnImage() from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise TruncatedImage(f"the image could not be decoded: {exc}") from exc
    with contextlib.suppress(Exception):  # a broken EXIF block must not cost the faces
        img = ImageOps.exif_transpose(img) or img
    img = to_rgb(img)
    width, height = img.size
    if max(width, height) <= limits.max_side:
        rgb = np.ascontiguousarray(np.asarray(img))
        return DecodedImage(rgb=rgb, width=width, height=height, scale=1.0)
    scale = limits.max_side / max(width, height)
    small = img.resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR
    )
    return DecodedImage(
        rgb=np.ascontiguousarray(np.asarray(small)),
        width=width,
        height=height,
        scale=scale,
        full=np.ascontiguousarray(np.asarray(img)),
        detail_scale=detail_scale(width, height, scale, limits.detect_pixels),
    )


def detail_scale(width: int, height: int, scale: float, detect_pixels: int) -> float:
    """The scale of the second, tiled search of a downscaled upload (0: none)."""
    if detect_pixels <= 0:
        return 0.0
    detail = min(1.0, math.sqrt(detect_pixels / (width * height)))
    return detail if detail >= scale * MIN_DETAIL_GAIN else 0.0


def to_rgb(img: Image.Image) -> Image.Image:
    """Any pixel format as 8-bit RGB: deeper samples scaled to 8 bits (not clipped),
    transparent pixels over white; a format with no RGB rendering is NotAnImage."""
    mode = img.mode
    if mode == "RGB":
        return img
    try:
        if mode == "F" or mode.startswith("I"):  # I, I;16, I;16B, I;16L, I;16N, F
            gray = Image.fromarray(samples_to_8bit(np.asarray(img), mode), mode="L")
            return gray.convert("RGB")
        if img.has_transparency_data:
            white = Image.new("RGBA", img.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
        return img.convert("RGB")
    except (ValueError, TypeError, OSError) as exc:
        raise NotAnImage(f"unsupported pixel format {mode}: {exc}", mode=mode) from exc


def samples_to_8bit(samples: np.ndarray, mode: str) -> np.ndarray:
    """Grey samples of an I;16 (16-bit), I (32-bit integer) or F (float) image as 0..255.

    16-bit containers are scaled from 0..65535. I and F do not say their range: samples
    within 0..255 are read as 8-bit, within 0..65535 as 16-bit, and floats within 0..1 as
    0..1; anything else (negative, larger, NaN) is not a photo and is refused.
    """
    if samples.dtype.kind == "f" and not np.isfinite(samples).all():
        raise NotAnImage(f"the {mode} image has NaN or infinite samples", mode=mode)
    lo, hi = (float(samples.min()), float(samples.max())) if samples.size else (0.0, 0.0)
    if lo < 0 or hi > 65535:
        raise NotAnImage(
            f"the {mode} image's samples span {lo:g}..{hi:g}; only 8-bit, 16-bit and 0..1 "
            "ranges are read",
            mode=mode,
        )
    if samples.dtype.kind == "u" and samples.dtype.itemsize == 2:
        full = 65535.0  # a 16-bit container says its range
    elif samples.dtype.kind == "f" and hi <= 1.0:
        full = 1.0
    else:
        full = 255.0 if hi <= 255 else 65535.0
    return np.rint(samples.astype(np.float32) * np.float32(255.0 / full)).astype(np.uint8)


def laplacian_variance(gray: np.ndarray) -> float:
    """Sharpness of a grayscale crop: variance of its 4-neighbour Laplacian (low = blurred)."""
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    g = gray.astype(np.float32)
    lap = (g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1]) - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())
