"""`export --format webdataset`: the selection as tar shards of about `--shard-size` bytes.

Each record is one key (`000000042`, its position in the export) with its image(s) — `<key>.jpg`, or
`<key>.0.jpg`, `<key>.1.png`, … for several, with the extension of the real format, bytes as stored
— and `<key>.json`: the LLaVA record (`id`, `conversations` with the export's fixes, every meta key).
Text-only records have only the `.json`. Shards are `shards/<recipe>-000000.tar`, …; `index.json`
lists them with their sample counts in the `wids` shard-index format (webdataset's indexed reader).

Bytes are reproducible: members in record order, mtime 0, owner 0/0 with no names, mode 0644, ustar
headers. `python -m etl ingest DIR/shards --format webdataset` reads the shards back into the same
samples (ids, turns, meta, images).
"""
from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import duckdb

from etl.export import ExportError, file_entry
from etl.exporters.files import HashingFile
from etl.exporters.records import ExportRecord, iter_selected
from etl.lake import Lake
from etl.recipe import Recipe

SHARDS_DIR = "shards"
INDEX = "index.json"
BLOCK = tarfile.BLOCKSIZE


def validate(opts) -> None:
    """Images are always embedded; one stream of shards (no per-source split)."""
    if opts.images != "copy" or opts.split_by_source:
        raise ExportError("--format webdataset embeds the images in its shards: --images must be copy and "
                         "--split-by-source is not supported")


def write(lake: Lake, con: duckdb.DuckDBPyConnection, out: Path, recipe: Recipe, opts, pins: dict[str, int]):
    """Write the shards and index.json; return (files for the manifest, image counts)."""
    prefix = re.sub(r"[^A-Za-z0-9_-]", "_", recipe.name)
    shards = ShardWriter(out / SHARDS_DIR, prefix, opts.shard_size)
    images = {"written": 0, "bytes": 0, "missing": 0}
    key = 0
    for batch in iter_selected(lake, con, pins, opts.image_batch):
        for record in batch:
            shards.add(f"{key:09d}", sample_members(record))
            images["written"] += len(record.images)
            images["bytes"] += sum(len(img.data) for img in record.images)
            images["missing"] += record.missing_images
            key += 1
    files = shards.close()
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": recipe.name,
             "shardlist": [{"url": f"{SHARDS_DIR}/{name}", "nsamples": entry["records"], "filesize": entry["bytes"]}
                           for name, entry in files.items()]}
    (out / INDEX).write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n")
    return {**{f"{SHARDS_DIR}/{name}": entry for name, entry in files.items()},
            INDEX: file_entry(out / INDEX)}, images


def sample_members(record: ExportRecord) -> list[tuple[str, bytes]]:
    """(extension, bytes) of a record's members: its images in order, then its JSON."""
    many = len(record.images) > 1
    members = [(f"{i}.{img.extension}" if many else img.extension, img.data) for i, img in enumerate(record.images)]
    text = json.dumps(record.llava_json(), ensure_ascii=False, separators=(",", ":"))
    return [*members, ("json", text.encode("utf-8"))]


class ShardWriter:
    """Appends samples to tar shards, starting a new shard when the next sample would take the file
    (end-of-archive blocks and padding included) past `shard_size` bytes. A sample is never split:
    one larger than the target gets a shard of its own."""

    def __init__(self, folder: Path, prefix: str, shard_size: int):
        self.folder, self.prefix, self.shard_size = folder, prefix, shard_size
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tar: tarfile.TarFile | None = None
        self.file: HashingFile | None = None
        self.size = self.records = 0
        self.done: dict[str, dict] = {}

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        size = sum(BLOCK + -(-len(data) // BLOCK) * BLOCK for _, data in members)
        if self.tar is not None and self.records and self.size + size + tarfile.RECORDSIZE > self.shard_size:
            self.finish_shard()
        if self.tar is None:
            self.file = HashingFile(self.folder / f"{self.prefix}-{len(self.done):06d}.tar")
            self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.USTAR_FORMAT)
        for extension, data in members:
            self.tar.addfile(member_info(f"{key}.{extension}", len(data)), io.BytesIO(data))
        self.size += size
        self.records += 1

    def finish_shard(self) -> None:
        self.tar.close()
        self.done[self.file.path.name] = {**self.file.close(), "records": self.records}
        self.tar, self.file, self.size, self.records = None, None, 0, 0

    def close(self) -> dict[str, dict]:
        """Finish the last shard; every shard's sha256, bytes and record count, by file name."""
        if self.tar is not None:
            self.finish_shard()
        return self.done


def member_info(name: str, size: int) -> tarfile.TarInfo:
    """A member header that depends only on the name and size (no time, owner or umask)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
