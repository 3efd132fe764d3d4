"""`doctor`: check that the lake agrees with itself, and repair what can be repaired safely.

Checks (each finding names what is wrong and what to do):
- blob_hash: an image's stored bytes hash (sha256) to its image_id (and their length to `nbytes`);
- dangling_image_id, checkpoint_ahead, duplicate_image: `sql/doctor.sql`;
- derived_stale: a dedup table computed before the samples or images last changed;
- orphan_file: a data file no version references, older than an hour (a killed writer's).

Repairs (`--repair`), only where nothing can be lost: a checkpoint ahead of its file's rows is
deleted (the next ingest of the file reads it again and adds only the rows the lake lacks); orphan
files are deleted. Bad blobs and dangling ids are reported with the command that rebuilds them
(`ingest --redo` of the file), since the right bytes are not in the lake.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from etl import schema as S
from etl.lake import Lake, sql_string_list
from etl.upkeep import INGEST_JOB, ORPHAN_MIN_AGE, _fs_delete, orphan_files

REPAIRABLE = {"checkpoint_ahead", "orphan_file"}
WARNINGS = {"derived_stale"}  # reported, but the lake does not contradict itself


@dataclass
class Finding:
    check: str
    subject: str  # the image id, sample, file or table that is wrong
    detail: str
    advice: str  # what --repair does, or the command to run
    source: str | None = None
    file: str | None = None
    repaired: bool = False

    def row(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in ("check", "subject", "detail", "advice", "repaired")}


def examine(lake: Lake, blobs: bool = True, batch: int = 256) -> list[Finding]:
    """Every finding, in check order."""
    findings = list(blob_findings(lake, batch)) if blobs else []
    findings += sql_findings(lake)
    findings += stale_findings(lake)
    findings += orphan_findings(lake)
    return findings


def blob_findings(lake: Lake, batch: int) -> Iterator[Finding]:
    """Stream the images in batches of `batch`; hash each stored blob."""
    for b in lake.scan(S.IMAGES, ["image_id", "nbytes"], batch_size=batch, with_row_id=True):
        ids, sizes, rows = b.column(0).to_pylist(), b.column(1).to_pylist(), b.column(2).to_pylist()
        for image_id, nbytes, data in zip(ids, sizes, lake.read_image_bytes(rows)):
            digest = hashlib.sha256(data).hexdigest() if data is not None else None
            if digest != image_id or (nbytes is not None and nbytes != len(data)):
                yield Finding("blob_hash", image_id,
                              f"stored bytes hash to {digest} ({len(data or b'')} bytes, nbytes {nbytes})",
                              "not repairable here: re-ingest a file that has this image (`ingest --redo`)")


def sql_findings(lake: Lake) -> list[Finding]:
    from etl.sqlrun import connect, run_file

    advice = {
        "dangling_image_id": "not repairable here: `python -m etl ingest {file} --source {source} --redo`",
        "checkpoint_ahead": "--repair deletes the checkpoint; the next ingest of {file} adds the missing rows",
        "duplicate_image": "not repaired: queries count this image twice (report it)",
    }
    rows = run_file(connect(lake), "doctor").fetch_arrow_table().to_pylist()
    return [Finding(r["check"], r["subject"], r["detail"], advice[r["check"]].format(**r), r["source"], r["file"])
            for r in rows]


def stale_findings(lake: Lake) -> list[Finding]:
    """Each committed dedup table whose recorded inputs differ from the lake now (etl/derived.py:
    samples added, deleted or renamed; phashes changed)."""
    from etl.derived import StaleDerivedTable, check_fresh, committed_versions, table_info
    from etl.sqlrun import connect

    found = []
    for table, version in committed_versions(lake).items():
        info = table_info(lake, table, version)
        near = info["params"].get("near_k")
        command = "python -m etl dedup" + (f" --near {near}" if near is not None and table != S.DUP_EXACT else "")
        try:
            check_fresh(connect(lake), info, table, command)
        except StaleDerivedTable as exc:
            found.append(Finding("derived_stale", table, exc.reason, f"run `{command}`"))
    return found


def orphan_findings(lake: Lake) -> list[Finding]:
    from etl.upkeep import all_tables

    now = datetime.now(timezone.utc)
    return [Finding("orphan_file", path, f"{size:,} bytes no version of {table} references",
                    "--repair deletes it (as `cleanup` does)", file=path)
            for table in all_tables(lake) for path, size in orphan_files(lake, table, ORPHAN_MIN_AGE, now)]


def repair(lake: Lake, findings: list[Finding]) -> None:
    """Fix the safe findings, inside the commit lock."""
    with lake.committing():
        for f in findings:
            if f.check == "checkpoint_ahead":
                lake.delete_rows(S.CHECKPOINTS, f"job = {sql_string_list([INGEST_JOB + f.source])} "
                                                f"AND file = {sql_string_list([f.file])}")
                f.repaired = True
            elif f.check == "orphan_file":
                _fs_delete(f.file)
                f.repaired = True


