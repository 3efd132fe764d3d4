"""`python -m etl tags`: the lake's tags and the version of each table they keep."""
from __future__ import annotations

import argparse

from etl.commands.tablefmt import FORMATS, show_rows

HELP = "List the lake's tags with the version of each table they name."
EXAMPLES = """\
  python -m etl tags
  python -m etl tags --format json
Create one with `python -m etl tag NAME`; read it with `--version NAME`."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="table")


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake
    from etl.upkeep import tag_versions

    tags = tag_versions(open_lake(args))
    show_rows([{"tag": name, **{f"{t}": v for t, v in sorted(pins.items())}} for name, pins in sorted(tags.items())],
              args.format)
    return 0
