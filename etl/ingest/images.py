"""Image bytes on their way into the lake: loaded and sniffed per reference, built into `images` rows."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import pyarrow as pa
from lance.blob import BlobType

from etl import schema as S
from etl.imagerefs import ImageRoots, Located, UnreadableImage, read_regular_file
from etl.images import ImageInfo, NotAnImage, sniff
from etl.sources.base import ImageRef
from etl.storage import is_remote


@dataclass
class LoadedImage:
    info: ImageInfo | None = None
    data: bytes | memoryview | None = None  # None with `info` set: the file is already stored in the lake
    error: tuple[str, str] | None = None  # (kind, message)
    path: str | None = None  # the file it came from, if any
    arrow: tuple[pa.Array, int] | None = None  # the Arrow array and row `data` views (ImageRef.arrow)
    stamp: tuple[int, int] | None = None  # the file's (size, mtime_ns) when it was opened, if known


class StoredPaths:
    """Image files this run already stored, by path (bounded LRU).

    COCO-style sources reference the same file from many records: a re-referenced file whose size
    and mtime are unchanged is not read and hashed again. Files on object storage are not kept
    (asking for their size costs a request, as reading them does).
    """

    def __init__(self, capacity: int = 500_000):
        self.capacity, self.entries, self.lock = capacity, OrderedDict(), threading.Lock()

    def get(self, path: str) -> ImageInfo | None:
        if path not in self.entries or is_remote(path):  # the usual case: a file not referenced before (no stat)
            return None
        st = os.stat(path)
        with self.lock:
            entry = self.entries.get(path)
            if entry is None or entry[0] != (st.st_size, st.st_mtime_ns):
                return None
            self.entries.move_to_end(path)
            return entry[1]

    def put(self, path: str, info: ImageInfo, stamp: tuple[int, int] | None = None) -> None:
        """Remember `info` for the file at `path`, whose (size, mtime_ns) is `stamp` (else stat now)."""
        if is_remote(path):
            return
        if stamp is None:
            st = os.stat(path)
            stamp = (st.st_size, st.st_mtime_ns)
        with self.lock:
            self.entries[path] = (stamp, info)
            self.entries.move_to_end(path)
            while len(self.entries) > self.capacity:
                self.entries.popitem(last=False)


def load_image(ref: ImageRef, roots: ImageRoots, located: Located | None = None) -> LoadedImage:
    """Bytes + header info of one reference (`located` already, or now), or why it cannot be stored."""
    data, path = ref.data, None
    if data is None:
        if not ref.path:
            return LoadedImage(error=("missing_image", "image reference has neither bytes nor a path"))
        located = located or roots.locate(ref)
        if located.error:
            return LoadedImage(error=located.error)
        try:
            data, path = read_regular_file(located.path), located.path
        except UnreadableImage as exc:
            return LoadedImage(error=(exc.kind, str(exc)))
    return sniffed(ref, data, path, ref.arrow)


def sniffed(ref: ImageRef, data: bytes | memoryview, path: str | None = None,
            arrow: tuple[pa.Array, int] | None = None, stamp: tuple[int, int] | None = None) -> LoadedImage:
    """`data` (the bytes of `ref`, read from `path` if any, whose (size, mtime_ns) was `stamp`) with
    its header info and image id, or the error saying it is not an image."""
    try:
        return LoadedImage(info=sniff(data), data=data, path=path, arrow=arrow, stamp=stamp)
    except NotAnImage as exc:
        return LoadedImage(error=(exc.kind, f"{ref.path or 'embedded bytes'}: {exc}"))


def images_table(images: list[LoadedImage]) -> pa.Table:
    """Rows of `images` for new images. Bytes still in an Arrow array are copied by one `take` per
    array (no Python `bytes` in between); the rest (files, tar members) are built from their bytes."""
    by_array: dict[int | None, list[LoadedImage]] = {}
    for img in images:
        by_array.setdefault(id(img.arrow[0]) if img.arrow else None, []).append(img)
    return pa.concat_tables(images_chunk(group, blob_bytes(group)) for group in by_array.values())


def blob_bytes(images: list[LoadedImage]) -> pa.Array:
    """The images' bytes as one large_binary array (they all view one Arrow array, or none does);
    a run of consecutive rows of the array (the usual case: every row new) is a zero-copy slice."""
    if images[0].arrow is None:
        return pa.array([img.data for img in images], pa.large_binary())
    array, rows = images[0].arrow[0], [img.arrow[1] for img in images]
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return array.slice(rows[0], len(rows))
    return array.take(pa.array(rows, pa.int64()))


def images_chunk(images: list[LoadedImage], data: pa.Array) -> pa.Table:
    n = len(images)
    blobs = pa.StructArray.from_arrays(  # the storage of lance.blob_array(...), built without copies
        [data, pa.nulls(n, pa.utf8()), pa.nulls(n, pa.uint64()), pa.nulls(n, pa.uint64())],
        names=["data", "uri", "position", "size"])
    return pa.table(
        {
            "image_id": [i.info.image_id for i in images],
            S.BLOB_COLUMN: pa.ExtensionArray.from_storage(BlobType(), blobs),
            "format": [i.info.format for i in images],
            "width": pa.array([i.info.width for i in images], pa.int32()),
            "height": pa.array([i.info.height for i in images], pa.int32()),
            "nbytes": pa.array([i.info.nbytes for i in images], pa.int64()),
        }
    )


