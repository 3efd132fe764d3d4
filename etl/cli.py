"""`python -m etl <command>`: parse arguments, call one job, print its summary.

Each command lives in `etl/commands/<name>.py` with `HELP`, `EXAMPLES`, `configure(parser)` and
`run(args) -> int`; this module only wires them together (no logic here).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from etl.lake import DEFAULT_LAKE, ENV_LAKE

COMMANDS = ["ingest", "enrich", "dedup", "checks", "export", "sql", "shell", "stats", "report", "demo",
            "sources", "delete", "log", "tag", "tags", "compact", "cleanup", "doctor", "migrate"]


def load_command(name: str):
    return importlib.import_module(f"etl.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m etl",
        description="mmlake: a data lake for multimodal training data (ingest, enrich, dedup, mix, export).",
        epilog=f"The lake is --lake URI, else ${ENV_LAKE}, else ./{DEFAULT_LAKE}. "
        "`python -m etl COMMAND --help` shows each command's options and examples.",
    )
    parser.add_argument("--lake", metavar="URI", help=f"lake root (default: ${ENV_LAKE} or ./{DEFAULT_LAKE})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = load_command(name)
        except ModuleNotFoundError as exc:
            if exc.name != f"etl.commands.{name}":
                raise
            continue  # a command whose module does not exist yet
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, epilog="examples:\n" + module.EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args._run(args) or 0
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
