"""`python -m etl compact`: merge the small fragments many small commits leave behind."""
from __future__ import annotations

import argparse

from etl.commands.summary import print_counts

HELP = "Merge small fragments of every table (images and their blob files included) into few large ones."
EXAMPLES = """\
  python -m etl compact
  python -m etl compact --target-rows 250000
Every query and export gives the same result before and after (same rows, same bytes); scans get
faster. The replaced files stay on disk (older versions read them) until `python -m etl cleanup`."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-rows", type=int, default=1 << 20, help="rows per fragment (default: 1048576)")


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake
    from etl.upkeep import compact_lake

    print_counts("compact", compact_lake(open_lake(args), args.target_rows))
    return 0
