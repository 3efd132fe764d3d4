"""`python -m etl delete`: remove a source (or some of its files) from the lake."""
from __future__ import annotations

import argparse

from etl.commands.summary import print_counts

HELP = "Delete a source's samples, errors and checkpoints (all its files, or those matching --file)."
EXAMPLES = """\
  python -m etl delete --source llava_665k --dry-run            # what would go
  python -m etl delete --source llava_665k
  python -m etl delete --source sharegpt4v --file 'coco/*.json'  # only these files (glob on the file name in the lake)
A later ingest of the same files is a first ingest. Images no other sample uses are deleted by the
next `python -m etl cleanup`; older lake versions (and tags) still hold everything until then.
Derived tables (dup_exact, dup_near, image_clusters) are stale afterwards: rerun `dedup`."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="the source to delete (see `python -m etl sources`)")
    p.add_argument("--file", metavar="GLOB", help="only the source's files whose name in the lake (or base name) "
                                                   "matches this glob (`sources` and `sql` show the names)")
    p.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake
    from etl.upkeep import delete_source

    counts = delete_source(open_lake(args), args.source, args.file, args.dry_run)
    print_counts("delete (dry run: nothing deleted)" if args.dry_run else "delete", counts)
    return 0
