"""Ingest, before reading its files: fetch again the records whose download failed in an earlier run.

A URL list is read once (its checkpoint then says so), but its failed downloads are still to do: the
`errors` rows of the file are the list of them. Each ingest of a list whose content is unchanged
first reads again the rows whose error its reader says may pass (`SourceReader.refetched_on_rerun`:
timeouts, resets, 429, 5xx for URL lists; every kind with `--retry-failed`), and only those rows.

A record that downloads now becomes its sample, and its errors row is deleted; one that fails again
has its row replaced by this run's (kind, message, run_id). So the errors table keeps one row per
record that is not in the lake, the latest failure. Commits go samples, then the replaced errors,
then the deletions: a crash in between leaves a record with both its sample and its old errors row,
which the next rerun deletes without fetching anything; no record is ever left with neither.
"""
from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from etl import schema as S
from etl.errors import ErrorRow, errors_table
from etl.faults import crash_point
from etl.ingest.batches import Prepared, batches, sample_id
from etl.ingest.inputs import STAGE, IngestOptions, InputFile
from etl.ingest.resume import known_as
from etl.ingest.serial import Ingestor
from etl.lake import Lake, sql_string_list
from etl.runlog import Run
from etl.sources import readers
from etl.sources.base import SourceRecord, file_fingerprint, same_content

def refetch_failed(lake: Lake, files: list[InputFile], opts: IngestOptions, run: Run, bar: tqdm) -> None:
    """Fetch again the failed records of those `files` whose reader refetches (URL lists)."""
    retrying = [f for f in files if readers()[f.format].fetches]
    if not retrying:
        return
    refetcher = Refetcher(lake, opts, run)
    refetcher.inputs = {(f.source, f.name) for f in files}
    try:
        for file in retrying:
            refetcher.refetch_file(file, bar)
    finally:
        refetcher.shutdown()


class Refetcher(Ingestor):
    """An ingestor that reads only the failed rows of a file and replaces their errors rows."""

    def refetch_file(self, file: InputFile, bar: tqdm) -> None:
        fingerprint = file_fingerprint(file.path)
        file, cp = known_as(self.lake, file, fingerprint, self.inputs)
        if cp is None or not same_content(cp["fingerprint"], fingerprint):
            return  # never ingested, or changed since: the ingest that follows reads it whole
        self.rows.watch(file)  # before reading the lake: what others commit from now on is seen
        failed = self.failed_rows(file)
        if not failed:
            return
        self.forget_recovered(file, failed)
        if not failed:
            return
        self.run.counts["failed_records_refetched"] += len(failed)
        bar.set_description(f"refetch {file.name}")
        options = {**self.opts.reader_options, "only_rows": set(failed)}
        reader = readers()[file.format](self.opts.image_roots, **options)
        records = reader.read_file(file.path, file.name, min(failed))
        for batch in batches(file, records, min(failed), self.opts.batch_records, self.opts.batch_bytes):
            if batch.records:
                self.write_behind(self.prepare(batch, set()), None, bar)
        self.wait_for_writes()

    def failed_rows(self, file: InputFile) -> dict[int, str]:
        """Row → error_id of the file's records whose failure its reader fetches again."""
        refetched = readers()[file.format].refetched_on_rerun
        failed = {}
        for row, error_id, kind in self.file_errors(file):
            if row is not None and error_id == f"{STAGE}/{sample_id(file, SourceRecord(file.name, row))}" \
                    and refetched(kind, self.opts.retry_failed):
                failed[row] = error_id
        return failed

    def file_errors(self, file: InputFile) -> Iterator[tuple[int | None, str, str]]:
        cond = (pc.field("stage") == STAGE) & (pc.field("source") == file.source) & (pc.field("file") == file.name)
        for b in self.lake.scan(S.ERRORS, ["row", "error_id", "kind"], filter=cond):
            yield from zip(*(b.column(i).to_pylist() for i in range(3)))

    def forget_recovered(self, file: InputFile, failed: dict[int, str]) -> None:
        """Delete the errors rows of failed rows that have their sample (a crash cut the last
        refetch between the two commits) and drop those rows from `failed`."""
        cond = (pc.field("source") == file.source) & (pc.field("source_file") == file.name)
        recovered = [row for b in self.lake.scan(S.SAMPLES, ["source_row"], filter=cond)
                     for row in b.column(0).to_pylist() if row in failed]
        if recovered:
            self.lake.delete_rows(S.ERRORS, f"error_id IN ({sql_string_list(failed[r] for r in recovered)})")
            for row in recovered:
                del failed[row]

    def commit_rows(self, prepared: Prepared, samples: list[dict], errors: list[ErrorRow]) -> None:
        """Under the commit lock: the recovered records' samples, then the errors rows of those that
        failed again (replacing theirs), then the deletion of the recovered records' errors rows."""
        self.lake.append(S.SAMPLES, pa.Table.from_pylist(samples, schema=S.SAMPLES_SCHEMA))
        crash_point("refetch_after_samples")
        self.lake.upsert_rows(S.ERRORS, errors_table(errors))
        crash_point("refetch_after_errors")
        failed_again = {e.error_id for e in prepared.errors}  # also those another command wrote first
        retried = {f"{STAGE}/{sample_id(prepared.batch.file, r)}" for r in prepared.batch.records}
        if recovered := retried - failed_again:
            self.lake.delete_rows(S.ERRORS, f"error_id IN ({sql_string_list(sorted(recovered))})")
        self.run.counts["failed_records_recovered"] += len(recovered)
