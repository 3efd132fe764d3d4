"""`python -m etl sql`: run DuckDB SQL over the lake's views."""
from __future__ import annotations

import argparse
import sys

from etl.lake import Lake
from etl.upkeep import add_version_argument, pinned
from etl.sqlrun import connect, run_file, sql_path

HELP = "Run a DuckDB query (or a sql/*.sql file) over the lake views images, samples, errors, runs."
EXAMPLES = """\
  python -m etl sql "select source, count(*) from samples group by all"
  python -m etl sql "select * from errors where kind = 'missing_image'" --format csv --output missing.csv
  python -m etl sql --file sql/dedup_exact.sql --format parquet --output dups.parquet
Views never expose the image bytes; `images` has every column but the blob."""

WRITERS = {
    "csv": "COPY ({q}) TO '{out}' (FORMAT csv, HEADER true)",
    "json": "COPY ({q}) TO '{out}' (FORMAT json, ARRAY true)",
    "parquet": "COPY ({q}) TO '{out}' (FORMAT parquet)",
}


def configure(p: argparse.ArgumentParser) -> None:
    add_version_argument(p)
    p.add_argument("query", nargs="?", help="a SQL query (or use --file)")
    p.add_argument("--file", help="run this .sql file (a name in sql/ or a path); its last statement is the result")
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    p.add_argument("--output", help="write the result to this file (required for parquet)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="bind getvariable('NAME') for the query (repeatable)")
    p.add_argument("--max-rows", type=int, default=40, help="rows shown in table format (default: 40)")


def run(args: argparse.Namespace) -> int:
    if bool(args.query) == bool(args.file):
        raise ValueError("give a query or --file, not both or neither")
    lake = Lake.open(args.lake, create=False)
    con = connect(lake, version=pinned(lake, args.version), params=parse_assignments(args.set))
    rel = run_file(con, str(sql_path(args.file))) if args.file else con.sql(args.query)
    if rel is None:
        return 0
    if args.format == "table" and not args.output:
        rel.show(max_rows=args.max_rows, max_width=200)
        return 0
    if args.format == "table":
        raise ValueError("--output needs --format csv, json or parquet")
    if not args.output:
        if args.format == "parquet":
            raise ValueError("--format parquet needs --output FILE")
        out = "/dev/stdout"
    else:
        out = args.output
    con.execute(WRITERS[args.format].format(q=rel.sql_query(), out=out.replace("'", "''")))
    sys.stdout.flush()
    return 0


def parse_assignments(items: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set wants NAME=VALUE, got {item!r}")
        params[name] = int(value) if value.lstrip("-").isdigit() else value
    return params
