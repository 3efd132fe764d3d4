"""JSON sources: records out of JSON arrays, JSONL and wrapped objects, and the base class of the
readers that turn one JSON record into one sample (LLaVA, messages, data-juicer).

The file is split into records by `etl.sources.jsonstream` (each record parsed on its own; a bad
stretch is one error row, never the end of the file); this module decides the layout and hands
the records to the reader.
"""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from typing import Any

from etl import storage
from etl.sources.base import SourceReader, SourceRecord
from etl.sources.jsonstream import CHUNK, MAX_RECORD_BYTES, BadStretch, RecordSplitter, TextWindow, jsonl_items

SNIFF_BYTES = 1 << 20  # records longer than this are not looked at when detecting the format
SNIFF_ROWS = 16  # nor records after the first this many rows
LEADING = b"\xef\xbb\xbf \t\r\n"  # a UTF-8 byte-order mark and whitespace before the first value


class JsonRecordsReader(SourceReader):
    """Base of the JSON/JSONL readers: streams the records, converts each with `to_record`.

    A stretch of the file that is no usable record (does not parse, is cut, is not UTF-8, is too
    large or too deep: see `jsonstream`) becomes one error record with its raw text, and reading
    goes on; `accepts(first)` says whether a file whose first record is `first` belongs to the
    reader (auto-detection). Option `max_record_mb` bounds the length of one record.
    """

    extensions = (".json", ".jsonl")

    @classmethod
    def accepts(cls, first: Any) -> bool:
        return True

    @classmethod
    def sniff(cls, path: str) -> bool:
        return path.lower().endswith(cls.extensions) and cls.accepts(first_record(path))

    def read_file(self, path: str, name: str, start_row: int = 0, end_row: int | None = None) -> Iterator[SourceRecord]:
        base_dir = storage.parent(path)
        for row, item in iter_json_records(path, start_row, self.max_record_bytes()):
            if isinstance(item, BadStretch):
                yield SourceRecord(name, row, raw=item.raw, error=(item.kind, item.message))
            else:
                yield self.to_record(item, name, row, base_dir)

    def max_record_bytes(self) -> int:
        """The longest record read (option `max_record_mb`); a longer one is a `record_too_large` row."""
        mb = self.options.get("max_record_mb")
        return int(float(mb) * 2**20) if mb else MAX_RECORD_BYTES

    @abstractmethod
    def to_record(self, item: Any, name: str, row: int, base_dir: str) -> SourceRecord:
        """One parsed JSON record as a SourceRecord (with `error` set when it is unusable)."""


def iter_json_records(path: str, start_row: int = 0, max_record_bytes: int = MAX_RECORD_BYTES,
                      chunk: int = CHUNK) -> Iterator[tuple[int, Any]]:
    """(row, record or BadStretch) of a JSON array, a wrapped JSON object or JSONL, from `start_row` on
    (`chunk`: bytes read at a time; the rows do not depend on it)."""
    layout = json_layout(path)
    with storage.open_input(path) as f:
        if layout == "jsonl":
            yield from jsonl_items(f, start_row, max_record_bytes)
            return
        window = TextWindow(f, chunk)
        window.skip()
        splitter = RecordSplitter(window, max_record_bytes)
        yield from splitter.array_items(start_row) if layout == "array" else splitter.object_items(start_row)


def json_layout(path: str) -> str:
    """"array", "object" (one JSON object, usually wrapping a record list) or "jsonl".

    A file starting with `{` is JSONL when its first line is followed by a line starting with `{`
    (or when the first line ends with `}` and more follows); a single line is JSONL only in a
    `.jsonl` file (`{"annotations": [...]}` minified on one line is one wrapped object).
    """
    with storage.open_input(path) as f:
        head = f.read(4096)
        lead = len(head) - len(head.lstrip(LEADING))
        first = head[lead:lead + 1]
        if first == b"[":
            return "array"
        if first != b"{":
            return "jsonl"
        f.seek(lead)
        last, after = line_ends(f)
    if after is None:
        return "jsonl" if path.lower().endswith(".jsonl") else "object"
    return "jsonl" if after == b"{" or (last == b"}" and after not in b'"]},:') else "object"


def line_ends(f) -> tuple[bytes, bytes | None]:
    """The last non-blank byte of the line at `f`'s position and the first non-blank byte after
    that line (None at the end of the file), read in bounded blocks."""
    last = b""
    while True:
        block = f.read(1 << 20)
        if not block:
            return last, None
        line, newline, rest = block.partition(b"\n")
        last = line.rstrip()[-1:] or last
        if newline:
            break
    while not (rest := rest.lstrip()):
        if not (rest := f.read(1 << 20)):
            return last, None
    return last, rest[:1]


def first_record(path: str) -> Any:
    """The first record that parses among the file's first rows (None if none): what a reader's
    `accepts` looks at to claim the file."""
    for row, item in iter_json_records(path, 0, SNIFF_BYTES):
        if not isinstance(item, BadStretch):
            return item
        if row >= SNIFF_ROWS:
            break
    return None
