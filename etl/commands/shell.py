"""`python -m etl shell`: the real DuckDB shell with the lake's views, reading the Lance files."""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from etl.commands.versions import add_version_argument, pinned

HELP = "Open the DuckDB shell (duckdb CLI + lance extension, offline) with the lake views defined."
EXAMPLES = """\
  python -m etl shell
  python -m etl shell -c "select source, count(*) from samples group by all"
  python -m etl shell --print-init > init.sql   # then: duckdb -unsigned -init init.sql
  python -m etl shell --version v1.0 -c "select count(*) from samples"   # the lake as it was at a tag
Needs the `duckdb` CLI 1.5.5 and the lance extension built for it (both from PyPI, no network at run time):
  pip install 'mmlake[shell]' && pip install --no-deps duckdb-extension-lance==1.5.5"""

INSTALL_HINT = "pip install 'duckdb-cli==1.5.5' && pip install --no-deps 'duckdb-extension-lance==1.5.5'"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--command", dest="sql", help="run this SQL and exit instead of opening the prompt")
    p.add_argument("--print-init", action="store_true", help="print the init script (views) and exit")
    add_version_argument(p)


def duckdb_cli() -> str:
    """The duckdb executable next to this Python first (the pinned one), then on PATH."""
    local = Path(sys.executable).parent / "duckdb"
    found = str(local) if local.exists() else shutil.which("duckdb")
    if not found:
        raise FileNotFoundError(f"the duckdb CLI is not installed: {INSTALL_HINT}")
    return found


def cli_version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[0].lstrip("v")


def lance_extension(version: str) -> str:
    """The lance extension file matching the CLI version, from the duckdb-extension-lance package."""
    spec = importlib.util.find_spec("duckdb_extension_lance")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the DuckDB lance extension is not installed: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "extensions" / f"v{version}" / "lance.duckdb_extension"
    if not path.exists():
        raise FileNotFoundError(f"no lance extension for duckdb {version} at {path}: {INSTALL_HINT}")
    return str(path)


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake

    lake = open_lake(args)
    exe = duckdb_cli()
    extension = lance_extension(cli_version(exe))
    if args.version is None:
        return open_shell(exe, lake, extension, args)
    from etl.snapshot import lake_at

    with lake_at(lake, pinned(lake, args.version)) as then:  # the extension has no time travel
        return open_shell(exe, then, extension, args)


def open_shell(exe: str, lake, extension: str, args: argparse.Namespace) -> int:
    from etl.sqlrun import shell_init_script

    init = shell_init_script(lake, extension)
    if args.print_init:
        print(init, end="")
        return 0
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(init)
    try:
        cmd = [exe, "-unsigned", "-init", f.name] + (["-c", args.sql] if args.sql else [])
        return subprocess.run(cmd, env={**os.environ}).returncode
    finally:
        os.unlink(f.name)
