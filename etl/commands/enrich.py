"""`python -m etl enrich NAME`: fill an enrichment column for every row that lacks it."""
from __future__ import annotations

import argparse

from etl.commands.summary import print_counts

HELP = "Compute enrichment columns (phash, tags, loss) for the rows that do not have them yet."
EXAMPLES = """\
  python -m etl enrich phash --mode exact --workers 2
  python -m etl enrich tags --model /models/ram_plus_swin_large_14m.pth --batch-size 32
  python -m etl enrich loss --model /models/Qwen2-VL-2B-Instruct --where "source = 'sharegpt4v'" --limit 10000
Commits as it goes: after a crash, the same command continues with the rows still missing.
Rows that failed are NULL with an `errors` row (stage = enricher name); --retry-errors retries them."""


def configure(p: argparse.ArgumentParser) -> None:
    from etl.enrich import ENRICHERS, get_enricher  # pyarrow and the enricher modules: only for enrich

    sub = p.add_subparsers(dest="enricher", metavar="NAME", required=True)
    for name in ENRICHERS:
        sp = sub.add_parser(name, help=f"fill the {name} column(s)")
        add_runner_arguments(sp)
        try:
            get_enricher(name).add_arguments(sp)
        except ImportError:
            pass  # an enricher module not installed in this build is simply not configurable


def add_runner_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--rows-per-task", type=int, default=256, dest="rows_per_task",
                   help="rows handed to a worker at a time (default: 256)")
    p.add_argument("--where", help="DuckDB predicate over the table's view, e.g. \"source = 'coco'\"")
    p.add_argument("--limit", type=int, help="at most this many rows")
    p.add_argument("--retry-errors", action="store_true", help="also retry rows that failed before")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake
    from etl.enrich import get_enricher
    from etl.enrich.runner import RunOptions, run_enricher

    lake = open_lake(args)
    lake.ensure_tables()  # a lake written by an older mmlake gains the enrichment columns
    enricher = get_enricher(args.enricher).from_args(args)
    opts = RunOptions(workers=args.workers, batch_size=args.rows_per_task, where=args.where, limit=args.limit,
                      retry_errors=args.retry_errors, progress=False if args.no_progress else None)
    print_counts(f"enrich {args.enricher}", run_enricher(lake, enricher, opts))
    return 0
