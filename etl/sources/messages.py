"""Messages reader: LLaMA-Factory / OpenAI-style `{"messages": [{"role", "content"}], "images": [...]}`.

Turns each record into the lake's uniform conversations:

- `user` → `human`, `assistant` → `gpt`; other roles (`observation`, `function_call`, `tool`) keep
  their name. **System turns go to `meta["system"]`** (a string; a list when a record has several),
  not into the conversations: LLaVA-style loaders expect the dialogue to start with `human`.
- `content` is a string (kept as written, `<image>` tags included) or a list of parts. Image parts
  (`image`, `image_url`, `input_image`) become an `<image>` tag in place; text parts contribute
  their `text`/`value`. Parts are joined without a separator next to an image tag (LLaMA-Factory
  writes `"<image>Who are they?"`) and with a newline between two text parts.
- Images come from the record's `images` list (or a singular `image`), in order, duplicates kept;
  when there is none, from the image parts' own paths (`value`, `image_url`/`image_url.url`,
  `image`, `path`). `data:` URLs become embedded bytes. Paths are relative to an `--image-root`,
  then to the JSON file's folder.
- `id` becomes `orig_id`; every other key is kept in `meta`.

The conversion (`messages_to_turns`) is shared with the HF parquet reader, whose LLaMA-Factory
shards hold the same structure as Arrow lists.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from etl.sources import register
from etl.sources.base import ImageRef, SourceRecord, as_text_id, raw_json
from etl.sources.jsonfiles import JsonRecordsReader

IMAGE_TAG = "<image>"
ROLE_TO_FROM = {"user": "human", "human": "human", "assistant": "gpt", "gpt": "gpt", "model": "gpt"}
SYSTEM_ROLES = ("system", "developer")
IMAGE_PART_TYPES = ("image", "image_url", "input_image")
TEXT_PART_TYPES = ("text", "input_text", "output_text")
RECORD_KEYS = ("id", "messages", "images", "image")


class MalformedMessages(ValueError):
    pass


@dataclass
class Dialogue:
    """A messages list converted: uniform turns, system prompts, and image paths named inline."""

    turns: list[dict[str, str | None]] = field(default_factory=list)
    system: list[str] = field(default_factory=list)
    inline_images: list[str] = field(default_factory=list)


@register
class MessagesReader(JsonRecordsReader):
    """Reads `messages` JSON arrays and JSONL (LLaMA-Factory, OpenAI chat) into samples."""

    format_name = "messages"

    @classmethod
    def accepts(cls, first: Any) -> bool:
        """The first record has a `messages` key."""
        return isinstance(first, dict) and "messages" in first

    def to_record(self, item: Any, name: str, row: int, base_dir: str) -> SourceRecord:
        return messages_record(item, name, row, base_dir)


def messages_record(item: Any, name: str, row: int, base_dir: str | None) -> SourceRecord:
    """One messages record → a SourceRecord (or one carrying `malformed_record` and its raw JSON)."""
    record = SourceRecord(name, row, raw=raw_json(item))
    try:
        if not isinstance(item, dict):
            raise MalformedMessages(f"record is a {type(item).__name__}, not an object")
        dialogue = messages_to_turns(item.get("messages"))
        record.orig_id = as_text_id(item.get("id"))
        record.conversations = dialogue.turns
        record.images = image_refs(listed_images(item) or dialogue.inline_images, base_dir)
        record.meta = {k: v for k, v in item.items() if k not in RECORD_KEYS}
        if dialogue.system:
            record.meta["system"] = dialogue.system[0] if len(dialogue.system) == 1 else dialogue.system
    except MalformedMessages as exc:
        record.error = ("malformed_record", str(exc))
    return record


def messages_to_turns(messages: Any) -> Dialogue:
    """Convert a `messages` list (roles + string or part-list content) to uniform turns."""
    if not isinstance(messages, list) or not messages:
        raise MalformedMessages("`messages` must be a non-empty list")
    dialogue = Dialogue()
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise MalformedMessages(f"message {i} has no `role`: {message!r:.200}")
        text = content_text(message.get("content"), dialogue.inline_images, i)
        role = message["role"]
        if role in SYSTEM_ROLES:
            dialogue.system.append(text)
        else:
            dialogue.turns.append({"from": ROLE_TO_FROM.get(role, role), "value": text})
    return dialogue


def content_text(content: Any, inline_images: list[str], index: int) -> str | None:
    """A message's text: strings as written; part lists joined, image parts as `<image>` tags."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise MalformedMessages(f"message {index}: `content` is a {type(content).__name__}")
    pieces: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in IMAGE_PART_TYPES:
            if (path := part_image_path(part)) is not None:
                inline_images.append(path)
            pieces.append(IMAGE_TAG)
        elif kind in TEXT_PART_TYPES:
            piece = next((part[k] for k in ("text", "value", "content") if part.get(k) is not None), "")
            if pieces and pieces[-1] != IMAGE_TAG:
                pieces.append("\n")
            pieces.append(piece)
        else:
            raise MalformedMessages(f"message {index}: unsupported content part {part!r:.200}")
    return "".join(pieces)


def part_image_path(part: dict) -> str | None:
    """The path/URL an image part names itself, or None (then the record's `images` list holds it)."""
    for key in ("value", "image_url", "image", "path", "url"):
        value = part.get(key)
        if isinstance(value, dict):
            value = value.get("url") or value.get("path")
        if isinstance(value, str) and value:
            return value
    return None


def listed_images(item: dict) -> list[str]:
    """The record's own `images` list (or singular `image`), in order, duplicates kept."""
    value = item.get("images", item.get("image"))
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    paths = [v.get("path") if isinstance(v, dict) else v for v in values]
    if not all(isinstance(p, str) and p for p in paths):
        raise MalformedMessages(f"`images` must list paths, got {value!r:.200}")
    return paths


def image_refs(paths: list[str], base_dir: str | None) -> list[ImageRef]:
    """Paths (relative to the roots or `base_dir`) and `data:` URLs (embedded bytes) as references."""
    return [ImageRef(data=data_url_bytes(p)) if p.startswith("data:") else ImageRef(path=p, base_dir=base_dir)
            for p in paths]


def data_url_bytes(url: str) -> bytes:
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise MalformedMessages(f"image data URL is not base64: {url[:60]}")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedMessages(f"image data URL does not decode: {exc}") from exc
