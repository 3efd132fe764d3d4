"""`export --format hf-parquet`: the selection as HF-style parquet shards plus a dataset card.

Writes `data/train-00000-of-0000N.parquet` (about `--shard-size` bytes each, row groups of
`ROW_GROUP_ROWS` records, as HF writes image datasets) with the columns
- `id` (string), `images` (HF `List(Image)`: `struct<bytes, path>` per image, in order; `path` is
  the image's path as its source wrote it, else `<sha256>.<ext>`), `conversations` (LLaVA turns with
  the export's fixes), `meta` (every other key of the sample, as JSON text);
and the `huggingface` schema metadata declaring those features, so that
`datasets.load_dataset("parquet", data_files=...)` decodes `images` to PIL images. `README.md` is the
dataset card: the features and splits in its YAML header, the recipe and lake versions below.
`python -m etl ingest DIR/data` reads the shards back into the same samples (the `mmlake` schema
metadata tells the reader that `meta` is JSON to unpack).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from etl import schema as S
from etl.export import ExportError, file_entry
from etl.exporters.files import HashingFile
from etl.exporters.records import ExportRecord, iter_selected
from etl.lake import Lake
from etl.recipe import Recipe

DATA_DIR = "data"
CARD = "README.md"
ROW_GROUP_ROWS = 100
HF_IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
SCHEMA = pa.schema([
    pa.field("id", pa.string()),
    pa.field("images", pa.list_(HF_IMAGE)),
    pa.field("conversations", S.CONVERSATIONS),
    pa.field("meta", pa.string()),
])
STRING = {"dtype": "string", "_type": "Value"}
FEATURES = {  # datasets' Features.to_dict() of the schema above
    "id": STRING,
    "images": {"feature": {"_type": "Image"}, "_type": "List"},
    "conversations": {"feature": {"from": STRING, "value": STRING}, "_type": "List"},
    "meta": STRING,
}
CARD_FEATURES = [  # the same, as a dataset card's YAML header writes them
    {"name": "id", "dtype": "string"},
    {"name": "images", "list": "image"},
    {"name": "conversations", "list": [{"name": "from", "dtype": "string"}, {"name": "value", "dtype": "string"}]},
    {"name": "meta", "dtype": "string"},
]
SCHEMA_METADATA = {b"huggingface": json.dumps({"info": {"features": FEATURES}}).encode(),
                   b"mmlake": json.dumps({"meta_column": "meta"}).encode()}


def validate(opts) -> None:
    """Images are always embedded; one split of shards (no per-source split)."""
    if opts.images != "copy" or opts.split_by_source:
        raise ExportError("--format hf-parquet embeds the images in its shards: --images must be copy and "
                          "--split-by-source is not supported")


def write(lake: Lake, con: duckdb.DuckDBPyConnection, out: Path, recipe: Recipe, opts, pins: dict[str, int]):
    """Write the parquet shards and README.md; return (files for the manifest, image counts)."""
    shards = ParquetShards(out / DATA_DIR, opts.shard_size)
    images = {"written": 0, "bytes": 0, "missing": 0}
    for batch in iter_selected(lake, con, pins, opts.image_batch):
        for record in batch:
            shards.add(row_of(record))
            images["written"] += len(record.images)
            images["bytes"] += sum(len(img.data) for img in record.images)
            images["missing"] += record.missing_images
    files = {f"{DATA_DIR}/{name}": entry for name, entry in shards.close().items()}
    (out / CARD).write_text(dataset_card(recipe, pins, files))
    return {**files, CARD: file_entry(out / CARD)}, images


def row_of(record: ExportRecord) -> dict:
    return {
        "id": record.id,
        "images": [{"bytes": img.data, "path": img.written_as or f"{img.image_id}.{img.extension}"}
                   for img in record.images],
        "conversations": record.conversations,
        "meta": json.dumps(record.meta, ensure_ascii=False),
    }


class ParquetShards:
    """Rows → parquet shards of about `shard_size` bytes (row groups of ROW_GROUP_ROWS rows), then
    renamed `train-XXXXX-of-NNNNN.parquet` once the number of shards is known."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, shard_size
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        self.writer: pq.ParquetWriter | None = None
        self.file: HashingFile | None = None
        self.size = self.records = 0
        self.done: list[tuple[Path, dict]] = []  # (temporary path, its sha256, bytes and records)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.size += sum(len(img["bytes"]) for img in row["images"]) + len(row["meta"]) + \
            sum(len(t["value"] or "") for t in row["conversations"] or [])
        if len(self.rows) >= ROW_GROUP_ROWS:
            self.flush()
        if self.size >= self.shard_size:
            self.finish_shard()

    def flush(self) -> None:
        if not self.rows:
            return
        if self.writer is None:
            self.file = HashingFile(self.folder / f".shard-{len(self.done):05d}.parquet.tmp")
            # snappy, as `datasets` writes: it gives up quickly on JPEG/PNG bytes, which do not compress
            self.writer = pq.ParquetWriter(self.file, SCHEMA.with_metadata(SCHEMA_METADATA), compression="snappy")
        self.writer.write_table(pa.Table.from_pylist(self.rows, schema=SCHEMA), row_group_size=ROW_GROUP_ROWS)
        self.records += len(self.rows)
        self.rows = []

    def finish_shard(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.done.append((self.file.path, {**self.file.close(), "records": self.records}))
        self.writer, self.file, self.size, self.records = None, None, 0, 0

    def close(self) -> dict[str, dict]:
        """Finish the last shard (an empty selection still gets one, empty), name all shards, and
        return each one's sha256, bytes and record count."""
        self.finish_shard()
        if not self.done:
            empty = self.folder / ".shard-00000.parquet.tmp"
            pq.write_table(SCHEMA.empty_table().replace_schema_metadata(SCHEMA_METADATA), empty)
            self.done.append((empty, {**file_entry(empty), "records": 0}))
        entries = {}
        for number, (tmp, entry) in enumerate(self.done):
            name = f"train-{number:05d}-of-{len(self.done):05d}.parquet"
            os.replace(tmp, self.folder / name)
            entries[name] = entry
        return entries


def dataset_card(recipe: Recipe, pins: dict[str, int], files: dict[str, dict]) -> str:
    """README.md: the YAML header `datasets` reads (config, data files, features, split), then prose."""
    records = sum(entry["records"] for entry in files.values())
    nbytes = sum(entry["bytes"] for entry in files.values())
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": f"{DATA_DIR}/train-*"}]}],
        "dataset_info": {"features": CARD_FEATURES,
                         "splits": [{"name": "train", "num_bytes": nbytes, "num_examples": records}]},
    }
    title = re.sub(r"\s+", " ", recipe.name)
    return (f"---\n{yaml.safe_dump(header, sort_keys=False, allow_unicode=True)}---\n\n# {title}\n\n"
            f"Exported by mmlake (`python -m etl export --format hf-parquet`): {records:,} samples in "
            f"{len(files)} parquet shard(s) under `{DATA_DIR}/`.\n\n"
            "```python\nimport datasets\n"
            f"ds = datasets.load_dataset(\"parquet\", data_files=\"{DATA_DIR}/*.parquet\", split=\"train\")\n```\n\n"
            "## Columns\n\n"
            "- `id`: the sample's id in its source.\n"
            "- `images`: the sample's images in order (`List(Image)`; bytes as stored in the lake, `path` as "
            "the source wrote it or `<sha256>.<ext>`). Empty for text-only samples.\n"
            "- `conversations`: LLaVA turns (`from`: human/gpt, `value`), `<image>` tags in place.\n"
            "- `meta`: every other field of the source record, as JSON text.\n\n"
            "## Recipe\n\n"
            f"Lake versions: samples {pins.get(S.SAMPLES)}, images {pins.get(S.IMAGES)} (every table's in "
            f"`manifest.json`); recipe sha256 `{recipe.sha256}`.\n\n"
            f"```yaml\n{recipe.text.rstrip()}\n```\n")
