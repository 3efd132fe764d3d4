"""Ingest: stream source records → resolve image bytes → store each unique image once → commit.

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

import gc
import glob
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Set
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial

import lance
import pyarrow as pa
import pyarrow.compute as pc
from lance.blob import BlobType
from tqdm import tqdm

from etl import schema as S
from etl.errors import ErrorRow, errors_table
from etl.faults import crash_point
from etl.imagerefs import ImageRoots, Located, UnreadableImage, read_regular_file
from etl.images import ImageInfo, NotAnImage, sniff
from etl.lake import Lake, dumps
from etl.engine.base import EngineSpec
from etl.pagecache import DropBehind
from etl.runlog import Run, recorded_run
from etl.sources import detect_format, readers
from etl.sources.base import ImageRef, SourceRecord, file_fingerprint, same_content

STAGE = "ingest"
PROGRESS_DISABLE = {True: False, False: True, None: None}  # tqdm: None = only on a terminal


@dataclass
class IngestOptions:
    source: str | None = None  # None: derived per file by the reader (e.g. HF config folders)
    format: str = "auto"
    image_roots: list[str] = field(default_factory=list)
    allow_outside_roots: bool = False  # follow image paths outside the roots (etl/imagerefs.py); never --from-hub
    batch_records: int = 1000
    batch_bytes: int = 256 << 20
    io_threads: int = 8
    workers: int = 1  # > 1: worker processes read, hash and write; this process commits
    engine: EngineSpec = field(default_factory=EngineSpec)  # who runs those workers (etl/engine/)
    reader_options: dict = field(default_factory=dict)
    progress: bool | None = None  # None: a bar only on a terminal
    redo: bool = False  # forget what the lake holds of these files first (a first ingest again)
    retry_failed: bool = False  # URL lists: refetch failed downloads of every kind, not only transient ones


@dataclass(frozen=True)
class InputFile:
    path: str  # where to read it
    name: str  # the stable name recorded in the lake (relative to the argument it came from)
    source: str
    format: str


# -- inputs -------------------------------------------------------------------------------------------
def expand_inputs(paths: Iterable[str], opts: IngestOptions) -> list[InputFile]:
    """Files named by the arguments (files, directories, globs), each with its name, source, format."""
    found: list[InputFile] = []
    for arg in paths:
        for path, root in _files_of(arg):
            fmt = opts.format if opts.format != "auto" else _detect_or_none(path)
            if fmt is None:
                continue  # a directory may hold images and readmes beside the annotations
            reader_cls = readers()[fmt]
            source = opts.source or reader_cls.source_name_for(path, root or os.path.dirname(path)) or _stem(arg)
            found.append(InputFile(path, identity_name(path, root), source, fmt))
    if not found:
        raise FileNotFoundError(f"no ingestible files in {list(paths)}")
    return found


def identity_name(path: str, root: str | None) -> str:
    """A file's identity in its source: its path relative to the directory or glob it was found
    under; a file named on its own is relative to the working directory (absolute when outside it),
    so `a/train.json` and `b/train.json` stay two files."""
    if root is None:
        relative = os.path.relpath(os.path.abspath(path))
        name = os.path.abspath(path) if relative.startswith(os.pardir) else relative
    else:
        name = os.path.relpath(path, root)
    return name.replace(os.sep, "/")


def _files_of(arg: str) -> Iterator[tuple[str, str | None]]:
    if os.path.isdir(arg):
        for dirpath, dirnames, filenames in os.walk(arg):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # e.g. a download's .cache/
            for fn in sorted(f for f in filenames if not f.startswith(".")):
                yield os.path.join(dirpath, fn), arg
    elif glob.has_magic(arg):
        root = _glob_root(arg)
        matches = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
        if not matches:
            raise FileNotFoundError(f"{arg}: the pattern matches no file")
        for p in matches:
            yield p, root
    elif os.path.isfile(arg):
        yield arg, None
    else:
        raise FileNotFoundError(f"{arg}: no such file or directory")


def _glob_root(pattern: str) -> str:
    parts = pattern.split(os.sep)
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    return os.sep.join(fixed) or "."


def _detect_or_none(path: str) -> str | None:
    try:
        return detect_format(path)
    except ValueError:
        return None


def _stem(arg: str) -> str:
    base = os.path.basename(os.path.normpath(_glob_root(arg) if glob.has_magic(arg) else arg))
    return base.split(".")[0] or "default"


# -- images -------------------------------------------------------------------------------------------
@dataclass
class LoadedImage:
    info: ImageInfo | None = None
    data: bytes | memoryview | None = None  # None with `info` set: the file is already stored in the lake
    error: tuple[str, str] | None = None  # (kind, message)
    path: str | None = None  # the file it came from, if any
    arrow: tuple[pa.Array, int] | None = None  # the Arrow array and row `data` views (ImageRef.arrow)


class StoredPaths:
    """Image files this run already stored, by path (bounded LRU).

    COCO-style sources reference the same file from many records: a re-referenced file whose size
    and mtime are unchanged is not read and hashed again.
    """

    def __init__(self, capacity: int = 500_000):
        self.capacity, self.entries, self.lock = capacity, OrderedDict(), threading.Lock()

    def get(self, path: str) -> ImageInfo | None:
        st = os.stat(path)
        with self.lock:
            entry = self.entries.get(path)
            if entry is None or entry[0] != (st.st_size, st.st_mtime_ns):
                return None
            self.entries.move_to_end(path)
            return entry[1]

    def put(self, path: str, info: ImageInfo) -> None:
        st = os.stat(path)
        with self.lock:
            self.entries[path] = ((st.st_size, st.st_mtime_ns), info)
            self.entries.move_to_end(path)
            while len(self.entries) > self.capacity:
                self.entries.popitem(last=False)


def load_image(ref: ImageRef, roots: ImageRoots, located: Located | None = None) -> LoadedImage:
    """Bytes + header info of one reference (`located` already, or now), or why it cannot be stored."""
    data, path = ref.data, None
    if data is None:
        if not ref.path:
            return LoadedImage(error=("missing_image", "image reference has neither bytes nor a path"))
        located = located or roots.locate(ref)
        if located.error:
            return LoadedImage(error=located.error)
        try:
            data, path = read_regular_file(located.path), located.path
        except UnreadableImage as exc:
            return LoadedImage(error=(exc.kind, str(exc)))
    try:
        return LoadedImage(info=sniff(data), data=data, path=path, arrow=ref.arrow)
    except NotAnImage as exc:
        where = ref.path or "embedded bytes"
        return LoadedImage(error=(exc.kind, f"{where}: {exc}"))


# -- one batch ----------------------------------------------------------------------------------------
@dataclass
class Batch:
    file: InputFile
    records: list[SourceRecord] = field(default_factory=list)
    nbytes: int = 0


@dataclass
class Prepared:
    """A batch ready to write: its samples, its error rows and the images they reference."""

    batch: Batch
    samples: list[dict]
    errors: list[ErrorRow]
    images: dict[str, LoadedImage]


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


class Ingestor:
    """Runs one ingest: files → batches → commits, counting into the run's counters."""

    def __init__(self, lake: Lake, opts: IngestOptions, run: Run):
        self.lake, self.opts, self.run = lake, opts, run
        self.pool = ThreadPoolExecutor(max_workers=opts.io_threads)
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer")
        self.pending: Future | None = None  # the batch being written
        self.stored_paths = StoredPaths()
        self.image_roots = ImageRoots(opts.image_roots, opts.allow_outside_roots)
        self.key_index = KeyIndexUpkeep(lake)
        self.drop_behind = DropBehind()  # stored images are not read again by this run
        self.images_stored_last: list[str] = []  # the image ids the last `store_images` added
        self.rows = CommittedRows(lake)
        self.inputs: Set[tuple[str, str]] = frozenset()  # (source, name) of every file of the run

    def shutdown(self) -> None:
        self.pool.shutdown()
        self.writer.shutdown()
        self.drop_behind.close()

    def ingest_file(self, file: InputFile, bar: tqdm) -> None:
        """Read, resolve and write `file` batch by batch; batch N is written (on the writer thread)
        while batch N+1 is read and resolved here, and batches commit in file order."""
        started = start_file(self.lake, file, self.rows, self.run.counts, self.inputs)
        if started is None:
            return
        file, start, committed = started.file, started.start, started.committed
        reader = readers()[file.format](self.opts.image_roots, **self.opts.reader_options)
        mark = partial(self.lake.set_checkpoint, started.job, file.name, started.fingerprint)
        batch, upto = Batch(file), start
        try:
            for record in reader.read_file(file.path, file.name, start):
                batch.records.append(record)
                batch.nbytes += sum(len(r.data) for r in record.images if r.data is not None)
                if len(batch.records) >= self.opts.batch_records or batch.nbytes >= self.opts.batch_bytes:
                    self.write_behind(self.prepare(batch, committed), partial(mark, done=False), bar)
                    batch, upto = Batch(file), batch.records[-1].source_row + 1
            if batch.records:
                self.write_behind(self.prepare(batch, committed), partial(mark, done=True), bar)
            self.wait_for_writes()
        finally:
            if self.pending is not None:  # an error here: never leave a write running behind it
                wait([self.pending])
                self.pending = None
        if not batch.records:  # the file ended on a batch boundary (or had no rows left)
            with self.lake.committing():
                mark(upto, done=True)
        self.run.counts["files"] += 1

    def write_behind(self, prepared: Prepared, checkpoint: Callable[[int], None], bar: tqdm) -> None:
        """Write `prepared`, then `checkpoint` its next row, on the writer thread, after the batch before."""
        self.wait_for_writes()
        self.pending = self.writer.submit(self.write, prepared, bar, checkpoint)

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
        return Prepared(batch, *self.resolve(batch.file, records))

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

    def resolve(self, file: InputFile, records: list[SourceRecord]):
        """Load every image of the batch in parallel; split records into samples and errors."""
        refs = [ref for r in records if not r.error for ref in r.images]
        loaded = iter(self.load_all(refs, self.image_roots.for_file(file.path, file.name)))
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

    def load_all(self, refs: list[ImageRef], roots: ImageRoots) -> list[LoadedImage]:
        """`load` of every reference on the thread pool, in order, one run of references per task.

        Files are read by up to `io_threads` runs at once (their reads wait on the disk). Embedded
        bytes only need CPU (hashing releases the GIL, header parsing holds it): one run per core
        this process has, since more threads only trade the GIL back and forth.
        """
        files = any(ref.data is None for ref in refs)
        parallel = self.opts.io_threads if files else max(1, (os.cpu_count() or 1) // max(1, self.opts.workers))
        per_task = max(1, -(-len(refs) // parallel))
        runs = [refs[i: i + per_task] for i in range(0, len(refs), per_task)]
        return [img for run in self.pool.map(partial(self.load_run, roots=roots), runs) for img in run]

    def load_run(self, refs: list[ImageRef], roots: ImageRoots) -> list[LoadedImage]:
        return [self.load(ref, roots) for ref in refs]

    def load(self, ref: ImageRef, roots: ImageRoots) -> LoadedImage:
        located = roots.locate(ref) if ref.data is None and ref.path else None
        if located and located.path and (info := self.stored_paths.get(located.path)):
            return LoadedImage(info=info, path=located.path)
        return load_image(ref, roots, located)

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
                self.stored_paths.put(img.path, img.info)
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
        present = self.lake.existing_keys(S.IMAGES, carried)
        return [images[iid] for iid in carried if iid not in present]

    def drop_images_behind(self, fragments: list) -> None:
        """Flush the images files just written and free their page cache (this run never reads them)."""
        self.drop_behind.add(self.lake.local_files(S.IMAGES, fragments))


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


def images_table(images: list[LoadedImage]) -> pa.Table:
    """Rows of `images` for new images. Bytes still in an Arrow array are copied by one `take` per
    array (no Python `bytes` in between); the rest (files, tar members) are built from their bytes."""
    by_array: dict[int | None, list[LoadedImage]] = {}
    for img in images:
        by_array.setdefault(id(img.arrow[0]) if img.arrow else None, []).append(img)
    return pa.concat_tables(images_chunk(group, blob_bytes(group)) for group in by_array.values())


def blob_bytes(images: list[LoadedImage]) -> pa.Array:
    """The images' bytes as one large_binary array (they all view one Arrow array, or none does);
    a run of consecutive rows of the array (the usual case: every row new) is a zero-copy slice."""
    if images[0].arrow is None:
        return pa.array([img.data for img in images], pa.large_binary())
    array, rows = images[0].arrow[0], [img.arrow[1] for img in images]
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return array.slice(rows[0], len(rows))
    return array.take(pa.array(rows, pa.int64()))


def images_chunk(images: list[LoadedImage], data: pa.Array) -> pa.Table:
    n = len(images)
    blobs = pa.StructArray.from_arrays(  # the storage of lance.blob_array(...), built without copies
        [data, pa.nulls(n, pa.utf8()), pa.nulls(n, pa.uint64()), pa.nulls(n, pa.uint64())],
        names=["data", "uri", "position", "size"])
    return pa.table(
        {
            "image_id": [i.info.image_id for i in images],
            S.BLOB_COLUMN: pa.ExtensionArray.from_storage(BlobType(), blobs),
            "format": [i.info.format for i in images],
            "width": pa.array([i.info.width for i in images], pa.int32()),
            "height": pa.array([i.info.height for i in images], pa.int32()),
            "nbytes": pa.array([i.info.nbytes for i in images], pa.int64()),
        }
    )


# -- the job ------------------------------------------------------------------------------------------
def ingest(lake: Lake, paths: list[str], opts: IngestOptions) -> Counter:
    """Ingest every file named by `paths`; returns the run's counts (also stored in `runs`)."""
    files = expand_inputs(paths, opts)
    params = {"paths": [os.path.abspath(p) for p in paths], "source": opts.source, "format": opts.format,
              "image_roots": opts.image_roots, "allow_outside_roots": opts.allow_outside_roots,
              "files": [f.name for f in files], "workers": opts.workers}
    for flag in ("redo", "retry_failed"):
        if getattr(opts, flag):
            params[flag] = True
    with recorded_run(lake, "ingest", params) as run, gc_passes_lowered():
        if opts.redo:
            forget_for_redo(lake, files, run.counts)
        with tqdm(desc="ingest", unit=" rec", disable=PROGRESS_DISABLE[opts.progress]) as bar:
            from etl.ingest_refetch import refetch_failed  # it builds on this module

            refetch_failed(lake, files, opts, run, bar)
            if opts.workers > 1 or opts.engine.distributed:
                from etl.engine.ingest_parallel import ingest_files_parallel  # it builds on this module

                ingest_files_parallel(lake, files, opts, run, bar)
            else:
                ingest_files_serially(lake, files, opts, run, bar)
        for table in (S.CHECKPOINTS, S.ERRORS, S.RUNS):
            lake.compact(table)
        if run.counts["images_added"]:
            lake.ensure_key_index(S.IMAGES)
    return run.counts


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


def fewer_gc_passes(first_generation: int = 50_000) -> tuple[int, int, int]:
    """Run the cyclic garbage collector every `first_generation` allocations instead of every 700;
    returns the previous thresholds.

    Ingest allocates a few dicts and lists per record and frees them a batch later; with the default
    threshold the collector rescans every live object thousands of times per GB (3-4% of the CPU).
    """
    before = gc.get_threshold()
    gc.set_threshold(first_generation, *before[1:])
    return before


@contextmanager
def gc_passes_lowered() -> Iterator[None]:
    before = fewer_gc_passes()
    try:
        yield
    finally:
        gc.set_threshold(*before)


def ingest_files_serially(lake: Lake, files: list[InputFile], opts: IngestOptions, run: Run, bar: tqdm) -> None:
    ingestor = Ingestor(lake, opts, run)
    ingestor.inputs = {(f.source, f.name) for f in files}
    try:
        for file in files:
            bar.set_description(f"ingest {file.name}")
            ingestor.ingest_file(file, bar)
    finally:
        ingestor.shutdown()
