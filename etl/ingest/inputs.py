"""Ingest's inputs: the files named on the command line, each with its stable name, source and format."""
from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from etl import storage
from etl.engine.base import EngineSpec
from etl.sources import detect_format, readers

STAGE = "ingest"


@dataclass
class IngestOptions:
    source: str | None = None  # None: derived per file by the reader (e.g. HF config folders)
    format: str = "auto"
    image_roots: list[str] = field(default_factory=list)
    allow_outside_roots: bool = False  # follow image paths outside the roots (etl/imagerefs.py); never --from-hub
    batch_records: int = 1000
    batch_bytes: int = 256 << 20
    io_threads: int = 8  # images fetched at once from an object store
    workers: int = 1  # > 1: worker processes read, hash and write; this process commits
    engine: EngineSpec = field(default_factory=EngineSpec)  # who runs those workers (etl/engine/)
    reader_options: dict = field(default_factory=dict)
    progress: bool | None = None  # None: a bar only on a terminal
    redo: bool = False  # forget what the lake holds of these files first (a first ingest again)
    retry_failed: bool = False  # URL lists: refetch failed downloads of every kind, not only transient ones


@dataclass(frozen=True)
class InputFile:
    path: str  # where to read it
    name: str  # the stable name recorded in the lake (relative to the argument it came from)
    source: str
    format: str


# -- inputs -------------------------------------------------------------------------------------------
def expand_inputs(paths: Iterable[str], opts: IngestOptions) -> list[InputFile]:
    """Files named by the arguments (files, directories, globs), each with its name, source, format."""
    found: list[InputFile] = []
    for arg in paths:
        for path, root in _files_of(arg):
            fmt = opts.format if opts.format != "auto" else _detect_or_none(path)
            if fmt is None:
                continue  # a directory may hold images and readmes beside the annotations
            reader_cls = readers()[fmt]
            source = opts.source or reader_cls.source_name_for(path, root or storage.parent(path)) or _stem(arg)
            found.append(InputFile(path, identity_name(path, root), source, fmt))
    if not found:
        raise FileNotFoundError(f"no ingestible files in {list(paths)}")
    return found


def identity_name(path: str, root: str | None) -> str:
    """A file's identity in its source: its path relative to the directory or glob it was found
    under; a file named on its own is relative to the working directory (absolute when outside it),
    so `a/train.json` and `b/train.json` stay two files. A URL named on its own is its URL
    (`s3://bucket/a/train.json`); one found under a remote folder or glob is relative to it."""
    if storage.is_remote(path):
        return storage.relative_to(path, root) if root is not None else storage.normalize(path)
    if root is None:
        relative = os.path.relpath(os.path.abspath(path))
        name = os.path.abspath(path) if relative.startswith(os.pardir) else relative
    else:
        name = os.path.relpath(path, root)
    return name.replace(os.sep, "/")


def _files_of(arg: str) -> Iterator[tuple[str, str | None]]:
    if storage.is_remote(arg):
        yield from _remote_files_of(arg)
    elif os.path.isdir(arg):
        for dirpath, dirnames, filenames in os.walk(arg):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # e.g. a download's .cache/
            for fn in sorted(f for f in filenames if not f.startswith(".")):
                yield os.path.join(dirpath, fn), arg
    elif glob.has_magic(arg):
        root = _glob_root(arg)
        matches = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
        if not matches:
            raise FileNotFoundError(f"{arg}: the pattern matches no file")
        for p in matches:
            yield p, root
    elif os.path.isfile(arg):
        yield arg, None
    else:
        raise FileNotFoundError(f"{arg}: no such file or directory")


def _remote_files_of(url: str) -> list[tuple[str, str | None]]:
    """A URL's files, as for a local argument: a folder (`s3://bucket/prefix/`) lists the files
    below it, a glob (`hf://datasets/org/name/data/*.parquet`) matches, an object is itself."""
    storage.filesystem_for(url)  # a scheme this machine cannot read: said before anything else
    try:
        if glob.has_magic(url):
            root = storage.normalize(_glob_root(url, "/"))
            return [(match, root) for match in storage.glob_files(url)] or _no_match(url)
        found = storage.kind(url)
        if found == "directory":
            return [(f, storage.normalize(url)) for f in storage.files_under(url)]
    except storage.StoreError as exc:  # the store refused or could not be reached: one line naming the URL
        raise storage.StoreError(f"cannot list {exc}") from None
    if found == "file":
        return [(url, None)]
    raise FileNotFoundError(f"{url}: no such file or directory")


def _no_match(pattern: str) -> list:
    raise FileNotFoundError(f"{pattern}: the pattern matches no file")


def _glob_root(pattern: str, sep: str = os.sep) -> str:
    parts = pattern.split(sep)
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    return sep.join(fixed) or "."


def _detect_or_none(path: str) -> str | None:
    try:
        return detect_format(path)
    except ValueError:
        return None


def _stem(arg: str) -> str:
    if storage.is_remote(arg):
        base = storage.basename(_glob_root(arg, "/") if glob.has_magic(arg) else arg)
        return base.split(".")[0] or "default"
    base = os.path.basename(os.path.normpath(_glob_root(arg) if glob.has_magic(arg) else arg))
    return base.split(".")[0] or "default"

