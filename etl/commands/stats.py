"""`python -m etl stats`: per source — samples, images, bytes, text-only, multi-image, errors by kind."""
from __future__ import annotations

import argparse

from etl.lake import Lake
from etl.upkeep import add_version_argument, pinned
from etl.sqlrun import connect, run_file

HELP = "Show per-source counts: samples, images, bytes, text-only, multi-image, errors by kind."
EXAMPLES = """\
  python -m etl stats
  python -m etl --lake /data/lake stats --format csv > stats.csv
The numbers come from sql/stats.sql (open it in `python -m etl shell` to slice them further)."""


def configure(p: argparse.ArgumentParser) -> None:
    add_version_argument(p)
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")


def lake_totals(con) -> dict[str, int]:
    """Whole-lake totals (unique images count once even when several sources share them)."""
    row = con.execute(
        "select (select count(*) from samples), (select count(*) from images), "
        "(select coalesce(sum(nbytes), 0) from images), (select count(*) from errors)"
    ).fetchall()[0]
    return dict(zip(["samples", "images", "image_bytes", "errors"], row))


def run(args: argparse.Namespace) -> int:
    lake = Lake.open(args.lake, create=False)
    con = connect(lake, version=pinned(lake, args.version))
    rel = run_file(con, "stats")
    if args.format == "table":
        rel.show(max_rows=1000, max_width=250)
        totals = lake_totals(con)
        print("lake: " + ", ".join(f"{k} {v:,}" for k, v in totals.items()))
    else:
        fmt = "csv, header true" if args.format == "csv" else "json, array true"
        con.execute(f"copy ({rel.sql_query()}) to '/dev/stdout' (format {fmt})")
    return 0
