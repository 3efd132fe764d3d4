"""Whole commands as users run them, on distinct images: mmlake against the seed-style script users run
today and the fastest peer a user could pick.

Every case is one fresh process (interpreter start and imports included), timed from outside; cases run
in interleaved rounds (round 1: every case, round 2: every case, ...) so a neighbour's load hits them
alike, and the median round is kept. Reported per case: wall seconds (median, and every round), CPU
seconds of the whole process tree (user + sys; barely changed by other load on the machine), peak RSS
summed over the process tree (sampled every 0.1 s). The machine's load average is noted before and
after. Inputs are evicted from the page cache before every run (`sync` + POSIX_FADV_DONTNEED), as a
source bigger than memory always is.

Data: distinct JPEGs of 40-120 KB (crops, scales and JPEG qualities of the real photos in
../shared/realdata: LLaVA-Pretrain, data-juicer, Pillow's hopper), generated once into the work
folder (never into the repo) and reused by the next run; no image is a byte- or pixel-copy of another.

Jobs (`JOB` is one of them, or `all`):
- parquet: HF parquet (OneVision schema, row groups of 100) of N distinct JPEGs → `python -m etl ingest`
  (`--workers 1`, `--workers 2`, and the default) vs the seed converter (whole table, PIL decode + save
  per image, one JSON), a Polars → Lance pass-through (`polars.read_parquet` → `lance.write_dataset`,
  hashing and validating nothing) and HF `datasets` (`load_dataset("parquet")` + `save_to_disk`, offline);
- llava: a LLaVA JSON of N records (2% text-only, 1% missing images, the rest each its own image) and
  its image folder → `python -m etl ingest` serial, `--workers 2`, default, vs the seed loop (`json.load`,
  PIL open + save per record, `json.dump`);
- phash: a lake of N distinct images → `python -m etl enrich phash --mode exact` and `--mode fast`
  (the default: one worker, a decoding thread per CPU; and `--threads 1`, fully serial) vs a plain
  `imagehash.phash(Image.open(f))` loop over the same images as files (one process);
- export: `python -m etl export` (LLaVA JSON, no images) of a lake of N samples vs the seed-style
  exporter of bench_export.py (rows → list of dicts → `json.dump`), each a whole process;
- help: `python -m etl --help` against `python -c pass` (the interpreter's own start);
- crossover: `ingest --workers 1` vs `--workers 2` on parquet of 2k, 8k, 16k, 32k distinct images
  (0.16-2.6 GB) and a 20k-record LLaVA JSON: where parallel starts to win, and whether
  `--workers auto` picked the faster side at each size.

    .venv/bin/python bench/bench_commands.py JOB [--quick] [--rounds N] [--workdir DIR] [--sizes N ...]

Full sizes: parquet 8,000 images, llava 20,000 records, phash 4,000 images, export 1,000,000 samples;
--quick: a tenth (or less), two rounds, for a smoke run of about a minute on a quiet machine.
Writes bench/results/commands_<job>[_quick].json and .md, with the commit they measured;
bench/readme_table.py turns them into the README's table.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path[:0] = [str(ROOT), str(BENCH)]  # this checkout's etl, and the sibling bench scripts
REALDATA = ROOT.parent / "shared" / "realdata"
RESULTS = BENCH / "results"
PY = sys.executable
# PYTHONDONTWRITEBYTECODE (set on some machines) is dropped: an installed mmlake runs from bytecode
# compiled at install, as the baselines' libraries do; with it, every run recompiles etl (0.1-0.2 s)
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, "PYTHONPATH": str(ROOT),
       "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
PHOTO_GLOBS = ("llava_pretrain_pr1902/**/*.jpg", "data_juicer/tests/ops/data/*.jpg",
               "pillow_test_images/Tests/images/hopper.jpg")
MIN_KB, MAX_KB = 40, 120


# -- distinct images -----------------------------------------------------------------------------------
def source_photos() -> list[Path]:
    photos = sorted(p for g in PHOTO_GLOBS for p in REALDATA.glob(g))
    if not photos:
        raise SystemExit(f"no source photos under {REALDATA} ({', '.join(PHOTO_GLOBS)})")
    return photos


def variant(args: tuple[int, str, str]) -> int:
    """Write variant i of a photo: a random crop, scaled to a web size, at a random JPEG quality, adjusted
    until the file is 40-120 KB. Returns its size."""
    from PIL import Image

    i, photo, out = args
    rng = random.Random(i)
    with Image.open(photo) as im:
        im = im.convert("RGB")
    w, h = im.size
    cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
    x, y = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
    crop = im.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    long_side, quality = rng.uniform(560, 900), rng.randrange(75, 93)
    for _ in range(8):
        scale = long_side / max(cw, ch)
        buf = io.BytesIO()
        crop.resize((max(16, round(cw * scale)), max(16, round(ch * scale))), Image.Resampling.BICUBIC).save(
            buf, "JPEG", quality=quality)
        kb = buf.tell() / 1024
        if kb < MIN_KB:
            long_side, quality = long_side * 1.2, min(95, quality + 3)
        elif kb > MAX_KB:
            long_side, quality = long_side * 0.85, max(60, quality - 5)
        else:
            break
    Path(out).write_bytes(buf.getvalue())
    return buf.tell()


def image_pool(work: Path, n: int) -> list[Path]:
    """n distinct JPEGs under work/pool (made once; a later run reuses and extends them)."""
    folder = work / "pool"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i // 1000:03d}" / f"{i:06d}.jpg" for i in range(n)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if missing:
        photos = source_photos()
        for p in {paths[i].parent for i in missing}:
            p.mkdir(exist_ok=True)
        t = time.perf_counter()
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(variant, [(i, str(photos[i % len(photos)]), str(paths[i])) for i in missing], chunksize=64))
        print(f"made {len(missing)} distinct JPEGs in {time.perf_counter() - t:.0f} s", flush=True)
    return paths


def pool_summary(paths: list[Path]) -> dict:
    sizes = [p.stat().st_size for p in paths]
    return {"images": len(paths), "image_mb": round(sum(sizes) / 1e6, 1),
            "mean_kb": round(statistics.mean(sizes) / 1024, 1),
            "kb_range": [round(min(sizes) / 1024), round(max(sizes) / 1024)]}


# -- running and measuring -----------------------------------------------------------------------------
def evict(paths: list[Path]) -> None:
    """Write back dirty pages (the previous run's output), then drop `paths` (files or trees) from the
    page cache."""
    os.sync()
    for top in paths:
        for path in (top.rglob("*") if top.is_dir() else [top]):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return 0


def run_once(cmd: list[str], log: Path) -> dict:
    """One whole command: wall seconds, CPU seconds of its process tree, peak tree RSS (MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.1)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 2), "peak_rss_mb": round(peak / 2**20, 1)}


def interleaved(cases: dict[str, list[str]], rounds: int, work: Path, before_each) -> dict:
    """Run every case once per round, in turn; keep each case's median round (and all rounds)."""
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    for r in range(rounds):
        for name, cmd in cases.items():
            before_each(name)
            result = run_once(cmd, work / f"{name}.log")
            runs[name].append(result)
            print(f"  round {r + 1} {name:<24} {result}", flush=True)
    summary = {}
    for name, rs in runs.items():
        median = sorted(rs, key=lambda x: x["seconds"])[(len(rs) - 1) // 2]
        summary[name] = {**median, "rounds_seconds": [x["seconds"] for x in rs],
                         "peak_rss_mb": max(x["peak_rss_mb"] for x in rs)}
    return summary


def cli(lake: Path, *args: str) -> list[str]:
    return [PY, "-m", "etl", "--lake", str(lake), *args]


def remove(*paths: Path) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("nan")


# -- jobs ----------------------------------------------------------------------------------------------
POLARS_TO_LANCE = textwrap.dedent("""
    import glob, sys
    import lance, polars as pl
    for i, f in enumerate(sorted(glob.glob(sys.argv[1] + "/*.parquet"))):
        lance.write_dataset(pl.read_parquet(f).to_arrow(), sys.argv[2], mode="append" if i else "create")
""")


# HF `datasets`, as its docs show: load the parquet files (Arrow cache files), save_to_disk
HF_DATASETS = textwrap.dedent("""
    import glob, sys
    from datasets import load_dataset
    ds = load_dataset("parquet", data_files=sorted(glob.glob(sys.argv[1] + "/*.parquet")), split="train",
                      cache_dir=sys.argv[2] + "/cache")
    ds.save_to_disk(sys.argv[2] + "/saved")
""")


def write_parquet(folder: Path, images: list[Path], shard_rows: int) -> None:
    """OneVision-schema shards (`datasets` metadata, row groups of 100), one distinct image per row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench_ingest_parquet import ROW_GROUP, onevision_schema

    schema = onevision_schema()
    folder.mkdir(parents=True)
    for shard, first in enumerate(range(0, len(images), shard_rows)):
        with pq.ParquetWriter(folder / f"train-{shard:05d}.parquet", schema) as writer:
            for start in range(first, min(first + shard_rows, len(images)), ROW_GROUP):
                rows = [{"id": f"{i:09d}", "image": {"bytes": images[i].read_bytes(), "path": None}, "data_source": "bench",
                         "conversations": [{"from": "human", "value": "<image>\nDescribe the image in detail."},
                                           {"from": "gpt", "value": f"A photograph, number {i}. " * 8}]}
                        for i in range(start, min(start + ROW_GROUP, first + shard_rows, len(images)))]
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))


def job_parquet(args, work: Path) -> dict:
    from bench_ingest_parquet import CONVERTER

    n = 800 if args.quick else 8000
    images = image_pool(args.pool, n)
    data = work / f"parquet_{n}"
    if not data.exists():
        write_parquet(data, images, shard_rows=max(n // 4, 100))
    rows_mb = sum(p.stat().st_size for p in data.glob("*.parquet")) / 1e6
    lake, out = work / "lake", work / "out"
    ingest = ["ingest", str(data), "--source", "bench", "--no-progress"]
    cases = {"mmlake_workers1": cli(lake, *ingest, "--workers", "1"),
             "mmlake_workers2": cli(lake, *ingest, "--workers", "2"),
             "mmlake_default": cli(lake, *ingest),
             "seed_converter": [PY, "-c", CONVERTER, str(data), str(out), str(n)],
             "polars_to_lance": [PY, "-c", POLARS_TO_LANCE, str(data), str(out / "pass.lance")],
             "hf_datasets_save_to_disk": [PY, "-c", HF_DATASETS, str(data), str(out / "hf")]}
    results = interleaved(cases, args.rounds, work, lambda _: (remove(lake, out), evict([data])))
    best = min(("mmlake_workers1", "mmlake_workers2", "mmlake_default"), key=lambda k: results[k]["seconds"])
    default = results["mmlake_default"]
    return {
        "job": "HF parquet ingest", "data": {**pool_summary(images), "parquet_mb": round(rows_mb, 1),
                                            "shards": len(list(data.glob("*.parquet")))},
        "results": results,
        "ratios": {"default_vs_seed_converter": ratio(results["seed_converter"]["seconds"], default["seconds"]),
                   "default_vs_polars_to_lance": ratio(results["polars_to_lance"]["seconds"], default["seconds"]),
                   "default_vs_hf_datasets": ratio(results["hf_datasets_save_to_disk"]["seconds"], default["seconds"]),
                   "workers2_vs_workers1": ratio(results["mmlake_workers1"]["seconds"], results["mmlake_workers2"]["seconds"]),
                   "default_peak_rss_mb": default["peak_rss_mb"]},
        "best_mmlake": best,
        "targets": {"default_vs_polars_to_lance": 1.2, "default_vs_seed_converter": 15.0, "default_peak_rss_mb": 1024},
        "lower_is_better": ["default_peak_rss_mb"],
    }


def write_llava_json(path: Path, images: list[Path], root: Path, n_records: int) -> dict:
    """bench_ingest_llava's records (2% text-only, 1% missing images), each other record naming its own image."""
    from bench_ingest_llava import write_records

    return dict(write_records(path, n_records, lambda r, rng: str(images[r].relative_to(root))))


def job_llava(args, work: Path) -> dict:
    from bench_ingest_llava import BASELINE as seed_loop  # json.load, PIL open + save per record, json.dump

    n = 2000 if args.quick else 20000
    images = image_pool(args.pool, n)
    root = args.pool / "pool"
    data = work / f"llava_{n}.json"
    counts = write_llava_json(data, images, root, n)
    lake, out = work / "lake", work / "out"
    ingest = ["ingest", str(data), "--image-root", str(root), "--source", "bench", "--no-progress"]
    cases = {"mmlake_workers1": cli(lake, *ingest, "--workers", "1"),
             "mmlake_workers2": cli(lake, *ingest, "--workers", "2"),
             "mmlake_default": cli(lake, *ingest),
             "seed_loop": [PY, "-c", seed_loop, str(data), str(root), str(out), str(n)]}
    referenced = images[:n]
    results = interleaved(cases, args.rounds, work, lambda _: (remove(lake, out), evict([data, *referenced])))
    default = results["mmlake_default"]
    return {
        "job": "LLaVA JSON + image folder ingest",
        "data": {**pool_summary(referenced), "records": n, **counts, "json_mb": round(data.stat().st_size / 1e6, 1)},
        "results": results,
        "ratios": {"default_vs_seed_loop": ratio(results["seed_loop"]["seconds"], default["seconds"]),
                   "workers1_vs_seed_loop": ratio(results["seed_loop"]["seconds"], results["mmlake_workers1"]["seconds"]),
                   "workers2_vs_workers1": ratio(results["mmlake_workers1"]["seconds"], results["mmlake_workers2"]["seconds"])},
        "targets": {"default_vs_seed_loop": 20.0},
    }


IMAGEHASH_LOOP = textwrap.dedent("""
    import json, sys
    import imagehash
    from PIL import Image
    paths = open(sys.argv[1]).read().split()
    json.dump({p: str(imagehash.phash(Image.open(p))) for p in paths}, open(sys.argv[2], "w"))
""")


def job_phash(args, work: Path) -> dict:
    n = 400 if args.quick else 4000
    images = image_pool(args.pool, n)
    root = args.pool / "pool"
    base = work / f"phash_lake_{n}"
    if not base.exists():  # one sample per image, ingested once (untimed)
        data = work / "phash.json"
        data.write_text(json.dumps([{"id": str(i), "image": str(p.relative_to(root)),
                                     "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                       {"from": "gpt", "value": "A photo."}]}
                                    for i, p in enumerate(images)]))
        run_once(cli(base, "ingest", str(data), "--image-root", str(root), "--source", "bench", "--no-progress"),
                 work / "setup.log")
    run_once(cli(base, "migrate"), work / "setup.log")  # a lake cached by an older mmlake: as a user would
    listing = work / "phash_files.txt"
    listing.write_text("\n".join(map(str, images)))
    lake, out = work / "lake", work / "hashes.json"
    # the compiled resampler is cached on disk by numba (cache=True): one untimed run fills the cache, as
    # a user's first command on a machine does; every timed run then pays only the cache load
    remove(lake, out)
    shutil.copytree(base, lake)
    run_once(cli(lake, "enrich", "phash", "--mode", "fast", "--no-progress", "--limit", "8"), work / "warm.log")
    # mmlake as users run it (default: one worker process decoding with a thread per CPU), and with
    # --threads 1 (fully serial): the default must never be the slower of the two
    cases = {"mmlake_exact": cli(lake, "enrich", "phash", "--mode", "exact", "--no-progress"),
             "mmlake_fast": cli(lake, "enrich", "phash", "--mode", "fast", "--no-progress"),
             "imagehash_loop": [PY, "-c", IMAGEHASH_LOOP, str(listing), str(out)],
             "mmlake_exact_threads1": cli(lake, "enrich", "phash", "--mode", "exact", "--threads", "1", "--no-progress"),
             "mmlake_fast_threads1": cli(lake, "enrich", "phash", "--mode", "fast", "--threads", "1", "--no-progress")}

    def fresh(_):
        remove(lake, out)
        shutil.copytree(base, lake)
        evict([lake, *images])

    results = interleaved(cases, args.rounds, work, fresh)
    loop = results["imagehash_loop"]
    return {
        "job": "enrich phash", "data": pool_summary(images), "results": results,
        "ratios": {"exact_vs_imagehash_loop": ratio(loop["seconds"], results["mmlake_exact"]["seconds"]),
                   "fast_vs_imagehash_loop": ratio(loop["seconds"], results["mmlake_fast"]["seconds"]),
                   "exact_vs_imagehash_loop_cpu": ratio(loop["cpu_seconds"], results["mmlake_exact"]["cpu_seconds"]),
                   "fast_vs_imagehash_loop_cpu": ratio(loop["cpu_seconds"], results["mmlake_fast"]["cpu_seconds"]),
                   "exact_default_vs_threads1": ratio(results["mmlake_exact_threads1"]["seconds"],
                                                      results["mmlake_exact"]["seconds"]),
                   "fast_default_vs_threads1": ratio(results["mmlake_fast_threads1"]["seconds"],
                                                     results["mmlake_fast"]["seconds"])},
        "targets": {"exact_vs_imagehash_loop": 1.4, "fast_vs_imagehash_loop": 3.5,
                    "exact_default_vs_threads1": 1.0, "fast_default_vs_threads1": 1.0},
    }


# bench_export.run_baseline_json (lance rows → list of dicts → json.dump) as its own script: it imports
# only what a seed exporter does (lance), not mmlake
EXPORT_SEED = textwrap.dedent(f"""
    import sys
    from pathlib import Path
    sys.path.insert(0, {str(BENCH)!r})
    from bench_export import run_baseline_json
    run_baseline_json({{"lake": sys.argv[1]}}, Path(sys.argv[2]))
""")


def job_export(args, work: Path) -> dict:
    import bench_export

    n_samples, n_images = (50_000, 2_000) if args.quick else (1_000_000, 50_000)
    data = work / f"export_{n_samples}"
    info = bench_export.build(data, n_samples, n_images)
    bench_export.write_recipes(data / "recipes")
    out = work / "out"
    cases = {"mmlake_checks_off": cli(Path(info["lake"]), "export", str(data / "recipes" / "all_off.yaml"),
                                      "--out", str(out), "--images", "none"),
             "mmlake_checks_pass": cli(Path(info["lake"]), "export", str(data / "recipes" / "all_pass.yaml"),
                                       "--out", str(out), "--images", "none"),
             "seed_json_dump": [PY, "-c", EXPORT_SEED, info["lake"], str(work / "seed_out")]}
    seed_out = work / "seed_out"
    results = interleaved(cases, args.rounds, work, lambda _: (remove(out, seed_out), evict([Path(info["lake"])])))
    seed = results["seed_json_dump"]
    return {
        "job": "export to LLaVA JSON", "data": {"samples": n_samples, "images": n_images}, "results": results,
        "ratios": {"checks_off_vs_seed": ratio(seed["seconds"], results["mmlake_checks_off"]["seconds"]),
                   "checks_pass_vs_seed": ratio(seed["seconds"], results["mmlake_checks_pass"]["seconds"])},
        "targets": {},
    }


def job_help(args, work: Path) -> dict:
    rounds = max(args.rounds, 5 if args.quick else 10)
    cases = {"mmlake_help": [PY, "-m", "etl", "--help"], "python_start": [PY, "-c", "pass"],
             "python_import_lance": [PY, "-c", "import lance"]}
    results = interleaved(cases, rounds, work, lambda _: None)
    return {"job": "python -m etl --help", "data": {}, "results": results,
            "ratios": {"help_seconds": results["mmlake_help"]["seconds"],
                       "help_over_python_start": round(results["mmlake_help"]["seconds"]
                                                       - results["python_start"]["seconds"], 3)},
            "targets": {"help_seconds": 0.3}, "lower_is_better": ["help_seconds"], "rounds": rounds}


def job_crossover(args, work: Path) -> dict:
    """Serial vs `--workers 2` ingest at growing sizes (HF parquet; LLaVA JSON at the largest): where
    parallel starts to win, and what `--workers auto` picks at each size."""
    from etl.commands.ingest import auto_workers
    from etl.ingest import IngestOptions

    sizes = args.sizes or ([200, 800] if args.quick else [2000, 8000, 16000, 32000])
    n_json = sizes[-1] if args.quick else 20000
    images = image_pool(args.pool, max(sizes[-1], n_json))
    lake = work / "lake"
    cases, inputs, picked = {}, {}, {}
    for n in sizes:
        data = work / f"parquet_{n}"
        if not data.exists():
            write_parquet(data, images[:n], shard_rows=max(n // 4, 100))
        inputs[f"parquet_{n}"] = data
        picked[f"parquet_{n}"] = auto_workers([str(data)], IngestOptions(source="bench"))
        for w in (1, 2):
            cases[f"parquet_{n}_workers{w}"] = cli(lake, "ingest", str(data), "--source", "bench", "--no-progress",
                                                   "--workers", str(w))
    n = n_json
    data = work / f"llava_{n}.json"
    write_llava_json(data, images, args.pool / "pool", n)
    inputs[f"llava_{n}"] = data
    picked[f"llava_{n}"] = auto_workers([str(data)], IngestOptions(source="bench"))
    for w in (1, 2):
        cases[f"llava_{n}_workers{w}"] = cli(lake, "ingest", str(data), "--image-root", str(args.pool / "pool"),
                                             "--source", "bench", "--no-progress", "--workers", str(w))

    def cold(name):
        remove(lake)
        data = inputs[name.rsplit("_", 1)[0]]
        evict([data, *(images if data.suffix == ".json" else [])])

    results = interleaved(cases, args.rounds, work, cold)
    speedups = {k: ratio(results[f"{k}_workers1"]["seconds"], results[f"{k}_workers2"]["seconds"]) for k in inputs}
    sizes_mb = {k: round(sum(p.stat().st_size for p in (v.glob("*.parquet") if v.is_dir() else [v])) / 1e6, 1)
                for k, v in inputs.items()}
    wins = [k for k in inputs if k.startswith("parquet") and speedups[k] > 1.0]
    return {"job": "ingest --workers crossover", "data": {"input_mb": sizes_mb}, "results": results,
            "ratios": {**{f"workers2_vs_workers1_{k}": v for k, v in speedups.items()},
                       "parquet_parallel_wins_from_mb": sizes_mb[wins[0]] if wins else None},
            "auto_picks": picked,
            "auto_never_slower": all((picked[k] > 1) == (speedups[k] > 1.0) for k in inputs),
            "targets": {}}


JOBS = {"parquet": job_parquet, "llava": job_llava, "phash": job_phash, "export": job_export, "help": job_help,
        "crossover": job_crossover}


# -- results -------------------------------------------------------------------------------------------
def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "etl", "sql", "bench/bench_commands.py"],
                           capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return head + ("+uncommitted" if dirty else "")


def met(report: dict) -> dict:
    lower = set(report.get("lower_is_better", []))
    return {k: (report["ratios"][k] <= t if k in lower else report["ratios"][k] >= t) for k, t in report["targets"].items()}


def write(name: str, report: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# {report['job']}: whole commands ({'--quick' if report['quick'] else 'full'})", "",
             f"Commit {report['commit']}, {report['cpus']} CPUs, load average before/after "
             f"{report['load_average_before_after']}, {report['rounds']} interleaved rounds (median kept), "
             f"{report['date']}. Data: {json.dumps(report['data'])}.", "",
             "| case | seconds (median) | rounds | CPU s (tree) | peak RSS MB (tree) |", "|---|---:|---|---:|---:|"]
    lines += [f"| {k} | {v['seconds']} | {' / '.join(map(str, v['rounds_seconds']))} | {v['cpu_seconds']} | {v['peak_rss_mb']} |"
              for k, v in report["results"].items()]
    lines += ["", "| ratio (the other's time / mmlake's) | value | target | met |", "|---|---:|---:|---|"]
    lines += [f"| {k} | {v} | {report['targets'].get(k, '')} | {report['met'].get(k, '')} |" for k, v in report["ratios"].items()]
    lines += [""] + [f"- {key}: {json.dumps(report[key])}" for key in ("best_mmlake", "auto_picks", "auto_never_slower")
                     if key in report]
    lines += ["", f"Command: `{report['command']}`"]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", choices=[*JOBS, "all"], help="all: every job but crossover")
    ap.add_argument("--quick", action="store_true", help="smaller data, 2 rounds (smoke run)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds, the median is kept (default 3, --quick 2)")
    ap.add_argument("--sizes", type=int, nargs="+", help="crossover: parquet sizes in images (default 2k 8k 16k 32k)")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "mmlake_bench_commands",
                    help="generated data (kept and reused: the distinct JPEGs take minutes to make)")
    args = ap.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.pool = args.workdir
    for job in ([j for j in JOBS if j != "crossover"] if args.job == "all" else [args.job]):
        work = args.workdir / job
        work.mkdir(parents=True, exist_ok=True)
        print(f"== {job}", flush=True)
        load_before = os.getloadavg()[0]
        report = JOBS[job](args, work)
        report.setdefault("rounds", args.rounds)
        report.update(quick=args.quick, cpus=os.cpu_count(), commit=commit(),
                      date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      load_average_before_after=[round(load_before, 2), round(os.getloadavg()[0], 2)],
                      command=f".venv/bin/python bench/bench_commands.py {job}" + (" --quick" if args.quick else "")
                      + (f" --sizes {' '.join(map(str, args.sizes))}" if args.sizes and job == "crossover" else ""))
        report["met"] = met(report)
        write(f"commands_{job}" + ("_quick" if args.quick else ""), report)
        for leftover in ("lake", "out"):
            remove(work / leftover)


if __name__ == "__main__":
    main()
