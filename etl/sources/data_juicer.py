"""data-juicer JSON/JSONL reader: `{"text": ..., "images": [...], ...}` records.

data-juicer (modelscope) keeps multimodal samples as one `text` with `<__dj__image>` placeholders
and an `images` list of paths relative to the file; chat samples mark turns with `[[human]]:` /
`[[gpt]]:`. A text with turn marks becomes those turns; a caption becomes `[human: --prompt,
gpt: caption]` like every captioning source; a record without images is a text-only sample. Every
key but `text`/`images` (e.g. data-juicer's `meta`, `__dj__stats__`) is kept in `meta`.
"""
from __future__ import annotations

from typing import Any

from etl.sources import register
from etl.sources.base import ImageRef, SourceRecord, as_text_id, raw_json
from etl.sources.hf_parquet import data_juicer_turns
from etl.sources.jsonfiles import JsonRecordsReader
from etl.sources.webdataset import prompt_option

RECORD_KEYS = ("text", "images")


@register
class DataJuicerReader(JsonRecordsReader):
    """Reads data-juicer `text` (+ `images`) records into samples."""

    format_name = "data-juicer"

    @classmethod
    def accepts(cls, first: Any) -> bool:
        """The first record has a string `text` and no LLaVA/messages keys."""
        return isinstance(first, dict) and isinstance(first.get("text"), str) \
            and not {"conversations", "messages"} & first.keys()

    def to_record(self, item: Any, name: str, row: int, base_dir: str) -> SourceRecord:
        return dj_record(item, name, row, base_dir, prompt_option(self.options.get("prompt")))


def dj_record(item: object, name: str, row: int, base_dir: str, prompt: str) -> SourceRecord:
    record = SourceRecord(name, row, raw=raw_json(item))
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        record.error = ("malformed_record", "a data-juicer record needs a string `text`")
        return record
    images = item.get("images") or []
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        record.error = ("malformed_record", f"`images` must be a list of paths, got {images!r:.200}")
        return record
    record.orig_id = as_text_id(item.get("id"))
    record.conversations = data_juicer_turns(item["text"], prompt if images else "")
    record.images = [ImageRef(path=p, base_dir=base_dir) for p in images]
    record.meta = {k: v for k, v in item.items() if k not in RECORD_KEYS}
    return record
