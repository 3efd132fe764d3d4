"""LLaVA JSON / JSONL reader: LLaVA-1.5 665k, LCS-558K, ShareGPT4V, ALLaVA, LLaVA-Bench, recap dumps.

Streams a JSON array, JSONL (line by line) or a single JSON object wrapping a list of records
(e.g. LLaVA-NeXT recaption dumps: `{"annotations": [...]}`), and turns each record into the lake's
sample shape without changing a character of the text:

- `conversations` turns keep `from`/`value` as written; extra keys of a turn go to
  `meta["turn_extras"]` (mix665k has one turn with `text`/`markdown`).
- `image` (string or list) becomes image references relative to `--image-root`s, then the file's
  folder; absolute paths pass through. No `image` key means a text-only sample.
- LLaVA-Bench records (`instruction`/`output`) become one human/gpt exchange.
- Recaption records (`image_file` + a raw chat-template `caption`) are split into turns; the system
  prompt is kept in `meta["system"]`.
- Ids stay strings exactly as written (`"000019465"`); integer ids become their decimal text.
- Every other key is kept in `meta`, so nothing of the record is lost.
"""
from __future__ import annotations

import json
import re
from functools import partial
from typing import Any


from etl.sources import register
from etl.sources.base import ImageRef, SourceRecord, as_text_id, raw_json
from etl.sources.jsonfiles import JsonRecordsReader

CONVERSATION_KEYS = ("id", "image", "conversations")
CHATML_TURN = re.compile(r"<\|im_start\|>(\w+)\n?(.*?)(?:<\|im_end\|>|$)", re.S)
CHATML_ROLES = {"user": "human", "assistant": "gpt"}


class MalformedRecord(ValueError):
    pass


@register
class LlavaReader(JsonRecordsReader):
    """Reads LLaVA-style JSON arrays, JSONL and wrapped JSON objects into samples."""

    format_name = "llava"

    def to_record(self, item: Any, name: str, row: int, base_dir: str) -> SourceRecord:
        record = SourceRecord(name, row, raw=partial(raw_json, item))  # written only if it fails: made then
        try:
            if not isinstance(item, dict):
                raise MalformedRecord(f"record is a {type(item).__name__}, not an object")
            record.orig_id = as_text_id(item.get("id"))
            record.conversations, record.meta = conversations_and_meta(item)
            record.images = [ImageRef(path=p, base_dir=base_dir) for p in image_paths(item)]
        except MalformedRecord as exc:
            record.error = ("malformed_record", str(exc))
        return record


def image_paths(item: dict) -> list[str]:
    """The record's image paths in order ([] for text-only records)."""
    value = item.get("image", item.get("image_file"))
    if value is None:
        return []
    paths = value if isinstance(value, list) else [value]
    if not all(isinstance(p, str) and p for p in paths):
        raise MalformedRecord(f"`image` must be a path or a list of paths, got {value!r}")
    return paths


def conversations_and_meta(item: dict) -> tuple[list[dict], dict]:
    """Split a record into uniform turns and the meta of every key that is not a turn."""
    if "conversations" in item:
        turns, turn_extras = llava_turns(item["conversations"])
        meta = {k: v for k, v in item.items() if k not in CONVERSATION_KEYS}
        if turn_extras:
            meta["turn_extras"] = turn_extras
        return turns, meta
    if "instruction" in item and "output" in item:
        turns = [{"from": "human", "value": text_of(item["instruction"])},
                 {"from": "gpt", "value": text_of(item["output"])}]
        return turns, {k: v for k, v in item.items() if k not in ("id", "image", "instruction", "output")}
    if "caption" in item and "image_file" in item:
        return chatml_turns(item)
    raise MalformedRecord("no `conversations` (nor `instruction`/`output`, nor `caption`) in the record")


def llava_turns(conversations: Any) -> tuple[list[dict], dict[str, dict]]:
    if not isinstance(conversations, list):
        raise MalformedRecord(f"`conversations` must be a list, got {type(conversations).__name__}")
    turns, extras = [], {}
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise MalformedRecord(f"turn {i} has no `from`/`value`: {turn!r:.200}")
        turns.append({"from": text_of(turn["from"]), "value": text_of(turn["value"])})
        if len(turn) > 2:  # keys beyond from/value (most turns have none)
            extras[str(i)] = {k: v for k, v in turn.items() if k not in ("from", "value")}
    return turns, extras


def chatml_turns(item: dict) -> tuple[list[dict], dict]:
    """A raw `<|im_start|>role ... <|im_end|>` string as turns; the system prompt goes to meta."""
    meta = {k: v for k, v in item.items() if k not in ("image_file", "caption")}
    turns = []
    for role, text in CHATML_TURN.findall(text_of(item["caption"])):
        text = text.rstrip("\n")
        if role == "system":
            meta["system"] = text
        else:
            turns.append({"from": CHATML_ROLES.get(role, role), "value": text})
    if not turns:
        raise MalformedRecord("`caption` holds no chat-template turns")
    return turns, meta


def text_of(value: Any) -> str | None:
    """Turn values are kept as written; non-string JSON values keep their JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
