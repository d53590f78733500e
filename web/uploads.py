"""Reading multipart uploads with a hard size cap, before anything is decoded."""

from __future__ import annotations

from fastapi import UploadFile

from storeface.errors import EmptyImage, ImageTooLarge


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """The upload's bytes; refuses more than `max_bytes` without reading the rest."""
    if upload.size is not None and upload.size > max_bytes:
        raise ImageTooLarge(size_bytes=upload.size, limit_bytes=max_bytes)
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge(limit_bytes=max_bytes)
    if not data:
        raise EmptyImage()
    return data
