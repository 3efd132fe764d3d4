"""LLaVA JSON → lake ingest vs the converter users run today.

Data: a generated LLaVA-1.5-style JSON array (default 200,000 records) whose records reference a pool
of real-size JPEGs (default 4,000 distinct files, ~640 px, like COCO reused across 665k records),
with 2% text-only records and 1% missing images.

Compared, each in its own process (peak RSS from the child's own getrusage):
- baseline: `json.load` of the whole file, then per record open the image with PIL, save it into an
  output folder, append the record to a list, `json.dump` the list (the seed converters' shape);
  it runs on the first --baseline-records records (it is too slow for all of them; its throughput is
  per record, and its json.load RSS is measured on the whole file);
- mmlake: `python -m etl ingest` into a fresh lake (streamed JSON, sha256 + header sniff, Lance blobs).

    .venv/bin/python bench/bench_ingest_llava.py [--quick] [--records N] [--images N]

Writes bench/results/ingest_llava[_quick].json and .md.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

BASELINE = textwrap.dedent("""
    import json, os, resource, sys, time
    from PIL import Image
    src, image_root, out, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    t0 = time.perf_counter()
    records = json.load(open(src))            # the whole file in memory
    load_s = time.perf_counter() - t0
    kept, n_bytes = [], 0
    os.makedirs(out, exist_ok=True)
    t1 = time.perf_counter()
    for rec in records[:limit]:
        if "image" in rec:
            path = os.path.join(image_root, rec["image"])
            try:
                im = Image.open(path); im.load()
            except OSError:
                continue
            n_bytes += os.path.getsize(path)
            im.convert("RGB").save(os.path.join(out, os.path.basename(path)), "JPEG")
        kept.append(rec)
    json.dump(kept, open(os.path.join(out, "out.json"), "w"))
    per_record_s = time.perf_counter() - t1
    print(json.dumps({"load_s": load_s, "records": len(records[:limit]), "per_record_s": per_record_s,
                      "image_bytes": n_bytes,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")

MMLAKE = textwrap.dedent("""
    import json, resource, sys, time
    from etl.lake import Lake
    from etl.ingest import IngestOptions, ingest
    src, image_root, lake_root = sys.argv[1:4]
    t0 = time.perf_counter()
    counts = ingest(Lake.open(lake_root), [src], IngestOptions(source="bench", image_roots=[image_root], progress=False))
    print(json.dumps({"seconds": time.perf_counter() - t0, "counts": dict(counts),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def make_images(folder: Path, n: int) -> None:
    """n distinct ~640x480 JPEGs cut from scikit-image's bundled photos (real photographic content)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")
              for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")]
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = photos[i % len(photos)]
        scale = rng.uniform(1.0, 1.6)
        big = im.resize((int(im.width * scale) + 2, int(im.height * scale) + 2))
        x, y = rng.randrange(0, big.width - im.width // 2), rng.randrange(0, big.height - im.height // 2)
        crop = big.crop((x, y, x + im.width // 2 + 1, y + im.height // 2 + 1)).resize((640, 480))
        crop.save(folder / f"{i:06d}.jpg", quality=90)


def llava_record(r: int, rng: random.Random) -> dict:
    """Record r of a LLaVA-1.5-style JSON, without its image: an id and a two-turn conversation."""
    return {"id": f"{r:09d}", "conversations": [
        {"from": "human", "value": "<image>\nWhat is happening in this picture? Describe it in detail."},
        {"from": "gpt", "value": "The picture shows " + " ".join(rng.choice(WORDS) for _ in range(40)) + "."}]}


def write_records(path: Path, n_records: int, image_of: Callable[[int, random.Random], str]) -> Counter:
    """Write a LLaVA-1.5-style JSON array: 2% text-only records (like mix665k), 1% naming a missing
    image, the others naming `image_of(r, rng)`; returns how many of each kind."""
    rng, counts = random.Random(1), Counter()
    with open(path, "w") as f:
        f.write("[")
        for r in range(n_records):
            rec = llava_record(r, rng)
            u = rng.random()
            if u < 0.02:
                rec["model"] = ""  # text-only, like mix665k
                counts["text_only"] += 1
            elif u < 0.03:
                rec["image"] = f"missing/{r}.jpg"
                counts["missing"] += 1
            else:
                rec["image"] = image_of(r, rng)
                counts["with_image"] += 1
            f.write(("," if r else "") + json.dumps(rec))
        f.write("]")
    return counts


def make_json(path: Path, n_records: int, n_images: int, image_sizes: list[int]) -> int:
    """Write the JSON over a pool of n_images; return the bytes of image files its records reference
    (with repeats)."""
    referenced = 0

    def pick(r: int, rng: random.Random) -> str:
        nonlocal referenced
        k = rng.randrange(n_images)
        referenced += image_sizes[k]
        return f"{k:06d}.jpg"

    write_records(path, n_records, pick)
    return referenced


WORDS = "a man woman dog cat street car tree building sky water table food plate people red blue green large small".split()


def run_child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k records over 400 images (CI smoke)")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--images", type=int, default=4_000)
    ap.add_argument("--baseline-records", type=int, default=3_000)
    args = ap.parse_args()
    if args.quick:
        args.records, args.images, args.baseline_records = 20_000, 400, 500
    work = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    try:
        make_images(work / "images", args.images)
        sizes = [(work / "images" / f"{i:06d}.jpg").stat().st_size for i in range(args.images)]
        referenced = make_json(work / "data.json", args.records, args.images, sizes)
        json_mb = (work / "data.json").stat().st_size / 2**20
        base = run_child(BASELINE, str(work / "data.json"), str(work / "images"), str(work / "out"), str(args.baseline_records))
        ours = run_child(MMLAKE, str(work / "data.json"), str(work / "images"), str(work / "lake"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base_rps = base["records"] / (base["per_record_s"] + base["load_s"] * base["records"] / args.records)
    ours_rps = args.records / ours["seconds"]
    c = ours["counts"]
    result = {
        "records": args.records, "distinct_images": args.images, "json_mb": round(json_mb, 1),
        "mmlake": {"seconds": round(ours["seconds"], 2), "samples_per_s": round(ours_rps),
                   "input_mb_per_s": round((referenced / 2**20 + json_mb) / ours["seconds"], 1),
                   "samples": c.get("samples_added"), "images_added": c.get("images_added"),
                   "errors": {k: v for k, v in c.items() if k.startswith("errors.")},
                   "peak_rss_mb": round(ours["peak_rss_mb"])},
        "referenced_image_mb": round(referenced / 2**20),
        "baseline": {"records_timed": base["records"], "samples_per_s": round(base_rps),
                     "input_mb_per_s": round(base_rps * (referenced / 2**20 + json_mb) / args.records, 1),
                     "json_load_s": round(base["load_s"], 2), "peak_rss_mb": round(base["peak_rss_mb"])},
        "speedup": round(ours_rps / base_rps, 1),
        "command": "python bench/bench_ingest_llava.py" + (" --quick" if args.quick else ""),
    }
    name = "ingest_llava_quick" if args.quick else "ingest_llava"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (f"| | samples/s | peak RSS (MB) |\n|---|---|---|\n"
          f"| baseline (json.load + PIL save per record) | {result['baseline']['samples_per_s']:,} | {result['baseline']['peak_rss_mb']:,} |\n"
          f"| mmlake ingest | {result['mmlake']['samples_per_s']:,} | {result['mmlake']['peak_rss_mb']:,} |\n\n"
          f"{args.records:,} records ({json_mb:.0f} MB JSON) over {args.images:,} JPEGs: mmlake {result['speedup']}x the baseline, "
          f"{result['mmlake']['input_mb_per_s']} MB/s of input (JSON + referenced image bytes) vs "
          f"{result['baseline']['input_mb_per_s']} MB/s.\n")
    (RESULTS / f"{name}.md").write_text(md)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
