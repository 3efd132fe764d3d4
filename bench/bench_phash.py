"""phash throughput: etl.enrich.phash (exact, fast) against imagehash.phash per file (the seed's phash.py).

Corpus: >= 2,000 real-size JPEGs. Without --corpus, it is built once under ~/.cache/mmlake (never in
the repo) from the real photos in ../shared/realdata and scikit-image's sample photos: the 200
LLaVA-Pretrain JPEGs as they are (LCS-558K size, 336 px short side) plus derived JPEGs — random
crops of the larger photos re-encoded at web sizes (long side 500-1280 px, quality 70-95). The
two kinds are timed and reported apart (the speed-up depends on the image size). --corpus DIR
uses your own JPEGs.

Fairness: every method runs over the same files, in chunks of 32 read from disk by the worker (as
a real job would), with the same worker counts (1 and all cores, process pool warmed up first so
start-up is not timed); each round runs every method once and the best of --repeat rounds is kept.
Per core is measured as images per CPU-second of the workers (CPU time of all their threads), which
a machine busy with other work barely changes; 1-worker wall-clock rates are reported too.
`decode_floor` times only the reduced luma JPEG decode fast mode starts with: no fast mode built
on Pillow's decoder can beat it. Also reported: exact == imagehash on every file (must be 100%),
and fast vs exact agreement.

    .venv/bin/python bench/bench_phash.py            # 2,000 images, 1 and all cores, best of 3
    .venv/bin/python bench/bench_phash.py --quick    # 300 images, 1 worker, best of 3 (CI smoke, < 1 min)

Writes bench/results/phash.json and .md (phash_quick.* with --quick).
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

    phash.PhashEnricher(mode="fast").setup()  # compiles (or loads) the numba resampler
    tiny = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (300, 200), "gray").save(tiny, "JPEG")
    phash.phash_batch([tiny.getvalue()], "exact")
    phash.phash_batch([tiny.getvalue()], "fast")
    return os.getpid()


def imagehash_chunk(paths: list[str]) -> list[int]:
    """The seed's phash.py: imagehash.phash(Image.open(f)) per file."""
    import imagehash
    from PIL import Image

    return [int(str(imagehash.phash(Image.open(p))), 16) for p in paths]


def exact_chunk(paths: list[str]) -> list[int | None]:
    from etl.enrich.phash import phash_batch

    return phash_batch([Path(p).read_bytes() for p in paths], "exact", threads=1)[0]  # one core per worker, as imagehash


def fast_chunk(paths: list[str]) -> list[int | None]:
    from etl.enrich.phash import phash_batch

    return phash_batch([Path(p).read_bytes() for p in paths], "fast", threads=1)[0]


def decode_floor_chunk(paths: list[str]) -> list[None]:
    """Only the reduced luma decode fast mode starts with: no Pillow-based fast mode can beat this."""
    from PIL import Image

    from etl.enrich.phash import FAST_MIN_SIDE

    for p in paths:
        with Image.open(io.BytesIO(Path(p).read_bytes())) as im:
            im.draft("L", (FAST_MIN_SIDE, FAST_MIN_SIDE))
            im.load()
    return [None] * len(paths)


METHODS = {"imagehash": imagehash_chunk, "exact": exact_chunk, "fast": fast_chunk, "decode_floor": decode_floor_chunk}


def run_chunk(method: str, paths: list[str]) -> tuple[list, float]:
    """Hash one chunk in a worker: (values, CPU seconds this process spent on it, all its threads)."""
    start = time.process_time()
    values = METHODS[method](paths)
    return values, time.process_time() - start


def timed(method: str, chunks: list[list[str]], workers: int) -> tuple[float, list, list[float]]:
    """(wall seconds, values in chunk order, CPU seconds per chunk) over a warmed-up process pool."""
    with ProcessPoolExecutor(workers, mp_context=__import__("multiprocessing").get_context("spawn")) as pool:
        list(pool.map(_warm, range(workers * 2)))
        start = time.perf_counter()
        results = list(pool.map(run_chunk, [method] * len(chunks), chunks))
        return time.perf_counter() - start, [v for values, _ in results for v in values], [c for _, c in results]


def hamming(a: list[int | None], b: list[int | None]) -> np.ndarray:
    return np.array([bin(x ^ y).count("1") for x, y in zip(a, b) if x is not None and y is not None])


def agreement(a: list[int | None], b: list[int | None]) -> dict:
    d = hamming(a, b)
    return {"identical": round(float(np.mean(d == 0)), 4), "within_2": round(float(np.mean(d <= 2)), 4),
            "mean_hamming": round(float(d.mean()), 3), "max_hamming": int(d.max())}


def groups_of(paths: list[str], built: bool) -> dict[str, list[str]]:
    """The built corpus in its two kinds (timed apart: the speed-up depends on the image size)."""
    if not built:
        return {"all": paths}
    groups = {"llava_pretrain_336px": [p for p in paths if Path(p).name.startswith("a")],
              "web_photos_500_1280px": [p for p in paths if Path(p).name.startswith("b")]}
    return {name: group for name, group in groups.items() if group}


def measure(groups: dict[str, list[str]], worker_counts: list[int], repeat: int) -> tuple[dict, dict, dict]:
    """Best-of-`repeat` wall rates, CPU seconds per group and the hashes of every method.

    Methods are interleaved inside each round, so a machine that gets busier or quieter during the
    run does not favour one of them; chunks never mix groups, so CPU time is known per group.
    """
    chunks, chunk_group = [], []
    for name, group in groups.items():
        for i in range(0, len(group), CHUNK):
            chunks.append(group[i : i + CHUNK])
            chunk_group.append(name)
    n = sum(len(c) for c in chunks)
    rates: dict[str, dict[int, float]] = {}
    cpu: dict[str, dict[str, float]] = {}
    hashes: dict[str, list] = {}
    for attempt in range(repeat):
        for workers in worker_counts:
            for method in METHODS:
                seconds, values, chunk_cpu = timed(method, chunks, workers)
                best = rates.setdefault(method, {})
                best[workers] = max(best.get(workers, 0.0), n / seconds)
                for name in groups:
                    spent = sum(c for c, g in zip(chunk_cpu, chunk_group) if g == name)
                    least = cpu.setdefault(method, {})
                    least[name] = min(least.get(name, np.inf), spent)
                hashes.setdefault(method, values)
                print(f"  run {attempt + 1}: {method:<12} workers={workers}: {n / seconds:8.1f} img/s, "
                      f"{n / sum(chunk_cpu):8.1f} img per CPU-second", flush=True)
    return rates, cpu, hashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--corpus", type=Path, help="a folder of real JPEGs to use instead of the built corpus")
    parser.add_argument("-n", type=int, help="number of images (default 2000, --quick 300)")
    parser.add_argument("--repeat", type=int, help="rounds, best kept (default 3): every round runs "
                        "every method, so a busy machine does not favour one of them")
    args = parser.parse_args()
    n = args.n or (300 if args.quick else 2000)
    repeat = args.repeat or 3
    paths = sorted(args.corpus.rglob("*.jp*g"))[:n] if args.corpus else build_corpus(n)
    groups = groups_of([str(p) for p in paths], built=args.corpus is None)
    cores = os.cpu_count() or 1
    worker_counts = [1] if args.quick else sorted({1, cores})
    load_at_start = os.getloadavg()[0]
    print(f"{len(paths)} JPEGs ({', '.join(f'{k}: {len(v)}' for k, v in groups.items())}); "
          f"workers {worker_counts}; load average {load_at_start:.2f}", flush=True)

    rates, cpu, hashes = measure(groups, worker_counts, repeat)
    corpus = str(args.corpus) if args.corpus else f"built: LLaVA-Pretrain JPEGs + derived crops of real photos ({CACHE})"
    result = {"corpus": corpus, "images": len(paths), "cores": cores, "repeat_best_of": repeat,
              **summarize(groups, rates, cpu, hashes, cores),
              "load_average": {"start": round(load_at_start, 2), "end": round(os.getloadavg()[0], 2)}}
    write_results(result, worker_counts, "phash_quick" if args.quick else "phash")


def summarize(groups: dict[str, list[str]], rates: dict, cpu: dict, hashes: dict, cores: int) -> dict:
    """Per-core rates from CPU time (the headline), 1-worker wall ratios, scaling and agreement."""
    from PIL import Image

    from etl.enrich.phash import FAST_MIN_SIDE

    sizes = {g: len(v) for g, v in groups.items()}
    per_cpu_second = {m: {g: sizes[g] / seconds[g] for g in groups} | {"all": sum(sizes.values()) / sum(seconds.values())}
                      for m, seconds in cpu.items()}
    compared = ("exact", "fast", "decode_floor")
    return {
        "groups": sizes,
        "mean_megapixels": {g: round(float(np.mean([np.prod(Image.open(p).size) / 1e6 for p in v])), 3)
                            for g, v in groups.items()},
        "fast_min_side": FAST_MIN_SIDE,
        "images_per_second": {m: {str(w): round(r, 1) for w, r in v.items()} for m, v in rates.items()},
        "images_per_cpu_second": {m: {g: round(r, 1) for g, r in v.items()} for m, v in per_cpu_second.items()},
        "per_core_speedup_vs_imagehash": {m: {g: round(r / per_cpu_second["imagehash"][g], 2) for g, r in
                                              per_cpu_second[m].items()} for m in compared},
        "per_core_speedup_vs_imagehash_wall_1_worker": {m: round(rates[m][1] / rates["imagehash"][1], 2) for m in compared},
        "scaling_all_cores": {m: round(v[cores] / v[1], 2) for m, v in rates.items() if cores in v and cores > 1},
        "exact_equals_imagehash": float(np.mean(hamming(hashes["exact"], hashes["imagehash"]) == 0)),
        "fast_vs_exact": {"all": agreement(hashes["fast"], hashes["exact"]),
                          **{g: agreement(*(by_group(hashes[m], groups)[g] for m in ("fast", "exact"))) for g in groups}},
        "targets": {"exact_per_core": ">= 1.5x imagehash", "fast_per_core": ">= 4x imagehash",
                    "fast_within_2": ">= 0.95", "scaling": "near-linear"},
    }


def by_group(values: list, groups: dict[str, list[str]]) -> dict[str, list]:
    """Split values measured over all groups (in `groups` order, as measure() runs them)."""
    out, start = {}, 0
    for name, members in groups.items():
        out[name], start = values[start : start + len(members)], start + len(members)
    return out


def write_results(result: dict, worker_counts: list[int], name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    columns = [*result["groups"], "all"]
    label = {g: f"{g} ({result['mean_megapixels'][g]} MP)" for g in result["groups"]} | {"all": "all"}
    ips, speedup = result["images_per_second"], result["per_core_speedup_vs_imagehash"]
    lines = [f"# phash throughput ({result['images']} JPEGs, {result['cores']} cores, best of {result['repeat_best_of']})",
             "", "Per core = images per CPU-second of the worker processes (other load on the machine barely "
             "changes it); decode_floor = the reduced luma JPEG decode alone, which fast mode cannot skip.", "",
             "| method | " + " | ".join(f"img/s, {w} worker(s)" for w in worker_counts) + " | img per CPU-s | "
             + " | ".join(f"per core vs imagehash, {label[g]}" for g in columns) + " |",
             "|---|" + "---:|" * (len(worker_counts) + len(columns) + 1)]
    for m in ips:
        ratios = [1.0] * len(columns) if m == "imagehash" else [speedup[m][g] for g in columns]
        lines.append(f"| {m} | " + " | ".join(f"{ips[m][str(w)]:.1f}" for w in worker_counts)
                     + f" | {result['images_per_cpu_second'][m]['all']:.1f} | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")
    lines += ["", f"exact == imagehash on {result['exact_equals_imagehash']:.1%} of the images.", "fast vs exact:"]
    for g, a in result["fast_vs_exact"].items():
        lines.append(f"- {g}: {a['identical']:.1%} identical, {a['within_2']:.1%} within 2 bits, "
                     f"mean {a['mean_hamming']} bits, max {a['max_hamming']}")
    wall = result["per_core_speedup_vs_imagehash_wall_1_worker"]
    lines += ["", "per core from 1-worker wall time: " + ", ".join(f"{m} {v:.2f}x" for m, v in wall.items())]
    if result["scaling_all_cores"]:
        lines.append("scaling to all cores: " + ", ".join(f"{m} {s}x" for m, s in result["scaling_all_cores"].items()))
    lines.append(f"load average at start / end: {result['load_average']['start']} / {result['load_average']['end']}")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
