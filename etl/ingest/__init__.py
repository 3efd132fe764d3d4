"""Ingest: stream source records → resolve image bytes → store each unique image once → commit.

The package: `inputs` (files named by the arguments), `resume` (where a file starts), `batches`
(records cut into commit units), `images` (bytes → `images` rows), `serial` (one process reads,
resolves and commits), `parallel` (engine workers read, resolve and write; this process commits)
and `refetch` (URL lists: the failed downloads of earlier runs, fetched again first).
"""
from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

from etl import schema as S
from etl.ingest.batches import Batch, Prepared, sample_id, sample_row, uncommitted
from etl.ingest.images import LoadedImage, StoredPaths, images_table, load_image
from etl.ingest.inputs import STAGE, IngestOptions, InputFile, expand_inputs, identity_name
from etl.ingest.resume import CommittedRows, FileStart, forget_for_redo, known_as, start_file
from etl.ingest.refetch import refetch_failed
from etl.ingest.serial import Ingestor, KeyIndexUpkeep, ingest_files_serially
from etl.lake import Lake
from etl.runlog import recorded_run
from etl.storage import absolute

PROGRESS_DISABLE = {True: False, False: True, None: None}  # tqdm: None = only on a terminal

__all__ = [
    "STAGE", "Batch", "CommittedRows", "FileStart", "IngestOptions", "Ingestor", "InputFile", "KeyIndexUpkeep",
    "LoadedImage", "Prepared", "StoredPaths", "expand_inputs", "forget_for_redo", "identity_name", "images_table",
    "ingest", "known_as", "load_image", "sample_id", "sample_row", "start_file", "uncommitted",
]


def ingest(lake: Lake, paths: list[str], opts: IngestOptions) -> Counter:
    """Ingest every file named by `paths`; returns the run's counts (also stored in `runs`)."""
    files = expand_inputs(paths, opts)
    params = {"paths": [absolute(p) for p in paths], "source": opts.source, "format": opts.format,
              "image_roots": opts.image_roots, "allow_outside_roots": opts.allow_outside_roots,
              "files": [f.name for f in files], "workers": opts.workers}
    for flag in ("redo", "retry_failed"):
        if getattr(opts, flag):
            params[flag] = True
    with recorded_run(lake, "ingest", params) as run, gc_passes_lowered():
        if opts.redo:
            forget_for_redo(lake, files, run.counts)
        with tqdm(desc="ingest", unit=" rec", disable=PROGRESS_DISABLE[opts.progress]) as bar:
            refetch_failed(lake, files, opts, run, bar)
            if opts.workers > 1 or opts.engine.distributed:
                from etl.ingest.parallel import ingest_files_parallel  # imported only when used

                ingest_files_parallel(lake, files, opts, run, bar)
            else:
                ingest_files_serially(lake, files, opts, run, bar)
        for table in (S.CHECKPOINTS, S.ERRORS, S.RUNS):
            lake.compact(table)
        if run.counts["images_added"]:
            lake.ensure_key_index(S.IMAGES)
    return run.counts


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
    """Fewer collector passes (`fewer_gc_passes`), and none over what exists when the run starts
    (modules, classes: ~300k objects that would be scanned again by each full pass; `gc.freeze`)."""
    before = fewer_gc_passes()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


