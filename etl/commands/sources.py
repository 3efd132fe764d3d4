"""`python -m etl sources`: each source's files, samples, errors and ingest times; rename a source."""
from __future__ import annotations

import argparse

from etl.commands.summary import print_counts
from etl.commands.tablefmt import FORMATS, show

HELP = "List the lake's sources (files, samples, errors, first/last ingest), or rename one."
EXAMPLES = """\
  python -m etl sources
  python -m etl sources --format csv > sources.csv
  python -m etl sources --rename llava_665k llava_v1_5_mix665k     # samples, errors, checkpoints
Renaming changes every sample_id of the source (`source/file#row`); rerun `dedup` afterwards.
To remove a source: `python -m etl delete --source NAME`."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rename", nargs=2, metavar=("OLD", "NEW"), help="rename source OLD to NEW")
    p.add_argument("--format", choices=FORMATS, default="table")


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake

    lake = open_lake(args)
    if args.rename:
        from etl.upkeep import rename_source

        print_counts(f"renamed {args.rename[0]} -> {args.rename[1]}", rename_source(lake, *args.rename))
        return 0
    from etl.sqlrun import connect, run_file

    show(run_file(connect(lake), "sources"), args.format)
    return 0
