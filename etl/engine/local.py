"""The local engine: the calling process (workers=1) or a spawn-based process pool.

Lance is not fork-safe, hence "spawn". Each worker process builds its worker object once (models
load once per process) and then handles tasks; at most `2 × workers` tasks are in flight so memory
stays bounded whatever the number of tasks.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

_worker: Callable[[Any], Any] | None = None


def exit_with_parent(parent: int) -> None:
    """Make this worker exit when the process that hands it tasks dies (kill -9 leaves no orphans).

    `parent` is the pid the parent passed in: reading getppid() here would be too late if the parent
    died while this worker was still starting up.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _init_worker(factory: Callable[[], Callable[[Any], Any]], parent: int) -> None:
    global _worker
    exit_with_parent(parent)
    _worker = factory()


def _run_task(task: Any) -> Any:
    assert _worker is not None, "worker not initialised"
    return _worker(task)


class LocalEngine:
    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)

    def map_unordered(self, factory: Callable[[], Callable[[Any], Any]], tasks: Iterable[Any]) -> Iterator[Any]:
        """Yield `worker(task)` for every task, in completion order."""
        if self.workers == 1:
            worker = factory()
            for task in tasks:
                yield worker(task)
            return
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(factory, os.getpid())) as pool:
            pending = set()
            for task in tasks:
                pending.add(pool.submit(_run_task, task))
                if len(pending) >= 2 * self.workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (f.result() for f in done)
            for f in pending:
                yield f.result()
