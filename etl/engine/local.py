"""The local engine: the calling process (workers=1, enrich) or a spawn-based process pool.

Lance is not fork-safe, hence "spawn". Each worker process builds its worker object once (models
load once per process) and then handles tasks; a worker exits when the process that started it
dies (kill -9 leaves no orphans).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

from etl.engine.base import Factory, bounded_unordered

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


def _init_worker(factory: Factory, parent: int) -> None:
    global _worker
    exit_with_parent(parent)
    _worker = factory()


def _run_task(task: Any) -> Any:
    assert _worker is not None, "worker not initialised"
    return _worker(task)


class PoolExecutor:
    """`submit(task)` runs the worker built in one of the pool's processes on `task`."""

    def __init__(self, pool: ProcessPoolExecutor):
        self.pool = pool

    def submit(self, task: Any) -> Future:
        return self.pool.submit(_run_task, task)


class LocalEngine:
    """`workers` spawn processes on this machine (none for `map_unordered` with one worker)."""

    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)

    @contextmanager
    def executor(self, factory: Factory, environment: dict[str, str] | None = None) -> Iterator[PoolExecutor]:
        pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                   initargs=(factory, os.getpid()))
        with environment_for_children(environment or {}), pool:  # workers start at the first submits
            yield PoolExecutor(pool)

    def map_unordered(self, factory: Factory, tasks: Iterable[Any]) -> Iterator[Any]:
        """Yield `worker(task)` for every task, in completion order."""
        if self.workers == 1:  # no process to start: the worker runs here
            worker = factory()
            for task in tasks:
                yield worker(task)
            return
        yield from bounded_unordered(self, factory, tasks)


@contextmanager
def environment_for_children(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ while the block runs (processes started in it inherit them); a
    variable the user set keeps their value. This process's own libraries have read theirs already."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)
