"""JSON record reader throughput: the record splitter against ijson (the reader it replaced).

Data: a generated LLaVA-1.5-style JSON array (default ~100 MB), written twice: minified on one line
(`json.dump(records, f)`, the shape of llava_v1_5_mix665k.json) and pretty-printed (`indent=2`).
Records have 2-10 turns, 2% of words non-ASCII (kept as `\\uXXXX` escapes as `json.dump` writes
them), 2% of records text-only. Each measurement runs in its own process (peak RSS from its own getrusage),
baseline and mmlake alternately (`--repeat` rounds; the best round counts, as the machine is shared):

- ijson: `ijson.items(f, "item", use_float=True)` (yajl2_c backend), the previous reader;
- mmlake: `iter_json_records` (records split and parsed by the stdlib json, checked per record);
- `/llava` rows: the same plus `LlavaReader.to_record` per record (what ingest reads).

CPU seconds (the child's user+system time) are reported beside wall seconds.

    .venv/bin/python bench/bench_json_reader.py [--mb 100] [--repeat 3] [--label NAME]

Writes bench/results/json_reader[_LABEL].json and .md.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import ijson
    from etl.sources.jsonfiles import iter_json_records
    from etl.sources.llava import LlavaReader
    path, reader, what = sys.argv[1], sys.argv[2], sys.argv[3]
    llava = LlavaReader()
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    with open(path, "rb") as f:
        if reader == "ijson":
            items = enumerate(ijson.items(f, "item", use_float=True))
        else:
            items = iter_json_records(path)
        for row, item in items:
            if what == "llava":
                llava.to_record(item, "bench.json", row, "/")
            n += 1
    s, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"records": n, "seconds": s, "cpu_seconds": cpu, "records_per_cpu_s": n / cpu,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")

WORDS = ("the a image shows person on of with dog street table two man woman red blue sitting next to "
         "in front picture background white black green large small people standing holding").split()
FOREIGN = "café naïve 東京 画像 Straße “quoted” it’s".split()  # 2% of words: escaped as \\uXXXX


def record(rng: random.Random, r: int) -> dict:
    turns = []
    for t in range(rng.choice((2, 2, 4, 6, 10))):
        text = " ".join(rng.choice(FOREIGN if rng.random() < 0.02 else WORDS) for _ in range(rng.randint(8, 120)))
        turns.append({"from": "human" if t % 2 == 0 else "gpt", "value": ("<image>\n" if t == 0 else "") + text})
    rec = {"id": f"{r:012d}", "image": f"coco/train2017/{rng.randrange(118000):012d}.jpg", "conversations": turns}
    if rng.random() < 0.02:
        del rec["image"]
    return rec


def write_files(folder: Path, mb: int) -> dict[str, Path]:
    rng = random.Random(0)
    records, size = [], 0
    while size < mb * 2**20:
        records.append(record(rng, len(records)))
        size += len(json.dumps(records[-1])) + 2
    paths = {"minified": folder / "minified.json", "indent2": folder / "indent2.json"}
    with open(paths["minified"], "w") as f:
        json.dump(records, f)
    with open(paths["indent2"], "w") as f:
        json.dump(records, f, indent=2)
    return paths


def run(path: Path, reader: str, what: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), reader, what], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for layout, path in write_files(Path(tmp), args.mb).items():
            for _ in range(args.repeat):
                for what in ("records", "llava"):
                    for reader in ("ijson", "mmlake"):
                        res = run(path, reader, what)
                        res["mb"] = round(path.stat().st_size / 2**20, 1)
                        key = f"{layout}/{reader}/{what}"
                        if key not in results or res["cpu_seconds"] < results[key]["cpu_seconds"]:
                            results[key] = res
                        print(key, res, flush=True)
    name = "json_reader" + (f"_{args.label}" if args.label else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# JSON reader throughput ({name}, best of {args.repeat})", "",
             "| file | reader | what | MB | records | CPU s | wall s | records/CPU s | MB/CPU s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in sorted(results.items()):
        layout, reader, what = key.split("/")
        lines.append(f"| {layout} | {reader} | {what} | {r['mb']} | {r['records']} | {r['cpu_seconds']:.2f} | "
                     f"{r['seconds']:.2f} | {r['records_per_cpu_s']:,.0f} | {r['mb'] / r['cpu_seconds']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
