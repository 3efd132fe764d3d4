"""A lake after many small ingests, before and after `compact`: fragments, `stats` time, export time,
and whether a scalar index on the join keys speeds up the joins our SQL runs.

Data: `--ingests` small ingests (default 200), each a LLaVA JSON file of `--records` records (default
50; the first `--images-per-ingest` (40) with one image, every image a distinct 64-px PNG made with
Pillow, the rest text-only), each ingest its own command run — what a lake fed by a daily job looks
like after months. `--records 5000 --name upkeep_1m` gives the 1M-sample lake of the README.

Measured (median of `--repeat` runs each, in this process):
- fragments per table;
- `stats`: DuckDB over the views running sql/stats.sql plus the lake totals (what `python -m etl stats` does);
- export: `etl.export.export` of every sample to LLaVA JSON (`images: none`, `checks: pass`);
- join: samples ⋈ images on image_id (the shape of checks.sql and the export's image join) with and
  without a BTREE index on images.image_id and samples.sample_id (`--index`).
Then `compact` runs and everything is measured again.

    .venv/bin/python bench/bench_upkeep.py [--quick] [--ingests N] [--records N] [--images-per-ingest N]
                                           [--repeat N] [--name NAME] [--workdir DIR]

Writes bench/results/upkeep.json and .md (upkeep_quick.* with --quick).
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from etl import schema as S  # noqa: E402
from etl.commands.stats import lake_totals  # noqa: E402
from etl.export import ExportOptions, export  # noqa: E402
from etl.ingest import IngestOptions, ingest  # noqa: E402
from etl.lake import Lake  # noqa: E402
from etl.sqlrun import connect, run_file  # noqa: E402
from etl.upkeep import compact_lake, fragment_counts  # noqa: E402

RECIPE = "name: all\ndefaults:\n  checks: pass\nsources:\n  - source: daily\n    sampling: all\n"
JOIN = ("select count(*), sum(i.nbytes) from (select unnest(image_ids) as image_id from samples) s "
        "join images i using (image_id)")


def make_file(folder: Path, n: int, records: int, with_images: int) -> Path:
    """One day's file: `records` records, the first `with_images` of them with a distinct small PNG."""
    day = folder / f"day{n:04d}"
    (day / "img").mkdir(parents=True)
    rows = []
    for r in range(records):
        row = {"id": f"{n}-{r}", "conversations": [{"from": "human", "value": f"Question {n}.{r}?"},
                                                    {"from": "gpt", "value": f"Answer {n}.{r}."}]}
        if r < with_images:
            buf = io.BytesIO()
            Image.new("RGB", (64, 64), ((n * 7) % 256, r % 256, (n * r) % 256)).save(buf, "PNG")
            (day / "img" / f"{r}.png").write_bytes(buf.getvalue())
            row["image"] = f"img/{r}.png"
            row["conversations"][0]["value"] = "<image>\n" + row["conversations"][0]["value"]
        rows.append(row)
    path = day / "data.json"
    path.write_text(json.dumps(rows))
    return path


def timed(fn, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def stats_once(lake: Lake) -> None:
    con = connect(lake)
    run_file(con, "stats").fetchall()
    lake_totals(con)


def export_once(lake: Lake, work: Path) -> None:
    out = work / "export"
    shutil.rmtree(out, ignore_errors=True)
    export(lake, str(work / "all.yaml"), ExportOptions(out=str(out), images="none", force=True))


def measure(lake: Lake, work: Path, repeat: int) -> dict:
    return {"fragments": fragment_counts(lake),
            "stats_s": timed(lambda: stats_once(lake), repeat),
            "export_s": timed(lambda: export_once(lake, work), repeat),
            "join_s": timed(lambda: connect(lake).sql(JOIN).fetchall(), repeat)}


def index_effect(lake: Lake, repeat: int) -> dict:
    """The join with BTREE indexes on the keys (DuckDB scans Lance through a pyarrow dataset: an index
    can only help a pushed-down filter, never a join — measured, not assumed)."""
    for table in (S.IMAGES, S.SAMPLES):  # ingest keeps one on images.image_id for its key checks
        with lake.committing():
            for index in lake.dataset(table).describe_indices():
                lake.dataset(table).drop_index(index.name)
    probe = lake.dataset(S.IMAGES).to_table(columns=["image_id"], limit=1)["image_id"][0].as_py()
    point = f"select count(*) from images where image_id = '{probe}'"
    without = timed(lambda: connect(lake).sql(JOIN).fetchall(), repeat)
    point_without = timed(lambda: connect(lake).sql(point).fetchall(), repeat)
    lake.ensure_key_index(S.IMAGES)
    lake.ensure_key_index(S.SAMPLES)
    with_index = timed(lambda: connect(lake).sql(JOIN).fetchall(), repeat)
    return {"join_without_index_s": without, "join_with_index_s": with_index, "point_lookup_without_index_s": point_without,
            "point_lookup_with_index_s": timed(lambda: connect(lake).sql(point).fetchall(), repeat)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="40 ingests of 25 records")
    ap.add_argument("--ingests", type=int, default=200)
    ap.add_argument("--records", type=int, default=50)
    ap.add_argument("--images-per-ingest", type=int, default=40, help="records with an image per ingest (default: 40)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--name", help="results file name (default: upkeep, upkeep_quick with --quick)")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    if args.quick:
        args.ingests, args.records, args.images_per_ingest = 40, 25, 20
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mmlake-upkeep-"))
    (work / "all.yaml").write_text(RECIPE)
    lake = Lake.open(str(work / "lake"))
    t = time.perf_counter()
    for n in range(args.ingests):
        ingest(lake, [str(make_file(work / "src", n, args.records, args.images_per_ingest))],
               IngestOptions(source="daily", progress=False, batch_records=args.records))
    ingest_s = time.perf_counter() - t
    before = measure(lake, work, args.repeat)
    t = time.perf_counter()
    compact_lake(lake)
    compact_s = time.perf_counter() - t
    after = measure(lake, work, args.repeat)
    result = {"ingests": args.ingests, "records_per_ingest": args.records, "samples": lake.count(S.SAMPLES),
              "images": lake.count(S.IMAGES), "ingest_all_s": ingest_s, "compact_s": compact_s,
              "before": before, "after": after, "index": index_effect(lake, args.repeat)}
    name = args.name or ("upkeep_quick" if args.quick else "upkeep")
    out = ROOT / "bench" / "results"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    if not args.workdir:
        shutil.rmtree(work)


def markdown(r: dict) -> str:
    b, a, ix = r["before"], r["after"], r["index"]
    lines = [f"# A lake after {r['ingests']} small ingests ({r['samples']:,} samples, {r['images']:,} images), "
             f"before and after `compact`",
             "", f"Ingests took {r['ingest_all_s']:.1f} s in all; `compact` took {r['compact_s']:.1f} s. "
             "Times are medians; the machine (2 cores) was shared with other jobs.", "",
             "| | before compact | after compact |", "|---|---|---|"]
    for table in b["fragments"]:
        lines.append(f"| fragments: {table} | {b['fragments'][table]} | {a['fragments'].get(table, '')} |")
    lines += [f"| `stats` (stats.sql + totals) | {b['stats_s']:.3f} s | {a['stats_s']:.3f} s |",
              f"| export, every sample, JSON only | {b['export_s']:.3f} s | {a['export_s']:.3f} s |",
              f"| samples ⋈ images on image_id | {b['join_s']:.3f} s | {a['join_s']:.3f} s |", "",
              "Scalar (BTREE) indexes on images.image_id and samples.sample_id, after compact:", "",
              f"- the join: {ix['join_without_index_s']:.3f} s without, {ix['join_with_index_s']:.3f} s with "
              "(DuckDB joins scan the tables; an index can only serve a pushed-down filter)",
              f"- a point lookup `where image_id = ...`: {ix['point_lookup_without_index_s']:.3f} s without, "
              f"{ix['point_lookup_with_index_s']:.3f} s with", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
