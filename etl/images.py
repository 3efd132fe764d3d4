"""Image bytes: header sniffing, content hashing and decoding, shared by ingest, enrich and export.

Ingest never decodes pixels: it reads the header (format, size) and hashes the bytes as they came.
"""
from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# Formats a VLM loader can read; anything else that Pillow happens to identify (e.g. EPS, PDF) is
# still stored, but these are the extensions export writes.
EXTENSIONS = {
    "JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif",
    "MPO": ".jpg", "ICO": ".ico", "PPM": ".ppm", "JPEG2000": ".jp2", "AVIF": ".avif", "HEIF": ".heic",
}


class NotAnImage(ValueError):
    """The bytes are not an image Pillow can identify from its header (`kind` names why)."""

    def __init__(self, message: str, kind: str = "not_an_image"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageInfo:
    image_id: str
    format: str
    width: int
    height: int
    nbytes: int


def content_id(data: bytes | memoryview) -> str:
    """The image's primary key: sha256 hex of the bytes exactly as stored."""
    return hashlib.sha256(data).hexdigest()


HEADER_BYTES = 16 << 10  # where almost every header ends (JPEG SOF after a small EXIF, PNG IHDR, GIF, WebP)


def sniff(data: bytes | memoryview) -> ImageInfo:
    """Format and size from the header only (no pixel decode); raise NotAnImage otherwise.

    The header is parsed from the first HEADER_BYTES (no copy of the whole image); a header that
    does not fit (a TIFF directory at the end, huge metadata) is parsed again from all the bytes.
    Truncated files whose header is intact are accepted on purpose: decode problems surface at
    enrichment, with their own error rows, and the bytes are kept as they came.
    """
    if not len(data):
        raise NotAnImage("empty file")
    header = None
    if len(data) > HEADER_BYTES:
        try:
            header = _header(data[:HEADER_BYTES])
        except NotAnImage:
            pass
    fmt, width, height = header or _header(data)
    return ImageInfo(content_id(data), fmt, width, height, len(data))


def _header(data: bytes | memoryview) -> tuple[str, int, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                fmt, (width, height) = im.format, im.size
    except Image.DecompressionBombError as exc:
        raise NotAnImage(f"decompression bomb: {exc}", kind="decompression_bomb") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise NotAnImage(f"not an image: {type(exc).__name__}: {exc}") from exc
    if not fmt or width <= 0 or height <= 0:
        raise NotAnImage(f"unusable image header (format={fmt}, size={width}x{height})")
    return fmt, width, height


def extension_for(fmt: str | None) -> str:
    """File extension matching the real format (GIF bytes get .gif even if the source said .jpg)."""
    return EXTENSIONS.get((fmt or "").upper(), ".bin")


def open_image(data: bytes) -> Image.Image:
    """Open bytes for decoding (lazy); callers decide mode conversion and frame handling."""
    return Image.open(io.BytesIO(data))
