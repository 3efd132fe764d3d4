"""Rows of the lake's `errors` table: everything that failed, with its reason and raw record.

The `error_id` is derived from what failed (stage + the failing object's key), so a rerun that
meets the same bad record or image again never adds a second row for it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import pyarrow as pa

from etl import schema as S
from etl.images import without_addresses
from etl.lake import now_utc


@dataclass
class ErrorRow:
    stage: str
    key: str  # the failing object's stable key: sample_id, image_id, file name...
    kind: str
    message: str
    source: str | None = None
    file: str | None = None
    row: int | None = None
    orig_id: str | None = None
    raw: str | None = None
    run_id: str | None = None

    @property
    def error_id(self) -> str:
        return f"{self.stage}/{self.key}"


def errors_table(rows: list[ErrorRow]) -> pa.Table:
    created = now_utc()
    records = []
    for r in rows:
        rec = asdict(r)
        rec.pop("key")
        rec["message"] = without_addresses(r.message)  # whatever raised it, two runs write the same row
        records.append({"error_id": r.error_id, "created_at": created, **rec})
    return pa.Table.from_pylist(records, schema=S.ERRORS_SCHEMA)
