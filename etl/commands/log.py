"""`python -m etl log`: every version of every table, with the run that made it."""
from __future__ import annotations

import argparse

from etl.commands.tablefmt import FORMATS, show_rows

HELP = "Show the lake's history: each version of each table with the run (command, parameters, counts, user) that made it."
EXAMPLES = """\
  python -m etl log                               # the latest 20 versions of each table
  python -m etl log --table samples --limit 0     # every version of samples
  python -m etl log --format json > history.json
Read any of these versions with `--version` (sql, stats, checks, export), keep one with `tag`."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", action="append", help="only this table (repeatable)")
    p.add_argument("--limit", type=int, default=20, help="latest versions shown per table (0: all; default: 20)")
    p.add_argument("--format", choices=FORMATS, default="table")


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake
    from etl.upkeep import history

    rows = list(history(open_lake(args), args.table))
    if args.limit:
        per_table: dict[str, list] = {}
        for row in rows:
            per_table.setdefault(row["table"], []).append(row)
        rows = [r for table_rows in per_table.values() for r in table_rows[-args.limit:]]
    if args.format == "table":
        for row in rows:
            row["params"], row["counts"] = _short(row["params"]), _short(row["counts"])
    show_rows(rows, args.format, max_rows=100_000)
    return 0


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
