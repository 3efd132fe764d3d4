"""Image bytes: header sniffing, content hashing and decoding, shared by ingest, enrich and export.

Ingest never decodes pixels: it reads the header (format, size) and hashes the bytes as they came.
"""
from __future__ import annotations

import hashlib
import io
import re
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


OBJECT_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+(?=>)")  # `<_io.BytesIO object at 0x7f...>`


def without_addresses(text: str) -> str:
    """`text` without Python object addresses (`<_io.BytesIO object at 0x7f..>` → `<_io.BytesIO object>`),
    which differ at every run: error rows must read the same on two runs over the same input."""
    return OBJECT_ADDRESS.sub("", text)


def exception_text(exc: BaseException) -> str:
    """`Type: message` of an exception (Pillow's many decode errors), the same on every run."""
    return without_addresses(f"{type(exc).__name__}: {exc}")


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

    JPEG headers (most of what VLM datasets hold) are walked here, marker by marker, exactly as
    Pillow's JPEG plugin reads them, without copying the bytes; anything that walk does not settle
    (other formats, a header Pillow would reject or read as MPO) goes to Pillow, which parses the
    first HEADER_BYTES (no copy of the whole image) and, when the header does not fit (a TIFF
    directory at the end, huge metadata), all the bytes. Truncated files whose header is intact
    are accepted on purpose: decode problems surface at enrichment, with their own error rows, and
    the bytes are kept as they came.
    """
    if not len(data):
        raise NotAnImage("empty file")
    header = None
    if size := jpeg_size(data):
        header = ("JPEG", *size)
    elif len(data) > HEADER_BYTES:
        try:
            header = _header(data[:HEADER_BYTES])
        except NotAnImage:
            pass
    fmt, width, height = header or _header(data)
    return ImageInfo(content_id(data), fmt, width, height, len(data))


# Pillow's JPEG plugin: markers whose segment it reads (with a 2-byte length) and the SOF ones.
SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xDE))
SEGMENT_MARKERS = SOF_MARKERS | {0xC4, 0xCC, 0xDA, 0xDB, 0xDC, 0xDD, 0xDF, 0xFE, *range(0xE0, 0xF0)}
BARE_MARKERS = frozenset((0xC8, 0xD8, 0xD9, *range(0xD0, 0xD8)))  # no segment follows
SOS = 0xDA


def jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) of a JPEG whose header Pillow would read without complaint, else None.

    Mirrors `JpegImagePlugin.JpegImageFile._open` up to the start of scan: the same marker walk,
    junk and fill bytes, segment lengths and the checks its handlers make (8-bit samples, 1/3/4
    components, whole quantization tables). It returns None, leaving the verdict to Pillow, for
    anything its handlers could reject or read differently (truncated segments, short JFIF/Adobe/
    ICC segments, Photoshop resources, an MPF segment that can make the file an MPO, EXIF that
    Pillow parses for the DPI because no JFIF segment gave it), and for sizes that trip Pillow's
    decompression-bomb check.
    """
    if isinstance(data, memoryview) and data.format != "B":
        data = data.cast("B")  # Arrow buffers are exported as signed chars
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8 or data[2] != 0xFF:
        return None
    pos, current, size = 3, 0xFF, None  # `current`: the byte Pillow holds in `s` (None: end of data)
    exif = jfif_dpi = False
    while current is not None:
        if current != 0xFF:  # junk between segments
            current, pos = (data[pos], pos + 1) if pos < n else (None, pos)
            continue
        if pos >= n:
            break
        marker, pos = data[pos], pos + 1
        if marker == 0xFF:  # fill byte
            continue
        if marker in SEGMENT_MARKERS:
            if pos + 2 > n:
                return None
            end = pos + 2 + max(0, ((data[pos] << 8) | data[pos + 1]) - 2)
            if end > n:
                return None  # Pillow: "Truncated File Read"
            segment, pos = data[pos + 2: end], end
            if marker in SOF_MARKERS:
                size = sof_size(segment)
                if size is None:
                    return None
            elif not segment_is_plain(marker, segment):
                return None
            elif marker == 0xE0 and bytes(segment[:4]) == b"JFIF":
                jfif_dpi = len(segment) >= 12 and segment[7] in (1, 2)
            elif marker == 0xE1 and bytes(segment[:6]) == b"Exif\0\0":
                exif = True
            if marker == SOS:
                break
        elif marker not in BARE_MARKERS and marker != 0x00:
            return None  # Pillow: "no marker found"
        current, pos = (data[pos], pos + 1) if pos < n else (None, pos)
    if size is None or not size[0] or not size[1] or exif and not jfif_dpi:
        return None  # no frame; or Pillow reads the DPI from the EXIF, which can reject the file
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit and size[0] * size[1] > limit else size


def sof_size(segment: memoryview | bytes) -> tuple[int, int] | None:
    """(width, height) from a start-of-frame segment Pillow accepts."""
    if len(segment) < 6 or (len(segment) - 6) % 3 or segment[0] != 8 or segment[5] not in (1, 3, 4):
        return None
    return (segment[3] << 8) | segment[4], (segment[1] << 8) | segment[2]


def segment_is_plain(marker: int, segment: memoryview | bytes) -> bool:
    """Whether Pillow's handler for this segment cannot fail or change the format."""
    if marker == 0xDB:  # quantization tables: each must be whole
        at = 0
        while at < len(segment):
            at += 1 + (64 if segment[at] < 16 else 128)
        return at == len(segment)
    if 0xE0 <= marker <= 0xEF:
        head = bytes(segment[:14])
        if marker == 0xE0 and head.startswith(b"JFIF") or marker == 0xEE and head.startswith(b"Adobe"):
            return len(segment) >= 7
        if marker == 0xE2:
            return not head.startswith(b"MPF\0") and (not head.startswith(b"ICC_PROFILE\0") or len(segment) >= 14)
        return not (marker == 0xED and head.startswith(b"Photoshop 3.0\x00"))
    return True


def _header(data: bytes | memoryview) -> tuple[str, int, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                fmt, (width, height) = im.format, im.size
    except Image.DecompressionBombError as exc:
        raise NotAnImage(f"decompression bomb: {without_addresses(str(exc))}", kind="decompression_bomb") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise NotAnImage(f"not an image: {exception_text(exc)}") from exc
    if not fmt or width <= 0 or height <= 0:
        raise NotAnImage(f"unusable image header (format={fmt}, size={width}x{height})")
    return fmt, width, height


def extension_for(fmt: str | None) -> str:
    """File extension matching the real format (GIF bytes get .gif even if the source said .jpg)."""
    return EXTENSIONS.get((fmt or "").upper(), ".bin")


def open_image(data: bytes) -> Image.Image:
    """Open bytes for decoding (lazy); callers decide mode conversion and frame handling."""
    return Image.open(io.BytesIO(data))
