"""OCR-VQA (`--format ocr-vqa`): `dataset.json`, book covers by URL with their questions and answers.

The file is one JSON object keyed by the book's Amazon id, not a list:

    {"0000000001": {"imageURL": "http://ecx.images-amazon.com/images/I/51xYz.jpg",
                    "questions": ["Who wrote this book?", "What is the genre of this book?", ...],
                    "answers": ["Jane Doe", "Travel", ...],
                    "title": "...", "authorName": "...", "genre": "Travel", "split": 1}, ...}

Each entry is one sample: the id is its `orig_id`, the question/answer pairs its turns (`<image>`
before the first question, as LLaVA-1.5's mix writes them), every other key (`title`, `authorName`,
`genre`, `split`: 1 train, 2 val, 3 test) its meta, and the image is downloaded like any URL list's
(etl/sources/urls.py: the same options, retries, errors rows and refetch on rerun). Entries are
streamed one by one (the real file holds 207,572 of them); a row is an entry's index in the file. An
entry whose questions and answers do not pair up is a `malformed_record` row with its raw text.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from etl.sources import register
from etl.sources.base import raw_json
from etl.sources.jsonfiles import SNIFF_BYTES, json_layout
from etl.sources.jsonstream import MAX_RECORD_BYTES, BadStretch, RecordSplitter, TextWindow
from etl.sources.urls import Pending, RecentFetches, UrlListReader

ENTRY_KEYS = ("imageURL", "questions", "answers")


@dataclass
class Entry:
    """One entry reshaped as a URL-list record, and the entry as `{id: entry}` JSON (its errors row's raw)."""

    record: dict[str, Any]
    raw: str


@register
class OcrVqaReader(UrlListReader):
    """Reads OCR-VQA's id-keyed `dataset.json` into Q/A conversations whose cover image is downloaded."""

    format_name = "ocr-vqa"
    extensions = (".json",)

    @classmethod
    def sniff(cls, path: str) -> bool:
        """A `.json` object whose first member is an entry (`imageURL`, `questions`, `answers`)."""
        if not path.lower().endswith(cls.extensions) or json_layout(path) != "object":
            return False
        first = next(keyed_members(path, 0, SNIFF_BYTES), (0, None))[1]
        return isinstance(first, tuple) and isinstance(first[1], dict) and all(k in first[1] for k in ENTRY_KEYS)

    def rows(self, path: str, start_row: int) -> Iterator[tuple[int, Any]]:
        for row, member in keyed_members(path, start_row):
            yield row, member if isinstance(member, BadStretch) else entry(*member)

    def start(self, item: Any, name: str, row: int, fetch: RecentFetches) -> Pending:
        if not isinstance(item, Entry):
            return super().start(item, name, row, fetch)
        pending = super().start(item.record, name, row, fetch)
        pending.record.raw = item.raw
        return pending


def keyed_members(path: str, start_row: int, max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[tuple[int, Any]]:
    """(row, (key, value) or BadStretch) of the JSON object `path` holds, streamed."""
    with open(path, "rb") as f:
        window = TextWindow(f)
        if window.skip() != "{":
            yield 0, BadStretch("malformed_record", f"{path} is not a JSON object keyed by id", "")
            return
        yield from RecordSplitter(window, max_record_bytes).keyed_items(start_row)


def entry(key: str, value: Any) -> Entry | BadStretch:
    """An entry as a URL-list record (`id`, `url`, `conversations`, the other keys), or why it is none."""
    raw = raw_json({key: value})
    if not isinstance(value, dict):
        return BadStretch("malformed_record", f"entry {key!r} is a {type(value).__name__}, not an object", raw)
    url, questions, answers = (value.get(k) for k in ENTRY_KEYS)
    if not isinstance(url, str) or not url.strip():
        return BadStretch("malformed_record", f"entry {key!r} has no `imageURL`", raw)
    if not (questions and isinstance(questions, list) and isinstance(answers, list) and len(questions) == len(answers)
            and all(isinstance(t, str) for t in questions + answers)):
        return BadStretch("malformed_record", f"entry {key!r}: `questions` and `answers` must be two "
                          f"non-empty lists of strings of one length, got {questions!r:.200} and {answers!r:.200}", raw)
    turns = []
    for i, (question, answer) in enumerate(zip(questions, answers)):
        turns += [{"from": "human", "value": f"<image>\n{question}" if i == 0 else question},
                  {"from": "gpt", "value": answer}]
    rest = {k: v for k, v in value.items() if k not in ENTRY_KEYS}
    return Entry({"id": key, "url": url, "conversations": turns, **rest}, raw)
