"""The Arrow schemas of the lake contract, declared once.

Every module that names a table or a column imports it from here; nothing else spells a column
name as a string literal. Enrichment columns are part of the schema from the start (nullable), so
filling them is a column rewrite, never a schema change (see DESIGN.md, "The lake").
"""
from __future__ import annotations

import lance
import pyarrow as pa

# -- table names ---------------------------------------------------------------------------------
IMAGES = "images"
SAMPLES = "samples"
ERRORS = "errors"
RUNS = "runs"
CHECKPOINTS = "checkpoints"
TABLES = (IMAGES, SAMPLES, ERRORS, RUNS, CHECKPOINTS)

BLOB_COLUMN = "image"  # the one column SQL and Polars must never select

TURN = pa.struct([pa.field("from", pa.string()), pa.field("value", pa.string())])
CONVERSATIONS = pa.list_(TURN)

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # sha256 hex of the stored bytes
        lance.blob_field(BLOB_COLUMN),
        pa.field("format", pa.string()),  # PIL format name from the header: JPEG, PNG, GIF, ...
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("nbytes", pa.int64()),
        # enrichment
        pa.field("phash", pa.uint64()),  # imagehash-compatible, int(str(imagehash.phash(im)), 16)
        pa.field("phash_mode", pa.string()),  # exact | fast
        pa.field("tags", pa.list_(pa.string())),
        pa.field("tag_scores", pa.list_(pa.float32())),
        pa.field("tag_model", pa.string()),
    ]
)

SAMPLES_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
        pa.field("orig_id", pa.string()),
        pa.field("image_ids", pa.list_(pa.string())),
        pa.field("image_paths", pa.list_(pa.string())),  # as written in the source, same order (NULL: embedded)
        pa.field("conversations", CONVERSATIONS),
        pa.field("meta", pa.string()),  # JSON object of every other key of the raw record
        # enrichment
        pa.field("loss", pa.float32()),  # NULL when not computed or failed, never 0
        pa.field("loss_tokens", pa.int32()),
        pa.field("loss_model", pa.string()),
    ]
)

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("error_id", pa.string(), nullable=False),  # deterministic: reruns never duplicate
        pa.field("stage", pa.string()),  # ingest | phash | tags | loss | export ...
        pa.field("source", pa.string()),
        pa.field("file", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("orig_id", pa.string()),
        pa.field("kind", pa.string()),  # missing_image | not_an_image | malformed_record | ...
        pa.field("message", pa.string()),
        pa.field("raw", pa.string()),  # the raw record (JSON text) or the failing object's key
        pa.field("run_id", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("command", pa.string()),
        pa.field("params", pa.string()),  # JSON
        pa.field("counts", pa.string()),  # JSON
        pa.field("status", pa.string()),  # ok | failed | interrupted
        pa.field("started_at", pa.timestamp("us", tz="UTC")),
        pa.field("ended_at", pa.timestamp("us", tz="UTC")),
        pa.field("versions_before", pa.string()),  # JSON {table: version}
        pa.field("versions_after", pa.string()),
        pa.field("user", pa.string()),  # who ran it (login name@host)
    ]
)

# Resume markers: the highest row of a source file whose batch committed completely.
CHECKPOINTS_SCHEMA = pa.schema(
    [
        pa.field("job", pa.string(), nullable=False),  # e.g. ingest:<source>
        pa.field("file", pa.string(), nullable=False),
        pa.field("fingerprint", pa.string()),  # size+mtime of the file when read
        pa.field("upto_row", pa.int64()),  # rows < upto_row are committed
        pa.field("done", pa.bool_()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    IMAGES: IMAGES_SCHEMA,
    SAMPLES: SAMPLES_SCHEMA,
    ERRORS: ERRORS_SCHEMA,
    RUNS: RUNS_SCHEMA,
    CHECKPOINTS: CHECKPOINTS_SCHEMA,
}

KEYS = {IMAGES: "image_id", SAMPLES: "sample_id", ERRORS: "error_id", RUNS: "run_id"}


def columns_without_blob(schema: pa.Schema) -> list[str]:
    """Every column a scan may safely select (the blob column returns descriptors, not bytes)."""
    return [name for name in schema.names if name != BLOB_COLUMN]


# -- derived tables written by `python -m etl dedup` (etl/dedup.py) ---------------------------------
# Not contract tables: they are not created by Lake.open, each dedup run overwrites them (a new
# Lance version, so older results stay readable by version), and every row carries the run_id whose
# `runs` row (and the table's schema metadata "mmlake:params") holds the parameters.
DUP_EXACT = "dup_exact"
DUP_NEAR = "dup_near"
IMAGE_CLUSTERS = "image_clusters"

DUP_EXACT_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),  # the duplicate, to remove
        pa.field("source", pa.string()),
        pa.field("kept_sample_id", pa.string()),  # the earlier sample it duplicates
        pa.field("dup_key", pa.string()),  # md5 of the compared content (phash list [+ conversations])
        pa.field("group_size", pa.int64()),
        pa.field("run_id", pa.string()),
    ]
)

IMAGE_CLUSTERS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("cluster_id", pa.string()),  # the representative's image_id
        pa.field("is_representative", pa.bool_()),
        pa.field("cluster_size", pa.int64()),
        pa.field("distance_to_representative", pa.int32()),  # Hamming distance of the phashes
        pa.field("near_k", pa.int32()),
        pa.field("run_id", pa.string()),
    ]
)

DUP_NEAR_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),  # the near-duplicate, to remove
        pa.field("source", pa.string()),
        pa.field("kept_sample_id", pa.string()),
        pa.field("cluster_key", pa.string()),  # md5 of the cluster list [+ conversations]
        pa.field("near_k", pa.int32()),
        pa.field("run_id", pa.string()),
    ]
)

DERIVED_SCHEMAS: dict[str, pa.Schema] = {
    DUP_EXACT: DUP_EXACT_SCHEMA,
    DUP_NEAR: DUP_NEAR_SCHEMA,
    IMAGE_CLUSTERS: IMAGE_CLUSTERS_SCHEMA,
}


# -- maintenance tables (etl/upkeep.py) ------------------------------------------------------------
# Image ids whose samples `delete` removed: `cleanup` deletes those no sample references any more.
RELEASED_IMAGES = "released_images"
RELEASED_IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("released_at", pa.timestamp("us", tz="UTC")),
    ]
)
