"""`python -m etl sql`: run DuckDB SQL over the lake's views."""
from __future__ import annotations

import argparse

from etl.commands.output import add_output_arguments, write_result
from etl.commands.versions import add_version_argument, pinned

HELP = "Run a DuckDB query (or a sql/*.sql file) over the lake views images, samples, errors, runs."
EXAMPLES = """\
  python -m etl sql "select source, count(*) from samples group by all"
  python -m etl sql "select * from errors where kind = 'missing_image'" --format csv --output missing.csv
  python -m etl sql --file sql/dedup_exact.sql --format parquet --output dups.parquet
  python -m etl sql "select sample_id, loss from samples" --format csv >> all_losses.csv
Views never expose the image bytes; `images` has every column but the blob."""


def configure(p: argparse.ArgumentParser) -> None:
    add_version_argument(p)
    p.add_argument("query", nargs="?", help="a SQL query (or use --file)")
    p.add_argument("--file", help="run this .sql file (a name in sql/ or a path); its last statement is the result")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="bind getvariable('NAME') for the query (repeatable)")
    add_output_arguments(p)


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake
    from etl.sqlrun import connect, run_file, sql_path

    if bool(args.query) == bool(args.file):
        raise ValueError("give a query or --file, not both or neither")
    lake = open_lake(args)
    con = connect(lake, version=pinned(lake, args.version), params=parse_assignments(args.set))
    rel = run_file(con, str(sql_path(args.file))) if args.file else con.sql(args.query)
    if rel is not None:
        write_result(con, rel, args)
    return 0


def parse_assignments(items: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set wants NAME=VALUE, got {item!r}")
        params[name] = int(value) if value.lstrip("-").isdigit() else value
    return params
