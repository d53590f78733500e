"""Image decoding with EXIF orientation and guards against hostile or broken uploads."""

from __future__ import annotations

import contextlib
import io
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


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on what an upload may cost us before any face work starts."""

    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = 40_000_000
    max_side: int = 1600  # frames larger than this are downscaled before detection


@dataclass(frozen=True)
class DecodedImage:
    """An RGB frame ready for detection, and how to map boxes back to the upload."""

    rgb: np.ndarray
    width: int
    height: int
    scale: float  # detection-frame pixels per original pixel (≤ 1)


def decode_image(data: bytes, limits: ImageLimits | None = None) -> DecodedImage:
    """Decode an upload to RGB, upright per EXIF, downscaled to `max_side`."""
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
    img = img.convert("RGB")
    width, height = img.size
    scale = 1.0
    if max(width, height) > limits.max_side:
        scale = limits.max_side / max(width, height)
        img = img.resize(
            (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR
        )
    return DecodedImage(
        rgb=np.ascontiguousarray(np.asarray(img)), width=width, height=height, scale=scale
    )


def laplacian_variance(gray: np.ndarray) -> float:
    """Sharpness of a grayscale crop: variance of its 4-neighbour Laplacian (low = blurred)."""
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    g = gray.astype(np.float32)
    lap = (g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1]) - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())
