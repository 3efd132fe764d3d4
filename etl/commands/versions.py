"""`--version N|TAG|TABLE=N,...` for the commands that read the lake (sql, stats, checks, report, shell)."""
from __future__ import annotations

import argparse


def add_version_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", metavar="N|TAG|T=N,...",
                   help="read the lake as it was: samples version N, a tag (`python -m etl tags`), "
                        "or table=N pairs (default: now; `python -m etl log` lists versions)")


def pinned(lake, spec: str | None) -> dict[str, int] | None:
    """The versions `--version` names (None: read the latest)."""
    if spec is None:
        return None
    from etl.upkeep import resolve

    return resolve(lake, spec)
