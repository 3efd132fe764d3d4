"""WebDataset reader: `.tar` / `.tgz` shards (BLIP3o, LAION/img2dataset, clip-retrieval), streamed.

A shard is read as a stream (`tarfile` mode `r|*`): nothing is extracted, member names are never
used as filesystem paths, and memory holds one sample group at a time. Members are grouped the
WebDataset way: consecutive members sharing a key (`dir/key` = the name up to the first dot of its
base name, directory prefixes included); per-member `.gz` is decompressed (`0001.txt.gz` → `txt`).

Each group becomes one record, its row being the group's index in the shard:

- image(s) + caption (`.txt`, `.caption`, else `caption`/`text` of the `.json`) → a sample
  `[{"from": "human", "value": --prompt}, {"from": "gpt", "value": caption}]` (prompt default
  `<image>`; a literal `\\n` in the option is a newline);
- image(s) + other members but no caption (a classification shard: `.png` + `.cls`) → a sample
  with the images, no turns (`checks` reports it as `no_turns`) and the members in `meta`
  (`{"cls": "7"}`): the label is kept, not dropped;
- image(s) alone → the images are stored, no sample (image-only shards: nothing else to keep);
- caption without an image → an `orphan_caption` error holding the caption: in a captioning
  shard that is a sample that lost its image, and turning it into text-only training data would
  hide the loss;
- nothing usable → an error row listing the members.
- a `.json` holding a LLaVA record (`conversations`, as `export --format webdataset` writes) → that
  record's turns, its `id` as `orig_id` and its other keys as `meta`, with the group's image(s).

Other members (`.cls`, `.json`, ...) are kept in `meta` under their extension; `orig_id` is the key.
Hard links (GNU tar writes one for every further name of a hard-linked file) and symbolic links
are followed inside the shard only: a link whose target is a file member of the same shard gives
that member's bytes (read again from the shard: a seek in a plain tar, decompression up to it in
a `.tgz`); a link to anything else (outside the shard, absolute, a missing member, a link loop)
is an `unresolved_link` error for its group; the file system is never read.
A truncated or corrupt shard yields the groups read so far, then one `corrupt_shard` error.
"""
from __future__ import annotations

import gzip
import io
import json
import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from etl import storage
from etl.images import exception_text
from etl.sources import register
from etl.sources.base import ImageRef, SourceReader, SourceRecord, as_text_id, raw_json
from etl.sources.llava import conversations_and_meta

DEFAULT_PROMPT = "<image>"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
CAPTION_EXTENSIONS = ("txt", "caption")
JSON_CAPTION_KEYS = ("caption", "text", "txt")
MEMBER_NAME = re.compile(r"^((?:.*/)?[^./][^/]*?)\.([^/]*)$")  # (key, extension); hidden files excluded
MAX_MEMBER_BYTES = 1 << 30  # a member (after gunzip) larger than this is refused, not loaded
MAX_LINK_HOPS = 8  # a link to a link to ... (a loop) gives up after this many


@dataclass
class Group:
    """The members of one key, in shard order: extension → bytes (plus the member names)."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    problem: tuple[str, str] | None = None  # (kind, message): a member that could not be read


@register
class WebDatasetReader(SourceReader):
    """Reads WebDataset tar shards (plain or gzip) into caption samples or image-only records."""

    format_name = "webdataset"
    extensions = (".tar", ".tgz", ".tar.gz")

    def read_file(self, path: str, name: str, start_row: int = 0, end_row: int | None = None) -> Iterator[SourceRecord]:
        prompt = prompt_option(self.options.get("prompt"))
        row = start_row
        try:
            for row, group in iter_groups(path, start_row):
                yield group_record(group, name, row, prompt)
                row += 1
        except (tarfile.TarError, EOFError, zlib.error, *storage.store_errors()) as exc:
            storage.raise_if_unreachable(path, exc)  # unless the store, not the shard, failed
            message = f"shard unreadable after {row} groups: {exception_text(exc)}"
            yield SourceRecord(name, row, raw=raw_json({"shard": name}), error=("corrupt_shard", message))


def prompt_option(value: str | None) -> str:
    return (value or DEFAULT_PROMPT).replace("\\n", "\n")


def caption_turns(caption: str, prompt: str) -> list[dict[str, str]]:
    """The caption sample every captioning dataset becomes: the prompt asks, the caption answers.

    An empty prompt (a text-only record) leaves the caption alone.
    """
    asked = [{"from": "human", "value": prompt}] if prompt else []
    return [*asked, {"from": "gpt", "value": caption}]


def split_member_name(member_name: str) -> tuple[str, str] | None:
    """(key, lower-case extension) of a member, or None for names without one (or hidden files)."""
    match = MEMBER_NAME.match(member_name)
    return (match.group(1), match.group(2).lower()) if match else None


def iter_groups(path: str, start_row: int = 0) -> Iterator[tuple[int, Group]]:
    """(row, group) for each key of the shard in order; groups before `start_row` are not loaded."""
    row, current = -1, None
    with open_tar(path, "r|*") as tar, ShardLinks(path) as links:
        for member in tar:
            is_member = member.isfile() or member.issym() or member.islnk()
            parsed = split_member_name(member.name) if is_member else None
            if parsed is None:
                continue  # directories, devices, extension-less names: not sample members
            key, extension = parsed
            if current is None or key != current.key:
                if current is not None and row >= start_row:
                    yield row, current
                row, current = row + 1, Group(key)
            if row >= start_row:
                add_member(current, tar, member, extension, links)
        if current is not None and row >= start_row:
            yield row, current


class ShardLinks:
    """Follows hard and symbolic link members to the file members they name, inside the shard.

    The shard is streamed, so a target's bytes have gone by (or not come yet) when its link
    arrives: on the first link, a second, random-access handle on the shard lists its members
    once (one more pass over the headers: shards without links never pay it), and targets are
    read through it. Nothing outside the shard is ever read.
    """

    def __init__(self, path: str):
        self.path, self.archive, self.members = path, None, None
        self.opened = ExitStack()

    def __enter__(self) -> "ShardLinks":
        return self

    def __exit__(self, *exc) -> None:
        self.opened.close()

    def read(self, member: tarfile.TarInfo) -> bytes:
        """The bytes of the file member `member` links to; raises LookupError saying why it cannot."""
        name, link = member.name, member
        for _ in range(MAX_LINK_HOPS):
            target = self.find(link_target(link))
            if target.isfile():
                if target.size > MAX_MEMBER_BYTES:
                    raise LookupError(f"{name}: links to {target.name}, over the {MAX_MEMBER_BYTES} byte limit")
                return self.open().extractfile(target).read()
            if not (target.issym() or target.islnk()):
                raise LookupError(f"{name}: links to {target.name}, which is not a file")
            link = target
        raise LookupError(f"{name}: more than {MAX_LINK_HOPS} links in a row (a loop?)")

    def find(self, target: tuple[str, str]) -> tarfile.TarInfo:
        """The member named `target[1]` (a link's target; `target[0]` is the link, for messages)."""
        link, name = target
        if self.members is None:
            self.members = {}
            for info in self.open().getmembers():
                self.members.setdefault(posixpath.normpath(info.name), info)
        try:
            return self.members[name]
        except KeyError:
            raise LookupError(f"{link}: links to {name}, which is not a member of the shard") from None

    def open(self) -> tarfile.TarFile:
        if self.archive is None:
            self.archive = self.opened.enter_context(open_tar(self.path, "r:*"))
        return self.archive


@contextmanager
def open_tar(path: str, mode: str) -> Iterator[tarfile.TarFile]:
    """`tarfile.open(path, mode)`; a URL (`etl.storage`) is read through a buffered file object
    (a stream mode reads it front to back; `r:*` seeks by ranged reads)."""
    if not storage.is_remote(path):
        with tarfile.open(path, mode=mode) as tar:
            yield tar
        return
    with storage.open_input(path) as f, tarfile.open(fileobj=f, mode=mode) as tar:
        yield tar


def link_target(member: tarfile.TarInfo) -> tuple[str, str]:
    """(link, target): the member name a link names, a hard link's as written, a symlink's relative
    to its folder.

    Raises LookupError for targets that leave the shard (absolute, or climbing above its top).
    """
    link = member.linkname
    if member.issym():
        link = posixpath.join(posixpath.dirname(member.name), link)
    target = posixpath.normpath(link)
    if posixpath.isabs(member.linkname) or target == ".." or target.startswith("../"):
        raise LookupError(f"{member.name}: links to {member.linkname}, outside the shard")
    return member.name, target


def add_member(group: Group, tar: tarfile.TarFile, member: tarfile.TarInfo, extension: str,
               links: ShardLinks) -> None:
    """Read one member into the group (following links, gunzipping `.gz`), noting rather than
    raising on bad members."""
    group.names.append(member.name)
    if member.size > MAX_MEMBER_BYTES:
        group.problem = ("malformed_record", f"{member.name}: {member.size} bytes is over the {MAX_MEMBER_BYTES} limit")
        return
    if member.isfile():
        data = tar.extractfile(member).read()
    else:
        try:
            data = links.read(member)
        except LookupError as exc:
            group.problem = ("unresolved_link", str(exc))
            return
    if extension.endswith(".gz") or extension == "gz":
        try:
            data = gunzip_bounded(data)
        except (OSError, EOFError, zlib.error, ValueError) as exc:
            group.problem = ("malformed_record", f"{member.name}: bad gzip member: {exception_text(exc)}")
            return
        extension = extension[: -len(".gz")] if extension.endswith(".gz") else ""
    group.members[extension] = data


def gunzip_bounded(data: bytes) -> bytes:
    """Decompress a gzip member, refusing output over MAX_MEMBER_BYTES (a gzip bomb)."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
        out = f.read(MAX_MEMBER_BYTES + 1)
    if len(out) > MAX_MEMBER_BYTES:
        raise ValueError(f"decompresses to over {MAX_MEMBER_BYTES} bytes")
    return out


def group_record(group: Group, name: str, row: int, prompt: str) -> SourceRecord:
    """One group → a caption sample, a labelled image sample, an image-only record or an error."""
    record = SourceRecord(name, row, orig_id=group.key, raw=raw_json({"key": group.key, "members": group.names}))
    if group.problem:
        record.error = group.problem
        return record
    images = [ext for ext in group.members if ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS]
    record.images = [ImageRef(data=group.members[ext]) for ext in images]
    try:
        caption, record.meta = caption_and_meta(group, set(images))
        if is_llava_record(record.meta.get("json")):
            return llava_group_record(record, group, set(images))
    except (UnicodeDecodeError, ValueError) as exc:
        record.error = ("malformed_record", f"key {group.key}: {exception_text(exc)}")
        return record
    if caption is not None and images:
        record.conversations = caption_turns(caption, prompt)
    elif caption is not None:
        record.raw = raw_json({"key": group.key, "members": group.names, "caption": caption, **record.meta})
        record.error = ("orphan_caption", f"key {group.key}: a caption without an image among {group.names}")
    elif images:
        record.images_only = not record.meta  # image + label (.cls, .json...): a sample that keeps them
    else:
        record.error = ("no_image_or_caption", f"key {group.key}: no image and no caption among {group.names}")
    return record


def is_llava_record(value: Any) -> bool:
    return isinstance(value, dict) and "conversations" in value


def llava_group_record(record: SourceRecord, group: Group, image_extensions: set[str]) -> SourceRecord:
    """A group whose `.json` is a LLaVA record: its turns, id and keys; other members (a `.txt`
    too: the record's turns are the dialogue) join its meta under their extension."""
    item = record.meta["json"]
    record.conversations, record.meta = conversations_and_meta(item)
    record.meta.update({ext: member_value(ext, data) for ext, data in group.members.items()
                        if ext not in image_extensions and ext != "json" and ext not in record.meta})
    record.orig_id = as_text_id(item["id"]) if item.get("id") is not None else record.orig_id
    return record


def member_value(extension: str, data: bytes) -> Any:
    """A non-image member for meta: parsed JSON, UTF-8 text, or (binary) a note of its size."""
    if extension == "json":
        return json.loads(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if extension in CAPTION_EXTENSIONS:
            raise
        return f"<{len(data)} bytes of binary data>"


def caption_and_meta(group: Group, image_extensions: set[str]) -> tuple[str | None, dict[str, Any]]:
    """The caption (first of .txt/.caption/.json caption) and every other member, decoded, as meta."""
    meta: dict[str, Any] = {}
    for ext, data in group.members.items():
        if ext not in image_extensions:
            meta[ext] = member_value(ext, data)
    caption = next((meta.pop(ext) for ext in CAPTION_EXTENSIONS if ext in meta), None)
    if caption is None and isinstance(meta.get("json"), dict):
        caption = next((meta["json"][k] for k in JSON_CAPTION_KEYS if isinstance(meta["json"].get(k), str)), None)
    return (caption.strip() if caption is not None else None), meta
