"""`python -m etl tag`: name the lake's current (or a given) version so it stays readable."""
from __future__ import annotations

import argparse


HELP = "Tag every table of the lake at its current version (or --version), or delete a tag."
EXAMPLES = """\
  python -m etl tag v1.0                          # the lake as it is now
  python -m etl tag before-dedup --version 12     # samples at version 12, the other tables now
  python -m etl tag --delete v1.0
  python -m etl export mix.yaml --out mix/ --version v1.0    # read it back (sql, stats, checks too)
A tagged version is never removed by `cleanup`. `python -m etl tags` lists the tags."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the tag (not a number; no '=' or ',')")
    p.add_argument("--version", metavar="N|TAG|T=N,...",
                   help="samples version N, another tag, or table=N pairs (default: every table now)")
    p.add_argument("--delete", action="store_true", help="delete the tag instead")


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake
    from etl.upkeep import create_tag, delete_tag

    lake = open_lake(args)
    if args.delete:
        print(f"tag {args.name} deleted from {', '.join(delete_tag(lake, args.name))}")
        return 0
    pins = create_tag(lake, args.name, args.version)
    print(f"tag {args.name}: " + ", ".join(f"{t}={v}" for t, v in pins.items()))
    return 0
