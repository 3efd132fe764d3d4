"""`python -m etl checks`: what is wrong with each sample (sql/checks.sql), summarised or listed."""
from __future__ import annotations

import argparse

from etl.commands.output import add_output_arguments, write_result
from etl.commands.versions import add_version_argument, pinned

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
    add_output_arguments(p)


def run(args: argparse.Namespace) -> int:
    from etl.checks import checks_relation, problem_summary
    from etl.commands.lakes import open_lake
    from etl.sqlrun import connect

    lake = open_lake(args)
    con = connect(lake, version=pinned(lake, args.version))
    rel = checks_relation(con, args.source, args.max_text_chars) if args.list \
        else problem_summary(con, args.source, args.max_text_chars)
    write_result(con, rel, args)
    return 0
