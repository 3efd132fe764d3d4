"""`python -m etl cleanup`: reclaim space (superseded versions, unused images, orphan files)."""
from __future__ import annotations

import argparse

from etl.commands.summary import print_counts

HELP = "Reclaim space: images no sample uses after `delete`, versions superseded long ago, files killed writers left."
EXAMPLES = """\
  python -m etl cleanup --older-than 7d
  python -m etl cleanup --older-than 12h --dry-run       # count, delete nothing
What goes: images released by `delete` that no sample references; every version of a table that
stopped being the latest more than --older-than ago (a job started within that window keeps the
version it reads; tagged versions are always kept); data files no version references (left by a
killed writer), once older than --older-than and at least 1 hour — a live writer writes its files
before it commits them, so younger ones are never touched, whatever --older-than says."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--older-than", default="7d", metavar="AGE",
                   help="keep versions that were current within AGE (7d, 12h, 30m; default: 7d)")
    p.add_argument("--keep-orphans", action="store_true", help="do not delete unreferenced data files")
    p.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake
    from etl.upkeep import cleanup_lake, parse_age

    counts = cleanup_lake(open_lake(args), parse_age(args.older_than),
                          orphans=not args.keep_orphans, dry_run=args.dry_run)
    print_counts("cleanup (dry run: nothing deleted)" if args.dry_run else "cleanup", counts)
    return 0
