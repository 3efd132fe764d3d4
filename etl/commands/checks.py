"""`python -m etl checks`: what is wrong with each sample (sql/checks.sql), summarised or listed."""
from __future__ import annotations

import argparse

from etl.commands.sql import WRITERS
from etl.lake import Lake
from etl.upkeep import add_version_argument, pinned
from etl.sqlrun import connect
from etl.checks import checks_relation, problem_summary

HELP = "Check samples (image tags vs images, roles, turns, empty text, missing/undecodable images, length)."
EXAMPLES = """\
  python -m etl checks                          # problems per source and reason
  python -m etl checks --source llava_665k --list --max-rows 20
  python -m etl checks --list --format csv --output problems.csv
  python -m etl checks --max-text-chars 20000
Reasons are defined in sql/checked_samples.sql; `fixes` are repaired by export (sql/fixes.sql), never dropped."""


def configure(p: argparse.ArgumentParser) -> None:
    add_version_argument(p)
    p.add_argument("--source", help="only this source")
    p.add_argument("--list", action="store_true", help="list the samples with problems instead of the summary")
    p.add_argument("--summary", action="store_true", help="problems per source and reason (the default)")
    p.add_argument("--max-text-chars", type=int, help="text_too_long above this many characters (default: 100000)")
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    p.add_argument("--output", help="write the result to this file")
    p.add_argument("--max-rows", type=int, default=40, help="rows shown in table format (default: 40)")


def run(args: argparse.Namespace) -> int:
    lake = Lake.open(args.lake, create=False)
    con = connect(lake, version=pinned(lake, args.version))
    rel = checks_relation(con, args.source, args.max_text_chars) if args.list \
        else problem_summary(con, args.source, args.max_text_chars)
    if args.format == "table" and not args.output:
        rel.show(max_rows=args.max_rows, max_width=200)
        return 0
    if args.format == "table" or (args.format == "parquet" and not args.output):
        raise ValueError("--output needs --format csv, json or parquet (parquet needs --output)")
    out = (args.output or "/dev/stdout").replace("'", "''")
    con.execute(WRITERS[args.format].format(q=rel.sql_query(), out=out))
    return 0
