"""Batches: a file's records cut into the units that commit together, and the sample rows they make.

The serial ingest and the parallel one (`etl/ingest/parallel.py`) cut records the same way.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass, field

from etl.errors import ErrorRow
from etl.imagerefs import Located
from etl.ingest.images import LoadedImage
from etl.ingest.inputs import STAGE, InputFile
from etl.lake import dumps
from etl.sources.base import SourceRecord


@dataclass
class Batch:
    """Consecutive records of one file that commit together. The file's final batch is `last`; it
    is empty when the records ended on a cut (`start_row` then says where the file ended)."""

    file: InputFile
    records: list[SourceRecord] = field(default_factory=list)
    nbytes: int = 0  # embedded image bytes
    start_row: int = 0
    last: bool = False
    located: dict[int, Located] = field(default_factory=dict)  # id(ImageRef) → its file, if looked up ahead


def batches(file: InputFile, records: Iterable[SourceRecord], start_row: int, max_records: int,
            max_bytes: int) -> Iterator[Batch]:
    """`records` (of `file`, from `start_row` on) cut into batches of at most `max_records` records
    or about `max_bytes` of embedded image bytes; the final batch is flagged `last`."""
    batch = Batch(file, start_row=start_row)
    for record in records:
        batch.records.append(record)
        batch.nbytes += sum(len(ref.data) for ref in record.images if ref.data is not None)
        if len(batch.records) >= max_records or batch.nbytes >= max_bytes:
            yield batch
            batch = Batch(file, start_row=record.source_row + 1)
    batch.last = True
    yield batch


@dataclass
class Prepared:
    """A batch ready to write: its samples, its error rows and the images they reference."""

    batch: Batch
    samples: list[dict]
    errors: list[ErrorRow]
    images: dict[str, LoadedImage]


def uncommitted(file: InputFile, records: list[SourceRecord], committed: Set[str]) -> list[SourceRecord]:
    """`records` but those whose sample or error a crashed run already committed (`committed` keys)."""
    if not committed:  # the usual case: nothing was cut
        return records
    return [r for r in records if (sid := sample_id(file, r)) not in committed and f"{STAGE}/{sid}" not in committed]


def sample_id(file: InputFile, record: SourceRecord) -> str:
    """Stable and unique in the lake: source, file name within the source, record row."""
    return f"{file.source}/{file.name}#{record.source_row}"


def sample_row(file: InputFile, record: SourceRecord, sid: str, image_ids: list[str]) -> dict:
    return {
        "sample_id": sid, "source": file.source, "source_file": file.name, "source_row": record.source_row,
        "orig_id": record.orig_id, "image_ids": image_ids, "image_paths": [ref.path for ref in record.images],
        "conversations": record.conversations,
        "meta": dumps(record.meta),
    }


