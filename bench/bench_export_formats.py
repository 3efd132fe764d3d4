"""Export as webdataset shards and as HF parquet: mmlake vs the scripts users write for them today.

Data: bench_export.py's lake (`--images` distinct real-size JPEGs, default 50k, one caption sample
each) and the same JPEGs as files in a source folder.

Compared, each in its own process (shards of 512 MB):
- webdataset: baseline = a loop over the samples (pyarrow → Python rows) reading each image file and
  adding `<key>.jpg` + `<key>.json` to `tarfile` shards (what `webdataset.ShardWriter` does);
  mmlake = `export --format webdataset` (blob bytes, reproducible headers, index, manifest).
- HF parquet: baseline = `datasets.Dataset.from_generator` over the same rows yielding each file's
  bytes for an `Image` feature (Arrow cache on disk), then `Dataset.to_parquet` per shard;
  mmlake = `export --format hf-parquet` (+ README card, manifest).

    .venv/bin/python bench/bench_export_formats.py [--quick] [--images N] [--workdir DIR]

Writes bench/results/export_formats.json and .md (export_formats_quick.* with --quick).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
SHARD = 512 << 20

from bench_export import build, peak_rss_mb, write_recipes  # noqa: E402  (same folder)

CASES = ("wds_baseline_tarfile", "wds_mmlake", "hf_baseline_datasets", "hf_mmlake")


def sample_rows(info: dict) -> list[dict]:
    import lance

    ds = lance.dataset(info["lake"] + "/samples.lance")
    return ds.to_table(columns=["source_row", "orig_id", "conversations"], filter="source = 'img'").to_pylist()


def image_file(info: dict, row: int) -> str:
    return os.path.join(info["src"], f"{row // 1000:05d}", f"{row:09d}.jpg")


def run_wds_baseline(info: dict, out: Path) -> dict:
    """Seed style: Python rows, one tar member pair per sample, a new shard every SHARD bytes."""
    out.mkdir(parents=True, exist_ok=True)
    tar, size, shard, total = None, 0, 0, 0
    for key, row in enumerate(sample_rows(info)):
        data = Path(image_file(info, row["source_row"])).read_bytes()
        meta = json.dumps({"id": row["orig_id"], "conversations": row["conversations"]}).encode()
        if tar is None or size > SHARD:
            if tar is not None:
                tar.close()
            tar, size, shard = tarfile.open(out / f"shard-{shard:06d}.tar", "w"), 0, shard + 1
        for name, payload in ((f"{key:09d}.jpg", data), (f"{key:09d}.json", meta)):
            info_ = tarfile.TarInfo(name)
            info_.size = len(payload)
            tar.addfile(info_, io.BytesIO(payload))
            size += len(payload) + 1024
        total += len(data)
    tar.close()
    return {"image_bytes": total}


def run_hf_baseline(info: dict, out: Path) -> dict:
    """Seed style: datasets.Dataset.from_generator with an Image feature, then to_parquet per shard."""
    import datasets

    rows = sample_rows(info)
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                  "conversations": datasets.List({"from": datasets.Value("string"),
                                                                  "value": datasets.Value("string")})})

    def generate():  # the bytes themselves: to_parquet of a path-only Image column writes no bytes
        for row in rows:
            path = image_file(info, row["source_row"])
            yield {"id": row["orig_id"], "image": {"bytes": Path(path).read_bytes(), "path": os.path.basename(path)},
                   "conversations": row["conversations"]}

    ds = datasets.Dataset.from_generator(generate, features=features, cache_dir=str(out / "cache"))
    shards = max(1, -(-info["image_bytes"] // SHARD))
    for i in range(shards):
        ds.shard(shards, i, contiguous=True).to_parquet(str(out / f"train-{i:05d}-of-{shards:05d}.parquet"))
    return {"image_bytes": info["image_bytes"]}


def run_mmlake(info: dict, out: Path, fmt: str, recipe: str) -> dict:
    from etl.export import ExportOptions, export
    from etl.lake import Lake

    result = export(Lake.open(info["lake"], create=False), recipe, ExportOptions(out=str(out), format=fmt, shard_size=SHARD))
    return {"image_bytes": result.manifest["counts"]["images"]["bytes"], "files": len(result.manifest["files"])}


def one(name: str, info: dict, out: Path, workdir: Path) -> None:
    import datasets  # noqa: F401  (imports before the clock, for every case)

    import etl.export  # noqa: F401

    start = time.perf_counter()
    recipe = str(workdir / "recipes" / "img.yaml")
    result = {"wds_baseline_tarfile": lambda: run_wds_baseline(info, out),
              "wds_mmlake": lambda: run_mmlake(info, out, "webdataset", recipe),
              "hf_baseline_datasets": lambda: run_hf_baseline(info, out),
              "hf_mmlake": lambda: run_mmlake(info, out, "hf-parquet", recipe)}[name]()
    result["work_seconds"] = round(time.perf_counter() - start, 2)
    result["peak_rss_mb"] = round(peak_rss_mb())
    print(json.dumps(result))


def measure(name: str, info: dict, workdir: Path) -> dict:
    out = workdir / "out" / name
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([sys.executable, __file__, "--one", name, "--workdir", str(workdir)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["MB_per_s"] = round(result["image_bytes"] / 1e6 / result["work_seconds"], 1)
    result["images_per_s"] = round(info["sizes"]["images"] / result["work_seconds"])
    result["output_bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and "cache" not in f.parts)
    shutil.rmtree(out, ignore_errors=True)
    print(f"  {name:<22} {result['work_seconds']:7.2f} s  {result['MB_per_s']:7.1f} MB/s  "
          f"{result['images_per_s']:7d} images/s  peak RSS {result['peak_rss_mb']:5d} MB  "
          f"output {result['output_bytes'] / 1e6:.0f} MB", flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 images (smoke run, < 1 min)")
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--workdir", default="/tmp/mmlake-bench-export-formats")
    p.add_argument("--one")
    args = p.parse_args()
    if args.quick:
        args.images, args.workdir = 2_000, args.workdir + "-quick"
    workdir = Path(args.workdir)
    if args.one:
        info = json.loads((workdir / "data.json").read_text())
        return one(args.one, info, workdir / "out" / args.one, workdir)
    info = build(workdir, args.images, args.images)  # one sample per image: source `img` only
    write_recipes(workdir / "recipes")
    results = {name: measure(name, info, workdir) for name in CASES}
    report(args, info, results)


def report(args, info: dict, results: dict) -> None:
    ratios = {"webdataset": round(results["wds_baseline_tarfile"]["work_seconds"] / results["wds_mmlake"]["work_seconds"], 2),
              "hf_parquet": round(results["hf_baseline_datasets"]["work_seconds"] / results["hf_mmlake"]["work_seconds"], 2)}
    name = "export_formats_quick" if args.quick else "export_formats"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"images": args.images, "image_bytes": info["image_bytes"],
                                                      "cores": os.cpu_count(), "results": results,
                                                      "speedup": ratios}, indent=2) + "\n")
    lines = [f"# Export formats benchmark ({args.images:,} images, {info['image_bytes'] / 1e9:.2f} GB, "
             f"{os.cpu_count()} cores, 512 MB shards)", "",
             "Each case in its own process; `work s` is the time after imports (MB/s, images/s over it).", "",
             "| case | work s | MB/s | images/s | peak RSS MB |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['work_seconds']} | {v['MB_per_s']} | {v['images_per_s']} | {v['peak_rss_mb']} |"
              for k, v in results.items()]
    lines += ["", "| baseline time / mmlake time | value |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in ratios.items()]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-4:]))


if __name__ == "__main__":
    main()
