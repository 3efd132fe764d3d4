"""Ingest: stream source records → resolve image bytes → store each unique image once → commit.

For every file, records are read in order and committed in batches: new images first, then error
rows, then samples, then a checkpoint saying "rows below N are done". A kill -9 can only interrupt
one batch; the rerun starts at the checkpoint and skips the rows of that batch that did commit, so
the lake ends exactly as after an uninterrupted run. Rerunning a finished ingest adds nothing.
"""
from __future__ import annotations

import glob
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import lance
import pyarrow as pa
from tqdm import tqdm

from etl import schema as S
from etl.errors import ErrorRow, errors_table
from etl.faults import crash_point
from etl.images import ImageInfo, NotAnImage, sniff
from etl.lake import Lake, dumps, sql_string_list
from etl.runlog import Run, recorded_run
from etl.sources import detect_format, readers
from etl.sources.base import ImageRef, SourceRecord, file_fingerprint

STAGE = "ingest"
PROGRESS_DISABLE = {True: False, False: True, None: None}  # tqdm: None = only on a terminal


@dataclass
class IngestOptions:
    source: str | None = None  # None: derived per file by the reader (e.g. HF config folders)
    format: str = "auto"
    image_roots: list[str] = field(default_factory=list)
    batch_records: int = 1000
    batch_bytes: int = 256 << 20
    io_threads: int = 8
    workers: int = 1  # > 1: worker processes read, hash and write; this process commits
    reader_options: dict = field(default_factory=dict)
    progress: bool | None = None  # None: a bar only on a terminal


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
            name = os.path.relpath(path, root) if root else os.path.basename(path)
            source = opts.source or reader_cls.source_name_for(path, root or os.path.dirname(path)) or _stem(arg)
            found.append(InputFile(path, name.replace(os.sep, "/"), source, fmt))
    if not found:
        raise FileNotFoundError(f"no ingestible files in {list(paths)}")
    return found


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
    data: bytes | None = None  # None with `info` set: the file is already stored in the lake
    error: tuple[str, str] | None = None  # (kind, message)
    path: str | None = None  # the file it came from, if any


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


def resolve_path(ref: ImageRef, image_roots: list[str]) -> str | None:
    """The first existing file for the reference: absolute as is, else under each root, then base_dir."""
    if os.path.isabs(ref.path):
        return ref.path if os.path.isfile(ref.path) else None
    for root in [*image_roots, ref.base_dir]:
        if root and os.path.isfile(candidate := os.path.join(root, ref.path)):
            return candidate
    return None


def load_image(ref: ImageRef, image_roots: list[str]) -> LoadedImage:
    """Bytes + header info of one reference, or the reason it cannot be stored."""
    data = ref.data
    if data is None:
        if not ref.path:
            return LoadedImage(error=("missing_image", "image reference has neither bytes nor a path"))
        path = resolve_path(ref, image_roots)
        if path is None:
            looked = [*image_roots, ref.base_dir] if not os.path.isabs(ref.path) else []
            return LoadedImage(error=("missing_image", f"image file not found: {ref.path} (looked in {looked})"))
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            return LoadedImage(error=("unreadable_image", f"{path}: {exc}"))
    try:
        return LoadedImage(info=sniff(data), data=data, path=path if ref.data is None else None)
    except NotAnImage as exc:
        where = ref.path or "embedded bytes"
        return LoadedImage(error=(exc.kind, f"{where}: {exc}"))


# -- one batch ----------------------------------------------------------------------------------------
@dataclass
class Batch:
    file: InputFile
    records: list[SourceRecord] = field(default_factory=list)
    nbytes: int = 0


class Ingestor:
    """Runs one ingest: files → batches → commits, counting into the run's counters."""

    def __init__(self, lake: Lake, opts: IngestOptions, run: Run):
        self.lake, self.opts, self.run = lake, opts, run
        self.pool = ThreadPoolExecutor(max_workers=opts.io_threads)
        self.stored_paths = StoredPaths()

    def ingest_file(self, file: InputFile, bar: tqdm) -> None:
        job, fingerprint = f"{STAGE}:{file.source}", file_fingerprint(file.path)
        cp = self.lake.checkpoint(job, file.name)
        if cp and cp["done"] and cp["fingerprint"] == fingerprint:
            self.run.counts["files_already_done"] += 1
            return
        start = cp["upto_row"] if cp and cp["fingerprint"] == fingerprint else 0
        committed = self.committed_keys(file, start)
        reader = readers()[file.format](self.opts.image_roots, **self.opts.reader_options)
        batch, upto = Batch(file), start
        for record in reader.read_file(file.path, file.name, start):
            batch.records.append(record)
            batch.nbytes += sum(len(r.data) for r in record.images if r.data is not None)
            if len(batch.records) >= self.opts.batch_records or batch.nbytes >= self.opts.batch_bytes:
                upto = self.commit(batch, committed, bar)
                self.lake.set_checkpoint(job, file.name, fingerprint, upto, done=False)
                batch = Batch(file)
        upto = self.commit(batch, committed, bar) if batch.records else upto
        self.lake.set_checkpoint(job, file.name, fingerprint, upto, done=True)
        self.run.counts["files"] += 1

    def committed_keys(self, file: InputFile, start: int) -> set[str]:
        """Samples/errors of this file at or past the checkpoint: at most the batch a crash cut."""
        src, name = sql_string_list([file.source]), sql_string_list([file.name])
        keys = set()
        for tbl, key, cond in (
            (S.SAMPLES, "sample_id", f"source = {src} AND source_file = {name} AND source_row >= {start}"),
            (S.ERRORS, "error_id", f"stage = '{STAGE}' AND source = {src} AND file = {name} AND row >= {start}"),
        ):
            for b in self.lake.scan(tbl, [key], filter=cond):
                keys.update(b.column(0).to_pylist())
        return keys

    def commit(self, batch: Batch, committed: set[str], bar: tqdm) -> int:
        """Write one batch (images, then errors, then samples); return the next row to read."""
        records = [r for r in batch.records if sample_id(batch.file, r) not in committed
                   and f"{STAGE}/{sample_id(batch.file, r)}" not in committed]
        self.run.counts["records_already_in_lake"] += len(batch.records) - len(records)
        samples, errors, images = self.resolve(batch.file, records)
        self.store_images(images)
        crash_point("after_images")
        self.lake.append(S.ERRORS, errors_table(errors))
        crash_point("after_errors")
        self.lake.append(S.SAMPLES, pa.Table.from_pylist(samples, schema=S.SAMPLES_SCHEMA))
        crash_point("after_samples")
        self.run.counts["samples_added"] += len(samples)
        self.run.counts.update(f"errors.{e.kind}" for e in errors)
        bar.update(len(batch.records))
        bar.set_postfix(samples=self.run.counts["samples_added"], images=self.run.counts["images_added"],
                        errors=sum(v for k, v in self.run.counts.items() if k.startswith("errors.")))
        return batch.records[-1].source_row + 1

    def resolve(self, file: InputFile, records: list[SourceRecord]):
        """Load every image of the batch in parallel; split records into samples and errors."""
        refs = [ref for r in records if not r.error for ref in r.images]
        loaded = iter(list(self.pool.map(self.load, refs)))
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

    def load(self, ref: ImageRef) -> LoadedImage:
        if ref.data is None and ref.path:
            path = resolve_path(ref, self.opts.image_roots)
            if path and (info := self.stored_paths.get(path)):
                return LoadedImage(info=info, path=path)
        return load_image(ref, self.opts.image_roots)

    def error(self, file: InputFile, record: SourceRecord, sid: str, kind: str, message: str) -> ErrorRow:
        return ErrorRow(STAGE, sid, kind, message, source=file.source, file=file.name, row=record.source_row,
                        orig_id=record.orig_id, raw=record.raw, run_id=self.run.run_id)

    def store_images(self, images: dict[str, LoadedImage]) -> None:
        unknown = [iid for iid, img in images.items() if img.data is not None]
        present = self.lake.existing_keys(S.IMAGES, unknown)
        new = [images[iid] for iid in unknown if iid not in present]
        self.run.counts["images_already_in_lake"] += len(images) - len(new)
        self.run.counts["images_added"] += len(new)
        self.run.counts["image_bytes_added"] += sum(img.info.nbytes for img in new)
        if new:
            self.lake.append(S.IMAGES, images_table(new))
        for img in images.values():
            if img.path:
                self.stored_paths.put(img.path, img.info)


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
    return pa.table(
        {
            "image_id": [i.info.image_id for i in images],
            S.BLOB_COLUMN: lance.blob_array([i.data for i in images]),
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
              "image_roots": opts.image_roots, "files": [f.name for f in files], "workers": opts.workers}
    with recorded_run(lake, "ingest", params) as run:
        with tqdm(desc="ingest", unit=" rec", disable=PROGRESS_DISABLE[opts.progress]) as bar:
            if opts.workers > 1:
                from etl.engine.ingest_parallel import ingest_files_parallel  # the engine builds on this module

                ingest_files_parallel(lake, files, opts, run, opts.workers, bar)
            else:
                ingest_files_serially(lake, files, opts, run, bar)
        for table in (S.CHECKPOINTS, S.ERRORS, S.RUNS):
            lake.compact(table)
        if run.counts["images_added"]:
            lake.ensure_key_index(S.IMAGES)
    return run.counts


def ingest_files_serially(lake: Lake, files: list[InputFile], opts: IngestOptions, run: Run, bar: tqdm) -> None:
    ingestor = Ingestor(lake, opts, run)
    try:
        for file in files:
            bar.set_description(f"ingest {file.name}")
            ingestor.ingest_file(file, bar)
    finally:
        ingestor.pool.shutdown()
