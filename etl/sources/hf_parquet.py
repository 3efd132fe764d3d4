"""Hugging Face parquet reader: LLaVA-OneVision-Data, LLaVA-ReCap-*, LLaVA-NeXT-Data, LLaMA-Factory shards.

Reads a parquet file one row group at a time (in batches of about `BATCH_BYTES`), so a 140 GB
ReCap-CC3M ingests in bounded memory; `start_row` skips whole row groups from the footer metadata.

Which column plays which role is decided once per file from its Arrow schema:

- images: HF `Image` columns (`struct<bytes, path>`), `Sequence(Image)` (lists of them), and plain
  `binary` / `list<binary>` columns (data-juicer's `image_bytes`). Embedded bytes are used as they
  are; a struct with null bytes but a `path` is a path relative to the dataset folder (the folder
  given to ingest) or an `--image-root`; a null image is no image (a text-only row). When a file
  has no embedded images, string columns named like images (`image`, `images`, `image_path`,
  `url`, ...) are paths. The names given with embedded bytes (`image.path`, data-juicer's `images`
  list) stay with the reference, so the lake keeps them as written (`samples.image_paths`).
- dialogue: `conversations` (LLaVA turns, kept as written), `messages` (LLaMA-Factory parts,
  converted like the messages reader, system turns to `meta["system"]`), or a caption column
  (`text`, `caption`, `txt`) that becomes `[human: --prompt, gpt: caption]`; data-juicer's
  `<__dj__image>` tags and `[[human]]:`/`[[gpt]]:` markers are honoured.
- `id` becomes `orig_id`; every other column (`data_source`, ...) is kept in `meta`. A file written
  by `export --format hf-parquet` names (schema metadata `mmlake.meta_column`) the column holding
  each sample's meta as JSON text: its keys become the meta again.
"""
from __future__ import annotations

import json
import os
import queue
import re
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ContextManager, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from etl import storage
from etl.sources import register
from etl.sources.base import ImageRef, SourceReader, SourceRecord, as_text_id, raw_json
from etl.sources.llava import MalformedRecord, llava_turns
from etl.sources.messages import MalformedMessages, messages_to_turns
from etl.sources.webdataset import caption_turns, prompt_option

PARQUET_MAGIC = b"PAR1"
BATCH_BYTES = 32 << 20  # decoded bytes per record batch: bounds memory whatever the row-group size
READ_AHEAD = 2  # record batches read ahead of the consumer
READ_BUFFER = 8 << 20  # buffered (streaming) page reads instead of loading whole column chunks
WHOLE_CHUNK_BYTES = 64 << 20  # column chunks up to this size are read in one go (no buffer copy)
WILLNEED, DONTNEED = getattr(os, "POSIX_FADV_WILLNEED", None), getattr(os, "POSIX_FADV_DONTNEED", None)  # not on macOS
WINDOW_BYTES = 128 << 20  # row groups read ahead / dropped from the page cache together
ID_COLUMNS = ("id", "sample_id", "uid")
CAPTION_COLUMNS = ("text", "caption", "txt")
IMAGE_PATH_COLUMNS = ("image", "images", "image_path", "image_paths", "image_file", "file_name", "url", "image_url")
SHARD_NAME = re.compile(r"^[\w.-]+-\d{5}-of-\d{5}\.parquet$")
NON_CONFIG_DIRS = ("data",)
DJ_IMAGE_TAG, DJ_CHUNK_END = "<__dj__image>", "<|__dj__eoc|>"
DJ_TURN = re.compile(r"\[\[(human|gpt)\]\]:\s?")
_END = object()
T = TypeVar("T")


@register
class HFParquetReader(SourceReader):
    """Reads HF-style parquet shards (embedded or path-only images) into samples, row group by row group."""

    format_name = "hf-parquet"
    extensions = (".parquet", ".pq")
    splittable = True  # by row groups

    @classmethod
    def sniff(cls, path: str) -> bool:
        """A `.parquet`/`.pq` file (or an extensionless file) that starts with the parquet magic."""
        if not path.lower().endswith(cls.extensions) and os.path.splitext(path)[1]:
            return False
        return storage.read_head(path, 4) == PARQUET_MAGIC

    @classmethod
    def source_name_for(cls, path: str, root: str) -> str | None:
        """The config folder a shard sits in (`<root>/<config>/train-*.parquet`), `data/` skipped.

        A shard named on its own (`.../LLaVA-ReCap-558K/data/train-00000-of-00010.parquet`) takes
        the name of its dataset folder.
        """
        parts = storage.relative_to(path, root).split("/")
        folders = [p for p in parts[:-1] if p not in NON_CONFIG_DIRS]
        if folders:
            return folders[0]
        if SHARD_NAME.match(parts[-1]):  # a shard named alone (or by a glob): its dataset folder names it
            folder = storage.parent(path)
            while storage.basename(folder) in NON_CONFIG_DIRS:
                folder = storage.parent(folder)
            return storage.basename(folder) or None
        return None

    @classmethod
    def row_ranges(cls, path: str, start_row: int, target_bytes: int) -> list[tuple[int, int]] | None:
        """[first, end) row ranges from `start_row` on, whole row groups of about `target_bytes` each.

        Lets parallel ingest hand each worker its own slice of a shard; None when the footer is unreadable
        (the file is then read whole, and ends in a `corrupt_file` error).
        """
        try:
            metadata = parquet_metadata(path)
        except (pa.ArrowException, OSError):
            return None
        ranges, first, size, row = [], start_row, 0, 0
        for group in range(metadata.num_row_groups):
            meta = metadata.row_group(group)
            row += meta.num_rows
            if row <= start_row:
                continue
            size += meta.total_byte_size
            if size >= target_bytes or group == metadata.num_row_groups - 1:
                ranges.append((first, row))
                first, size = row, 0
        return ranges

    def read_file(self, path: str, name: str, start_row: int = 0, end_row: int | None = None) -> Iterator[SourceRecord]:
        """Records from `start_row` on (up to the row group holding `end_row`, when given: parallel
        ingest's task ranges); a file that stops parsing ends with one `corrupt_file` error."""
        row = start_row
        try:
            with parquet_source(path) as source:
                parquet = pq.ParquetFile(source, pre_buffer=False, buffer_size=READ_BUFFER)
                layout, metadata = ColumnLayout.of(parquet.schema_arrow), parquet.metadata
            converter = RowConverter(layout, name, dataset_root(path, name), prompt_option(self.options.get("prompt")))
            for first_row, batch in read_ahead(iter_row_batches(path, metadata, start_row, end_row)):
                for row, values in enumerate(batch_rows(batch, layout.embedded), first_row):
                    yield converter.record(values, row)
                row = first_row + batch.num_rows
        except (pa.ArrowException, *storage.store_errors()) as exc:  # a cut download, a bad page: the rest is lost
            storage.raise_if_unreachable(path, exc)  # unless the store, not the file, failed
            message = f"parquet unreadable from row {row} on: {type(exc).__name__}: {exc}"
            raw = raw_json({"file": name, "from_row": row})
            yield SourceRecord(name, row, raw=raw, error=("corrupt_file", message))


def read_ahead(items: Iterator[T], depth: int = READ_AHEAD) -> Iterator[T]:
    """Yield `items` while a thread already reads the next `depth` of them.

    Parquet page reads and decompression release the GIL, so the next batch is read while ingest
    hashes and writes the current one; memory grows by at most `depth` batches.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def offer(entry: tuple) -> bool:
        """Queue `entry` unless the consumer has gone away (then the producer just ends)."""
        while not stopped.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((_END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            offer((_END, exc))

    thread = threading.Thread(target=produce, name="parquet-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stopped.set()


def iter_row_batches(path: str, metadata: pq.FileMetaData, start_row: int,
                     end_row: int | None = None) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row number, batch) from `start_row` on; row groups before it (and from `end_row`
    on) are never read.

    Column chunks are read whole when every one to read is small (HF writes row groups of 100
    images), else streamed `READ_BUFFER` at a time, so memory stays bounded by whichever is smaller.
    Plain reads, not a memory map: on the VMs we run on, a mapped read costs twice the CPU (a page
    fault per 4 KB). The kernel is asked to read the next window of about WINDOW_BYTES of row
    groups while this one is decoded, and to drop each window from the page cache once read, so a
    one-pass read of 100 GB recycles the same pages instead of evicting everything else (and
    never-touched pages are slow on a VM). A URL (`etl.storage`) is read by ranged requests; the
    row groups of a window are then read together (memory: one window, WINDOW_BYTES).
    """
    firsts = {g: first for g, first, end in row_group_rows(metadata)
              if end > start_row and (end_row is None or first < end_row)}
    groups = list(firsts)
    remote, buffer_size = storage.is_remote(path), read_buffer(metadata, groups)
    # a remote file's small column chunks: each window's row groups pre-buffered at once (pyarrow merges
    # them into a few large ranged reads, made concurrently), not one request per column chunk
    by_window = remote and buffer_size == 0
    with storage.open_arrow(path) if remote else open(path, "rb") as raw:
        parquet = pq.ParquetFile(raw if remote else path, metadata=metadata, pre_buffer=by_window,
                                 buffer_size=buffer_size)
        fd = None if remote else raw.fileno()  # no page cache to steer for a remote file
        planned = list(windows(groups, metadata))
        advise(fd, metadata, planned[0] if planned else [], WILLNEED)
        for number, window in enumerate(planned):
            if number + 1 < len(planned):
                advise(fd, metadata, planned[number + 1], WILLNEED)  # read while this one is decoded
            for part in [window] if by_window else [[group] for group in window]:
                yield from part_batches(parquet, part, firsts[part[0]], start_row)
            advise(fd, metadata, window, DONTNEED)  # read once: free its page cache


def part_batches(parquet: pq.ParquetFile, groups: list[int], first_row: int,
                 start_row: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row number, batch) of consecutive row `groups` (starting at row `first_row`) from
    `start_row` on, in batches of about BATCH_BYTES decoded bytes."""
    metas = [parquet.metadata.row_group(group) for group in groups]
    rows, size = sum(m.num_rows for m in metas), sum(m.total_byte_size for m in metas)
    row = first_row
    for batch in parquet.iter_batches(batch_size=max(1, BATCH_BYTES * rows // max(size, 1)), row_groups=groups):
        skip = min(max(start_row - row, 0), batch.num_rows)
        if skip < batch.num_rows:
            yield row + skip, batch.slice(skip)
        row += batch.num_rows


def parquet_source(path: str) -> ContextManager[str | pa.NativeFile]:
    """What pyarrow opens: the local path itself, or a random-access file on the URL (ranged reads)."""
    return storage.open_arrow(path) if storage.is_remote(path) else nullcontext(path)


def parquet_metadata(path: str) -> pq.FileMetaData:
    """The footer of the parquet file at `path` (a local path, or a URL)."""
    with parquet_source(path) as source:
        return pq.read_metadata(source)


def read_buffer(metadata: pq.FileMetaData, groups: list[int]) -> int:
    """0 (read each column chunk in one go, straight into its page buffer) when all the column
    chunks of `groups` (the row groups about to be read) are small."""
    largest = max((metadata.row_group(g).column(c).total_compressed_size
                   for g in groups for c in range(metadata.num_columns)), default=0)
    return 0 if largest <= WHOLE_CHUNK_BYTES else READ_BUFFER


def row_group_rows(metadata: pq.FileMetaData) -> list[tuple[int, int, int]]:
    """(row group, first row, end row) of every row group."""
    out, first = [], 0
    for group in range(metadata.num_row_groups):
        end = first + metadata.row_group(group).num_rows
        out.append((group, first, end))
        first = end
    return out


def windows(groups: list[int], metadata: pq.FileMetaData) -> Iterator[list[int]]:
    """`groups` cut into runs of about WINDOW_BYTES."""
    window, size = [], 0
    for group in groups:
        window.append(group)
        size += metadata.row_group(group).total_byte_size
        if size >= WINDOW_BYTES:
            yield window
            window, size = [], 0
    if window:
        yield window


def advise(fd: int | None, metadata: pq.FileMetaData, groups: list[int], advice: int | None) -> None:
    """posix_fadvise `advice` for the bytes of `groups` (WILLNEED: start reading them now and return;
    DONTNEED: drop them from the page cache, so a one-pass read of 100 GB recycles the same pages
    instead of evicting everything else)."""
    if advice is None or fd is None:
        return
    for group in groups:
        meta = metadata.row_group(group)
        chunks = [meta.column(c) for c in range(meta.num_columns)]
        start = min(c.dictionary_page_offset or c.data_page_offset for c in chunks)
        end = max((c.dictionary_page_offset or c.data_page_offset) + c.total_compressed_size for c in chunks)
        os.posix_fadvise(fd, start, end - start, advice)


def dataset_root(path: str, name: str) -> str:
    """The folder path-only images are relative to: the folder ingest was given (HF: the repo root).

    For a single file named on the command line, the nearest ancestor (up to two levels) holding
    the dataset card `README.md`, else the file's own folder. A URL's folder is a URL.
    """
    path = storage.absolute(path)
    if "/" in name and path.replace(os.sep, "/").endswith("/" + name):
        return path[: -len(name) - 1]
    folder = storage.parent(path)
    for candidate in (folder, storage.parent(folder), storage.parent(storage.parent(folder))):
        if storage.is_file(storage.join(candidate, "README.md")):
            return candidate
    return folder


def batch_rows(batch: pa.RecordBatch, embedded: list[str]) -> list[dict[str, Any]]:
    """`batch.to_pylist()`, except that the image columns' bytes stay in Arrow memory (ArrowBytes)."""
    if not embedded:
        return batch.to_pylist()
    rows = batch.drop_columns(embedded).to_pylist()
    for column in embedded:
        for row, value in zip(rows, python_values(batch.column(column))):
            row[column] = value
    return rows


@dataclass(frozen=True, slots=True)
class ArrowBytes:
    """One binary value left in its Arrow array: a zero-copy view and where it lives."""

    view: memoryview
    array: pa.Array  # large_binary
    index: int

    def __len__(self) -> int:
        return len(self.view)


def python_values(array: pa.Array) -> list[Any]:
    """Like `array.to_pylist()` for image columns (binary, HF Image structs, lists of them), but every
    binary value is an ArrowBytes view instead of a copy."""
    kind = array.type
    if is_binary(kind):
        return binary_values(array)
    if pa.types.is_struct(kind):
        names = [kind.field(i).name for i in range(kind.num_fields)]
        children = [python_values(child) for child in array.flatten()]  # flatten: slice and nulls applied
        valid = array.is_valid().to_pylist()
        return [dict(zip(names, values)) if ok else None for ok, *values in zip(valid, *children)]
    if element_type(kind) is not kind:
        items, values, at = array.value_lengths().to_pylist(), python_values(array.flatten()), 0
        rows = []
        for n in items:
            rows.append(None if n is None else values[at: at + n])
            at += n or 0
        return rows
    return array.to_pylist()


def binary_values(array: pa.Array) -> list[ArrowBytes | None]:
    array = array.cast(pa.large_binary())  # binary → large_binary shares the data buffer
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset: array.offset + len(array) + 1].tolist()
    data = memoryview(data_buffer) if data_buffer is not None else memoryview(b"")
    valid = array.is_valid().to_pylist() if array.null_count else [True] * len(array)
    return [ArrowBytes(data[start:end], array, i) if ok else None
            for i, (ok, start, end) in enumerate(zip(valid, offsets, offsets[1:]))]


# -- columns ----------------------------------------------------------------------------------------
def is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def element_type(t: pa.DataType) -> pa.DataType:
    """The item type of a list column, or the type itself."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_list_view(t):
        return t.value_type
    return t


def is_hf_image(t: pa.DataType) -> bool:
    """HF `Image()` storage: struct<bytes: binary, path: string>."""
    if not pa.types.is_struct(t):
        return False
    names = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
    return "bytes" in names and is_binary(names["bytes"]) and is_string(names.get("path", pa.null()))


@dataclass
class ColumnLayout:
    """Which columns hold the id, the images (embedded or paths) and the dialogue."""

    id_column: str | None = None
    embedded: list[str] = field(default_factory=list)  # HF Image structs / binary, or lists of them
    paths: list[str] = field(default_factory=list)  # image paths (names only when bytes are embedded)
    dialogue: str | None = None
    dialogue_kind: str | None = None  # conversations | messages | caption
    consumed: set[str] = field(default_factory=set)  # columns turned into id/images/turns; the rest is meta
    meta_json: str | None = None  # a column of meta as JSON text (mmlake's own hf-parquet export)

    @classmethod
    def of(cls, schema: pa.Schema) -> "ColumnLayout":
        layout = cls()
        layout.id_column = next((c for c in ID_COLUMNS if c in schema.names), None)
        for f in schema:
            item = element_type(f.type)
            if is_hf_image(item) or is_binary(item):
                layout.embedded.append(f.name)
            elif is_string(item) and f.name.lower() in IMAGE_PATH_COLUMNS:
                layout.paths.append(f.name)
        for kind, names in (("conversations", ("conversations",)), ("messages", ("messages",)),
                            ("caption", CAPTION_COLUMNS)):
            found = next((c for c in names if c in schema.names), None)
            if found and not layout.dialogue:
                layout.dialogue, layout.dialogue_kind = found, kind
        layout.meta_json = mmlake_meta_column(schema)
        layout.consumed = {c for c in (layout.id_column, layout.dialogue, layout.meta_json, *layout.embedded,
                                       *layout.paths) if c}
        return layout



def mmlake_meta_column(schema: pa.Schema) -> str | None:
    """The meta column named by the `mmlake` schema metadata of an mmlake export, if it is a string column."""
    try:
        column = json.loads((schema.metadata or {}).get(b"mmlake", b"{}")).get("meta_column")
    except (ValueError, AttributeError):
        return None
    return column if column in schema.names and is_string(schema.field(column).type) else None


def meta_of_json(text: str | None, column: str) -> dict[str, Any]:
    """The meta a JSON-object text holds; anything else stays, as written, under its column's name."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {column: text}


class RowConverter:
    """Turns one parquet row (a dict) into a SourceRecord following the file's ColumnLayout."""

    def __init__(self, layout: ColumnLayout, name: str, base_dir: str, prompt: str):
        self.layout, self.name, self.base_dir, self.prompt = layout, name, base_dir, prompt

    def record(self, row: dict[str, Any], index: int) -> SourceRecord:
        layout = self.layout
        orig_id = as_text_id(row.get(layout.id_column)) if layout.id_column else None
        record = SourceRecord(self.name, index, orig_id=orig_id)
        record.meta = {k: v for k, v in row.items() if k not in layout.consumed}
        if layout.meta_json:
            record.meta = meta_of_json(row.get(layout.meta_json), layout.meta_json) | record.meta
        # the row without its bytes: what the errors table keeps if this row or its image fails
        # (serialised only then: JSON of every good row costs more than reading it)
        record.raw = partial(raw_row_json, row, layout.embedded)
        try:
            record.images = self.images(row)
            record.conversations = self.dialogue(row, record)
        except (MalformedRecord, MalformedMessages) as exc:
            record.error = ("malformed_record", str(exc))
        return record

    def images(self, row: dict[str, Any]) -> list[ImageRef]:
        """Embedded images in column order, named as the file names them; else the path columns."""
        if self.layout.embedded:
            refs = [ref for column in self.layout.embedded for value in as_list(row.get(column))
                    if (ref := self.embedded_ref(value))]
            names = [p for c in self.layout.paths for p in as_list(row.get(c))]
            if len(names) == len(refs) and not any(ref.path for ref in refs):  # data-juicer: names beside bytes
                for ref, name in zip(refs, names):
                    ref.path = name
            return refs
        paths = [p for c in self.layout.paths for p in as_list(row.get(c)) if p]
        return [ImageRef(path=p, base_dir=self.base_dir) for p in paths]

    def embedded_ref(self, value: Any) -> ImageRef | None:
        """An HF Image struct or raw bytes as a reference; a null image (text-only row) is None."""
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is None and not path:
                return None
            return embedded(data, ImageRef(path=path, base_dir=self.base_dir))
        return embedded(value, ImageRef()) if value is not None else None

    def dialogue(self, row: dict[str, Any], record: SourceRecord) -> list[dict]:
        kind, value = self.layout.dialogue_kind, row.get(self.layout.dialogue) if self.layout.dialogue else None
        if kind == "conversations":
            if value is None:
                raise MalformedRecord("`conversations` is null")
            turns, extras = llava_turns(value)
            if extras:
                record.meta["turn_extras"] = extras
            return turns
        if kind == "messages":
            dialogue = messages_to_turns(value)
            if dialogue.system:
                record.meta["system"] = dialogue.system[0] if len(dialogue.system) == 1 else dialogue.system
            return dialogue.turns
        if kind == "caption" and value is not None:
            return data_juicer_turns(value, self.prompt)
        if not record.images:
            raise MalformedRecord("row has neither images nor a dialogue column")
        record.images_only = True
        return []


def embedded(data: ArrowBytes | bytes | None, ref: ImageRef) -> ImageRef:
    """`ref` carrying the bytes (a view into their Arrow array when they are still there)."""
    if isinstance(data, ArrowBytes):
        ref.data, ref.arrow = data.view, (data.array, data.index)
    else:
        ref.data = data
    return ref


def raw_row_json(row: dict[str, Any], embedded: list[str]) -> str:
    return raw_json({k: without_bytes(v) if k in embedded else v for k, v in row.items()})


def without_bytes(value: Any) -> Any:
    """An image value for the errors table: its path kept, its bytes replaced by their length."""
    if isinstance(value, list):
        return [without_bytes(v) for v in value]
    if isinstance(value, dict) and value.get("bytes") is not None:
        return {**value, "bytes": f"<{len(value['bytes'])} bytes>"}
    if isinstance(value, (bytes, ArrowBytes)):
        return f"<{len(value)} bytes>"
    return value


def as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def data_juicer_turns(text: str, prompt: str) -> list[dict]:
    """A caption (or data-juicer text) as turns: `[[human]]:`/`[[gpt]]:` chunks, else prompt + caption.

    `<__dj__image>` becomes `<image>`; a plain caption loses its image tags (the prompt carries them).
    """
    text = text.replace(DJ_CHUNK_END, "")
    if DJ_TURN.search(text):
        pieces = DJ_TURN.split(text)[1:]
        return [{"from": who, "value": said.replace(DJ_IMAGE_TAG, "<image>").rstrip("\n")}
                for who, said in zip(pieces[::2], pieces[1::2])]
    return caption_turns(text.replace(DJ_IMAGE_TAG, "").strip(), prompt)
