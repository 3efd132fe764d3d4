"""Perceptual hashes (`images.phash`, uint64) compatible with `imagehash.phash`.

Two modes:

- `exact` gives, for every image, the value `int(str(imagehash.phash(Image.open(f))), 16)` with
  the installed Pillow: the image is decoded by Pillow exactly as imagehash does; the "L"
  conversion, the 32x32 LANCZOS resize and the DCT are replaced by faster code that produces the
  same bits. An RGB decode is read in place (Pillow's Arrow export) and converted with Pillow's
  own integer formula row by row inside the first resampling pass (other modes: Pillow converts).
  The resize reproduces Pillow's fixed-point two-pass resampler (same coefficients, same 22-bit
  rounding, same pass order) with vectorised kernels (numba when installed, Pillow's own resize
  otherwise); both shortcuts are checked against Pillow on probes when the kernels load, and
  dropped if they differ. The DCT is a cached matrix product over the whole batch, and an image
  whose 32nd and 33rd largest low-frequency coefficients are too close to decide the median
  safely is recomputed with scipy's DCT, as imagehash does.
- `fast` decodes JPEGs at 1/2, 1/4 or 1/8 of their size in the DCT domain, luma only
  (`Image.draft("L", ...)`: no chroma upsampling, no color conversion), keeping >= 64 px a side,
  then resamples with the full-size LANCZOS kernel integrated over each decoded block
  (`reduced_coefficients`), so the thumbnail is nearly the full decode's. It deviates from exact by
  a few bits on some images (>= 98% within 2 bits, measured by `bench/bench_phash.py`) and costs
  about 10% more than libjpeg's entropy decoding, which no reduced decode can skip: that floor,
  not Python, bounds its speed. Per core it is ~4.2-4.9x imagehash on 0.5 MP photos (floor
  ~4.6-5.4x) but only ~2.3-2.5x on 336 px LLaVA-Pretrain JPEGs (floor ~2.7-3.1x: small, densely
  coded files). Non-JPEG images and JPEGs under 128 px a side use the exact path.

A batch is decoded by a thread per CPU (`phash_batch`, `--threads`): Pillow's decoder and the
kernels release the GIL, so one worker process uses every core; each thread holds one decoded
image at a time.

Like imagehash: no EXIF orientation is applied (rotated copies hash far apart), animated images
hash their first frame, every mode (CMYK, I;16, P with transparency, LA, ...) goes through
Pillow's own `convert("L")`. An image Pillow cannot decode (truncated, unsupported, decompression
bomb) gets no value and an `EnrichFailure(kind="decode_error")`, never a made-up hash.
"""
from __future__ import annotations

import argparse
import io
import math
import sys
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from PIL import Image

from etl import schema as S
from etl.engine.base import available_cores
from etl.enrich.base import EnrichBatch, Enricher, EnrichFailure, EnrichResult
from etl.images import exception_text

HASH_SIZE = 8  # imagehash defaults: hash_size=8, highfreq_factor=4 -> a 32x32 thumbnail
IMG_SIZE = 32
MODES = ("exact", "fast")
# Fast mode asks libjpeg for the smallest DCT scale (1/2, 1/4, 1/8) that still leaves at least this
# many pixels on each side. With block-integrated weights (`reduced_coefficients`) 64 keeps >= 98% of
# hashes within 2 bits of exact even on 336 px LLaVA images (bench/bench_phash.py, tests); going
# lower saves little decode time (entropy decoding, not the IDCT, dominates at 1/4 and 1/8).
FAST_MIN_SIDE = 64
# Coefficients closer than this to the median cannot be trusted to compare like scipy's
# FFT-based DCT would (float error of the matrix DCT is < 1e-8 at these magnitudes).
MEDIAN_TIE_EPS = 1e-5


class DecodeError(ValueError):
    """Pillow could not decode the image (truncated, unsupported, too large)."""


# -- DCT + median: the part of imagehash.phash after the thumbnail ---------------------------------
@lru_cache(maxsize=None)
def _dct_rows(n: int = IMG_SIZE, keep: int = HASH_SIZE) -> np.ndarray:
    """The first `keep` rows of scipy's unnormalised DCT-II matrix: y_k = 2 sum x_n cos(pi k (2n+1) / 2N)."""
    k = np.arange(keep)[:, None]
    j = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * j + 1) / (2 * n))


def hashes_from_thumbnails(thumbs: np.ndarray) -> list[int]:
    """phash values of a stack of 32x32 uint8 grayscale thumbnails (N, 32, 32), as uint64 ints."""
    if len(thumbs) == 0:
        return []
    c = _dct_rows()
    low = np.einsum("ki,nij,lj->nkl", c, thumbs.astype(np.float64), c, optimize=True).reshape(len(thumbs), -1)
    ordered = np.sort(low, axis=1)
    ambiguous = (ordered[:, 32] - ordered[:, 31]) < MEDIAN_TIE_EPS
    bits = low > np.median(low, axis=1, keepdims=True)
    for i in np.flatnonzero(ambiguous):
        bits[i] = _scipy_bits(thumbs[i])
    return [int.from_bytes(row.tobytes(), "big") for row in np.packbits(bits, axis=1)]


def _scipy_bits(thumb: np.ndarray) -> np.ndarray:
    """imagehash's own computation, used where the median comparison is a near-tie."""
    import scipy.fftpack

    dct = scipy.fftpack.dct(scipy.fftpack.dct(thumb, axis=0), axis=1)
    low = dct[:HASH_SIZE, :HASH_SIZE]
    return (low > np.median(low)).reshape(-1)


def hash_to_hex(value: int) -> str:
    """The 16-hex-digit string `str(imagehash.ImageHash)` prints for this value."""
    return f"{value:016x}"


# -- decoding ----------------------------------------------------------------------------------------
# Above this many pixels an image is converted to "L" and put through the first resampling pass one
# strip at a time (`gray_thumbnail`), so a 144 MP photo never exists as a whole "L" copy or array.
STRIP_PIXELS = 1 << 22
STRIP_BUDGET = 1 << 20  # pixels per strip


@contextmanager
def opened(data: bytes) -> Iterator[Image.Image]:
    """The image Pillow opens from `data`; anything failing inside (decode, conversion) is a DecodeError.

    Pillow's own decompression-bomb guard (`Image.MAX_IMAGE_PIXELS`) applies, as in imagehash.
    Its warnings are left alone: `phash_batch` silences them around the whole batch (`quiet`).
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            yield im
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad data; all mean "cannot decode"
        raise DecodeError(exception_text(exc)) from exc


@contextmanager
def quiet() -> Iterator[None]:
    """Pillow's palette-transparency, EXIF and decompression-bomb warnings silenced: noise here.

    The warning filters are global, not per thread, so this is entered once, by the thread that
    hands images to the decoding threads, around all of their work.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def decode_gray(data: bytes) -> np.ndarray:
    """The image's first frame as a 2-D uint8 array, converted to "L" by Pillow (like imagehash).

    Raises DecodeError when Pillow cannot decode the bytes.
    """
    with opened(data) as im:
        return np.asarray(im.convert("L"))


def exact_thumbnail(data: bytes) -> np.ndarray:
    """imagehash's 32x32 thumbnail of the image's first frame, bit for bit. Raises DecodeError."""
    with opened(data) as im:
        return gray_thumbnail(im)


def fast_thumbnail(data: bytes) -> np.ndarray:
    """Fast mode's thumbnail: from a reduced JPEG decode where one exists, else exact's. Raises DecodeError."""
    with opened(data) as im:
        reduced = reduced_gray(im)
        return thumbnail32_reduced(*reduced) if reduced else gray_thumbnail(im)


def decode_gray_reduced(data: bytes) -> tuple[np.ndarray, tuple[int, int], int]:
    """Fast mode's decode: (gray, (full height, full width), scale); scale 1 (the whole image,
    converted like exact mode) where no reduced decode exists. Raises DecodeError."""
    with opened(data) as im:
        return reduced_gray(im) or (np.asarray(im.convert("L")), (im.height, im.width), 1)


def reduced_gray(im: Image.Image) -> tuple[np.ndarray, tuple[int, int], int] | None:
    """(gray, (full height, full width), scale) of a JPEG decoded by libjpeg at 1/scale of its size.

    Decoded in the DCT domain, luma only (no chroma upsampling, no color conversion): at 1/8 each
    pixel is the mean of an 8x8 block, at 1/2 and 1/4 nearly the mean of a 2x2 or 4x4 block. None
    for other formats and JPEGs too small to scale: only where a reduced scale exists, since
    draft("L") alone would still swap exact's RGB -> "L" conversion for libjpeg's luma, a few
    levels off.
    """
    width, height = im.size
    if im.format != "JPEG" or min(width, height) < 2 * FAST_MIN_SIDE:
        return None
    im.draft("L", (FAST_MIN_SIDE, FAST_MIN_SIDE))  # sets the size libjpeg will output
    scale = next(s for s in (8, 4, 2, 1) if -(-width // s) == im.width)
    return np.asarray(im if im.mode == "L" else im.convert("L")), (height, width), scale


def gray_thumbnail(im: Image.Image) -> np.ndarray:
    """`im.convert("L").resize((32, 32), LANCZOS)` as an array, bit for bit (the first frame).

    Up to STRIP_PIXELS, an "L" or "RGB" image is read in place (`pixel_view`: no copy), an RGB
    one converted to "L" row by row inside the first resampling pass; other modes are converted by
    Pillow, then `thumbnail32`. Larger images (a 144 MP photo is 576 MB decoded, and its "L" copy
    and array would add 288 MB) are converted strip by strip along the first pass's direction,
    each strip resampled by that pass at once: the pass treats every row (or column) on its own,
    and "L" conversion every pixel, so the strips give the whole image's result.
    """
    kernels = _kernels()
    if kernels is None or im.width * im.height <= STRIP_PIXELS:
        view = pixel_view(im) if kernels is not None else None
        if view is None:
            return thumbnail32(np.asarray(im.convert("L")))
        return thumbnail32(view) if view.dtype == np.uint8 else _thumbnail_of_rgb(kernels, view)
    im.load()
    width, height = im.size
    if height == IMG_SIZE or (width != IMG_SIZE and not pillow_vertical_first(height, width)):
        y0, y1 = (0, height) if height == IMG_SIZE else _used_span(resample_coefficients(height)[1])
        step, cols = max(1, STRIP_BUDGET // width), resample_coefficients(width)
        wide = np.concatenate([_horizontal_pass(kernels, gray_strip(im, (0, y, width, min(y + step, y1))), cols, 0,
                                                min(y + step, y1) - y) for y in range(y0, y1, step)])
        return wide if height == IMG_SIZE else _vertical_pass(kernels, wide, resample_coefficients(height), 0,
                                                              IMG_SIZE, offset=y0)
    x0, x1 = (0, width) if width == IMG_SIZE else _used_span(resample_coefficients(width)[1])
    step, rows = max(1, STRIP_BUDGET // height), resample_coefficients(height)
    tall = np.concatenate([_vertical_pass(kernels, gray_strip(im, (x, 0, min(x + step, x1), height)), rows, 0,
                                          min(x + step, x1) - x) for x in range(x0, x1, step)], axis=1)
    return tall if width == IMG_SIZE else _horizontal_pass(kernels, tall, resample_coefficients(width), 0,
                                                           IMG_SIZE, offset=x0)


def pixel_view(im: Image.Image) -> np.ndarray | None:
    """The decoded pixels of an "L" or "RGB" image as an array over Pillow's own memory (no copy):
    (H, W) uint8 for "L", (H, W) uint32 for "RGB" (Pillow keeps 4 bytes a pixel: R, G, B, pad).

    Through Pillow's Arrow export, which exists only for an image held in one block of memory;
    None for other modes, for an image in several blocks, on a big-endian machine, or where the
    installed RGB -> "L" conversion is not the one `_horizontal_rgbx_loop` reproduces.
    """
    if im.mode not in ("L", "RGB") or (im.mode == "RGB" and not RGB_IN_PLACE):
        return None
    try:
        flat = pa.array(im).flatten() if im.mode == "RGB" else pa.array(im)
    except (ValueError, TypeError, pa.ArrowException):  # "Image rows are not contiguous in memory": several blocks
        return None
    values = flat.to_numpy(zero_copy_only=True)
    return values.reshape(im.height, im.width) if im.mode == "L" else values.view(np.uint32).reshape(im.height, im.width)


def _thumbnail_of_rgb(k: SimpleNamespace, px: np.ndarray) -> np.ndarray:
    """`gray_thumbnail` of RGB pixels (H, W) uint32: converted to "L" inside the horizontal pass
    when Pillow runs that one first, else converted whole (`_rgbx_to_l_loop`) then resampled."""
    height, width = px.shape
    if width == IMG_SIZE or (height != IMG_SIZE and pillow_vertical_first(height, width)):
        return thumbnail32(k.rgbx_to_l(px))
    y0, y1 = (0, height) if height == IMG_SIZE else _used_span(resample_coefficients(height)[1])
    wide = k.horizontal_rgbx(px, y0, y1, *resample_coefficients(width))
    return wide if height == IMG_SIZE else _vertical_pass(k, wide, resample_coefficients(height), 0, IMG_SIZE,
                                                          offset=y0)


def gray_strip(im: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(im.crop(box).convert("L"))


# -- Pillow's LANCZOS resampler, reproduced -----------------------------------------------------------
PRECISION_BITS = 22  # Pillow's 8-bit resampler: 32 - 8 - 2


def _lanczos(x: float) -> float:
    """Pillow's lanczos_filter (truncated sinc, support 3), evaluated with the C library's sin."""
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


@lru_cache(maxsize=4096)
def resample_coefficients(in_size: int, out_size: int = IMG_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for LANCZOS over a full box.

    Returns (kk, bounds): kk[o, t] is the int32 fixed-point weight of input bounds[o, 0] + t for
    output o, bounds[o, 1] the number of taps. Same arithmetic and summation order as the C code,
    and `sin` is the C library's (scalar calls, no vectorised approximation), so the weights are
    bit-identical; `resample_coefficients_reference` is the plain-Python twin the tests compare.
    """
    kernels = _kernels()
    if kernels is not None:
        return kernels.coefficients(in_size, out_size)
    return resample_coefficients_reference(in_size, out_size)


def resample_coefficients_reference(in_size: int, out_size: int = IMG_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """`resample_coefficients` in plain Python (math.sin is the C library's sin)."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    kk = np.zeros((out_size, ksize), np.int32)
    bounds = np.zeros((out_size, 2), np.int64)
    ss = 1.0 / filterscale
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0
        for w in weights:  # sequential sum, as in C
            ww += w
        for x, w in enumerate(weights):
            v = w / ww if ww != 0.0 else w
            kk[xx, x] = int(-0.5 + v * (1 << PRECISION_BITS)) if v < 0 else int(0.5 + v * (1 << PRECISION_BITS))
        bounds[xx] = (xmin, xmax)
    return kk, bounds


def pillow_vertical_first(height: int, width: int, out: int = IMG_SIZE) -> bool:
    """Whether Pillow runs the vertical pass first (Pillow >= 13, python-pillow/Pillow#9549).

    Measured on the installed Pillow: vertical first exactly when the height is reduced and by
    more than twice as many pixels as the width. Checked against Pillow when the kernels are built.
    """
    return _PASS_ORDER_RULE(height, width, out)


def _rule_pillow13(height: int, width: int, out: int) -> bool:
    return height > out and (height - out) > 2 * (width - out)


def _rule_horizontal_first(height: int, width: int, out: int) -> bool:
    return False


_PASS_ORDER_RULE = _rule_pillow13


def _vertical_loop(a, lo, hi, kk, bounds):  # pragma: no cover - compiled by numba
    """out[o, c] = clip8(2^21 + sum_t a[bounds[o,0] + t, lo + c] * kk[o, t]) >> 22: Pillow's vertical pass.

    The inner loop runs along a row (contiguous), so it vectorises; int32 sums as in Pillow.
    """
    n_out = kk.shape[0]
    width = hi - lo
    out = np.empty((n_out, width), np.uint8)
    acc = np.empty(width, np.int32)
    row = np.empty(width, np.int32)
    for o in range(n_out):
        start = bounds[o, 0]
        for c in range(width):
            acc[c] = 1 << 21
        for t in range(bounds[o, 1]):
            k = kk[o, t]
            src = a[start + t, lo:hi]  # slice first: no per-element index wraparound checks
            for c in range(width):
                row[c] = src[c]
            for c in range(width):
                acc[c] = acc[c] + row[c] * k
        for c in range(width):
            v = acc[c] >> 22
            out[o, c] = 0 if v < 0 else (255 if v > 255 else v)
    return out


def _horizontal_loop(a, y0, y1, kk, bounds):  # pragma: no cover - compiled by numba
    """Pillow's horizontal pass over rows y0:y1 of `a`, as (y1 - y0, n_out) uint8.

    Each output is one dot product of a contiguous run of the row with the output's weights: the
    loop over taps vectorises as an int32 reduction (integer sums do not depend on their order).
    """
    n_out = kk.shape[0]
    out = np.empty((y1 - y0, n_out), np.uint8)
    for y in range(y0, y1):
        for o in range(n_out):
            taps = bounds[o, 1]
            src = a[y, bounds[o, 0]:bounds[o, 0] + taps]
            weights = kk[o, :taps]
            acc = np.int32(1 << 21)
            for t in range(taps):
                acc += np.int32(src[t]) * weights[t]
            v = acc >> 22
            out[y - y0, o] = 0 if v < 0 else (255 if v > 255 else v)
    return out


def _horizontal_rgbx_loop(px, y0, y1, kk, bounds):  # pragma: no cover - compiled by numba
    """`_horizontal_loop` of the "L" conversion of `px`, Pillow's RGB pixels as (H, W) uint32
    (R, G, B, pad bytes, little-endian): each row is converted as Pillow's rgb2l does
    (L = (19595 R + 38470 G + 7471 B + 2^15) >> 16) into a buffer and resampled at once, so the
    whole-image "L" copy and its array never exist.
    """
    n_out = kk.shape[0]
    x_lo = bounds[0, 0]
    x_hi = bounds[n_out - 1, 0] + bounds[n_out - 1, 1]
    out = np.empty((y1 - y0, n_out), np.uint8)
    row = np.empty(x_hi - x_lo, np.int32)
    for y in range(y0, y1):
        src = px[y, x_lo:x_hi]
        for x in range(x_hi - x_lo):
            p = src[x]
            row[x] = np.int32(((p & 255) * 19595 + ((p >> 8) & 255) * 38470 + ((p >> 16) & 255) * 7471 + 32768) >> 16)
        for o in range(n_out):
            taps = bounds[o, 1]
            start = bounds[o, 0] - x_lo
            gray = row[start:start + taps]
            weights = kk[o, :taps]
            acc = np.int32(1 << 21)
            for t in range(taps):
                acc += gray[t] * weights[t]
            v = acc >> 22
            out[y - y0, o] = 0 if v < 0 else (255 if v > 255 else v)
    return out


def _rgbx_to_l_loop(px):  # pragma: no cover - compiled by numba
    """Pillow's RGB -> "L" conversion of (H, W) uint32 RGB pixels (see `_horizontal_rgbx_loop`)."""
    height, width = px.shape
    out = np.empty((height, width), np.uint8)
    for y in range(height):
        src = px[y]
        dst = out[y]
        for x in range(width):
            p = src[x]
            dst[x] = ((p & 255) * 19595 + ((p >> 8) & 255) * 38470 + ((p >> 16) & 255) * 7471 + 32768) >> 16
    return out


def _coefficients_loop(in_size, out_size):  # pragma: no cover - compiled by numba
    """resample_coefficients_reference for numba (scalar libm sin, sequential sums, lanczos inlined)."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    kk = np.zeros((out_size, ksize), np.int32)
    bounds = np.zeros((out_size, 2), np.int64)
    weights = np.zeros(ksize)
    ss = 1.0 / filterscale
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ww = 0.0
        for x in range(xmax):
            u = (x + xmin - center + 0.5) * ss
            w = 0.0
            if -3.0 <= u and u < 3.0:  # Pillow's lanczos_filter: sinc(u) * sinc(u / 3)
                a = 1.0 if u == 0.0 else math.sin(u * math.pi) / (u * math.pi)
                v3 = u / 3
                b = 1.0 if v3 == 0.0 else math.sin(v3 * math.pi) / (v3 * math.pi)
                w = a * b
            weights[x] = w
            ww += w
        for x in range(xmax):
            v = weights[x] / ww if ww != 0.0 else weights[x]
            kk[xx, x] = int(-0.5 + v * (1 << 22)) if v < 0 else int(0.5 + v * (1 << 22))
        bounds[xx, 0] = xmin
        bounds[xx, 1] = xmax
    return kk, bounds


def _used_span(bounds: np.ndarray) -> tuple[int, int]:
    """First and one-past-last input index any output of this pass reads."""
    return int(bounds[0, 0]), int(bounds[-1, 0] + bounds[-1, 1])


def thumbnail32(gray: np.ndarray) -> np.ndarray:
    """`Image.fromarray(gray).resize((32, 32), Image.LANCZOS)` as an array, bit for bit."""
    kernels = _kernels()
    if kernels is None or gray.shape == (IMG_SIZE, IMG_SIZE):
        return _pillow_thumbnail(gray)
    return _thumbnail_with(kernels, gray)


def _thumbnail_with(k: SimpleNamespace, gray: np.ndarray) -> np.ndarray:
    """Pillow's two passes with compiled kernels `k`, in the order the installed Pillow uses."""
    height, width = gray.shape
    if height == IMG_SIZE:
        return _horizontal_pass(k, gray, resample_coefficients(width), 0, height)
    if width == IMG_SIZE:
        return _vertical_pass(k, gray, resample_coefficients(height), 0, width)
    return _two_passes(k, gray, resample_coefficients(height), resample_coefficients(width),
                       pillow_vertical_first(height, width))


Coefficients = tuple[np.ndarray, np.ndarray]  # (kk, bounds) as returned by resample_coefficients


def _two_passes(k: SimpleNamespace, gray: np.ndarray, rows: Coefficients, cols: Coefficients,
                vertical_first: bool) -> np.ndarray:
    """Resample `gray` to 32x32 with the fixed-point weights `rows` (vertical) and `cols`
    (horizontal); the first pass keeps only the lines the second one reads."""
    if vertical_first:
        x0, x1 = _used_span(cols[1])
        return _horizontal_pass(k, _vertical_pass(k, gray, rows, x0, x1), cols, 0, IMG_SIZE, offset=x0)
    y0, y1 = _used_span(rows[1])
    return _vertical_pass(k, _horizontal_pass(k, gray, cols, y0, y1), rows, 0, IMG_SIZE, offset=y0)


def _vertical_pass(k: SimpleNamespace, a: np.ndarray, coefficients: Coefficients, x0: int, x1: int,
                   offset: int = 0) -> np.ndarray:
    """Resample the rows of `a` (columns x0:x1) to 32 rows.

    `a` holds source rows offset.. (the first pass keeps only the rows the second one reads).
    """
    kk, bounds = coefficients
    if offset:
        bounds = bounds - np.array([offset, 0])
    return k.vertical(np.ascontiguousarray(a), x0, x1, kk, bounds)


def _horizontal_pass(k: SimpleNamespace, a: np.ndarray, coefficients: Coefficients, y0: int, y1: int,
                     offset: int = 0) -> np.ndarray:
    """Resample the columns of `a` (rows y0:y1) to 32; `a` holds source columns offset.."""
    kk, bounds = coefficients
    if offset:
        bounds = bounds - np.array([offset, 0])
    return k.horizontal(np.ascontiguousarray(a), y0, y1, kk, bounds)


def _pillow_thumbnail(gray: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(gray).resize((IMG_SIZE, IMG_SIZE), Image.Resampling.LANCZOS))


# -- fast mode: resampling a DCT-scaled decode ------------------------------------------------------
@lru_cache(maxsize=4096)
def reduced_coefficients(full_size: int, scale: int) -> Coefficients:
    """Fixed-point weights taking a line of ceil(full_size / scale) block means to 32 pixels.

    Each weight is the LANCZOS kernel of the full-size resize (Pillow's centres, width and tap
    window) integrated over the `scale` pixels its block covers, then normalised, so the result
    approximates the thumbnail of the full decode far better than resizing the small image on its
    own (whose filter would be `scale` times too narrow). The integral comes from a table, so a
    new image size costs one pass over the blocks (compiled when numba is installed), not one
    `sin` per full-size tap. Same (kk, bounds) format as `resample_coefficients`.
    """
    kernels = _kernels()
    compute = kernels.reduced_coefficients if kernels is not None else _reduced_coefficients_loop
    return compute(full_size, scale, _lanczos_integral())


LANCZOS_TABLE_STEPS = 6000  # the integral table's resolution over the kernel's support [-3, 3]


@lru_cache(maxsize=1)
def _lanczos_integral() -> np.ndarray:
    """The integral of Pillow's lanczos from -3 to each of LANCZOS_TABLE_STEPS + 1 points over [-3, 3]."""
    grid = np.linspace(-3.0, 3.0, LANCZOS_TABLE_STEPS + 1)
    kernel = np.sinc(grid) * np.sinc(grid / 3)
    return np.concatenate((np.zeros(1), np.cumsum((kernel[1:] + kernel[:-1]) / 2 * np.diff(grid))))


def _reduced_coefficients_loop(full_size, scale, table):
    """reduced_coefficients' arithmetic: plain Python that numba compiles unchanged."""
    steps = table.shape[0] - 1

    def integral_at(t):  # the lanczos integral from -3 to t, interpolated linearly in `table`
        position = min(max((t + 3.0) * (steps / 6.0), 0.0), steps - 1e-9)
        i = int(position)
        return table[i] + (position - i) * (table[i + 1] - table[i])

    filter_scale = max(full_size / IMG_SIZE, 1.0)
    support = 3.0 * filter_scale
    windows = np.empty((IMG_SIZE, 2), np.int64)  # Pillow's tap window [xmin, xmax) per output
    bounds = np.empty((IMG_SIZE, 2), np.int64)
    for o in range(IMG_SIZE):
        center = (o + 0.5) * (full_size / IMG_SIZE)
        windows[o, 0] = max(int(center - support + 0.5), 0)
        windows[o, 1] = min(int(center + support + 0.5), full_size)
        bounds[o, 0] = windows[o, 0] // scale
        bounds[o, 1] = (windows[o, 1] - 1) // scale - bounds[o, 0] + 1
    kk = np.zeros((IMG_SIZE, bounds[:, 1].max()), np.int32)
    weights = np.empty(kk.shape[1])
    for o in range(IMG_SIZE):
        center = (o + 0.5) * (full_size / IMG_SIZE)
        xmin, xmax = windows[o, 0], windows[o, 1]
        previous = integral_at((xmin - center) / filter_scale)
        total = 0.0
        for b in range(bounds[o, 1]):
            edge = min(max((bounds[o, 0] + b + 1) * scale, xmin), xmax)
            current = integral_at((edge - center) / filter_scale)
            weights[b] = current - previous
            total += weights[b]
            previous = current
        for b in range(bounds[o, 1]):
            kk[o, b] = math.floor(weights[b] / total * (1 << PRECISION_BITS) + 0.5)
    return kk, bounds


def thumbnail32_reduced(gray: np.ndarray, full_shape: tuple[int, int], scale: int) -> np.ndarray:
    """The 32x32 thumbnail of an image of `full_shape` from its 1/scale decode (uint8, fixed point).

    Scale 1 is exact mode's thumbnail, bit for bit.
    """
    if scale == 1:
        return thumbnail32(gray)
    rows = reduced_coefficients(full_shape[0], scale)
    cols = reduced_coefficients(full_shape[1], scale)
    kernels = _kernels()
    if kernels is None:
        return _two_passes_numpy(gray, rows, cols)
    # The vertical pass vectorises along contiguous rows; with no Pillow output to match, the order is free.
    return _two_passes(kernels, gray, rows, cols, vertical_first=True)


def _two_passes_numpy(gray: np.ndarray, rows: Coefficients, cols: Coefficients) -> np.ndarray:
    """`_two_passes(..., vertical_first=True)` with numpy: the integer sums are exact in float64,
    so the rounding (2^21 + sum) >> 22 and the clipping are the kernels' own."""
    def dense(coefficients: Coefficients, n_in: int) -> np.ndarray:
        kk, bounds = coefficients
        matrix = np.zeros((len(kk), n_in))
        for o, (start, taps) in enumerate(bounds):
            matrix[o, start : start + taps] = kk[o, :taps]
        return matrix

    def to_uint8(fixed: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((fixed + (1 << 21)) / (1 << PRECISION_BITS)), 0, 255)

    tall = to_uint8(dense(rows, gray.shape[0]) @ gray.astype(np.float64))
    return to_uint8(tall @ dense(cols, gray.shape[1]).T).astype(np.uint8)


_UNSET = object()
_KERNELS: Any = _UNSET
_KERNELS_LOCK = threading.RLock()  # re-entered by the build itself (its probes resample)
RGB_IN_PLACE = False  # set by _build_kernels: Pillow's RGB pixels can be read in place (pixel_view)


def _kernels() -> SimpleNamespace | None:
    """The compiled resampler (built on first use, not at import), or None to use Pillow's resize.

    None when numba is not installed or when no pass-order rule reproduces the installed Pillow
    (a future Pillow changing its resampler then costs speed, never correctness).
    """
    global _KERNELS
    if _KERNELS is _UNSET:
        with _KERNELS_LOCK:
            if _KERNELS is _UNSET:
                _KERNELS = None  # while building: resample_coefficients falls back to the reference
                _KERNELS = _build_kernels()
    return _KERNELS


def jit_cached(func: Any) -> Any:
    """`func` compiled by numba, its machine code cached on disk so that only the first process on a
    machine compiles it (~5 s for these kernels; a later one loads them in ~0.5 s).

    numba keeps the cache in `__pycache__` beside this file, else in the user's cache folder (or in
    $NUMBA_CACHE_DIR); where none is writable (a read-only install and home) it refuses to cache,
    and the kernels are then compiled in every process instead of failing.
    """
    import numba

    try:
        return numba.njit(cache=True, nogil=True)(func)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(func)


def _build_kernels() -> SimpleNamespace | None:
    global _PASS_ORDER_RULE
    try:
        import numba  # noqa: F401
    except ImportError:
        return None
    global RGB_IN_PLACE
    kernels = SimpleNamespace(vertical=jit_cached(_vertical_loop), horizontal=jit_cached(_horizontal_loop),
                              horizontal_rgbx=jit_cached(_horizontal_rgbx_loop), rgbx_to_l=jit_cached(_rgbx_to_l_loop),
                              coefficients=jit_cached(_coefficients_loop),
                              reduced_coefficients=jit_cached(_reduced_coefficients_loop))
    rng = np.random.default_rng(7)
    probes = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((100, 41), (41, 100), (200, 60), (90, 90))]
    for rule in (_rule_pillow13, _rule_horizontal_first):
        _PASS_ORDER_RULE = rule
        if all(np.array_equal(_thumbnail_with(kernels, p), _pillow_thumbnail(p)) for p in probes):
            RGB_IN_PLACE = _rgb_in_place_matches_pillow(kernels, rng)
            return kernels
    return None


def _rgb_in_place_matches_pillow(k: SimpleNamespace, rng: np.random.Generator) -> bool:
    """Whether RGB pixels read in place and converted by the kernels give Pillow's own "L" thumbnail
    on random probes (a future Pillow changing its conversion or pixel layout costs speed, never bits)."""
    if sys.byteorder != "little":
        return False
    for shape in ((60, 90), (90, 60), (32, 70)):
        im = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
        try:
            px = pa.array(im).flatten().to_numpy(zero_copy_only=True).view(np.uint32).reshape(shape)
        except (ValueError, TypeError, pa.ArrowException):
            return False
        if not np.array_equal(_thumbnail_of_rgb(k, px), _pillow_thumbnail(np.asarray(im.convert("L")))):
            return False
    return True


# -- the public compute functions ---------------------------------------------------------------------
def phash_exact(data: bytes) -> int:
    """`int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)`, faster. Raises DecodeError."""
    with quiet():
        return hashes_from_thumbnails(exact_thumbnail(data)[None])[0]


def phash_fast(data: bytes) -> int:
    """Reduced-size JPEG decode, block-integrated LANCZOS weights, the same DCT. Raises DecodeError."""
    with quiet():
        return hashes_from_thumbnails(fast_thumbnail(data)[None])[0]


def phash_batch(datas: list[bytes | None], mode: str = "exact",
                threads: int | None = None) -> tuple[list[int | None], list[str | None]]:
    """Hash a batch: (values, errors), one entry per input; a failed image has value None and a message.

    Images are decoded and resampled by `threads` threads (default: one per CPU this process may
    use): Pillow's decoder and the compiled kernels release the GIL, so they run on all cores.
    """
    if mode not in MODES:
        raise ValueError(f"unknown phash mode {mode!r}; choose one of {', '.join(MODES)}")
    thumbnail = fast_thumbnail if mode == "fast" else exact_thumbnail
    _kernels()  # built (or loaded) once, here, rather than raced for by the threads

    def one(data: bytes | None) -> np.ndarray | str:
        if data is None:
            return "image bytes could not be read from the lake"
        try:
            return thumbnail(data)
        except DecodeError as exc:
            return str(exc)

    def run(chunk: list[bytes | None]) -> list[np.ndarray | str]:
        return [one(data) for data in chunk]

    pool = decoding_pool(threads)
    with quiet():
        if pool is None or len(datas) <= 1:
            outcomes = run(datas)
        else:  # a task per few images, not per image: fewer hand-overs of the GIL between threads
            chunks = [datas[i : i + THREAD_CHUNK] for i in range(0, len(datas), THREAD_CHUNK)]
            outcomes = [o for done in pool.map(run, chunks) for o in done]
    where = [i for i, o in enumerate(outcomes) if not isinstance(o, str)]
    values: list[int | None] = [None] * len(datas)
    hashed = hashes_from_thumbnails(np.stack([outcomes[i] for i in where])) if where else []
    for i, value in zip(where, hashed):
        values[i] = value
    return values, [o if isinstance(o, str) else None for o in outcomes]


THREAD_CHUNK = 16  # images per task of the decoding threads


def threads_per_worker(engine: str, workers: int, cpus_per_worker: float) -> int | None:
    """Decoding threads per worker when `--threads` is not given: the CPUs a Ray worker reserves, or
    this machine's cores shared among N local workers (a thread per core in each of them would
    oversubscribe the machine N times); None (one per core) for a single local worker."""
    if engine == "ray":
        return max(1, int(cpus_per_worker))
    if workers > 1:
        return max(1, available_cores() // workers)
    return None


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def decoding_pool(threads: int | None = None) -> ThreadPoolExecutor | None:
    """This process's pool of `threads` decoding threads (made once, then reused); None for one thread."""
    threads = available_cores() if threads is None else threads
    if threads <= 1:
        return None
    with _POOLS_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="phash-decode")
        return _POOLS[threads]


def phash_fast_batch(datas: list[bytes | None]) -> list[int | None]:
    """Fast-mode hashes of a batch; None where the image could not be decoded."""
    return phash_batch(datas, "fast")[0]


def phash_exact_batch(datas: list[bytes | None]) -> list[int | None]:
    """Exact-mode hashes of a batch; None where the image could not be decoded."""
    return phash_batch(datas, "exact")[0]


# -- the enricher -------------------------------------------------------------------------------------
class PhashEnricher(Enricher):
    """Fill `images.phash` (uint64) and `images.phash_mode` for images that have no phash yet."""

    name: ClassVar[str] = "phash"
    table: ClassVar[str] = S.IMAGES
    # phash_mode first: the runner selects rows where columns[0] IS NULL through DuckDB, and DuckDB
    # cannot push a filter on a uint64 column down into a Lance scan (Substrait conversion error,
    # pylance 14 / duckdb 2.0); both columns are always written together.
    columns: ClassVar[tuple[str, ...]] = ("phash_mode", "phash")
    needs_image_bytes: ClassVar[bool] = True

    def __init__(self, mode: str = "exact", threads: int | None = None, **options: Any):
        if mode not in MODES:
            raise ValueError(f"unknown phash mode {mode!r}; choose one of {', '.join(MODES)}")
        if threads is not None and threads < 1:
            raise ValueError(f"--threads must be at least 1, not {threads}")
        super().__init__(mode=mode, **options)  # threads change the speed, not the values: not a param
        self.mode, self.threads = mode, threads

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--mode", choices=MODES, default="exact",
            help="exact: bit-identical to imagehash.phash (default); fast: reduced-size JPEG decode, "
            "a few bits off on some images, several times faster",
        )
        parser.add_argument(
            "--threads", type=int, metavar="N",
            help="decoding threads per worker (default: one per CPU this process may use, shared among "
            "--workers N; a Ray worker's --cpus-per-worker. Pillow's decoder releases the GIL, so one "
            "worker uses every core)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PhashEnricher":
        threads = getattr(args, "threads", None)
        if threads is None:
            threads = threads_per_worker(getattr(args, "engine", "local"), getattr(args, "workers", 1),
                                         getattr(args, "cpus_per_worker", 1.0))
        return cls(mode=getattr(args, "mode", "exact"), threads=threads)

    def setup(self) -> None:
        """Compile the resampler once per worker (numba caches it on disk after the first run)."""
        thumbnail32(np.zeros((40, 50), np.uint8))

    def process(self, batch: EnrichBatch) -> EnrichResult:
        keys = batch.rows[S.KEYS[S.IMAGES]].to_pylist()
        values, errors = phash_batch(list(batch.image_bytes), self.mode, self.threads)
        ok = [i for i, v in enumerate(values) if v is not None]
        table = pa.table(
            {
                "image_id": pa.array([keys[i] for i in ok], pa.string()),
                "phash": pa.array([values[i] for i in ok], pa.uint64()),
                "phash_mode": pa.array([self.mode] * len(ok), pa.string()),
            }
        )
        failures = [EnrichFailure(key=keys[i], kind="decode_error", message=errors[i] or "")
                    for i, v in enumerate(values) if v is None]
        return EnrichResult(values=table, failures=failures)
