"""Perceptual hashes: exact mode equals imagehash on every real image, fast mode stays close,
bad images get NULL + one error row, and the enricher fills the lake column without touching blobs."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFilter

imagehash = pytest.importorskip("imagehash")

from etl import schema as S  # noqa: E402
from etl.enrich import phash as P  # noqa: E402
from etl.enrich.base import EnrichBatch  # noqa: E402
from etl.images import content_id, sniff  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


def imagehash_u64(data: bytes) -> int:
    """The reference: what every published phash column holds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)


def reference_or_error(data: bytes) -> int | None:
    try:
        return imagehash_u64(data)
    except Exception:  # noqa: BLE001 - imagehash fails the way Pillow fails
        return None


def realdata_images(root: Path) -> dict[str, bytes]:
    """Every image under realdata: plain files, tar/tgz members and parquet image bytes."""
    found: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.suffix.lower() in IMAGE_SUFFIXES:
            found[rel] = path.read_bytes()
        elif path.suffix in (".tar", ".tgz"):
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                        found[f"{rel}::{member.name}"] = tar.extractfile(member).read()
        elif path.suffix == ".parquet":
            table = pq.read_table(path)
            for name in table.column_names:
                col = table[name]
                if pa.types.is_list(col.type) and pa.types.is_binary(col.type.value_type):
                    for r, items in enumerate(col.to_pylist()):
                        for j, data in enumerate(items or []):
                            if data:
                                found[f"{rel}::{name}[{r}][{j}]"] = data
    return found


def gray_png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height, width), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


# -- exact mode ------------------------------------------------------------------------------------
def test_exact_mode_reproduces_the_upstream_imagehash_constant(realdata):
    expected = json.loads((realdata / "imagehash" / "expected_hashes.json").read_text())
    want = expected["constant_hashes"]["tests/data/imagehash.png"]["phash"]
    data = (realdata / "imagehash" / "tests" / "data" / "imagehash.png").read_bytes()
    assert P.hash_to_hex(P.phash_exact(data)) == want == "ba8c84536bd3c366"


def test_exact_mode_equals_imagehash_on_every_realdata_image(realdata):
    images = realdata_images(realdata)
    assert len(images) > 250, "expected the whole realdata image set (files, tar members, parquet bytes)"
    names = list(images)
    values, errors = P.phash_batch([images[n] for n in names], "exact")
    mismatches, error_mismatch = [], []
    for name, value, error in zip(names, values, errors):
        ref = reference_or_error(images[name])
        if ref is None or value is None:
            if (ref is None) != (value is None):
                error_mismatch.append((name, ref, value, error))
        elif ref != value:
            mismatches.append((name, f"{ref:016x}", f"{value:016x}"))
    assert not mismatches, mismatches
    assert not error_mismatch, error_mismatch


def test_exact_mode_equals_imagehash_on_generated_sizes_and_modes():
    """Odd sizes (tall, wide, tiny, exactly 32) and every mode imagehash meets in the wild."""
    rng = np.random.default_rng(11)
    cases = [(1, 1), (5, 200), (200, 5), (31, 33), (32, 32), (33, 32), (40, 33), (1006, 7), (640, 480), (347, 1301)]
    cases += [tuple(int(v) for v in rng.integers(2, 900, 2)) for _ in range(25)]
    datas = []
    for i, (w, h) in enumerate(cases):
        noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        base = Image.fromarray(noise).filter(ImageFilter.GaussianBlur(3)) if i % 2 else Image.fromarray(noise)
        mode = ["RGB", "L", "RGBA", "P", "CMYK", "LA", "I;16", "1"][i % 8]
        im = base.convert(mode) if mode not in ("I;16",) else Image.fromarray(
            (rng.integers(0, 65536, (h, w))).astype(np.uint16))
        fmt = "JPEG" if mode in ("CMYK",) else "TIFF" if mode == "I;16" else "PNG"
        buf = io.BytesIO()
        im.save(buf, fmt)
        datas.append(buf.getvalue())
    datas.append(_solid_png(64, 48, 128))  # constant image: every AC coefficient ties at the median
    values, _ = P.phash_batch(datas, "exact")
    assert values == [imagehash_u64(d) for d in datas]


def _solid_png(width: int, height: int, level: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), level).save(buf, "PNG")
    return buf.getvalue()


def test_thumbnail_matches_pillow_lanczos_bit_for_bit_in_both_pass_orders():
    rng = np.random.default_rng(5)
    shapes = [(1000, 300), (300, 1000), (40, 33), (33, 40), (2, 700), (700, 2), (32, 500), (500, 32)]
    for h, w in shapes:
        gray = rng.integers(0, 256, (h, w), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(gray).resize((32, 32), Image.Resampling.LANCZOS))
        assert np.array_equal(P.thumbnail32(gray), ref), (h, w)


def test_large_images_converted_and_resampled_in_strips_still_equal_imagehash(monkeypatch):
    """Every image takes the strip path here (tiny strips, many of them): rows or columns, either
    pass order, one side exactly 32, every mode; the hashes stay imagehash's."""
    monkeypatch.setattr(P, "STRIP_PIXELS", 0)
    monkeypatch.setattr(P, "STRIP_BUDGET", 700)
    rng = np.random.default_rng(3)
    cases = [(1000, 300, "RGB"), (300, 1000, "L"), (32, 900, "RGBA"), (900, 32, "P"), (33, 40, "CMYK"),
             (2, 700, "LA"), (700, 2, "1"), (517, 389, "I;16"), (1301, 347, "RGB")]
    datas = []
    for w, h, mode in cases:
        noise = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2))
        im = noise.convert(mode) if mode != "I;16" else Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
        buf = io.BytesIO()
        im.save(buf, "JPEG" if mode == "CMYK" else "TIFF" if mode == "I;16" else "PNG")
        datas.append(buf.getvalue())
    assert P.phash_batch(datas, "exact")[0] == [imagehash_u64(d) for d in datas]
    assert P.phash_batch(datas, "fast")[0] == [imagehash_u64(d) for d in datas]  # not JPEG, or too small to reduce


def test_a_144_megapixel_photo_hashes_without_a_full_size_gray_copy(tmp_path):
    """Peak memory of hashing one 12000x12000 JPEG, measured in a fresh process: exact mode needs
    the RGB decode (Pillow keeps 4 bytes a pixel) and little more; fast mode decodes at 1/8."""
    path = tmp_path / "big.jpg"
    subprocess.run([sys.executable, "-c", BIG_JPEG, str(path)], check=True, timeout=60)
    pixels = 12000 * 12000
    for mode, limit in (("exact", 4 * pixels + (60 << 20)), ("fast", 60 << 20)):
        out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path), mode], check=True, capture_output=True,
                             text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
        grown = int(out.stdout.split()[0])
        assert grown < limit, f"{mode}: hashing grew the peak RSS by {grown >> 20} MB (limit {limit >> 20} MB)"


BIG_JPEG = """
import sys
from PIL import Image
small = Image.radial_gradient("L").resize((12000, 12000), Image.Resampling.NEAREST)
Image.merge("RGB", (small, small.transpose(Image.Transpose.ROTATE_90), small)).save(sys.argv[1], quality=80)
"""
PEAK_RSS = """
import io, resource, sys
from PIL import Image
from etl.enrich import phash as P
data = open(sys.argv[1], "rb").read()
warm = io.BytesIO()
Image.new("RGB", (300, 200), "red").save(warm, "JPEG")
P.phash_batch([warm.getvalue()], sys.argv[2])  # kernels loaded (or compiled) before measuring
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
values, errors = P.phash_batch([data], sys.argv[2])
assert values[0] is not None, errors
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_rgb_pixels_read_in_place_turn_gray_like_pillow_for_every_colour():
    """Exact mode reads an RGB decode in Pillow's own memory and converts it to "L" itself: all
    2^24 colours (four 4096 x 1024 tiles) give Pillow's convert("L") values."""
    kernels = P._kernels()
    if kernels is None:
        pytest.skip("numba not installed: Pillow converts")
    assert P.RGB_IN_PLACE
    v = np.arange(1 << 24, dtype=np.uint32)
    colours = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], axis=-1).astype(np.uint8)
    for tile in colours.reshape(4, 1024, 4096, 3):
        im = Image.fromarray(tile)
        view = P.pixel_view(im)
        assert view is not None and view.shape == (1024, 4096)
        assert np.array_equal(kernels.rgbx_to_l(view), np.asarray(im.convert("L")))


def _rgb_png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    noise = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    return buf.getvalue()


def test_rgb_images_read_in_place_equal_imagehash_in_both_pass_orders_and_with_a_side_of_32():
    """Wide (converted inside the horizontal pass), tall (Pillow resamples rows first: converted
    whole), exactly 32 high or wide, 32 x 32 (no resampling at all)."""
    shapes = [(640, 480), (480, 640), (300, 1000), (1000, 300), (700, 32), (32, 700), (32, 32), (33, 90), (90, 33)]
    datas = [_rgb_png(w, h, seed=i) for i, (w, h) in enumerate(shapes)]
    assert P.phash_batch(datas, "exact")[0] == [imagehash_u64(d) for d in datas]


def test_an_image_pillow_keeps_in_several_memory_blocks_is_converted_by_pillow_and_hashes_alike():
    """Pillow's Arrow export (the in-place read) needs one block: with 64 KB blocks the image
    cannot be read in place, and exact mode falls back to Pillow's conversion, same bits."""
    datas = [_rgb_png(400, 300, seed=1), _rgb_png(300, 400, seed=2), gray_png(500, 300, seed=3)]
    block_size = Image.core.get_block_size()
    Image.core.set_block_size(1 << 16)
    try:
        for data in datas:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                assert P.pixel_view(im) is None
        values = P.phash_batch(datas, "exact")[0]
    finally:
        Image.core.set_block_size(block_size)
    assert values == [imagehash_u64(d) for d in datas]


@pytest.mark.parametrize("mode", P.MODES)
def test_decoding_threads_give_the_serial_hashes_and_errors_in_input_order(mode):
    """Three threads over a batch mixing good JPEGs and PNGs, bytes that are no image, a truncated
    JPEG and unreadable bytes (None): the same values and messages, at the same places, as one thread."""
    good = [_noise_jpeg(300 + 7 * i, 200 + 5 * i, seed=i) for i in range(12)] + [_rgb_png(120, 90, seed=4)]
    bad = [b"not an image", good[0][: len(good[0]) // 3], None]
    datas = [*good[:5], bad[0], *good[5:9], bad[1], *good[9:], bad[2]]
    serial = P.phash_batch(datas, mode, threads=1)
    threaded = P.phash_batch(datas, mode, threads=3)
    assert threaded == serial
    values, errors = threaded
    failed = [i for i, v in enumerate(values) if v is None]
    assert failed == [5, 10, 15] and all(errors[i] for i in failed)
    assert [errors[i] for i in range(len(datas)) if i not in failed] == [None] * len(good)
    if mode == "exact":
        assert [values[i] for i in range(len(datas)) if i not in failed] == [imagehash_u64(d) for d in good]


def test_kernels_compile_even_where_numba_has_nowhere_to_cache_them():
    """numba refuses `cache=True` when no cache folder is writable (as for a function without a
    source file, used here): the kernel is then compiled for this process only."""
    pytest.importorskip("numba")
    namespace: dict = {}
    exec(compile("def double(x):\n    return x * 2\n", "<no file>", "exec"), namespace)
    assert P.jit_cached(namespace["double"])(21) == 42


# -- fast mode --------------------------------------------------------------------------------------
def test_fast_mode_stays_within_a_few_bits_of_exact_on_real_jpegs(realdata):
    folder = realdata / "llava_pretrain_pr1902" / "playground" / "data" / "LLaVA-Pretrain" / "images"
    datas = [p.read_bytes() for p in sorted(folder.rglob("*.jpg"))][:120]
    datas += [p.read_bytes() for p in sorted((realdata / "data_juicer" / "tests" / "ops" / "data").glob("*.jpg"))]
    exact, _ = P.phash_batch(datas, "exact")
    fast, _ = P.phash_batch(datas, "fast")
    distances = np.array([bin(a ^ b).count("1") for a, b in zip(exact, fast)])
    assert (distances <= 2).mean() >= 0.95, np.bincount(distances)
    assert distances.max() <= 8


def test_fast_mode_hashes_every_realdata_image_that_exact_mode_hashes(realdata):
    """CMYK, grayscale, progressive and odd JPEGs all go through the reduced decode."""
    images = list(realdata_images(realdata).values())
    exact, _ = P.phash_batch(images, "exact")
    fast, _ = P.phash_batch(images, "fast")
    assert [v is None for v in fast] == [v is None for v in exact]
    distances = np.array([bin(a ^ b).count("1") for a, b in zip(exact, fast) if a is not None])
    assert (distances <= 2).mean() >= 0.95 and distances.max() <= 6


def test_fast_mode_equals_exact_on_non_jpeg_images():
    datas = [gray_png(300, 200, seed) for seed in range(3)]
    assert P.phash_batch(datas, "fast")[0] == P.phash_batch(datas, "exact")[0]


def _noise_jpeg(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    noise = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2))
    buf = io.BytesIO()
    noise.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_fast_mode_decodes_jpegs_at_the_smallest_scale_keeping_64_px_a_side():
    cases = {(1000, 800): 8, (1000, 300): 4, (336, 500): 4, (200, 150): 2, (127, 400): 1}
    for (width, height), scale in cases.items():
        gray, full_shape, got = P.decode_gray_reduced(_noise_jpeg(width, height, seed=width))
        assert (got, full_shape) == (scale, (height, width))
        assert gray.dtype == np.uint8 and gray.shape == (-(-height // scale), -(-width // scale))
    assert P.decode_gray_reduced(gray_png(300, 200, seed=1))[2] == 1  # other formats: whole, like exact


def test_fast_mode_equals_exact_on_jpegs_too_small_to_decode_reduced():
    """Saturated colours: libjpeg's luma differs from Pillow's RGB -> "L" by up to ~40 levels here,
    so a small JPEG must not be drafted to "L" either."""
    rng = np.random.default_rng(0)
    datas = []
    for width, height in [(120, 100), (127, 400), (400, 100), (20, 300)]:
        buf = io.BytesIO()
        Image.fromarray((rng.integers(0, 2, (height, width, 3)) * 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        datas.append(buf.getvalue())
    for data in datas:
        gray, _, scale = P.decode_gray_reduced(data)
        assert scale == 1 and np.array_equal(gray, P.decode_gray(data))
    assert P.phash_batch(datas, "fast")[0] == P.phash_batch(datas, "exact")[0]


def test_one_eighth_jpeg_decode_is_the_block_means_of_the_luma(realdata):
    """The fact fast mode relies on: libjpeg's 1/8 DCT-domain decode is the 8x8 block means."""
    data = (realdata / "data_juicer" / "tests" / "ops" / "data" / "blip.jpg").read_bytes()
    reduced, (height, width), scale = P.decode_gray_reduced(data)
    assert scale == 8
    with Image.open(io.BytesIO(data)) as im:
        im.draft("L", None)  # luma, full size
        luma = np.asarray(im).astype(np.float64)
    padded = np.pad(luma, ((0, -height % 8), (0, -width % 8)), mode="edge")
    means = padded.reshape(padded.shape[0] // 8, 8, padded.shape[1] // 8, 8).mean(axis=(1, 3))
    assert np.abs(means - reduced).max() <= 1.5


def test_block_weights_give_the_full_size_thumbnail_of_a_block_constant_image():
    """Resizing block means with block-integrated weights ~ resizing the full image (pixel noise at
    block scale, the hardest case); resizing the small image with its own LANCZOS (the old fast
    mode) is several times further off."""
    rng = np.random.default_rng(4)
    for (height, width), scale in [((301, 457), 4), ((600, 803), 8), ((250, 130), 2)]:
        blocks = rng.integers(0, 256, (-(-height // scale), -(-width // scale)), dtype=np.uint8)
        full = np.kron(blocks, np.ones((scale, scale), np.uint8))[:height, :width]
        want = P.thumbnail32(full).astype(int)
        error = np.abs(P.thumbnail32_reduced(blocks, (height, width), scale).astype(int) - want)
        assert error.mean() < 0.3 and error.max() <= 8, (height, width, scale)
        own_resize = np.asarray(Image.fromarray(blocks).resize((32, 32), Image.Resampling.LANCZOS)).astype(int)
        assert np.abs(own_resize - want).mean() > 2 * error.mean()


def test_reduced_coefficients_are_normalised_and_stay_inside_the_decoded_blocks():
    for full_size, scale in [(336, 4), (1280, 8), (129, 2), (4000, 8), (130, 2)]:
        kk, bounds = P.reduced_coefficients(full_size, scale)
        n_blocks = -(-full_size // scale)
        assert kk.shape[0] == 32 and bounds[:, 0].min() >= 0
        assert (bounds[:, 0] + bounds[:, 1]).max() <= n_blocks
        assert np.abs(kk.sum(axis=1) - (1 << 22)).max() <= 64  # normalised, in 22-bit fixed point
        taps = np.arange(kk.shape[1])[None, :] >= bounds[:, 1:2]
        assert not kk[taps].any()  # nothing outside each output's band


def test_compiled_fast_resampler_equals_its_plain_python_fallback():
    """Without numba the same code runs as Python / numpy and gives the same thumbnails."""
    kernels = P._kernels()
    if kernels is None:
        pytest.skip("numba not installed: only the fallback exists")
    table = P._lanczos_integral()
    for full_size, scale in [(336, 4), (1280, 8), (129, 2), (997, 8)]:
        compiled = kernels.reduced_coefficients(full_size, scale, table)
        plain = P._reduced_coefficients_loop(full_size, scale, table)
        assert all(np.array_equal(a, b) for a, b in zip(compiled, plain)), (full_size, scale)
    gray, full_shape, scale = P.decode_gray_reduced(_noise_jpeg(900, 700, seed=3))
    rows, cols = (P.reduced_coefficients(n, scale) for n in full_shape)
    assert np.array_equal(P._two_passes_numpy(gray, rows, cols), P.thumbnail32_reduced(gray, full_shape, scale))


# -- bad and odd images -----------------------------------------------------------------------------
def test_truncated_jpeg_gets_null_phash_and_a_decode_error(realdata):
    data = (realdata / "pillow_test_images" / "Tests" / "images" / "truncated_jpeg.jpg").read_bytes()
    for mode in P.MODES:
        values, errors = P.phash_batch([data], mode)
        assert values == [None]
        assert "truncated" in errors[0]


def test_animated_gif_hashes_its_first_frame(realdata):
    data = (realdata / "pillow_test_images" / "Tests" / "images" / "iss634.gif").read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        first = im.convert("L")
        assert getattr(im, "n_frames", 1) > 1
    assert P.phash_exact(data) == int(str(imagehash.phash(first)), 16)


def test_cmyk_and_rgb_copies_of_one_picture_hash_alike(realdata):
    folder = realdata / "pillow_test_images" / "Tests" / "images"
    a = P.phash_exact((folder / "pil_sample_rgb.jpg").read_bytes())
    b = P.phash_exact((folder / "pil_sample_cmyk.jpg").read_bytes())
    assert bin(a ^ b).count("1") == 0


def test_hash_values_above_2_63_survive_as_uint64():
    value = 0xFAC1853AB43E6EC0
    arr = pa.array([value], pa.uint64())
    assert arr.to_pylist() == [value] and value > 2**63


# -- the enricher ------------------------------------------------------------------------------------
def test_enricher_returns_values_and_one_failure_per_undecodable_image(realdata):
    good = (realdata / "imagehash" / "tests" / "data" / "imagehash.png").read_bytes()
    bad = (realdata / "pillow_test_images" / "Tests" / "images" / "truncated_jpeg.jpg").read_bytes()
    rows = pa.table({"image_id": [content_id(good), content_id(bad), "missing"]})
    enricher = P.PhashEnricher(mode="exact")
    enricher.setup()
    result = enricher.process(EnrichBatch(rows, [good, bad, None]))
    assert result.values.column_names == ["image_id", "phash", "phash_mode"]
    assert result.values.to_pylist() == [
        {"image_id": content_id(good), "phash": 0xBA8C84536BD3C366, "phash_mode": "exact"}
    ]
    assert [(f.key, f.kind) for f in result.failures] == [(content_id(bad), "decode_error"), ("missing", "decode_error")]


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown phash mode"):
        P.PhashEnricher(mode="approximate")


def test_zero_decoding_threads_is_a_clear_error():
    with pytest.raises(ValueError, match="--threads must be at least 1"):
        P.PhashEnricher(threads=0)


def _images_table(datas: list[bytes]) -> pa.Table:
    import lance

    rows = []
    for data in datas:
        info = sniff(data)
        rows.append({"image_id": info.image_id, "format": info.format, "width": info.width,
                     "height": info.height, "nbytes": info.nbytes})
    table = pa.Table.from_pylist(rows)
    return table.append_column(S.BLOB_COLUMN, lance.blob_array(datas))


def test_enrich_phash_fills_the_column_records_errors_and_a_rerun_computes_nothing(lake, realdata):
    from etl.enrich.runner import RunOptions, run_enricher

    folder = realdata / "pillow_test_images" / "Tests" / "images"
    names = ["hopper.png", "hopper.jpg", "pil_sample_cmyk.jpg", "truncated_jpeg.jpg", "iss634.gif", "i_trns.png"]
    datas = [(folder / n).read_bytes() for n in names]
    lake.append(S.IMAGES, _images_table(datas))
    blob_files_before = sorted(p.name for p in Path(lake.uri(S.IMAGES)).rglob("*") if p.is_file())

    counts = run_enricher(lake, P.PhashEnricher(mode="exact"), RunOptions(workers=1, progress=False))
    assert counts["computed"] == 5 and counts["errors.decode_error"] == 1

    got = {r["image_id"]: r for r in lake.dataset(S.IMAGES).to_table(columns=["image_id", "phash", "phash_mode"]).to_pylist()}
    for name, data in zip(names, datas):
        ref = reference_or_error(data)
        assert got[content_id(data)]["phash"] == ref, name
    assert got[content_id(datas[3])]["phash_mode"] is None
    errors = lake.dataset(S.ERRORS).to_table().to_pylist()
    assert [(e["stage"], e["kind"]) for e in errors] == [("phash", "decode_error")]

    again = run_enricher(lake, P.PhashEnricher(mode="exact"), RunOptions(workers=1, progress=False))
    assert again["todo"] == 0 and again["computed"] == 0
    # blob data files are never rewritten: the old ones are all still there
    blob_files_after = sorted(p.name for p in Path(lake.uri(S.IMAGES)).rglob("*") if p.is_file())
    assert set(f for f in blob_files_before if f.endswith((".blob", ".lance"))) <= set(blob_files_after)


def test_local_workers_share_the_cores_and_a_ray_worker_decodes_on_the_cpus_it_reserves(monkeypatch):
    """`enrich phash --workers 2` on a 2-core machine must not run 2 workers × 2 decoding threads."""
    from argparse import Namespace

    monkeypatch.setattr(P, "available_cores", lambda: 8)

    def threads(**given):
        args = {"engine": "local", "workers": 1, "cpus_per_worker": 1.0, "threads": None, **given}
        return P.PhashEnricher.from_args(Namespace(**args)).threads

    assert threads() is None  # one local worker: a thread per core
    assert threads(workers=2) == 4 and threads(workers=3) == 2 and threads(workers=16) == 1
    assert threads(engine="ray", workers=0, cpus_per_worker=2.0) == 2
    assert threads(workers=4, threads=8) == 8  # --threads as given
