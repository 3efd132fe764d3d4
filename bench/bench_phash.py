"""phash throughput: etl.enrich.phash (exact, fast) against imagehash.phash per file (the seed's phash.py).

Corpus: >= 2,000 real-size JPEGs. Without --corpus, it is built once under ~/.cache/mmlake (never in
the repo) from the real photos in ../shared/realdata and scikit-image's sample photos: the 200
LLaVA-Pretrain JPEGs as they are (LCS-558K size, 336 px short side) plus derived JPEGs — random
crops of the larger photos re-encoded at web sizes (long side 500-1280 px, quality 70-95). The
result file says which corpus was used and its mean megapixels. --corpus DIR uses your own JPEGs.

Each method runs over the same files with workers = 1 and workers = all cores (process pool, warmed
up first so start-up is not timed); each file is read from disk by the worker, as a real job would.
Also reported: exact == imagehash on every file (must be 100%), and fast vs exact agreement.

    .venv/bin/python bench/bench_phash.py            # 2,000 images, 1 and all cores
    .venv/bin/python bench/bench_phash.py --quick    # 300 images (CI smoke, < 1 min)

Writes bench/results/phash.json and .md.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REALDATA = REPO.parent / "shared" / "realdata"
RESULTS = REPO / "bench" / "results"
CACHE = Path(os.environ.get("MMLAKE_BENCH_CACHE", Path.home() / ".cache" / "mmlake")) / "bench_phash_corpus"
CHUNK = 32


# -- corpus -------------------------------------------------------------------------------------------
def source_photos() -> list[Path]:
    """Real photos at least 400 px on the long side (realdata + scikit-image's sample photos)."""
    from PIL import Image

    candidates = []
    if REALDATA.is_dir():
        for folder in ["data_juicer/tests/ops/data", "llava/llava/serve/examples", "llamafactory",
                       "vila_inference_test", "img2dataset/tests", "pillow_test_images/Tests/images"]:
            candidates += [p for p in (REALDATA / folder).rglob("*") if p.suffix.lower() in (".jpg", ".png")]
    try:
        import skimage

        skdata = Path(skimage.__file__).parent / "data"
        candidates += [skdata / f for f in ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg",
                                             "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg",
                                             "retina.jpg", "immunohistochemistry.png", "ihc.png", "horse.png"]
                       if (skdata / f).exists()]
    except ImportError:
        pass
    photos = []
    for path in sorted(set(candidates)):
        try:
            with Image.open(path) as im:
                if max(im.size) >= 400 and "orientation" not in path.name and "truncated" not in path.name:
                    photos.append(path)
        except OSError:
            continue
    return photos


def build_corpus(n: int, seed: int = 0) -> list[Path]:
    """The cached corpus of n JPEGs (built on first use)."""
    from PIL import Image

    CACHE.mkdir(parents=True, exist_ok=True)
    existing = sorted(CACHE.glob("*.jpg"))
    if len(existing) >= n:  # an even spread keeps the mix of small and large images
        return [existing[i] for i in np.linspace(0, len(existing) - 1, n).astype(int)]
    rng = np.random.default_rng(seed)
    pretrain = sorted((REALDATA / "llava_pretrain_pr1902").rglob("images/*/*.jpg")) if REALDATA.is_dir() else []
    n_pretrain = min(len(pretrain), 200, n // 4)
    for i, path in enumerate(pretrain[:n_pretrain]):
        (CACHE / f"a{i:05d}.jpg").write_bytes(path.read_bytes())
    photos = [Image.open(p).convert("RGB") for p in source_photos()]
    if not photos:
        raise SystemExit("no source photos found: pass --corpus DIR with real JPEGs")
    for i in range(n - n_pretrain):
        im = photos[int(rng.integers(len(photos)))]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.55, 1.0)), int(h * rng.uniform(0.55, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((x, y, x + cw, y + ch))
        long_side = int(rng.integers(500, 1281))
        scale = long_side / max(cw, ch)
        crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BICUBIC)
        crop.save(CACHE / f"b{i:05d}.jpg", "JPEG", quality=int(rng.integers(70, 96)))
    return sorted(CACHE.glob("*.jpg"))


# -- the methods, run inside worker processes ---------------------------------------------------------
def _warm(_: int) -> int:
    import imagehash  # noqa: F401

    from etl.enrich import phash

    phash.phash_batch([], "exact")
    phash.thumbnail32(np.zeros((50, 40), np.uint8))
    return os.getpid()


def imagehash_chunk(paths: list[str]) -> list[int]:
    """The seed's phash.py: imagehash.phash(Image.open(f)) per file."""
    import imagehash
    from PIL import Image

    return [int(str(imagehash.phash(Image.open(p))), 16) for p in paths]


def exact_chunk(paths: list[str]) -> list[int | None]:
    from etl.enrich.phash import phash_batch

    return phash_batch([Path(p).read_bytes() for p in paths], "exact")[0]


def fast_chunk(paths: list[str]) -> list[int | None]:
    from etl.enrich.phash import phash_batch

    return phash_batch([Path(p).read_bytes() for p in paths], "fast")[0]


METHODS = {"imagehash": imagehash_chunk, "exact": exact_chunk, "fast": fast_chunk}


def timed(method: str, paths: list[str], workers: int) -> tuple[float, list[int | None]]:
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    with ProcessPoolExecutor(workers, mp_context=__import__("multiprocessing").get_context("spawn")) as pool:
        list(pool.map(_warm, range(workers * 2)))
        start = time.perf_counter()
        out = [v for chunk in pool.map(METHODS[method], chunks) for v in chunk]
        return time.perf_counter() - start, out


def hamming(a: list[int | None], b: list[int | None]) -> np.ndarray:
    return np.array([bin(x ^ y).count("1") for x, y in zip(a, b) if x is not None and y is not None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--corpus", type=Path, help="a folder of real JPEGs to use instead of the built corpus")
    parser.add_argument("-n", type=int, help="number of images (default 2000, --quick 300)")
    parser.add_argument("--repeat", type=int, help="runs per measurement, best kept (default 2, --quick 1): "
                        "methods are interleaved so a busy machine does not favour one of them")
    args = parser.parse_args()
    n = args.n or (300 if args.quick else 2000)
    paths = sorted(args.corpus.rglob("*.jp*g"))[:n] if args.corpus else build_corpus(n)
    paths = [str(p) for p in paths]
    from PIL import Image

    megapixels = [np.prod(Image.open(p).size) / 1e6 for p in paths]
    cores = os.cpu_count() or 1
    worker_counts = [1] if args.quick else sorted({1, cores})
    print(f"{len(paths)} JPEGs, mean {np.mean(megapixels):.2f} MP; workers {worker_counts}", flush=True)

    rates: dict[str, dict[int, float]] = {}
    hashes: dict[str, list] = {}
    for attempt in range(args.repeat or (1 if args.quick else 2)):
        for workers in worker_counts:
            for method in METHODS:
                seconds, values = timed(method, paths, workers)
                best = max(rates.setdefault(method, {}).get(workers, 0.0), len(paths) / seconds)
                rates[method][workers] = best
                hashes.setdefault(method, values)
                print(f"  run {attempt + 1}: {method:<9} workers={workers}: {len(paths) / seconds:8.1f} img/s", flush=True)

    exact_vs_ref = hamming(hashes["exact"], hashes["imagehash"])
    fast_vs_exact = hamming(hashes["fast"], hashes["exact"])
    result = {
        "corpus": str(args.corpus) if args.corpus else f"built: LLaVA-Pretrain JPEGs + derived crops of real photos ({CACHE})",
        "images": len(paths), "repeat_best_of": args.repeat or (1 if args.quick else 2),
        "load_average_at_end": os.getloadavg()[0], "mean_megapixels": round(float(np.mean(megapixels)), 3), "cores": cores,
        "images_per_second": {m: {str(w): round(r, 1) for w, r in v.items()} for m, v in rates.items()},
        "per_core_speedup_vs_imagehash": {m: round(rates[m][1] / rates["imagehash"][1], 2) for m in ("exact", "fast")},
        "scaling_all_cores": {m: round(v[cores] / v[1], 2) for m, v in rates.items() if cores in v and cores > 1},
        "exact_equals_imagehash": float(np.mean(exact_vs_ref == 0)),
        "fast_vs_exact": {"identical": round(float(np.mean(fast_vs_exact == 0)), 4),
                          "within_2": round(float(np.mean(fast_vs_exact <= 2)), 4),
                          "mean_hamming": round(float(fast_vs_exact.mean()), 3), "max_hamming": int(fast_vs_exact.max())},
        "targets": {"exact_per_core": ">= 1.5x imagehash", "fast_per_core": ">= 4x imagehash",
                    "fast_within_2": ">= 0.95", "scaling": "near-linear"},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "phash_quick" if args.quick else "phash"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    lines = [f"# phash throughput ({len(paths)} JPEGs, mean {result['mean_megapixels']} MP, {cores} cores)", "",
             "| method | " + " | ".join(f"img/s, {w} worker(s)" for w in worker_counts) + " | per core vs imagehash |",
             "|---|" + "---:|" * (len(worker_counts) + 1)]
    for m in METHODS:
        speed = "1.00x" if m == "imagehash" else f"{result['per_core_speedup_vs_imagehash'][m]:.2f}x"
        lines.append(f"| {m} | " + " | ".join(f"{rates[m][w]:.1f}" for w in worker_counts) + f" | {speed} |")
    fv = result["fast_vs_exact"]
    lines += ["", f"exact == imagehash on {result['exact_equals_imagehash']:.1%} of the images.",
              f"fast vs exact: {fv['identical']:.1%} identical, {fv['within_2']:.1%} within 2 bits, "
              f"mean {fv['mean_hamming']} bits, max {fv['max_hamming']}."]
    if result["scaling_all_cores"]:
        lines.append("scaling to all cores: " + ", ".join(f"{m} {s}x" for m, s in result["scaling_all_cores"].items()))
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
