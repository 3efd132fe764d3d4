"""`python -m etl dedup`: exact and near-duplicate decisions as lake tables (the job: etl/dedup.py)."""
from __future__ import annotations

import argparse

HELP = "Find exact (and, with --near K, near-duplicate) samples; write dup_exact / image_clusters / dup_near."
EXAMPLES = """\
  python -m etl dedup                       # exact duplicates within each source
  python -m etl dedup --near 2              # + near-duplicate images (Hamming <= 2), clustered
  python -m etl dedup --near 3 --scope global --images-only
Run `python -m etl enrich phash` first: samples whose images have no phash are never duplicates.
The rules are sql/dedup_exact.sql and sql/dedup_near.sql; results: tables dup_exact, dup_near,
image_clusters (one Lance version per run, parameters in `runs`)."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--near", type=int, metavar="K", dest="near_k",
                   help="also cluster images whose phashes differ in at most K bits (e.g. 2)")
    p.add_argument("--bands", type=int, dest="near_bands",
                   help="pigeonhole bands for --near (default K+2; recall is exact for any value > K)")
    p.add_argument("--scope", choices=["source", "global"], default="source",
                   help="look for the earlier duplicate within the same source (default) or in all sources")
    p.add_argument("--memory-limit", default="4GB",
                   help="DuckDB memory limit; the near-duplicate join spills to disk beyond it (default 4GB)")
    p.add_argument("--images-only", action="store_true",
                   help="compare images only, not conversations (text-only samples are then never duplicates)")


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake
    from etl.dedup import DedupOptions, run_dedup

    opts = DedupOptions(near_k=args.near_k, near_bands=args.near_bands, scope=args.scope,
                        consider_text=not args.images_only, memory_limit=args.memory_limit)
    report = run_dedup(open_lake(args), opts)
    print_report(report, opts)
    return 0


def print_report(report, opts) -> None:
    """Per source, what the decisions would remove; where the tables are; a hint when phash is missing."""
    from etl import schema as S

    near = f", near-duplicates within {opts.near_k} bits" if opts.near_k is not None else ""
    print(f"dedup (scope {opts.scope}{near}; run {report.run_id}): what would be removed per source")
    header = ["source", "samples", "exact_duplicates", "near_duplicates", "kept"]
    rows = [[str(r[h]) for h in header] for r in report.per_source]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    if report.counts.get("images_with_phash", 0) == 0:
        print("  note: no image has a phash yet; run `python -m etl enrich phash` first")
    if opts.near_k is not None:
        print(f"  image clusters: {report.counts['clusters']:,} "
              f"({report.counts['clustered_images']:,} images) -> table {S.IMAGE_CLUSTERS}")
    print(f"  tables: {S.DUP_EXACT}" + (f", {S.DUP_NEAR}, {S.IMAGE_CLUSTERS}" if opts.near_k is not None else ""))
