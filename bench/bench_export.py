"""Export: lake → LLaVA JSON (+ images) vs the seed-style exporter users run today.

Data: a lake with `--samples` samples (default 1M; LLaVA-style two-turn conversations, 10% text-only)
whose image samples point into `--images` distinct JPEGs (default 50k; the real 336-px LCS-558K photos
of ../shared/realdata cycled with a unique trailer after the end marker, pillow-made when absent), and
the same JPEGs as plain files in a source folder (where the seed scripts copy from).

Compared, each in its own process (peak RSS is that process's own):
- JSON, every sample, no images:
  baseline = read the samples (pyarrow → Python rows), a Python loop building a list of dicts
  (id, image, stripped conversations), `json.dump` of the list;
  mmlake   = `etl.export.export(..., images="none")` with `checks: off` (same work) and `checks: pass`;
  `json_mmlake_random` (checks pass, `sampling: random:50%`, half the records) is measured beside
  them, with no target.
- Images, one sample per distinct image:
  baseline = `shutil.copy` per image from the source folder (what the seed export does);
  mmlake   = `--images copy` (blob bytes → files, 8 threads), `--images hardlink` with a cold cache
             (fills the content-addressed cache, then links) and a warm one (links only);
  disk     = one `dd`-style sequential write of the same number of bytes, fsync'ed (the disk's speed).

    .venv/bin/python bench/bench_export.py [--quick] [--samples N] [--images N] [--workdir DIR] [--keep]
                                           [--cases json_baseline,json_mmlake_checks_pass,...] [--repeat N]

Writes bench/results/export.json and .md (export_quick.* with --quick).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REALDATA = ROOT.parent / "shared" / "realdata"
RESULTS = ROOT / "bench" / "results"
PHOTOS = "llava_pretrain_pr1902/playground/data/LLaVA-Pretrain/images"
QUESTIONS = ["Describe the image briefly.", "What is shown in this picture?", "Give a short caption."]


# -- data ----------------------------------------------------------------------------------------------
def photo_pool() -> list[bytes]:
    files = sorted((REALDATA / PHOTOS).rglob("*.jpg"))
    if files:
        return [p.read_bytes() for p in files]
    from PIL import Image

    pool = []
    for i in range(64):
        buf = io.BytesIO()
        Image.effect_mandelbrot((336, 336), (-2 + i / 40, -1.2, 1, 1.2), 60).convert("RGB").save(buf, "JPEG", quality=90)
        pool.append(buf.getvalue())
    return pool


def unique_jpeg(pool: list[bytes], i: int) -> bytes:
    """A distinct file per i: a pool photo + 8 bytes after its end marker (decoders ignore them)."""
    return pool[i % len(pool)] + i.to_bytes(8, "big")


def build(workdir: Path, n_samples: int, n_images: int) -> dict:
    """The source folder and the lake (reused when already built with the same sizes)."""
    from etl.lakeformat import FORMAT

    marker = workdir / "data.json"
    # a lake built by an older mmlake (another lake format) is rebuilt, not handed to commands that refuse it
    wanted = {"samples": n_samples, "images": n_images, "data_version": 2, "lake_format": FORMAT}
    if marker.exists() and json.loads(marker.read_text()).get("sizes") == wanted:
        return json.loads(marker.read_text())
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    import lance
    import pyarrow as pa

    from etl import schema as S
    from etl.images import content_id
    from etl.lake import Lake

    lake = Lake.open(str(workdir / "lake"))
    pool, ids, total_bytes = photo_pool(), [], 0
    for start in range(0, n_images, 5000):
        blobs = [unique_jpeg(pool, i) for i in range(start, min(start + 5000, n_images))]
        for k, data in enumerate(blobs):
            path = workdir / "src" / f"{(start + k) // 1000:05d}" / f"{start + k:09d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        batch_ids = [content_id(b) for b in blobs]
        ids.extend(batch_ids)
        total_bytes += sum(map(len, blobs))
        lake.append(S.IMAGES, pa.table({"image_id": batch_ids, S.BLOB_COLUMN: lance.blob_array(blobs),
                                        "format": ["JPEG"] * len(blobs), "width": pa.array([336] * len(blobs), pa.int32()),
                                        "height": pa.array([336] * len(blobs), pa.int32()),
                                        "nbytes": pa.array([len(b) for b in blobs], pa.int64())}))
    lake.ensure_key_index(S.IMAGES)
    for start in range(0, n_samples, 100_000):
        lake.append(S.SAMPLES, samples_table(start, min(start + 100_000, n_samples), ids, n_images))
    info = {"sizes": wanted, "image_bytes": total_bytes, "lake": str(workdir / "lake"), "src": str(workdir / "src")}
    marker.write_text(json.dumps(info))
    return info


def samples_table(start: int, stop: int, ids: list[str], n_images: int):
    """Rows [start, stop): source `img` = the first n_images rows (one distinct image each), source
    `mix` the rest (every 10th text-only, the others reuse the images); every 16th answer ends with
    whitespace (mix665k: 40,688 of 665k values), which export strips."""
    import pyarrow as pa

    from etl import schema as S

    rows = []
    for i in range(start, stop):
        source = "img" if i < n_images else "mix"
        text_only = source == "mix" and i % 10 == 0
        q = QUESTIONS[i % 3]
        rows.append({
            "sample_id": f"{source}/bench.json#{i}", "source": source, "source_file": "bench.json", "source_row": i,
            "orig_id": f"{i:09d}", "image_ids": [] if text_only else [ids[i % n_images]],
            "conversations": [{"from": "human", "value": q if text_only else f"<image>\n{q}"},
                              {"from": "gpt", "value": f"A photo number {i}, with a caption of a realistic length "
                                                       "that describes the scene in a sentence or two."
                                                       + (" \n" if i % 16 == 0 else "")}],  # ~6% like mix665k
            "meta": "{}"})
    return pa.Table.from_pylist(rows, schema=S.SAMPLES_SCHEMA)


# -- the measured runs (each in its own process) ---------------------------------------------------------
def run_baseline_json(info: dict, out: Path) -> dict:
    """Seed style: rows → list of dicts → json.dump."""
    import lance

    ds = lance.dataset(info["lake"] + "/samples.lance")
    records = []
    for row in ds.to_table(columns=["sample_id", "orig_id", "image_ids", "conversations"]).to_pylist():
        record = {"id": row["orig_id"] or row["sample_id"]}
        if row["image_ids"]:
            record["image"] = row["image_ids"][0] + ".jpg"
        record["conversations"] = [{"from": t["from"], "value": t["value"].strip()} for t in row["conversations"]]
        records.append(record)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.json", "w") as f:
        json.dump(records, f, ensure_ascii=False)
    return {"records": len(records), "bytes": (out / "train.json").stat().st_size}


def run_mmlake(info: dict, out: Path, recipe: str, images: str, cache: str | None) -> dict:
    from etl.export import ExportOptions, export
    from etl.lake import Lake

    result = export(Lake.open(info["lake"], create=False), recipe,
                    ExportOptions(out=str(out), images=images, image_cache=cache))
    files = result.manifest["files"]
    return {"records": result.manifest["counts"]["samples"], "images": result.manifest["counts"]["images"].get("written", 0),
            "bytes": sum(f["bytes"] for n, f in files.items() if n.endswith(".json")),
            "image_bytes": result.manifest["counts"]["images"].get("bytes", 0)}


def run_baseline_images(info: dict, out: Path, n_images: int) -> dict:
    """Seed style: shutil.copy per image, from the source folder."""
    total = 0
    for i in range(n_images):
        rel = f"{i // 1000:05d}/{i:09d}.jpg"
        dest = out / "images" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(info["src"], rel), dest)
        total += dest.stat().st_size
    return {"images": n_images, "image_bytes": total}


def run_disk(out: Path, nbytes: int) -> dict:
    """Sequential write of the same bytes to one file, fsync'ed: how fast this disk takes data."""
    out.mkdir(parents=True, exist_ok=True)
    block = os.urandom(8 << 20)
    with open(out / "blob", "wb") as f:
        written = 0
        while written < nbytes:
            f.write(block[: min(len(block), nbytes - written)])
            written += min(len(block), nbytes - written)
        f.flush()
        os.fsync(f.fileno())
    return {"image_bytes": nbytes}


def measure(name: str, args: list[str]) -> dict:
    """Run one case in a fresh interpreter; its wall time and its own peak RSS."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--one", name, *args], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(seconds=round(seconds, 2))
    nbytes = result.get("image_bytes") or result.get("bytes") or 0
    result["MB_per_s"] = round(nbytes / 1e6 / seconds, 1)
    print(f"  {name:<28} {seconds:8.2f} s  {result['MB_per_s']:8.1f} MB/s  peak RSS {result['peak_rss_mb']:7.0f} MB", flush=True)
    return result


def one(name: str, info: dict, out: Path, workdir: Path) -> dict:
    recipes = workdir / "recipes"
    import lance  # noqa: F401  (imports happen before the clock starts, for both sides)

    import etl.export  # noqa: F401

    start = time.perf_counter()
    if name == "json_baseline":
        result = run_baseline_json(info, out)
    elif name == "json_mmlake_checks_off":
        result = run_mmlake(info, out, str(recipes / "all_off.yaml"), "none", None)
    elif name == "json_mmlake_checks_pass":
        result = run_mmlake(info, out, str(recipes / "all_pass.yaml"), "none", None)
    elif name == "json_mmlake_random":
        result = run_mmlake(info, out, str(recipes / "all_random.yaml"), "none", None)
    elif name == "images_baseline_copy":
        result = run_baseline_images(info, out, info["sizes"]["images"])
    elif name == "images_mmlake_copy":
        result = run_mmlake(info, out, str(recipes / "img.yaml"), "copy", None)
    elif name in ("images_mmlake_hardlink_cold", "images_mmlake_hardlink_warm"):
        result = run_mmlake(info, out, str(recipes / "img.yaml"), "hardlink", str(workdir / "out" / "cache"))
    elif name == "disk_sequential_write":
        result = run_disk(out, info["image_bytes"])
    else:
        raise SystemExit(f"unknown case {name}")
    result["work_seconds"] = round(time.perf_counter() - start, 2)  # without interpreter start-up and imports
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM; ru_maxrss would carry the parent's across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- main -----------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="50k samples, 2k images (CI smoke, < 1 min)")
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--workdir", default="/tmp/mmlake-bench-export")
    p.add_argument("--keep", action="store_true", help="keep the generated lake for the next run")
    p.add_argument("--cases", help=f"comma-separated subset of {','.join(CASES)} (default: all); a subset "
                                   "writes export_partial.* instead of the full results")
    p.add_argument("--repeat", type=int, default=1, help="run the cases N times in turn and report medians")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.samples, args.images, args.workdir = 50_000, 2_000, args.workdir + "-quick"
    workdir = Path(args.workdir)
    if args.one:
        info = json.loads((workdir / "data.json").read_text())
        out = workdir / "out" / args.one
        print(json.dumps(one(args.one, info, out, workdir)))
        return
    t = time.perf_counter()
    info = build(workdir, args.samples, args.images)
    print(f"data: {args.samples:,} samples, {args.images:,} images ({info['image_bytes'] / 1e9:.2f} GB) "
          f"ready in {time.perf_counter() - t:.0f} s", flush=True)
    write_recipes(workdir / "recipes")
    cases = args.cases.split(",") if args.cases else list(CASES)
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    if "images_mmlake_hardlink_warm" in cases and "images_mmlake_hardlink_cold" not in cases:
        cases.insert(cases.index("images_mmlake_hardlink_warm"), "images_mmlake_hardlink_cold")
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeat):  # rounds of every case in turn: a neighbour's load hits all cases alike
        shutil.rmtree(workdir / "out", ignore_errors=True)
        for name in cases:
            runs.setdefault(name, []).append(measure(name, ["--workdir", str(workdir)]))
            if name != "images_mmlake_hardlink_cold":  # the warm run reuses the cache the cold one filled
                shutil.rmtree(workdir / "out" / name, ignore_errors=True)
    shutil.rmtree(workdir / "out", ignore_errors=True)
    results = {name: median_run(r) for name, r in runs.items()}
    report(args, info, results, partial=bool(args.cases))
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


CASES = ("json_baseline", "json_mmlake_checks_off", "json_mmlake_checks_pass", "json_mmlake_random",
         "images_baseline_copy", "images_mmlake_copy", "images_mmlake_hardlink_cold", "images_mmlake_hardlink_warm",
         "disk_sequential_write")


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (its own RSS and counts), plus every wall time measured."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    result = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        result["all_seconds"] = [r["seconds"] for r in runs]
    return result


def write_recipes(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "all_off.yaml").write_text("name: all\ndefaults: {checks: off}\nsources: [img, mix]\n")
    (folder / "all_pass.yaml").write_text("name: all\ndefaults: {checks: pass}\nsources: [img, mix]\n")
    (folder / "all_random.yaml").write_text("name: all\nseed: 7\ndefaults: {checks: pass}\n"
                                            "sources: [{source: img, sampling: 'random:50%'}, "
                                            "{source: mix, sampling: 'random:50%'}]\n")
    (folder / "img.yaml").write_text("name: img\ndefaults: {checks: off}\nsources: [img]\n")


RATIOS = {  # name: (numerator case, denominator case, measure); the baseline's time over mmlake's
    "json_speedup_checks_off": ("json_baseline", "json_mmlake_checks_off", "seconds"),
    "json_speedup_checks_pass": ("json_baseline", "json_mmlake_checks_pass", "seconds"),
    "images_copy_speedup": ("images_baseline_copy", "images_mmlake_copy", "seconds"),
    "images_hardlink_warm_speedup": ("images_baseline_copy", "images_mmlake_hardlink_warm", "seconds"),
    "images_copy_vs_disk": ("images_mmlake_copy", "disk_sequential_write", "MB_per_s"),  # throughput / disk's
}


def report(args, info: dict, results: dict, partial: bool = False) -> None:
    r = results
    ratios = {k: round(r[a][m] / r[b][m], 2) for k, (a, b, m) in RATIOS.items() if a in r and b in r}
    doc = {"samples": args.samples, "images": args.images, "image_bytes": info["image_bytes"], "cores": os.cpu_count(),
           "repeat": args.repeat, "results": results, "ratios": ratios,
           "targets": {"json_speedup": 5.0, "images_copy_vs_disk": 1.0}}
    name = "export_quick" if args.quick else "export"
    if partial or (not args.quick and (args.samples, args.images) != (1_000_000, 50_000)):
        name += "_partial"  # a subset or custom sizes never overwrites the reference figures
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# Export benchmark ({args.samples:,} samples, {args.images:,} images, "
             f"{info['image_bytes'] / 1e9:.2f} GB, {os.cpu_count()} cores)", "",
             "Each case runs in its own process: `seconds` is its wall time (interpreter start and imports",
             "included), `work s` the time inside the process after imports."
             + (f" Median of {args.repeat} rounds (cases run in turn each round)." if args.repeat > 1 else ""),
             "`json_mmlake_random` exports half the samples (`sampling: random:50%`, checks pass): no target.", "",
             "| case | seconds | work s | MB/s | peak RSS MB |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['seconds']} | {v.get('work_seconds', '')} | {v['MB_per_s']} | {v['peak_rss_mb']:.0f} |"
              for k, v in results.items()]
    lines += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in ratios.items()]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(ratios) - 2:]))


if __name__ == "__main__":
    main()
