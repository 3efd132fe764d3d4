"""The lake's format version: what a lake root must look like before any command touches it.

A lake records the mmlake format it was written with in `LAKE/_mmlake/format.json`
(`{"format": N, "written_by": "mmlake X.Y.Z"}`). Opening checks it first, so that each of these is one
clear line (a `LakeFormatError`, which the CLI prints as `error: ...`) and never a traceback or a
half-written folder:

- the path is a file, or a folder holding other things and no lake;
- the lake was written by a newer mmlake (format above `FORMAT`): upgrade mmlake;
- the lake predates the marker (format 0) or an older format: `python -m etl migrate` brings it up to
  date explicitly; until then commands refuse it with that command in the message.

Format history (each step is one function in `MIGRATIONS`, run by `migrate`):
  0 → 1: the marker itself; contract columns an older lake lacks are added (metadata-only);
         `runs.user` appears.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

import pyarrow as pa
import pyarrow.fs as pafs

from etl import storage
from etl.commitlock import LOCK_DIR

FORMAT = 1
MARKER = f"{LOCK_DIR}/format.json"
IGNORED_ENTRIES = (LOCK_DIR, "README.md", "README", ".gitignore")  # a fresh ./lake holds a README


class LakeFormatError(ValueError):
    """The lake root cannot be used as it is (not a lake, too new, or needs `migrate`)."""


def mmlake_version() -> str:
    try:
        return version("mmlake")
    except PackageNotFoundError:
        return "dev"


def _info(root: str, rel: str = "") -> pafs.FileInfo:
    fs, path = storage.arrow_filesystem(root)
    return fs.get_file_info(f"{path}/{rel}" if rel else path)


def read_format(root: str) -> int | None:
    """The recorded format, or None when the root has no marker."""
    fs, path = storage.arrow_filesystem(root)
    try:
        with fs.open_input_stream(f"{path}/{MARKER}") as f:
            return int(json.loads(f.read())["format"])
    except (FileNotFoundError, OSError):
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise LakeFormatError(f"{root}: unreadable {MARKER} ({exc}); `python -m etl migrate` rewrites it") from exc


def write_format(root: str, fmt: int = FORMAT) -> None:
    """Record `fmt` in the marker (a remote root pyarrow cannot reach is left without one)."""
    try:
        _write_format(root, fmt)
    except (OSError, ValueError, pa.ArrowException):
        if not storage.is_remote(root):
            raise


def _write_format(root: str, fmt: int) -> None:
    fs, path = storage.arrow_filesystem(root)
    fs.create_dir(f"{path}/{LOCK_DIR}", recursive=True)
    data = json.dumps({"format": fmt, "written_by": f"mmlake {mmlake_version()}"}).encode()
    tmp = f"{path}/{MARKER}.{os.getpid()}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, f"{path}/{MARKER}")  # readers see the old marker or the new one, never half of it


def has_tables(root: str, tables: tuple[str, ...]) -> bool:
    return any(_info(root, f"{t}.lance").type == pafs.FileType.Directory for t in tables)


def check_root(root: str, tables: tuple[str, ...], create: bool) -> str:
    """What the root is: "new" (nothing there yet: a lake may be created), "current", "unknown"
    (an object store pyarrow cannot reach with Lance's settings: Lance will say what is wrong), or
    raise LakeFormatError with the one line to show. `create`: the caller would create a missing lake."""
    try:
        return _check_root(root, tables, create)
    except LakeFormatError:
        raise
    except (OSError, ValueError, pa.ArrowException):
        if storage.is_remote(root):
            return "unknown"
        raise


def _check_root(root: str, tables: tuple[str, ...], create: bool) -> str:
    info = _info(root)
    if info.type == pafs.FileType.File:
        raise LakeFormatError(f"{root} is a file, not a lake (a lake is a folder; give --lake a folder)")
    fmt = read_format(root) if info.type == pafs.FileType.Directory else None
    if fmt is None and not has_tables(root, tables):
        if info.type == pafs.FileType.NotFound or not _foreign_entries(root):
            if create:
                return "new"
            what = "does not exist" if info.type == pafs.FileType.NotFound else "is not a lake (it has no tables)"
            raise LakeFormatError(f"{root} {what}; ingest something into it first, or point --lake "
                                  "(or $ETL_LAKE) at a lake")
        raise LakeFormatError(f"{root} is not a lake (it holds other files and none of the tables "
                              f"{', '.join(t + '.lance' for t in tables)}); give --lake the lake folder")
    fmt = fmt or 0
    if fmt > FORMAT:
        raise LakeFormatError(f"{root} was written by a newer mmlake (lake format {fmt}; this mmlake "
                              f"{mmlake_version()} reads format {FORMAT}): upgrade mmlake")
    if fmt < FORMAT:
        raise LakeFormatError(f"{root} was written by an older mmlake (lake format {fmt}, current {FORMAT}): "
                              f"run `python -m etl --lake {root} migrate` once, then rerun this command")
    return "current"


def _foreign_entries(root: str) -> list[str]:
    fs, path = storage.arrow_filesystem(root)
    entries = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return [e.base_name for e in entries if e.base_name not in IGNORED_ENTRIES and not e.base_name.startswith(".")]


# -- migrations ---------------------------------------------------------------------------------------
def _migrate_0_to_1(lake) -> None:
    lake.ensure_tables()  # adds contract columns the older lake lacks (metadata-only)


MIGRATIONS: dict[int, Callable] = {0: _migrate_0_to_1}


def migrate(lake, tables: tuple[str, ...]) -> list[str]:
    """Bring the lake at `lake.root` to `FORMAT`, one step at a time, inside the commit lock; the
    steps taken (empty when it was current)."""
    if _info(lake.root).type == pafs.FileType.File or not has_tables(lake.root, tables):
        check_root(lake.root, tables, create=False)  # raises the right line
    done = []
    with lake.committing():
        fmt = read_format(lake.root) or 0
        if fmt > FORMAT:
            check_root(lake.root, tables, create=False)
        while fmt < FORMAT:
            MIGRATIONS[fmt](lake)
            write_format(lake.root, fmt + 1)
            done.append(f"format {fmt} -> {fmt + 1}")
            fmt += 1
    return done
