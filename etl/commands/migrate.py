"""`python -m etl migrate`: bring a lake written by an older mmlake to the current format."""
from __future__ import annotations

import argparse

HELP = "Migrate a lake written by an older mmlake to the current lake format."
EXAMPLES = """\
  python -m etl --lake /data/lake migrate
Commands refuse an older lake and name this command; migrating takes the commit lock and is
metadata-only (no data is rewritten). A lake from a newer mmlake is refused: upgrade mmlake."""


def configure(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from etl import schema as S
    from etl.lake import Lake, resolve_lake_uri
    from etl.lakeformat import FORMAT, migrate

    lake = Lake(resolve_lake_uri(args.lake).rstrip("/"))  # not Lake.open: it refuses an older lake
    steps = migrate(lake, S.TABLES)
    print(f"migrate: {lake.root}: " + (", ".join(steps) if steps else f"already at format {FORMAT}"))
    return 0
