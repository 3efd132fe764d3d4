"""What every source reader produces: uniform records with image references, never writes.

A reader is one short class per format (datatrove's shape): `read_file(path, start_row)` yields
`SourceRecord`s in file order. Ingest resolves image references to bytes, hashes them and writes;
the reader only parses. A record the reader cannot parse is yielded with `error` set, so it lands in
the lake's `errors` table with its raw text instead of disappearing.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from etl.storage import read_bytes, read_ranges, stamp


@dataclass
class ImageRef:
    """One image of a record: embedded bytes, or a path to resolve against the image roots.

    Bytes embedded in an Arrow array (parquet) stay there: `data` is a zero-copy view and `arrow`
    says where it lives, so ingest hashes them in place and copies them into the lake with one
    Arrow `take` per array instead of through Python `bytes`.
    """

    path: str | None = None  # as written in the source (relative or absolute)
    data: bytes | memoryview | None = None  # embedded bytes (parquet, tar members)
    base_dir: str | None = None  # the folder a relative `path` is relative to by default
    arrow: tuple[pa.Array, int] | None = None  # (large_binary array, row) that `data` views

    def __getstate__(self) -> dict:
        """Pickled (sent to a worker process) as plain bytes: a view cannot cross processes."""
        state = dict(self.__dict__)
        if isinstance(self.data, memoryview):
            state["data"], state["arrow"] = bytes(self.data), None
        return state


@dataclass
class SourceRecord:
    """One raw record, normalised to the lake's sample shape (plus the raw text for errors)."""

    source_file: str  # stable name of the file within the source (relative to the ingest argument)
    source_row: int  # 0-based record index within the file
    orig_id: str | None = None
    conversations: list[dict[str, str | None]] = field(default_factory=list)
    images: list[ImageRef] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    # the record as it came (JSON text), stored in errors if it fails; or a function making it, for
    # readers whose records rarely fail and are costly to serialise (call `raw_text()`)
    raw: str | Callable[[], str] | None = None
    error: tuple[str, str] | None = None  # (kind, message) when the record itself is unusable
    images_only: bool = False  # image-only shards: store the images, make no sample


    def raw_text(self) -> str | None:
        return self.raw() if callable(self.raw) else self.raw


class SourceReader(ABC):
    """Base class of all format readers.

    Subclasses set `format_name`, implement `read_file`, and may implement `sniff` (auto-detect)
    and `list_files` (which files of a directory belong to the format). A reader that can seek
    (`splittable`) also cuts a file into row ranges that parallel ingest's workers read on their
    own (`row_ranges`, then `read_file(..., end_row=)`); the others' records are parsed by the
    committing process and handed to the workers.
    """

    format_name: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]] = ()
    splittable: ClassVar[bool] = False
    fetches: ClassVar[bool] = False  # reads its images over a network: failures may pass (`refetched_on_rerun`)

    def __init__(self, image_roots: list[str] | None = None, **options: Any):
        self.image_roots = list(image_roots or [])
        self.options = options

    @classmethod
    def sniff(cls, path: str) -> bool:
        """True when the file at `path` looks like this format (used by --format auto)."""
        return path.lower().endswith(cls.extensions)

    @classmethod
    def refetched_on_rerun(cls, kind: str, every_kind: bool) -> bool:
        """Whether the next ingest of an unchanged file reads again a record that failed with error
        `kind` (`every_kind`: the user asked for every failure). Files on disk fail the same way
        twice: never; readers that `fetch` over a network say which failures may pass."""
        return False

    @abstractmethod
    def read_file(self, path: str, name: str, start_row: int = 0, end_row: int | None = None) -> Iterator[SourceRecord]:
        """Yield the records of `path` from `start_row` on; `name` is the stable file name to record.

        `end_row` comes only from a splittable reader's own `row_ranges`: it reads up to there (it
        may read on to the end of the unit holding it; the caller stops at `end_row`)."""

    @classmethod
    def row_ranges(cls, path: str, start_row: int, target_bytes: int) -> list[tuple[int, int]] | None:
        """[first, end) row ranges of `path` from `start_row` on, about `target_bytes` each, for
        workers to read with `read_file(..., first, end)`; None: read the file as a whole."""
        return None

    @classmethod
    def source_name_for(cls, path: str, root: str) -> str | None:
        """A default source name for a file under a directory argument (None: caller decides)."""
        return None


def as_text_id(value: Any) -> str | None:
    """Ids are kept as strings exactly as written: "000019465" stays zero-padded, 7 becomes "7"."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def raw_json(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, default=repr)


FINGERPRINT_WHOLE_BYTES = 8 << 20  # files up to this size are hashed whole
FINGERPRINT_WINDOWS, FINGERPRINT_WINDOW = 16, 256 << 10  # larger ones: 16 evenly spaced 256 KB windows


def file_fingerprint(path: str) -> str:
    """`size:mtime:content`, where content is a sha256 of the file (of 16 windows of 256 KB spread
    over it when it is larger than 8 MB: 4 MB read, not a second pass over a 1 GB shard): a
    checkpoint knows the content it covered, not only a name. A file on object storage or the Hub
    (`etl.storage`) is read by ranged requests: 16 of them, or one for a small file."""
    size, mtime = stamp(path)
    digest = hashlib.sha256()
    if size <= FINGERPRINT_WHOLE_BYTES:
        digest.update(read_bytes(path))
    else:
        step = (size - FINGERPRINT_WINDOW) // (FINGERPRINT_WINDOWS - 1)
        for window in read_ranges(path, [(i * step, FINGERPRINT_WINDOW) for i in range(FINGERPRINT_WINDOWS)]):
            digest.update(window)
    return f"{size}:{mtime}:{digest.hexdigest()[:32]}"


def same_content(recorded: str, current: str) -> bool:
    """Whether a checkpoint's fingerprint describes the file as it is now: same size and content
    (a copy with a new mtime is the same file); fingerprints of older lakes (`size:mtime`) compare
    size and mtime."""
    old, new = recorded.split(":"), current.split(":")
    if len(old) < 3:
        return old == new[:2]
    return old[0] == new[0] and old[2:] == new[2:]
