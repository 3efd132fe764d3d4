"""Parallel ingest (`ingest --workers N`, `--engine ray`): workers read, hash and write; one process commits.

The serial ingest reads, hashes and writes one batch after another on one core. Here the work is
cut into tasks run by the job's engine (`etl/engine/`: a spawn-based process pool, or Ray actors):

- a task is a range of rows of one file: whole row groups of about `TASK_BYTES` for readers that
  can seek (`row_ranges`: HF parquet), else a batch of records this process has already parsed
  (JSON, tars: parsing is cheap; image I/O, hashing and writing are not);
- a worker resolves its records exactly like the serial ingest (`Ingestor.resolve`: load, sha256,
  header sniff), keeps the images the lake does not hold yet, and writes images, errors and
  samples as uncommitted Lance fragments (`write_fragments`); only fragment metadata comes back;
- this process takes results in task order and commits them like the serial ingest, inside the
  lake's commit lock: images, errors, samples (one `Append` each), then the file's checkpoint. The
  tasks that have finished when it looks (the oldest, and those after it already done) commit
  together, one `Append` per table for all their fragments: when the committer falls behind many
  workers, its commits per task shrink instead of capping the throughput. If a commit made since a
  task was submitted added one of its new images (the same image in two shards at once, or another
  command writing the lake), or another command committed some of its rows (the same file ingested
  twice at once), its fragments would duplicate keys: that task is redone here by the serial code
  instead, and its fragments are dropped unreferenced. What this process committed itself it
  knows from memory (`Lake.keys_added_since`); the lake is asked only about others' commits.

Resume and idempotence are the serial ingest's: a rerun starts at each file's checkpoint and skips
the samples/errors of a cut task that did commit. At most `2 × workers` tasks are in flight, so
memory stays around `2 × workers × TASK_BYTES` whatever the input size.
"""
from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

import pyarrow as pa
from tqdm import tqdm

from etl import schema as S
from etl.engine.base import IN_FLIGHT_PER_WORKER
from etl.errors import errors_table
from etl.faults import crash_point
from etl.ingest import fewer_gc_passes
from etl.ingest.batches import Batch, batches, uncommitted
from etl.ingest.images import images_table
from etl.ingest.inputs import STAGE, IngestOptions, InputFile
from etl.ingest.resume import FileStart, start_file
from etl.ingest.serial import Ingestor
from etl.lake import Lake
from etl.runlog import Run
from etl.sources import readers
from etl.sources.base import SourceRecord

TASK_BYTES = 128 << 20  # image bytes per task at most (also bounded by --batch-bytes)
# Set for the worker processes (unless the user set them): numpy's BLAS threads only spin in an
# ingest worker, and Arrow's allocator keeps freed batches for the next ones instead of handing
# them back to the kernel (never-touched pages cost several times reused ones on a VM).
WORKER_ENVIRONMENT = {"OPENBLAS_NUM_THREADS": "1", "MIMALLOC_PURGE_DELAY": "-1"}


@dataclass
class Task:
    """Rows [start, end) of one file: read by the worker (`records` None) or already parsed here."""

    file: InputFile
    start: int
    end: int | None
    records: list[SourceRecord] | None = None
    committed: frozenset[str] = frozenset()  # sample/error ids a crash left committed in this range
    last: bool = False  # the file's final task: its commit marks the file done
    images_version: int = 0  # the images table's version when the task was submitted


@dataclass
class TaskResult:
    """What a worker wrote (uncommitted fragments) and counted for one task."""

    images: list = field(default_factory=list)  # FragmentMetadata
    errors: list = field(default_factory=list)
    samples: list = field(default_factory=list)
    new_image_ids: list[str] = field(default_factory=list)
    used_image_ids: list[str] = field(default_factory=list)  # found in the lake (a cleanup may delete them)
    counts: Counter = field(default_factory=Counter)
    records: int = 0
    next_row: int = 0
    rows: tuple[int, int] | None = None  # first and last source row of the task's records


# -- worker side ------------------------------------------------------------------------------------
class TaskWorker:
    """Lives in a worker process: one lake handle and the serial ingest's resolving code."""

    def __init__(self, lake_root: str, opts: IngestOptions, run_id: str):
        self.lake, self.opts = Lake.open(lake_root, create=False), opts
        self.ingestor = Ingestor(self.lake, opts, Run(run_id, "ingest", {}))

    def __call__(self, task: Task) -> TaskResult:
        records = task.records if task.records is not None else list(read_range(task, self.opts))
        fresh = uncommitted(task.file, records, task.committed)
        samples, errors, images = self.ingestor.resolve(task.file, fresh)
        new = self.ingestor.new_images(images)
        result = TaskResult(new_image_ids=[img.info.image_id for img in new], records=len(records))
        new_ids = set(result.new_image_ids)
        result.used_image_ids = [iid for iid in images if iid not in new_ids]
        result.images = self.write(S.IMAGES, images_table(new) if new else None)
        result.errors = self.write(S.ERRORS, errors_table(errors) if errors else None)
        samples_table = pa.Table.from_pylist(samples, schema=S.SAMPLES_SCHEMA) if samples else None
        result.samples = self.write(S.SAMPLES, samples_table)
        result.counts.update({"records_already_in_lake": len(records) - len(fresh), "samples_added": len(samples),
                              "images_added": len(new), "images_already_in_lake": len(images) - len(new),
                              "image_bytes_added": sum(img.info.nbytes for img in new)})
        result.counts.update(f"errors.{e.kind}" for e in errors)
        result.next_row = max(records[-1].source_row + 1 if records else task.start, task.end or 0)
        result.rows = (records[0].source_row, records[-1].source_row) if records else None
        return result

    def write(self, table_name: str, table: pa.Table | None) -> list:
        if table is None:
            return []
        fragments = self.lake.write_fragments(table_name, table)
        if table_name == S.IMAGES:
            self.ingestor.drop_images_behind(fragments)
        return fragments


def read_range(task: Task, opts: IngestOptions) -> Iterator[SourceRecord]:
    reader = readers()[task.file.format](opts.image_roots, **opts.reader_options)
    records = reader.read_file(task.file.path, task.file.name, task.start, task.end)
    for record in records:
        if task.end is not None and record.source_row >= task.end:
            records.close()
            return
        yield record


@dataclass(frozen=True)
class WorkerFactory:
    """Builds a worker's `TaskWorker` once, on the worker (picklable for any engine)."""

    lake_root: str
    opts: IngestOptions
    run_id: str

    def __call__(self) -> TaskWorker:
        fewer_gc_passes()  # for the worker's life
        return TaskWorker(self.lake_root, self.opts, self.run_id)


# -- committing side --------------------------------------------------------------------------------
class Committer:
    """Commits task results in task order, keeps checkpoints; redoes a task whose images raced."""

    def __init__(self, lake: Lake, opts: IngestOptions, run: Run):
        self.lake, self.opts, self.run = lake, opts, run
        self.ingestor = Ingestor(lake, opts, run)  # the serial code, for raced tasks and resume keys
        self.fingerprints: dict[InputFile, str] = {}

    def submitted(self, task: Task) -> Task:
        """The task, stamped with the images version its worker will see at least."""
        return replace(task, images_version=self.lake.latest_version(S.IMAGES))

    def start_file(self, file: InputFile) -> FileStart | None:
        """Where `file` starts (see `etl.ingest.start_file`), or None when it is done."""
        started = start_file(self.lake, file, self.ingestor.rows, self.run.counts, self.ingestor.inputs)
        if started is not None:
            self.fingerprints[started.file] = started.fingerprint
        return started

    def commit(self, task: Task, result: TaskResult, bar: tqdm) -> None:
        """Images, errors, samples, then the checkpoint: the serial ingest's order."""
        self.commit_finished([(task, result)], bar)

    def commit_finished(self, finished: list[tuple[Task, TaskResult]], bar: tqdm) -> None:
        """Commit consecutive finished tasks (in task order) as one group, inside the commit lock:
        one Append per table for all their fragments, then each file's checkpoint. A task whose
        new images or rows another commit added since its worker looked, or that shares a new image
        with a task before it in the group, is committed on its own after the group so far (and
        redone: see `raced`)."""
        with self.lake.committing():
            group: list[tuple[Task, TaskResult]] = []
            grouped_ids: set[str] = set()
            for task, result in finished:
                if not grouped_ids.isdisjoint(result.new_image_ids) or self.raced(task, result):
                    self.commit_group(group, bar)  # the tasks before it first: checkpoints only move forward
                    group, grouped_ids = [], set()
                    self.checkpoint(task, self.redo(task, bar))
                    continue
                group.append((task, result))
                grouped_ids.update(result.new_image_ids)
            self.commit_group(group, bar)

    def commit_group(self, group: list[tuple[Task, TaskResult]], bar: tqdm) -> None:
        """One Append per table for the group's fragments (images, errors, samples), then checkpoints."""
        if not group:
            return
        new_image_ids = [iid for _, result in group for iid in result.new_image_ids]
        for table_name, kind, point in ((S.IMAGES, "images", "after_images"), (S.ERRORS, "errors", "after_errors"),
                                        (S.SAMPLES, "samples", "after_samples")):
            fragments = [fragment for _, result in group for fragment in getattr(result, kind)]
            if fragments:
                self.lake.commit_fragments(table_name, fragments, new_image_ids if table_name == S.IMAGES else ())
                if table_name == S.IMAGES:
                    self.ingestor.key_index.committed()
            crash_point(point)
        for _, result in group:
            self.run.counts.update(result.counts)
            bar.update(result.records)
        latest = {task.file: (task, result) for task, result in group}  # each file's last task in the group
        for task, result in latest.values():
            self.checkpoint(task, result.next_row)

    def checkpoint(self, task: Task, next_row: int) -> None:
        file = task.file
        self.lake.set_checkpoint(f"{STAGE}:{file.source}", file.name, self.fingerprints[file], next_row, done=task.last)
        if task.last:
            self.run.counts["files"] += 1

    def raced(self, task: Task, result: TaskResult) -> bool:
        """Whether one of the images the worker found new has been stored since it looked, one it
        found stored has been deleted since (by `cleanup`), or another command committed some of
        the task's rows (the same file ingested twice at once)."""
        if self.lake.keys_added_since(S.IMAGES, task.images_version, result.new_image_ids):
            return True
        if result.used_image_ids and self.lake.foreign_commits_since(S.IMAGES, task.images_version) and \
                set(result.used_image_ids) - self.lake.existing_keys(S.IMAGES, result.used_image_ids):
            return True  # a cleanup deleted images the task found in the lake: the redo stores them again
        if not result.rows:
            return False
        return bool(self.ingestor.rows.added_by_others(task.file, *result.rows))

    def redo(self, task: Task, bar: tqdm) -> int:
        """Commit the task with the serial ingest's code (it checks every image and row against the lake)."""
        self.run.counts["tasks_redone_for_shared_images"] += 1
        records = task.records if task.records is not None else list(read_range(task, self.opts))
        if not records:
            return task.end or task.start
        next_row = self.ingestor.commit(Batch(task.file, records), set(task.committed), bar)
        return max(next_row, task.end or 0)


def plan_tasks(committer: Committer, files: list[InputFile], opts: IngestOptions) -> Iterator[Task]:
    """Every file's remaining rows as tasks, in file order; the last task of a file is flagged."""
    for file in files:
        started = committer.start_file(file)
        if started is None:
            continue
        file, start, committed = started.file, started.start, frozenset(started.committed)
        tasks = (replace(t, committed=committed) for t in file_tasks(file, start, opts))
        previous = next(tasks, Task(file, start, start, records=[]))
        for task in tasks:
            yield previous
            previous = task
        yield replace(previous, last=True)


def file_tasks(file: InputFile, start: int, opts: IngestOptions) -> Iterator[Task]:
    """Row-group ranges read by the workers, else batches of records parsed here."""
    reader_cls, task_bytes = readers()[file.format], min(TASK_BYTES, opts.batch_bytes)
    ranges = reader_cls.row_ranges(file.path, start, task_bytes) if reader_cls.splittable else None
    if ranges is not None:
        yield from (Task(file, first, end) for first, end in ranges)
        return
    records = reader_cls(opts.image_roots, **opts.reader_options).read_file(file.path, file.name, start)
    for batch in batches(file, records, start, opts.batch_records, task_bytes):
        if batch.records:
            yield Task(file, batch.records[0].source_row, None, records=batch.records)


def ingest_files_parallel(lake: Lake, files: list[InputFile], opts: IngestOptions, run: Run, bar: tqdm) -> None:
    """Ingest `files` with the workers of `opts.engine`; this process commits their results in task order."""
    committer = Committer(lake, opts, run)
    committer.ingestor.inputs = {(f.source, f.name) for f in files}
    engine = opts.engine.build(opts.workers)
    with engine.executor(WorkerFactory(lake.root, opts, run.run_id), WORKER_ENVIRONMENT) as executor:
        in_flight: deque[tuple[Task, Future]] = deque()
        for task in plan_tasks(committer, files, opts):
            task = committer.submitted(task)
            in_flight.append((task, executor.submit(task)))
            if len(in_flight) >= IN_FLIGHT_PER_WORKER * engine.workers:
                committer.commit_finished(finished_in_order(in_flight), bar)
        while in_flight:
            committer.commit_finished(finished_in_order(in_flight), bar)
    committer.ingestor.shutdown()


def finished_in_order(in_flight: deque[tuple[Task, Future]]) -> list[tuple[Task, TaskResult]]:
    """The oldest task's result (waiting for it), and those of the tasks after it that are already
    done: what the committer can take in one go. When it falls behind (many workers), groups grow
    and commits per task shrink; a worker's failure is raised here, in task order."""
    oldest, future = in_flight.popleft()
    finished = [(oldest, future.result())]
    while in_flight and in_flight[0][1].done():
        task, future = in_flight.popleft()
        finished.append((task, future.result()))
    return finished
