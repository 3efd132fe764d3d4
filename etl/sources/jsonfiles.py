"""JSON sources: streaming records out of JSON arrays, JSONL and wrapped objects, and the base
class of the readers that turn one JSON record into one sample (LLaVA, messages, data-juicer).
"""
from __future__ import annotations

import json
import os
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any

import ijson

from etl.sources.base import SourceReader, SourceRecord

SNIFF_BYTES = 1 << 20  # the first record must start within this many bytes


class NoRecordList(ValueError):
    """A JSON object file that wraps no list of records."""


class JsonRecordsReader(SourceReader):
    """Base of the JSON/JSONL readers: streams the records, converts each with `to_record`.

    A JSONL line that does not parse becomes a `bad_json_line` error record; `accepts(first)` says
    whether a file whose first record is `first` belongs to the reader (auto-detection).
    """

    extensions = (".json", ".jsonl")

    @classmethod
    def accepts(cls, first: Any) -> bool:
        return True

    @classmethod
    def sniff(cls, path: str) -> bool:
        return path.lower().endswith(cls.extensions) and cls.accepts(first_record(path))

    def read_file(self, path: str, name: str, start_row: int = 0) -> Iterator[SourceRecord]:
        base_dir = os.path.dirname(os.path.abspath(path))
        for row, item in iter_json_records(path, start_row):
            if isinstance(item, JsonLineError):
                yield SourceRecord(name, row, raw=item.line, error=("bad_json_line", item.message))
            else:
                yield self.to_record(item, name, row, base_dir)

    @abstractmethod
    def to_record(self, item: Any, name: str, row: int, base_dir: str) -> SourceRecord:
        """One parsed JSON record as a SourceRecord (with `error` set when it is unusable)."""


class JsonLineError:
    """A JSONL line that does not parse: kept with its text so it lands in `errors`."""

    def __init__(self, line: str, message: str):
        self.line, self.message = line, message


def first_char(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1].decode("ascii", "replace")


def iter_json_records(path: str, start_row: int = 0) -> Iterator[tuple[int, Any]]:
    """(row, record) pairs of a JSON array, a wrapped JSON object or JSONL, from `start_row` on."""
    kind = json_layout(path)
    if kind == "array":
        yield from iter_ijson_items(path, "item", start_row)
    elif kind == "object":
        yield from iter_ijson_items(path, f"{wrapped_list_key(path)}.item", start_row)
    else:
        yield from iter_jsonl(path, start_row)


def json_layout(path: str) -> str:
    """"array", "object" (one JSON object wrapping a record list) or "jsonl"."""
    c = first_char(path)
    if c == "[":
        return "array"
    if c == "{":
        with open(path, "rb") as f:
            first_line = f.readline()
        try:
            json.loads(first_line)
            return "jsonl"
        except ValueError:
            return "object"
    return "jsonl"


def wrapped_list_key(path: str) -> str:
    """The first top-level key whose value is a list of objects (`annotations`, `data`, ...)."""
    with open(path, "rb") as f:
        for prefix, event, _ in ijson.parse(f):
            if event == "start_map" and prefix.endswith(".item") and prefix.count(".") == 1:
                return prefix[: -len(".item")]
    raise NoRecordList(f"{path}: a JSON object with no list of records inside")


def iter_ijson_items(path: str, prefix: str, start_row: int) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for row, item in enumerate(ijson.items(f, prefix, use_float=True)):
            if row >= start_row:
                yield row, item


def iter_jsonl(path: str, start_row: int) -> Iterator[tuple[int, Any]]:
    """Rows are 0-based line numbers, so an error names the line; blank lines are skipped."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for row, line in enumerate(f):
            if row < start_row or not line.strip():
                continue
            try:
                yield row, json.loads(line)
            except ValueError as exc:
                yield row, JsonLineError(line.rstrip("\n"), f"line {row + 1}: {exc}")


def first_record(path: str) -> Any:
    """The first record of a JSON array or JSONL file, parsed from its first MB (None if unreadable)."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES).lstrip(b"\xef\xbb\xbf \t\r\n")
    text = head.decode("utf-8", "ignore")
    if text.startswith("["):
        text = text[1:].lstrip()
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    return value
