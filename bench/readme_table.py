"""Regenerate the README's whole-command benchmark table from bench/results/commands_<job>.json.

The table goes between the markers `<!-- commands-table:start -->` and `<!-- commands-table:end -->`
in README.md (inserted right under the `## Benchmarks` heading the first time); nothing else in the
README changes. Each row names the data, mmlake's whole command, the seed script users run today, the
fastest peer, the ratios with their targets, and the commit and machine load the figures came from.

    .venv/bin/python bench/readme_table.py            # full-mode results (bench_commands.py JOB)
    .venv/bin/python bench/readme_table.py --quick    # the --quick results (smoke: not for publishing)
    .venv/bin/python bench/readme_table.py --print    # print the table, leave README.md alone
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
START, END = "<!-- commands-table:start -->", "<!-- commands-table:end -->"
HEADING = "## Benchmarks"
JOBS = ("parquet", "llava", "phash", "export", "help")


def seconds(r: dict, case: str) -> str:
    v = r["results"][case]
    return f"{v['seconds']:.2f} s ({v['peak_rss_mb']:,.0f} MB)"


def target(r: dict, key: str, label: str) -> str:
    value, goal = r["ratios"][key], r["targets"].get(key)
    if goal is None:
        return f"{label} **{value}×**"
    lower = key in r.get("lower_is_better", [])
    unit = {"help_seconds": " s", "default_peak_rss_mb": " MB"}.get(key, "×")
    mark = "met" if r["met"][key] else "missed"
    return f"{label} **{value}{unit}** (target {'≤' if lower else '≥'} {goal}{unit}: {mark})"


def data_text(r: dict) -> str:
    d = r["data"]
    if "images" in d and "mean_kb" in d:
        return f"{d['images']:,} distinct JPEGs, {d['mean_kb']:.0f} KB mean ({d['kb_range'][0]}–{d['kb_range'][1]} KB)"
    return ", ".join(f"{v:,} {k}" for k, v in d.items() if isinstance(v, int))


def row_parquet(r: dict) -> list[str]:
    res = r["results"]
    return [f"HF parquet ingest, {r['data']['parquet_mb']:.0f} MB parquet, cold cache",
            f"default {seconds(r, 'mmlake_default')}; `--workers 1` {res['mmlake_workers1']['seconds']:.2f} s, "
            f"`--workers 2` {res['mmlake_workers2']['seconds']:.2f} s",
            f"seed converter {seconds(r, 'seed_converter')}",
            f"Polars → Lance pass-through {seconds(r, 'polars_to_lance')}"
            + (f"; HF `datasets` load + `save_to_disk` {seconds(r, 'hf_datasets_save_to_disk')}"
               if "hf_datasets_save_to_disk" in res else ""),
            target(r, "default_vs_seed_converter", "vs seed") + "; " + target(r, "default_vs_polars_to_lance", "vs Polars")
            + (f"; vs `datasets` **{r['ratios']['default_vs_hf_datasets']}×**" if "default_vs_hf_datasets" in r["ratios"] else "")
            + ("; " + target(r, "default_peak_rss_mb", "peak RSS") if "default_peak_rss_mb" in r["targets"] else "")]


def row_llava(r: dict) -> list[str]:
    res = r["results"]
    return [f"LLaVA JSON + folder ingest, {r['data']['records']:,} records, cold cache",
            f"default {seconds(r, 'mmlake_default')}; `--workers 1` {res['mmlake_workers1']['seconds']:.2f} s, "
            f"`--workers 2` {res['mmlake_workers2']['seconds']:.2f} s",
            f"`json.load` + PIL open/save per record {seconds(r, 'seed_loop')}", "(the seed loop is the only peer)",
            target(r, "default_vs_seed_loop", "vs seed")]


def row_phash(r: dict) -> list[str]:
    return ["`enrich phash`, 1 worker, start-up included",
            f"exact {seconds(r, 'mmlake_exact')}; fast {seconds(r, 'mmlake_fast')}",
            f"`imagehash.phash` loop {seconds(r, 'imagehash_loop')}", "(same: imagehash is the peer)",
            target(r, "exact_vs_imagehash_loop", "exact") + "; " + target(r, "fast_vs_imagehash_loop", "fast")]


def row_export(r: dict) -> list[str]:
    return [f"export {r['data']['samples']:,} samples to LLaVA JSON",
            f"checks off {seconds(r, 'mmlake_checks_off')}; checks pass {seconds(r, 'mmlake_checks_pass')}",
            f"rows → list of dicts → `json.dump` {seconds(r, 'seed_json_dump')}", "(same: `json.dump` is the peer)",
            target(r, "checks_off_vs_seed", "off") + "; " + target(r, "checks_pass_vs_seed", "pass")]


def row_help(r: dict) -> list[str]:
    res = r["results"]
    return ["`python -m etl --help`", f"{seconds(r, 'mmlake_help')}",
            f"`python -c pass` {res['python_start']['seconds']:.2f} s", f"`python -c 'import lance'` "
            f"{res['python_import_lance']['seconds']:.2f} s", target(r, "help_seconds", "wall")]


ROWS = {"parquet": row_parquet, "llava": row_llava, "phash": row_phash, "export": row_export, "help": row_help}


def table(quick: bool) -> str:
    reports = {}
    for job in JOBS:
        path = RESULTS / f"commands_{job}{'_quick' if quick else ''}.json"
        if path.exists():
            reports[job] = json.loads(path.read_text())
    if not reports:
        raise SystemExit(f"no results in {RESULTS}: run bench/bench_commands.py JOB{' --quick' if quick else ''} first")
    lines = ["Whole commands as users run them (a fresh process each, start-up included) on distinct images, "
             "each against the seed script users run today and the fastest peer; interleaved rounds, "
             "medians; seconds with the peak RSS of the whole process tree. "
             "Full tables: `bench/results/commands_<job>.md`." + (" **Smoke-run (--quick) figures.**" if quick else ""), "",
             "| job | data | mmlake | seed script | fastest peer | ratio (their time / ours) | commit, load | produced by |",
             "|---|---|---|---|---|---|---|---|"]
    for job, r in reports.items():
        what, ours, seed, peer, ratios = ROWS[job](r)
        load = "→".join(str(x) for x in r["load_average_before_after"])
        lines.append(f"| {what} | {data_text(r) or '—'} | {ours} | {seed} | {peer} | {ratios} | "
                     f"{r['commit']}, {r['cpus']} CPUs, load {load} | `{r['command']}` |")
    return "\n".join(lines)


def replace_block(readme: str, block: str) -> str:
    wrapped = f"{START}\n{block}\n{END}"
    if START in readme and END in readme:
        head, rest = readme.split(START, 1)
        return head + wrapped + rest.split(END, 1)[1]
    if HEADING not in readme:
        raise SystemExit(f"README.md has no '{HEADING}' heading to put the table under")
    head, rest = readme.split(HEADING, 1)
    return f"{head}{HEADING}\n{wrapped}\n{rest}"  # rest starts with the heading's own newline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="use the --quick results")
    ap.add_argument("--print", action="store_true", dest="only_print", help="print the table only")
    args = ap.parse_args()
    block = table(args.quick)
    if args.only_print:
        print(block)
        return
    README.write_text(replace_block(README.read_text(), block))
    print(f"README.md: benchmark table replaced ({len(block.splitlines()) - 4} rows)")


if __name__ == "__main__":
    main()
