"""Drop-behind for the lake files a one-pass job writes (what `dd oflag=nocache` does).

An ingest writes every image of its source once and does not read it back. Left alone, those
pages stay cached: a 100 GB ingest fills the page cache with lake files, evicts everything else,
and keeps asking the kernel for never-used pages, which on a VM cost several times what a recycled
page does (the host backs each one on first touch: writing 4 GB took 10 s into fresh pages and 2 s
with drop-behind, here). So each big file, once written, is flushed and dropped on a background
thread, and its pages are reused for the next ones; the files also reach the disk as they are
written, not in one burst of gigabytes of dirty pages at the end.
"""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable

PENDING_FILES = 8  # written files waiting to be flushed; a writer that outruns the disk waits


class DropBehind:
    """Flushes files handed to `add` and drops them from the page cache, one at a time, in order."""

    def __init__(self, pending: int = PENDING_FILES):
        self.files: queue.Queue[str | None] = queue.Queue(maxsize=pending)
        self.thread = threading.Thread(target=self._run, name="drop-behind", daemon=True)
        self.thread.start()

    def add(self, paths: Iterable[str]) -> None:
        for path in paths:
            self.files.put(path)

    def close(self) -> None:
        """Wait until every file handed over is flushed and dropped."""
        self.files.put(None)
        self.thread.join()

    def _run(self) -> None:
        while (path := self.files.get()) is not None:
            try:
                flush_and_drop(path)
            except OSError:
                pass  # only a cache hint: a file compacted away meanwhile needs nothing


def flush_and_drop(path: str) -> None:
    """Write `path`'s dirty pages to disk, then free its cached pages (clean pages can be dropped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
