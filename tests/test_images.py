"""Header sniffing: the JPEG marker walk must say exactly what Pillow says, or leave it to Pillow."""
from __future__ import annotations

import io
import random

import pyarrow as pa
import pytest
from PIL import Image

from etl.images import NotAnImage, _header, jpeg_size, sniff

MUTATION_ROUNDS = 10_000  # per seed: a few seconds; every accepted header is compared with Pillow's


def pillow_says(data: bytes):
    """Pillow's verdict on the whole bytes: (format, width, height), or None when it rejects them."""
    try:
        return _header(data)
    except NotAnImage:
        return None


def synthetic_jpegs() -> list[bytes]:
    """JPEGs with the segments real photos carry: JFIF with a DPI, EXIF (with or without the JFIF
    DPI, so Pillow reads it from the EXIF), a split ICC profile, comments; baseline and progressive;
    grey, RGB and CMYK."""
    out = []
    for mode in ("L", "RGB", "CMYK"):
        for progressive in (False, True):
            for with_exif in (False, True):
                exif = Image.Exif()
                exif[0x0128], exif[0x011A] = 2, (300, 1)
                extra = {"exif": exif.tobytes()} if with_exif else {}
                buf = io.BytesIO()
                Image.new(mode, (37, 23), 128).save(buf, "JPEG", progressive=progressive, dpi=(72, 72), **extra,
                                                    icc_profile=b"p" * 70_000, comment=b"made for a test")
                out.append(buf.getvalue())
                if with_exif:
                    buf = io.BytesIO()
                    Image.new(mode, (37, 23), 128).save(buf, "JPEG", exif=exif.tobytes())
                    out.append(buf.getvalue())
    return out


def mutated(data: bytes, rng: random.Random) -> bytes:
    """`data` with its header damaged the ways downloads and writers damage them."""
    d, header = bytearray(data), min(len(data), 2000)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            d[rng.randrange(2, header)] = rng.randrange(256)
    elif kind == 1:
        del d[rng.randrange(0, header):]  # truncated
    elif kind == 2:
        at = rng.randrange(2, header)
        d[at:at] = rng.randbytes(rng.randint(1, 8))
    elif kind == 3:
        at = rng.randrange(2, header)
        del d[at: at + rng.randint(1, 8)]
    else:  # a stray marker: SOF, DQT, APPn, SOS, fill, stuffing, TEM, JPGn
        at = rng.randrange(2, header - 1)
        d[at: at + 2] = bytes([0xFF, rng.choice([0xC0, 0xC2, 0xDB, 0xE0, 0xE1, 0xE2, 0xEE, 0xED, 0xDA, 0xFF, 0x00,
                                                  0x01, 0xD8, 0xF0])])
    return bytes(d)


def test_a_plain_jpeg_is_sized_without_pillow_and_exactly_as_pillow_sizes_it():
    for data in synthetic_jpegs():
        assert pillow_says(data) == ("JPEG", 37, 23)
        assert sniff(data).format == "JPEG" and (sniff(data).width, sniff(data).height) == (37, 23)
        signed = memoryview(pa.py_buffer(data))  # how parquet bytes arrive: a view of an Arrow buffer
        assert signed.format == "b" and jpeg_size(signed) == jpeg_size(data)
        if b"JFIF\x00\x01\x01\x01" in data[:30]:  # a JFIF DPI: Pillow does not look at the EXIF for one
            assert jpeg_size(memoryview(data)) == (37, 23)
        else:
            assert jpeg_size(memoryview(data)) is None


@pytest.mark.parametrize("seed", [0, 1])
def test_damaged_jpeg_headers_are_either_sized_as_pillow_sizes_them_or_left_to_pillow(seed):
    rng, pool = random.Random(seed), synthetic_jpegs()
    settled = 0
    for _ in range(MUTATION_ROUNDS):
        data = mutated(rng.choice(pool), rng)
        size = jpeg_size(memoryview(data))
        if size is not None:
            settled += 1
            assert pillow_says(data) == ("JPEG", *size), data[:64]
    assert settled > MUTATION_ROUNDS // 4  # the walk settles most of them: the test compares something


def test_every_real_jpeg_is_sized_as_pillow_sizes_it(realdata):
    files = [p for p in realdata.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file()]
    assert len(files) > 100
    settled = 0
    for path in files:
        data = path.read_bytes()
        size = jpeg_size(memoryview(data))
        if size is not None:
            settled += 1
            assert pillow_says(data) == ("JPEG", *size), path
        assert sniff(data) == sniff_with_pillow(data), path
    assert settled >= len(files) * 9 // 10


def sniff_with_pillow(data: bytes):
    """What `sniff` returned before the marker walk: Pillow on the bytes."""
    from etl.images import ImageInfo, content_id

    found = pillow_says(data)
    return None if found is None else ImageInfo(content_id(data), *found, len(data))


def header(bits: int, height: int, width: int) -> bytes:
    """SOI, a one-component start of frame, an empty start of scan."""
    sof = bytes([bits]) + height.to_bytes(2, "big") + width.to_bytes(2, "big") + b"\x01\x01\x11\x00"
    return b"\xff\xd8\xff\xc0" + (len(sof) + 2).to_bytes(2, "big") + sof + b"\xff\xda\x00\x02"


def test_an_mpo_a_12_bit_jpeg_and_a_giant_header_stay_with_pillow():
    mpf = b"\xff\xd8\xff\xe2\x00\x08MPF\x00\x00\x00" + header(8, 16, 16)[2:]  # may be an MPO: Pillow decides
    assert jpeg_size(header(8, 16, 24)) == (24, 16) and pillow_says(header(8, 16, 24)) == ("JPEG", 24, 16)
    assert jpeg_size(mpf) is None and jpeg_size(header(12, 16, 16)) is None
    assert pillow_says(header(12, 16, 16)) is None  # Pillow rejects 12-bit samples
    if Image.MAX_IMAGE_PIXELS and 0xFFFF * 0xFFFF > Image.MAX_IMAGE_PIXELS:
        assert jpeg_size(header(8, 0xFFFF, 0xFFFF)) is None  # Pillow's decompression-bomb check decides
