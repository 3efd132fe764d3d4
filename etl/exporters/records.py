"""The selected samples of an export, in output order, with their fixed turns, meta and image bytes.

Reads what `etl.export.stage_selection` staged (`decisions`, `image_files`): the same samples, ids,
repeats, order and turn fixes as the LLaVA JSON export. Records come in batches; each batch's image
bytes are read with one batched blob read (the next batch's while this one is written), so memory
holds two batches of images at most. A sample's image absent from the lake (possible only with
`checks: off`) is left out of the record and counted in `missing_images`.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import duckdb

from etl import schema as S
from etl.export import BODY_SQL, ROW_OFFSET, SELECTED_IN_DECISIONS, attach_row_ids
from etl.lake import Lake


@dataclass
class ExportImage:
    image_id: str
    extension: str  # of the real format, without the dot: jpg, png, gif...
    data: bytes
    written_as: str | None = None  # the path the source wrote for it (samples.image_paths), if any


@dataclass
class ExportRecord:
    """One selected sample (a repeat is another record): id, LLaVA turns, meta, images in order."""

    id: str
    conversations: list[dict[str, Any]]
    meta: dict[str, Any]
    images: list[ExportImage] = field(default_factory=list)
    missing_images: int = 0  # referenced images absent from the lake (possible only with `checks: off`)

    def llava_json(self) -> dict[str, Any]:
        """The LLaVA record of this sample without its image paths: id, conversations, every meta key."""
        rest = {k: v for k, v in self.meta.items() if k not in ("id", "conversations")}
        return {"id": self.id, "conversations": self.conversations, **rest}


def selected_sql() -> str:
    """(id, body, meta, written paths, blob row ids, image files, image ids) per selected record, in
    output order: the JSON export's (source, repeat, file, row); the turns are its fixed LLaVA body.
    `decisions` is narrow (etl.export.stage_selection): the turns and image ids come from the samples."""
    return f"""
    with image_refs as (
        select sample_id, unnest(image_ids) as image_id, generate_subscripts(image_ids, 1) as pos
        from samples where {ROW_OFFSET} in ({SELECTED_IN_DECISIONS})
    ),
    located_images as (
        select r.sample_id, list(f.row_id order by r.pos) as row_ids, list(f.path order by r.pos) as files
        from image_refs r left join image_files_rows f using (image_id)
        group by r.sample_id
    )
    select coalesce(s.orig_id, s.sample_id) as id, {BODY_SQL['llava']} as body, s.meta, s.image_paths as written,
           l.row_ids, l.files, s.image_ids
    from (select *, unnest(range(repeat)) as repeat_index from decisions where removed_by is null) d
    join samples s on s.sample_id = d.sample_id
    left join located_images l on l.sample_id = d.sample_id
    order by d.source_index, d.repeat_index, d.source_file, d.source_row, d.sample_id"""


def iter_selected(lake: Lake, con: duckdb.DuckDBPyConnection, pins: dict[str, int],
                  batch_rows: int) -> Iterator[list[ExportRecord]]:
    """Batches of at most `batch_rows` selected records, in output order, image bytes included.

    The next batch's rows and blobs are read on a thread while the caller writes this one (both
    wait on I/O with the GIL released), so memory holds two batches of image bytes at most."""
    attach_row_ids(lake, con, pins)
    batches = iter(con.sql(selected_sql()).to_arrow_reader(batch_rows))

    def read_next() -> list[ExportRecord] | None:
        batch = next(batches, None)
        if batch is None:
            return None
        rows = batch.to_pylist()
        wanted = sorted({rid for row in rows for rid in (row["row_ids"] or []) if rid is not None})
        payloads = dict(zip(wanted, lake.read_image_bytes(wanted, version=pins.get(S.IMAGES))))
        return [export_record(row, payloads) for row in rows]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-read") as reader:
        pending = reader.submit(read_next)
        while (records := pending.result()) is not None:
            pending = reader.submit(read_next)
            yield records


def export_record(row: dict, payloads: dict[int, bytes]) -> ExportRecord:
    record = ExportRecord(row["id"], json.loads(row["body"]) or [], json.loads(row["meta"] or "{}"))
    written = row["written"] or []
    for i, (image_id, row_id, file) in enumerate(zip(row["image_ids"] or [], row["row_ids"] or [], row["files"] or [])):
        if row_id is None:
            record.missing_images += 1
            continue
        extension = PurePosixPath(file).suffix.lstrip(".") or "bin"
        record.images.append(ExportImage(image_id, extension, payloads[row_id], written[i] if i < len(written) else None))
    return record
