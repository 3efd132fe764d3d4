"""Serial ingest: one process streams source records → resolves image bytes → stores each unique image once → commits.

For every file, records are read in order and committed in batches: new images first, then error
rows, then samples, then a checkpoint saying "rows below N are done". A kill -9 can only interrupt
one batch; the rerun starts at the checkpoint and skips the rows of that batch that did commit, so
the lake ends exactly as after an uninterrupted run. Rerunning a finished ingest adds nothing.

Each batch commits inside the lake's commit lock (etl/commitlock.py), after one more look at what
other commands committed since this one checked: images another ingest stored meanwhile are left
out, and so are rows of the same file that another ingest of it committed. Any number of ingests,
enrich and export runs on one lake end as if they had run one after another.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Set
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial
from itertools import islice

import pyarrow as pa
from tqdm import tqdm

from etl import schema as S
from etl import storage
from etl.errors import ErrorRow, errors_table
from etl.faults import crash_point
from etl.imagerefs import ImageRoots, Located
from etl.ingest.batches import Batch, Prepared, batches, sample_id, sample_row, uncommitted
from etl.ingest.files import FileRead, FileReader, announce_files
from etl.ingest.images import LoadedImage, StoredPaths, images_table, load_image, sniffed
from etl.ingest.inputs import STAGE, IngestOptions, InputFile
from etl.ingest.resume import CommittedRows, FileStart, start_file
from etl.engine.base import available_cores
from etl.lake import Lake
from etl.pagecache import DropBehind
from etl.runlog import Run
from etl.sources import readers
from etl.sources.base import ImageRef, SourceRecord


HASH_RUN = 32  # files sniffed and hashed per task of the CPU pool
# files of the next batch announced while this one is read: its reader announces the rest itself (up to
# files.AHEAD_FILES ahead), so these only cover its first reads (each file announced here is opened twice)
NEXT_BATCH_ANNOUNCED = 64


def sniff_files(refs: list[ImageRef], run: list[tuple[int, str, FileRead]]) -> list[tuple]:
    """(index, LoadedImage, segment, row) of each file read of `run`: sniffed and hashed, or failed."""
    return [(i, sniffed(refs[i], read.data, path, stamp=read.stamp) if read.error is None
             else LoadedImage(error=read.error), read.segment, read.row) for i, path, read in run]


def empty_version(lake: Lake, name: str) -> int | None:
    """The latest version of table `name` if it holds no row, else None."""
    version = lake.latest_version(name)
    return version if lake.dataset(name, version).count_rows() == 0 else None


class KeyIndexUpkeep:
    """Refreshes the BTREE index on `images.image_id` every `every` image commits of a run.

    Every commit first asks which of its images the lake already holds; a filtered scan reads the
    key column of every fragment the index does not cover, so without this a long ingest into a
    fresh lake would rescan all of its image ids at every commit (quadratic in the run).
    """

    every = 32

    def __init__(self, lake: Lake):
        self.lake, self.commits = lake, 0

    def committed(self) -> bool:
        """Count one image commit; True when this one refreshed the index (a new version)."""
        self.commits += 1
        if self.commits % self.every == 0:
            self.lake.ensure_key_index(S.IMAGES)
            return True
        return False


class Ingestor:
    """Runs one ingest: files → batches → commits, counting into the run's counters."""

    def __init__(self, lake: Lake, opts: IngestOptions, run: Run):
        self.lake, self.opts, self.run = lake, opts, run
        self.cores = max(1, available_cores() // max(1, opts.workers))
        self.hashers = ThreadPoolExecutor(max_workers=self.cores, thread_name_prefix="ingest-hash")
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer")
        self.fetchers = ThreadPoolExecutor(max_workers=opts.io_threads, thread_name_prefix="ingest-fetch")
        self.pending: Future | None = None  # the batch being written
        self.stored_paths = StoredPaths()
        self.image_roots = ImageRoots(opts.image_roots, opts.allow_outside_roots)
        self.key_index = KeyIndexUpkeep(lake)
        self.drop_behind = DropBehind()  # stored images are not read again by this run
        self.images_stored_last: list[str] = []  # the image ids the last `store_images` added
        self.rows = CommittedRows(lake)
        self.inputs: Set[tuple[str, str]] = frozenset()  # (source, name) of every file of the run
        self.begun: set[tuple[str, str]] = set()  # (source, name) of the files started so far
        self.images_empty_at = empty_version(lake, S.IMAGES)  # a first ingest: no key scan per batch

    def shutdown(self) -> None:
        self.hashers.shutdown()
        self.fetchers.shutdown()
        self.writer.shutdown()
        self.drop_behind.close()

    def ingest_file(self, file: InputFile, bar: tqdm) -> None:
        """Read, resolve and write `file` batch by batch; batch N is written (on the writer thread)
        while batch N+1 is read and resolved here, and batches commit in file order. The file's
        last batch may still be writing when this returns: the next file is read meanwhile
        (`wait_for_writes` after the last file)."""
        started = self.start(file)
        if started is None:
            return
        file, committed = started.file, started.committed
        reader = readers()[file.format](self.opts.image_roots, **self.opts.reader_options)
        mark = partial(self.lake.set_checkpoint, started.job, file.name, started.fingerprint)
        records = reader.read_file(file.path, file.name, started.start)
        cut = batches(file, records, started.start, self.opts.batch_records, self.opts.batch_bytes)
        try:
            for batch in self.looking_ahead(cut, self.image_roots.for_file(file.path, file.name)):
                if batch.records:
                    self.write_behind(self.prepare(batch, committed), partial(mark, done=batch.last), bar)
                else:  # the file ended on a cut (or had no rows left): only the checkpoint moves
                    done = partial(mark, batch.start_row, done=True)
                    self.pending = self.writer.submit(self.mark_after, self.pending, done)
        except BaseException:
            if self.pending is not None:  # never leave a write running behind an error
                wait([self.pending])
                self.pending = None
            raise
        self.run.counts["files"] += 1

    def start(self, file: InputFile) -> FileStart | None:
        """Where `file` starts (`start_file`). A file the run already started (named twice, or
        two paths the lake knows by one name) starts only once the writes before it committed:
        its checkpoint must be the one they leave."""
        started = start_file(self.lake, file, self.rows, self.run.counts, self.inputs)
        if started is not None and (started.file.source, started.file.name) in self.begun and self.pending:
            self.wait_for_writes()
            started = start_file(self.lake, file, self.rows, self.run.counts, self.inputs)
        if started is not None:
            self.begun.add((started.file.source, started.file.name))
        return started

    def looking_ahead(self, cut: Iterator[Batch], roots: ImageRoots) -> Iterator[Batch]:
        """The batches of `cut`, one behind: before batch N is yielded (to be read, hashed and
        written), batch N+1 is parsed, its image files located and the kernel asked to read its first ones,
        so the disk is busy while this process parses, waits for a write or hashes a batch's tail.
        A batch without files to look up (embedded bytes) has nothing to read ahead: it is yielded
        at once, so the first batch of an HF parquet file is hashed while the next is decoded."""
        previous = None
        for batch in cut:
            refs = [ref for record in batch.records if not record.error for ref in record.images
                    if ref.data is None and ref.path]
            batch.located = {id(ref): roots.locate(ref) for ref in refs}
            local = (where.path for where in batch.located.values() if where.path and not storage.is_remote(where.path))
            announce_files(list(islice(local, NEXT_BATCH_ANNOUNCED)))
            if previous is not None:
                yield previous
            previous = batch
            if not refs:
                yield previous
                previous = None
        if previous is not None:
            yield previous

    def write_behind(self, prepared: Prepared, checkpoint: Callable[[int], None], bar: tqdm) -> None:
        """Write `prepared`, then `checkpoint` its next row, on the writer thread, after the batch before."""
        self.wait_for_writes()
        self.pending = self.writer.submit(self.write, prepared, bar, checkpoint)

    def mark_after(self, before: Future | None, checkpoint: Callable[[], None]) -> None:
        """On the writer thread, after the write `before` (a failed one raises here): commit `checkpoint`."""
        if before is not None:
            before.result()
        with self.lake.committing():
            checkpoint()

    def wait_for_writes(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()  # a failed write raises here

    def commit(self, batch: Batch, committed: set[str], bar: tqdm) -> int:
        """Write one batch now (images, then errors, then samples); return the next row to read."""
        return self.write(self.prepare(batch, committed), bar)

    def prepare(self, batch: Batch, committed: set[str]) -> Prepared:
        """Drop the records a crash left committed, load and hash the images of the others."""
        records = uncommitted(batch.file, batch.records, committed)
        self.run.counts["records_already_in_lake"] += len(batch.records) - len(records)
        return Prepared(batch, *self.resolve(batch.file, records, batch.located))

    def write(self, prepared: Prepared, bar: tqdm, checkpoint: Callable[[int], None] | None = None) -> int:
        """Images, errors, samples, then `checkpoint` of the next row, in that order and inside the
        lake's commit lock (image bytes are written before it); the next row to read."""
        new, fragments, checked_at = self.write_new_images(prepared.images)
        with self.lake.committing():
            self.commit_images(new, fragments, checked_at)
            self.store_again_if_deleted(prepared.images, checked_at)
            crash_point("after_images")
            samples, errors = self.not_added_by_others(prepared)
            self.commit_rows(prepared, samples, errors)
            next_row = prepared.batch.records[-1].source_row + 1
            if checkpoint is not None:
                checkpoint(next_row)
        self.run.counts["samples_added"] += len(samples)
        self.run.counts.update(f"errors.{e.kind}" for e in errors)
        bar.update(len(prepared.batch.records))
        bar.set_postfix(samples=self.run.counts["samples_added"], images=self.run.counts["images_added"],
                        errors=sum(v for k, v in self.run.counts.items() if k.startswith("errors.")))
        return next_row

    def commit_rows(self, prepared: Prepared, samples: list[dict], errors: list[ErrorRow]) -> None:
        """Under the commit lock: the batch's errors, then its samples."""
        self.lake.append(S.ERRORS, errors_table(errors))
        crash_point("after_errors")
        self.lake.append(S.SAMPLES, pa.Table.from_pylist(samples, schema=S.SAMPLES_SCHEMA))
        crash_point("after_samples")

    def not_added_by_others(self, prepared: Prepared) -> tuple[list[dict], list[ErrorRow]]:
        """The batch's samples and errors but those another command committed meanwhile (the same
        file ingested twice at once ends as if ingested once)."""
        records = prepared.batch.records
        added = self.rows.added_by_others(prepared.batch.file, records[0].source_row, records[-1].source_row)
        if not added:
            return prepared.samples, prepared.errors
        samples = [s for s in prepared.samples if s["sample_id"] not in added]
        errors = [e for e in prepared.errors if e.error_id not in added]
        self.run.counts["records_already_in_lake"] += len(prepared.samples) + len(prepared.errors) - len(samples) - len(errors)
        return samples, errors

    def resolve(self, file: InputFile, records: list[SourceRecord], located: dict[int, Located] | None = None):
        """Load every image of the batch (`located`: files already looked up, by id of their
        reference); split records into samples and errors."""
        refs = [ref for r in records if not r.error for ref in r.images]
        loaded = iter(self.load_all(refs, self.image_roots.for_file(file.path, file.name), located or {}))
        samples, errors, images = [], [], {}
        for record in records:
            sid = sample_id(file, record)
            if record.error:
                errors.append(self.error(file, record, sid, *record.error))
                continue
            mine = [next(loaded) for _ in record.images]
            failed = [img.error for img in mine if img.error]
            if failed:
                message = "; ".join(msg for _, msg in failed)
                errors.append(self.error(file, record, sid, failed[0][0], message))
                continue
            for img in mine:
                kept = images.get(img.info.image_id)
                if kept is None or kept.data is None:  # prefer a copy that carries bytes
                    images[img.info.image_id] = img
            if not record.images_only:
                samples.append(sample_row(file, record, sid, [img.info.image_id for img in mine]))
        return samples, errors, images

    def load_all(self, refs: list[ImageRef], roots: ImageRoots, located: dict[int, Located]) -> list[LoadedImage]:
        """Every reference loaded (bytes, header info, image id) or failed, in order.

        Local files are read by `FileReader` on this thread (the kernel reads ahead) and hashed on
        the CPU pool while the next ones are read. Embedded bytes only need CPU (hashing releases
        the GIL, header parsing holds it): one run per core this process has, since more threads
        only trade the GIL back and forth.
        """
        loaded: list[LoadedImage | None] = [None] * len(refs)
        files: list[tuple[int, str]] = []  # (index in refs, located path) of the files to read
        remote: list[tuple[int, Located]] = []  # objects on a store: one request each, many at once
        for i, ref in enumerate(refs):
            if ref.data is None and ref.path:
                where = located.get(id(ref)) or roots.locate(ref)
                if where.error:
                    loaded[i] = LoadedImage(error=where.error)
                elif storage.is_remote(where.path):
                    remote.append((i, where))
                elif info := self.stored_paths.get(where.path):
                    loaded[i] = LoadedImage(info=info, path=where.path)
                else:
                    files.append((i, where.path))
        if files:
            self.read_files(refs, files, loaded)
        if remote:
            fetched = self.fetchers.map(lambda item: load_image(refs[item[0]], roots, item[1]), remote)
            for (i, _), img in zip(remote, fetched):
                loaded[i] = img
        rest = [i for i, img in enumerate(loaded) if img is None]  # embedded bytes (or no reference)
        per_task = max(1, -(-len(rest) // self.cores))
        runs = [[refs[i] for i in rest[k: k + per_task]] for k in range(0, len(rest), per_task)]
        done = iter(img for run in self.hashers.map(partial(self.load_run, roots=roots), runs) for img in run)
        return [img if img is not None else next(done) for img in loaded]

    def read_files(self, refs: list[ImageRef], files: list[tuple[int, str]], loaded: list) -> None:
        """Read the `files` (index in `refs`, located path) into one batch's Arrow buffers; sniff
        and hash them, HASH_RUN files per task on the CPU pool, as they come; set `loaded`."""
        reader, tasks, run = FileReader(), [], []
        for (i, path), read in zip(files, reader.read([path for _, path in files])):
            run.append((i, path, read))
            if len(run) == HASH_RUN:
                tasks.append(self.hashers.submit(sniff_files, refs, run))
                run = []
        tasks.append(self.hashers.submit(sniff_files, refs, run))
        arrays = reader.arrays()
        for task in tasks:
            for i, img, segment, row in task.result():
                if img.info is not None and segment is not None:
                    img.arrow = (arrays[segment], row)
                loaded[i] = img

    @staticmethod
    def load_run(refs: list[ImageRef], roots: ImageRoots) -> list[LoadedImage]:
        """Embedded bytes (or no reference at all): sniffed and hashed, or why they cannot be stored."""
        return [load_image(ref, roots) for ref in refs]

    def error(self, file: InputFile, record: SourceRecord, sid: str, kind: str, message: str) -> ErrorRow:
        return ErrorRow(STAGE, sid, kind, message, source=file.source, file=file.name, row=record.source_row,
                        orig_id=record.orig_id, raw=record.raw_text(), run_id=self.run.run_id)

    def write_new_images(self, images: dict[str, LoadedImage]) -> tuple[list[LoadedImage], list, int]:
        """The images the lake lacks, written as uncommitted fragments; and the images version the
        check saw (outside the commit lock: `commit_images` looks again at what came after)."""
        checked_at = self.lake.latest_version(S.IMAGES)
        new = self.new_images(images)
        self.run.counts["images_already_in_lake"] += len(images) - len(new)
        for img in images.values():
            if img.path:
                self.stored_paths.put(img.path, img.info, img.stamp)
        return new, self.lake.write_fragments(S.IMAGES, images_table(new)) if new else [], checked_at

    def commit_images(self, new: list[LoadedImage], fragments: list, checked_at: int) -> None:
        """Under the commit lock: commit the new images' fragments; images another command stored
        since `checked_at` are left out (their fragments are written again without them)."""
        raced = self.lake.keys_added_since(S.IMAGES, checked_at, [img.info.image_id for img in new])
        if raced:
            self.run.counts["images_already_in_lake"] += len(raced)
            new = [img for img in new if img.info.image_id not in raced]
            fragments = self.lake.write_fragments(S.IMAGES, images_table(new)) if new else []
        self.images_stored_last = [img.info.image_id for img in new]
        self.run.counts["images_added"] += len(new)
        self.run.counts["image_bytes_added"] += sum(img.info.nbytes for img in new)
        if fragments:
            self.lake.commit_fragments(S.IMAGES, fragments, self.images_stored_last)
            self.drop_images_behind(fragments)
            self.key_index.committed()

    def store_again_if_deleted(self, images: dict[str, LoadedImage], checked_at: int) -> None:
        """Under the commit lock: images the batch found in the lake but that a `cleanup` deleted
        since `checked_at` (it deletes images no sample used) are stored again, so no sample
        commits a dangling image id."""
        if not images or not self.lake.foreign_commits_since(S.IMAGES, checked_at):
            return
        stored_now = set(self.images_stored_last)
        used = [iid for iid in images if iid not in stored_now]
        gone = set(used) - self.lake.existing_keys(S.IMAGES, used)
        if gone:
            kept = [images[iid] for iid in sorted(gone)]  # a cached path has no bytes here: read it again
            again = [img if img.data is not None else load_image(ImageRef(path=img.path), self.image_roots, Located(img.path))
                     for img in kept]
            if any(img.error or img.info.image_id not in gone for img in again):
                raise ValueError(f"images {sorted(gone)[:3]} were deleted by a cleanup while this ingest used "
                                 "them and their files changed since: rerun the ingest")
            self.lake.append(S.IMAGES, images_table(again), sorted(gone))
            self.run.counts["images_stored_again_after_cleanup"] += len(again)

    def new_images(self, images: dict[str, LoadedImage]) -> list[LoadedImage]:
        """The images whose bytes the lake does not hold yet (those loaded without bytes are stored)."""
        carried = [iid for iid, img in images.items() if img.data is not None]
        if self.images_empty_at is None:
            present = self.lake.existing_keys(S.IMAGES, carried)
        else:  # what the table holds is what came since it was empty: known here, unless others wrote
            present = self.lake.keys_added_since(S.IMAGES, self.images_empty_at, carried)
        return [images[iid] for iid in carried if iid not in present]

    def drop_images_behind(self, fragments: list) -> None:
        """Flush the images files just written and free their page cache (this run never reads them)."""
        self.drop_behind.add(self.lake.local_files(S.IMAGES, fragments))



def ingest_files_serially(lake: Lake, files: list[InputFile], opts: IngestOptions, run: Run, bar: tqdm) -> None:
    ingestor = Ingestor(lake, opts, run)
    ingestor.inputs = {(f.source, f.name) for f in files}
    try:
        for file in files:
            bar.set_description(f"ingest {file.name}")
            ingestor.ingest_file(file, bar)
        ingestor.wait_for_writes()
    finally:
        ingestor.shutdown()
