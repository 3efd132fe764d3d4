"""Where an ingest of a file starts: its checkpoint, the name the lake knows it by, and the rows of
it the lake already holds (left by a crash, or committed by another ingest of the same file)."""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Set
from dataclasses import dataclass, replace

import pyarrow.compute as pc

from etl import schema as S
from etl.ingest.inputs import STAGE, InputFile
from etl.lake import Lake
from etl.sources.base import file_fingerprint, same_content


class CommittedRows:
    """Which samples and errors of the files being ingested the lake holds, kept true while other
    commands write the same lake (the same file ingested twice at once ends as if ingested once).

    Read in full when a file starts (a crash may have left a cut batch past its checkpoint). After
    that, under the commit lock and only when another process committed samples or errors since this
    one last looked at the file, the fragments added since are read for the file's rows from the
    batch on; what they hold is remembered for the batches still to come.
    """

    tables = ((S.SAMPLES, "sample_id", "source_file", "source_row"), (S.ERRORS, "error_id", "file", "row"))

    def __init__(self, lake: Lake):
        self.lake = lake
        self.seen: dict[tuple[InputFile, str], int] = {}  # (file, table) → version looked at
        self.known: dict[InputFile, dict[str, int]] = {}  # file → keys others committed → their row

    def at_start(self, file: InputFile, start: int) -> set[str]:
        """Samples/errors of `file` at or past its checkpoint: at most the batch a crash cut."""
        self.watch(file)  # first: a commit racing the scan below is looked at again
        return {key for table, *cols in self.tables for key, _ in self.rows(table, file, start, None, *cols)}

    def watch(self, file: InputFile) -> None:
        """From now on, `added_by_others` tells what other commands commit of `file`."""
        for table, *_ in self.tables:
            self.seen[file, table] = self.lake.latest_version(table)
        self.known[file] = {}

    def added_by_others(self, file: InputFile, first: int, last: int) -> set[str]:
        """Under the commit lock: keys of rows [first, last] of `file` that another command
        committed since this one started the file."""
        known = self.known.setdefault(file, {})
        for table, *cols in self.tables:
            since = self.seen.setdefault((file, table), 0)
            if self.lake.foreign_commits_since(table, since):
                known.update(self.rows(table, file, first, since, *cols))
                self.seen[file, table] = self.lake.latest_version(table)
        for key in [k for k, row in known.items() if row < first]:
            del known[key]  # batches come in row order: these rows are behind us
        return {key for key, row in known.items() if row <= last}

    def rows(self, table: str, file: InputFile, start: int, since: int | None, key: str, file_col: str, row_col: str):
        """(key, row) of the file's rows from `start` on: all of them, or those added after `since`."""
        cond = (pc.field("source") == file.source) & (pc.field(file_col) == file.name) & (pc.field(row_col) >= start)
        scan = self.lake.scan(table, [key, row_col], filter=cond) if since is None else \
            self.lake.scan_since(table, since, [key, row_col], filter=cond)
        for b in scan:
            yield from zip(b.column(0).to_pylist(), b.column(1).to_pylist())


@dataclass
class FileStart:
    """Where an ingest of one file starts: the file under the name the lake knows it by, its
    fingerprint, the first row not committed, and the keys a crash left committed past it."""

    file: InputFile
    fingerprint: str
    start: int
    committed: set[str]

    @property
    def job(self) -> str:
        return f"{STAGE}:{self.file.source}"


def start_file(lake: Lake, file: InputFile, rows: CommittedRows, counts: Counter,
               inputs: Set[tuple[str, str]] = frozenset()) -> FileStart | None:
    """Resume `file` from its checkpoint, or None when an earlier run ingested this very content.

    A checkpoint covers the content it was written for: a file whose content changed since (same
    name, other bytes) is read again from the start, and rows already in the lake are kept as they
    are (counted as `files_changed_since_ingested`).
    """
    fingerprint = file_fingerprint(file.path)
    file, cp = known_as(lake, file, fingerprint, inputs)
    if cp and same_content(cp["fingerprint"], fingerprint):
        if cp["done"]:
            counts["files_already_done"] += 1
            return None
        start = cp["upto_row"]
    else:
        if cp:
            counts["files_changed_since_ingested"] += 1
        start = 0
    return FileStart(file, fingerprint, start, rows.at_start(file, start))


def known_as(lake: Lake, file: InputFile, fingerprint: str,
             inputs: Set[tuple[str, str]] = frozenset()) -> tuple[InputFile, dict | None]:
    """The file under the name the lake knows it by, and its checkpoint.

    A file is its path; but the same file reached by another path (the command run from another
    folder, the dataset moved or copied) is still that file when an earlier file of the source had
    the same file name and the same content: it keeps the earlier name, and its samples their ids.
    This also resumes lakes written before files were named by their path (a file given on its own
    was named by its bare name). Files of the run itself (`inputs`: source, name) are never taken
    for one another, whatever their content.
    """
    job = f"{STAGE}:{file.source}"
    cp = lake.checkpoint(job, file.name)
    if cp is None:
        bare = os.path.basename(file.name)
        for name, earlier in lake.checkpoints(job).items():
            if (os.path.basename(name) == bare and (file.source, name) not in inputs
                    and same_content(earlier["fingerprint"], fingerprint)):
                return replace(file, name=name), earlier
    return file, cp



def forget_for_redo(lake: Lake, files: list[InputFile], counts: Counter) -> None:
    """`--redo`: delete the samples, errors and checkpoints the lake holds of `files` (under the
    names the lake knows them by, see `known_as`) inside the commit lock; the ingest that follows
    is then a first ingest of them."""
    from etl.upkeep import FileRows, forget_rows

    inputs = {(f.source, f.name) for f in files}
    names: dict[str, list[str]] = {}
    for f in files:
        known, _ = known_as(lake, f, file_fingerprint(f.path), inputs)
        names.setdefault(f.source, []).append(known.name)
    for source, files_of_source in names.items():
        forget_rows(lake, FileRows(source, tuple(files_of_source)), counts)


