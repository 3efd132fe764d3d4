"""`python -m etl doctor`: check that the lake agrees with itself; `--repair` fixes the safe cases."""
from __future__ import annotations

import argparse

from etl.commands.tablefmt import FORMATS, show_rows

HELP = "Check the lake (blob hashes, dangling image ids, checkpoints, stale dedup tables, orphan files); --repair the safe ones."
EXAMPLES = """\
  python -m etl doctor                   # exit status 1 when the lake contradicts itself
  python -m etl doctor --repair          # delete checkpoints ahead of their rows, orphan files
  python -m etl doctor --no-blobs        # skip hashing every image (the slow part: reads all bytes)
What is checked and what is repaired: see etl/doctor.py and sql/doctor.sql."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repair", action="store_true", help="repair what is safe to repair")
    p.add_argument("--no-blobs", action="store_true", help="do not re-hash the stored images")
    p.add_argument("--format", choices=FORMATS, default="table")


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake
    from etl.doctor import REPAIRABLE, WARNINGS, examine, repair

    lake = open_lake(args)
    findings = examine(lake, blobs=not args.no_blobs)
    if args.repair:
        repair(lake, findings)
    show_rows([f.row() for f in findings], args.format)
    left = [f for f in findings if not f.repaired]
    if args.format == "table":
        fixable = sum(f.check in REPAIRABLE for f in left)
        print(f"doctor: {len(findings)} findings, {len(findings) - len(left)} repaired"
              + (f"; {fixable} repairable with --repair" if fixable else ""))
    return 1 if any(f.check not in WARNINGS for f in left) else 0
