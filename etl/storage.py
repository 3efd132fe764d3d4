"""Where source files live: a local path, or a URL read in place (`s3://bucket/key`, `hf://datasets/org/name/...`).

Ingest reads remote sources without copying them first: readers open files through this module,
which hands out ordinary binary file objects (buffered, seekable: ranged reads underneath) and, for
parquet, a pyarrow file so pyarrow reads the footer and column chunks it needs by ranged reads.

- `s3://` is pyarrow's own `S3FileSystem` (no s3fs needed), configured from the same environment
  variables the lake uses (Lance reads them too): `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` /
  `AWS_ENDPOINT` (a non-AWS server, e.g. `http://127.0.0.1:9000`), `AWS_ALLOW_HTTP=true` (needed for
  an `http://` endpoint), `AWS_REGION` / `AWS_DEFAULT_REGION`; credentials come from the standard AWS
  chain (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ~/.aws, instance roles).
- Any other scheme goes through fsspec's protocol registry (`fsspec.core.url_to_fs`): `hf://` is
  huggingface_hub's `HfFileSystem` (`HF_TOKEN`, `HF_ENDPOINT` as usual), and `gs://`, `az://`, ...
  work when their fsspec package is installed. pyarrow reads them through `FSSpecHandler`.

Local paths keep their own way: every function here uses plain `open`/`os` for them, so a local
ingest reads exactly as before. Object stores have no symlinks or special files; a URL's `..` is
collapsed lexically (`normalize`), which is what containment of image paths is checked on.

A store that fails to answer (unreachable, refusing, the object gone) is not the data's fault: it
raises `StoreError` naming the URL, which stops the run with one line, and a rerun continues from
the last checkpoint. Readers that record unparsable content as an error row first ask
`raise_if_unreachable` whether the store still answers for the file.
"""
from __future__ import annotations

import io
import os
import posixpath
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO

URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)
TRUE_VALUES = ("1", "true", "yes", "on")
READ_BLOCK = 4 << 20  # bytes per ranged read behind `open_input` (one request each)
RANGES_AT_ONCE = 8  # ranged reads of `read_ranges` in flight together
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")


def is_remote(path: str) -> bool:
    """Whether `path` is a URL (`scheme://...`; `file://` too, read through fsspec) rather than a path."""
    return URL.match(path) is not None


@dataclass(frozen=True)
class Remote:
    """One remote file system: `arrow` reads (pyarrow), `fsspec` lists and globs; both take the
    path inside it (`bucket/key`, `datasets/org/name/file`) that `url` turns back into a URL."""

    scheme: str
    arrow: object  # pyarrow.fs.FileSystem
    fsspec: object  # fsspec.AbstractFileSystem

    def url(self, inner: str) -> str:
        return f"{self.scheme}://{inner}"


def arrow_filesystem(uri: str):
    """(pyarrow.fs.FileSystem, path inside it) for a lake path: local paths made absolute, URLs by
    pyarrow's own scheme lookup (what Lance opens them with)."""
    import pyarrow.fs as pafs

    if not is_remote(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def filesystem_for(url: str) -> tuple[Remote, str]:
    """The file system holding `url` and the path inside it."""
    scheme, rest = URL.match(url).groups()
    scheme = scheme.lower()
    if scheme == "s3":
        return _s3(*s3_settings()), rest
    fs, inner = _fsspec_for(url)
    return _wrapped(fs, scheme), inner


def s3_settings() -> tuple[str | None, str | None, bool]:
    """(endpoint, region, allow_http) from the AWS_* environment, read at each call (tests and Ray
    workers set them after import)."""
    env = os.environ
    endpoint = next((env[v] for v in ENDPOINT_VARIABLES if env.get(v)), None)
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    return endpoint, region, env.get("AWS_ALLOW_HTTP", "").strip().lower() in TRUE_VALUES


@lru_cache(maxsize=8)
def _s3(endpoint: str | None, region: str | None, allow_http: bool) -> Remote:
    from fsspec.implementations.arrow import ArrowFSWrapper
    from pyarrow import fs as pafs

    options: dict = {"region": region} if region else {}
    if endpoint:
        scheme, sep, host = endpoint.partition("://")
        scheme, host = (scheme.lower(), host) if sep else ("https", endpoint)
        if scheme == "http" and not allow_http:
            raise ValueError(f"the S3 endpoint {endpoint} is plain http: set AWS_ALLOW_HTTP=true to allow it")
        options.update(endpoint_override=host.rstrip("/"), scheme=scheme)
    arrow = pafs.S3FileSystem(**options)
    return Remote("s3", arrow, ArrowFSWrapper(arrow))


def _fsspec_for(url: str):
    """fsspec's file system for the URL's protocol (its registry decides: `hf` → HfFileSystem)."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:  # a known protocol whose package is missing (gs:// without gcsfs)
        raise ValueError(f"{url}: cannot read this kind of URL here: {exc}") from None
    except ValueError as exc:  # "Protocol not known"
        raise ValueError(f"{url}: {exc}") from None


def _wrapped(fs, scheme: str) -> Remote:
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return Remote(scheme, PyFileSystem(FSSpecHandler(fs)), fs)


class StoreError(OSError):
    """The store holding a URL did not answer for it (unreachable, refused, gone)."""


@contextmanager
def asking(url: str) -> Iterator[None]:
    """The store client's errors while asking about `url` raised as StoreError naming it (a missing
    file stays FileNotFoundError)."""
    try:
        yield
    except (FileNotFoundError, StoreError):
        raise
    except store_errors() as exc:
        raise StoreError(f"{url}: {type(exc).__name__}: {exc}") from None


def raise_if_unreachable(path: str, exc: BaseException) -> None:
    """After reading `path` failed with `exc`: raise StoreError when it is a URL the store no longer
    answers for (the failure was the store's: the run stops, a rerun continues); return otherwise
    (the content is at fault, and the caller records it as for a local file)."""
    if not is_remote(path):
        return
    try:
        stamp(path)
    except OSError as gone:
        raise StoreError(f"{path}: reading it failed ({type(exc).__name__}: {exc}) and the store does not "
                         f"answer for it now ({gone}); rerun when it does, to continue where this stopped") from None


def store_errors() -> tuple[type[BaseException], ...]:
    """What a store's client raises when it cannot be reached or refuses: OSError (pyarrow, fsspec),
    and the errors of the HTTP clients the Hub client uses (httpx, httpx2, requests) when loaded."""
    found: list[type[BaseException]] = [OSError]
    for module, name in (("httpx", "HTTPError"), ("httpx2", "HTTPError"), ("requests", "RequestException")):
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(getattr(loaded, name, None), type):
            found.append(getattr(loaded, name))
    return tuple(found)


# -- paths ----------------------------------------------------------------------------------------------
def normalize(url: str) -> str:
    """The URL with `.`/`..` collapsed and no trailing slash (`s3://b/x/../y/` → `s3://b/y`); a path
    climbing above the bucket/repo keeps its leading `..` (it is then inside no root)."""
    scheme, rest = URL.match(url).groups()
    rest = posixpath.normpath(rest) if rest else ""
    return f"{scheme}://{'' if rest == '.' else rest}"


def absolute(path: str) -> str:
    """`os.path.abspath` of a local path; a URL normalized."""
    return normalize(path) if is_remote(path) else os.path.abspath(path)


def parent(path: str) -> str:
    """The folder holding `path` (absolute for a local path; a bucket or repo root is its own parent)."""
    if is_remote(path):
        url = normalize(path)
        scheme, rest = URL.match(url).groups()
        return f"{scheme}://{rest.rsplit('/', 1)[0]}" if "/" in rest else url
    return os.path.dirname(os.path.abspath(path))


def url_join(root: str, relative: str) -> str:
    return root.rstrip("/") + "/" + relative


def join(root: str, relative: str) -> str:
    """`relative` under the folder `root` (a URL's `..` collapsed)."""
    return normalize(url_join(root, relative)) if is_remote(root) else os.path.join(root, relative)


def relative_to(path: str, root: str) -> str:
    """`path` relative to the folder `root`, with `/` separators."""
    if is_remote(path):
        root = normalize(root).rstrip("/") + "/"
        path = normalize(path)
        return path[len(root):] if path.startswith(root) else path
    return os.path.relpath(path, root).replace(os.sep, "/")


def basename(path: str) -> str:
    return posixpath.basename(normalize(path)) if is_remote(path) else os.path.basename(path)


# -- listing --------------------------------------------------------------------------------------------
def is_file(path: str) -> bool:
    """Whether a (regular) file is at `path`; False too when the store cannot be asked."""
    return os.path.isfile(path) if not is_remote(path) else kind_or_none(path) == "file"


def is_dir(path: str) -> bool:
    """Whether a folder (a local directory, or a prefix holding objects) is at `path`."""
    return os.path.isdir(path) if not is_remote(path) else kind_or_none(path) == "directory"


def kind(url: str) -> str | None:
    """"file", "directory" or None (nothing there, or a URL no file can have) for a URL; StoreError
    when the store does not answer."""
    from pyarrow.fs import FileType

    try:
        remote, inner = filesystem_for(url)
        with asking(url):
            info = remote.arrow.get_file_info(inner)
    except ValueError:  # an unknown scheme, a path pyarrow refuses (ArrowInvalid)
        return None
    return {FileType.File: "file", FileType.Directory: "directory"}.get(info.type)


def kind_or_none(url: str) -> str | None:
    """`kind`, or None when the store cannot be asked (an invalid or unreachable URL)."""
    try:
        return kind(url)
    except (OSError, ValueError):
        return None


def files_under(url: str) -> list[str]:
    """Every file below the folder `url` (recursive), sorted; names starting with `.` (and what is
    below such folders, e.g. a download's `.cache/`) are left out, as for a local folder."""
    remote, inner = filesystem_for(url)
    root = inner.rstrip("/")
    with asking(url):
        found = remote.fsspec.find(root, detail=True)
    return sorted(remote.url(p) for p, info in found.items()
                  if info.get("type") == "file" and not hidden(p[len(root):]))


def glob_files(pattern: str) -> list[str]:
    """The files a glob URL matches (`*`, `?`, `[...]` within one folder, `**` across folders), sorted."""
    import glob

    remote, inner = filesystem_for(pattern)
    parts = inner.split("/")
    fixed = "/".join(parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))])
    with asking(pattern):
        found = remote.fsspec.glob(inner, detail=True)
    return sorted(remote.url(p) for p, info in found.items()
                  if info.get("type") == "file" and not hidden(p[len(fixed):]))


def hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/") if part)


# -- reading --------------------------------------------------------------------------------------------
def open_input(path: str) -> BinaryIO:
    """A binary, seekable file object: `open(path, "rb")` for a local path; for a URL, a buffered
    reader whose reads are ranged requests of READ_BLOCK bytes."""
    if not is_remote(path):
        return open(path, "rb")
    return io.BufferedReader(open_arrow(path), READ_BLOCK)


def open_arrow(url: str):
    """A pyarrow random-access file on the object at `url` (FileNotFoundError when there is none)."""
    remote, inner = filesystem_for(url)
    with asking(url):
        return remote.arrow.open_input_file(inner)


def stamp(path: str) -> tuple[int, int]:
    """(size in bytes, modification time in whole seconds; 0 when the store gives none)."""
    if not is_remote(path):
        st = os.stat(path)
        return st.st_size, int(st.st_mtime)
    from pyarrow.fs import FileType

    remote, inner = filesystem_for(path)
    with asking(path):
        info = remote.arrow.get_file_info(inner)
    if info.type != FileType.File:
        raise FileNotFoundError(2, "no such file", path)
    return info.size, int(info.mtime.timestamp()) if info.mtime else 0


def read_head(path: str, nbytes: int) -> bytes:
    """The first `nbytes` of the file (one ranged request for a URL): what format sniffing looks at."""
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read(nbytes)
    with open_arrow(path) as f, asking(path):
        return f.read(nbytes)


def read_bytes(path: str) -> bytes:
    """The whole content of the file at `path` (one request for a URL)."""
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    with open_arrow(path) as f, asking(path):
        return f.read()


def read_ranges(path: str, ranges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of each (offset, length) of the file (a ranged request each for a URL)."""
    if not is_remote(path):
        with open(path, "rb") as f:
            out = []
            for offset, length in ranges:
                f.seek(offset)
                out.append(f.read(length))
            return out
    with open_arrow(path) as f, asking(path), ThreadPoolExecutor(max_workers=RANGES_AT_ONCE) as pool:  # at once
        return list(pool.map(lambda r: f.read_at(r[1], r[0]), ranges))
