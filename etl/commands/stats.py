"""`python -m etl stats`: per source — samples, images, bytes, text-only, multi-image, errors by kind."""
from __future__ import annotations

import argparse

from etl.commands.output import add_output_arguments, write_result
from etl.commands.versions import add_version_argument, pinned

HELP = "Show per-source counts: samples, images, bytes, text-only, multi-image, errors by kind."
EXAMPLES = """\
  python -m etl stats
  python -m etl --lake /data/lake stats --format csv > stats.csv
The numbers come from sql/stats.sql (open it in `python -m etl shell` to slice them further)."""


def configure(p: argparse.ArgumentParser) -> None:
    add_version_argument(p)
    add_output_arguments(p, max_rows=1000)


def lake_totals(con) -> dict[str, int]:
    """Whole-lake totals (unique images count once even when several sources share them)."""
    row = con.execute(
        "select (select count(*) from samples), (select count(*) from images), "
        "(select coalesce(sum(nbytes), 0) from images), (select count(*) from errors)"
    ).fetchall()[0]
    return dict(zip(["samples", "images", "image_bytes", "errors"], row))


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake
    from etl.sqlrun import connect, run_file

    lake = open_lake(args)
    con = connect(lake, version=pinned(lake, args.version))
    write_result(con, run_file(con, "stats"), args)
    if args.format == "table" and not args.output:
        print("lake: " + ", ".join(f"{k} {v:,}" for k, v in lake_totals(con).items()))
    return 0
