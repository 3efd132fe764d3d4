"""`python -m etl report`: the mixture analysis as one static HTML page."""
from __future__ import annotations

import argparse
import sys

from etl.commands.versions import add_version_argument, pinned

HELP = "Write the mixture-analysis report (composition, errors, duplicates, tags, loss, recipes) as one HTML page."
EXAMPLES = """\
  python -m etl report                                  # writes report.html
  python -m etl --lake /data/lake report --out reports/mix.html --loss-window 0.5 4
  python -m etl report --compare exports/si-mix-v1 exports/si-mix-v2
  python -m etl report --version v1.0 --out reports/v1.html   # the lake as it was at a tag
The page is self-contained (plots embedded as PNG) and shows the tables and plots of
notebooks/mixture_analysis.ipynb; steps not computed yet (tags, loss, dedup) are marked as such."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument("--loss-window", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="loss window whose effect per source is shown (default: lake-wide 5th-95th percentile)")
    p.add_argument("--compare", nargs=2, metavar=("EXPORT_A", "EXPORT_B"),
                   help="two exports (folders or manifest.json files) to compare side by side")
    p.add_argument("--top-tags", type=int, default=20, help="tags listed in the overall table (default: 20)")
    add_version_argument(p)


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake
    from etl.report import SECTION_IDS, ReportOptions, write_report  # matplotlib: only this command pays for it

    lake = open_lake(args)
    if args.loss_window and args.loss_window[0] > args.loss_window[1]:
        raise ValueError(f"--loss-window LOW HIGH needs LOW <= HIGH, got {args.loss_window}")
    opts = ReportOptions(loss_window=tuple(args.loss_window) if args.loss_window else None,
                         compare=tuple(args.compare) if args.compare else None, top_tags=args.top_tags)
    if args.loss_window and not loss_computed(lake):
        print(f"note: --loss-window {args.loss_window[0]:g} {args.loss_window[1]:g} is not applied: no sample "
              "has a loss yet (run `python -m etl enrich loss`); the report says so", file=sys.stderr)
    if args.version:
        from etl.snapshot import lake_at

        with lake_at(lake, pinned(lake, args.version)) as then:
            path = write_report(then, args.out, opts)
    else:
        path = write_report(lake, args.out, opts)
    print(f"report: {path} ({path.stat().st_size:,} bytes; sections: {', '.join(SECTION_IDS)})")
    return 0


def loss_computed(lake) -> bool:
    from etl import schema as S
    from etl.analysis import computed_rows

    return computed_rows(lake, S.SAMPLES, "loss") > 0
