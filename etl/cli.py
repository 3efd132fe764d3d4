"""`python -m etl <command>`: parse arguments, call one job, print its summary.

Each command lives in `etl/commands/<name>.py` with `HELP`, `EXAMPLES`, `configure(parser)` and
`run(args) -> int`; this module only wires them together (no logic here). Command modules import
heavy libraries (lance, pyarrow, duckdb, polars, torch) inside `configure`/`run` only, and only the
command named on the line is configured, so `--help` and usage errors answer at once.
How a failed command ends (one `error:` line, an exit code) is etl/commands/failure.py.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterable, Sequence

from etl.commands.failure import DEBUG_ENV, EXIT_CODES, ctrl_c_remembered, ended_by

COMMANDS = ["ingest", "enrich", "dedup", "checks", "export", "sql", "shell", "stats", "report", "demo",
            "sources", "delete", "log", "tag", "tags", "compact", "cleanup", "doctor", "migrate"]
# etl.lake holds these too; it imports lance (~0.2 s), which `--help` should not pay for
DEFAULT_LAKE, ENV_LAKE = "lake", "ETL_LAKE"


def load_command(name: str):
    return importlib.import_module(f"etl.commands.{name}")


def build_parser(configured: Iterable[str] = COMMANDS) -> argparse.ArgumentParser:
    """The parser of every command; only the `configured` ones get their own options."""
    configured = set(configured)
    parser = argparse.ArgumentParser(
        prog="python -m etl",
        description="mmlake: a data lake for multimodal training data (ingest, enrich, dedup, mix, export).",
        epilog=f"The lake is --lake URI, else ${ENV_LAKE}, else ./{DEFAULT_LAKE}. "
        "`python -m etl COMMAND --help` shows each command's options and examples. "
        f"Exit codes: {EXIT_CODES}.",
    )
    parser.add_argument("--lake", metavar="URI", help=f"lake root (default: ${ENV_LAKE} or ./{DEFAULT_LAKE})")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error (also {DEBUG_ENV}=1)")
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
        if name in configured:
            module.configure(p)
            for q in with_subcommands(p):
                add_global_options(q)
        p.set_defaults(_run=module.run)
    return parser


def add_global_options(p: argparse.ArgumentParser) -> None:
    """--lake and --debug after the command name too; SUPPRESS keeps a value given before it."""
    p.add_argument("--lake", metavar="URI", default=argparse.SUPPRESS, help="lake root (also accepted before COMMAND)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")


def with_subcommands(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`p` and the parsers of its subcommands (e.g. `enrich phash`), depth first."""
    found = [p]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += with_subcommands(child)
    return found


def command_named(argv: Sequence[str]) -> str | None:
    """The command word of `argv`: the first word that is neither an option nor the value of --lake."""
    words = iter(argv)
    for word in words:
        if word == "--lake":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = os.environ.get(DEBUG_ENV) == "1"
    with ctrl_c_remembered() as ctrl_c:
        try:
            args = build_parser([command_named(argv)]).parse_args(argv)
            debug = debug or args.debug
            code = args._run(args) or 0
            sys.stdout.flush()  # here, not at exit: a closed pipe (`| head`) must end like the rest
            return code
        except BaseException as exc:
            if debug or (isinstance(exc, SystemExit) and not isinstance(exc.code, str)):
                raise  # argparse's own exits (usage errors, --help) have said what they had to
            return ended_by(exc, ctrl_c)
