"""The engine seam: what a job needs from whoever runs its workers, and how to choose one.

A job hands an engine a *factory* (picklable, called once on each worker to build the worker
callable: models and lake handles load once) and *tasks* (picklable). Two ways to run them:

- `executor(factory)` yields an `Executor` whose `submit(task)` returns a `concurrent.futures.Future`:
  the caller decides the order in which it takes results (ingest commits in task order) and how
  many tasks are in flight (`IN_FLIGHT_PER_WORKER × workers` keeps memory bounded);
- `map_unordered(factory, tasks)` yields results as they finish, the same bound (enrich).

A worker may be *staged* (its factory has `staged = True`): `prepare(task)` (thread-safe: reading
inputs, decoding) and `compute(prepared)` (one at a time: the model), calling it doing both. The
Ray engine then prepares a worker's next task while it computes one; the local engine calls it.

A worker's failure is raised by `Future.result()` in the caller. Engines: `local` (this process or
a spawn process pool, `etl/engine/local.py`) and `ray` (one Ray actor per worker,
`etl/engine/ray_engine.py`, imported only when chosen).
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

ENGINES = ("local", "ray")
IN_FLIGHT_PER_WORKER = 2  # tasks submitted ahead per worker: every worker stays busy, memory stays bounded

Factory = Callable[[], Callable[[Any], Any]]


def available_cores() -> int:
    """The CPUs this process may use (its affinity mask; a container's CPU quota is not seen)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def return_large_frees_to_the_os(threshold: int = 1 << 20) -> None:
    """Have glibc map every allocation of `threshold` bytes or more on its own, so freeing it returns
    it to the OS. Lance's and Arrow's batch buffers (MBs each) are allocated and freed by many threads:
    by default glibc raises this threshold as they come and keeps their freed memory in per-thread
    arenas (~70 MB retained at an export's peak, measured). A process-wide setting; no-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, threshold)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


class Executor(Protocol):
    def submit(self, task: Any) -> Future: ...


class Engine(Protocol):
    workers: int

    def executor(self, factory: Factory, environment: dict[str, str] | None = None) -> AbstractContextManager[Executor]:
        """Workers built by `factory` (with `environment` variables set for them, unless already
        set) for the duration of the block."""
        ...

    def map_unordered(self, factory: Factory, tasks: Iterable[Any]) -> Iterator[Any]:
        """`worker(task)` for every task, in completion order."""
        ...


@dataclass(frozen=True)
class EngineSpec:
    """Which engine runs a job's workers and how they are sized (`--engine`, `--ray-address`,
    `--workers`, `--cpus-per-worker`, `--gpus-per-worker`). Picklable: it travels in job options.

    The number of workers is the job's (`--workers`), given to `build`.
    `address` None: Ray's own default ($RAY_ADDRESS, else a cluster started for this command).
    """

    kind: str = "local"
    address: str | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    @property
    def distributed(self) -> bool:
        """Whether work leaves this process even with one worker (jobs then take their parallel path)."""
        return self.kind != "local"

    def build(self, workers: int) -> Engine:
        """The engine with `workers` workers; 0 or less: one locally, as many as fit on Ray."""
        if self.kind == "ray":
            from etl.engine.ray_engine import RayEngine  # Ray is imported only when chosen

            return RayEngine(self, workers)
        if self.kind != "local":
            raise ValueError(f"unknown engine {self.kind!r} (choose from {', '.join(ENGINES)})")
        from etl.engine.local import LocalEngine

        return LocalEngine(max(1, workers))


def bounded_unordered(engine: Engine, factory: Factory, tasks: Iterable[Any]) -> Iterator[Any]:
    """`map_unordered` on top of `executor`: at most `IN_FLIGHT_PER_WORKER × workers` tasks in flight."""
    with engine.executor(factory) as executor:
        pending: set[Future] = set()
        for task in tasks:
            pending.add(executor.submit(task))
            if len(pending) >= IN_FLIGHT_PER_WORKER * engine.workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in done)
