"""The Ray engine: one Ray actor per worker, on whatever cluster `--ray-address` names.

Each actor builds the job's worker once (a lake handle, a model on its GPU) and then runs tasks;
the driver (the `python -m etl` process) keeps committing, exactly as with the local engine, so a
Ray job is resumable and idempotent the same way. Actors are restarted and their tasks retried
when a worker process or a node dies (`max_restarts`, `max_task_retries`): tasks only write
uncommitted fragments or compute values, so running one twice is harmless.

Workers resolve relative paths (sources, image roots, a relative lake) against the driver's
working directory when the same folder exists on their node (a shared filesystem); the AWS_*, HF_* and
MMLAKE_* variables of the driver are passed on to them (a lake on object storage).
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from etl.engine.base import IN_FLIGHT_PER_WORKER, EngineSpec, Factory, bounded_unordered

MISSING_RAY = "--engine ray needs Ray and lance-ray: pip install 'mmlake[ray]'"
FORWARDED_PREFIXES = ("AWS_", "HF_", "MMLAKE_")  # object stores, the Hub (HF_TOKEN, HF_ENDPOINT), ours


def require_ray():
    """The `ray` module, connected to a cluster; a missing extra is one clear error line."""
    try:
        import ray
    except ImportError:
        raise SystemExit(MISSING_RAY) from None
    return ray


def connect(address: str | None):
    """Join the cluster at `address` ("auto": the one running on this machine; None: Ray's default,
    $RAY_ADDRESS or a cluster started for this command) unless this process already joined one."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    extra = {} if address else {"include_dashboard": False}
    try:
        ray.init(address=address, logging_level=logging.WARNING, configure_logging=True, **extra)
    except ConnectionError as exc:
        raise SystemExit(f"cannot reach the Ray cluster at {address or '$RAY_ADDRESS'}: {exc}") from None
    return ray


class Worker:
    """A Ray actor holding one worker built by the job's factory (a model loads once per actor).

    For a staged worker (its factory says `staged`: the worker has `prepare` and `compute`, as
    enrich's) the actor takes `IN_FLIGHT_PER_WORKER` tasks at once on as many threads and prepares
    the next task (reads its image bytes, starts decoding) while the current one computes;
    computing runs one task at a time. Other workers (ingest's) run their tasks one after another.
    """

    def __init__(self, factory: Factory, driver_cwd: str):
        if os.path.isdir(driver_cwd):  # same node or a shared filesystem: relative paths mean the same
            os.chdir(driver_cwd)
        self.work = factory()
        self.staged = getattr(factory, "staged", False)
        self.one_at_a_time = threading.Lock()

    def run(self, task: Any) -> Any:
        if not self.staged:
            return self.work(task)
        prepared = self.work.prepare(task)
        with self.one_at_a_time:
            return self.work.compute(prepared)


class ActorExecutor:
    """`submit(task)` goes to the actor with the fewest tasks in flight; a `Future` comes back."""

    def __init__(self, actors: list):
        self.actors = actors
        self.in_flight = [0] * len(actors)
        self.lock = threading.Lock()

    def submit(self, task: Any) -> Future:
        with self.lock:
            index = min(range(len(self.actors)), key=self.in_flight.__getitem__)
            self.in_flight[index] += 1
        future = self.actors[index].run.remote(task).future()
        future.add_done_callback(lambda _: self.finished(index))
        return future

    def finished(self, index: int) -> None:
        with self.lock:
            self.in_flight[index] -= 1


class RayEngine:
    """`workers` actors of `cpus_per_worker` CPUs and `gpus_per_worker` GPUs each."""

    def __init__(self, spec: EngineSpec, workers: int = 0):
        self.spec = spec
        self.ray = connect(spec.address)
        self.workers = workers if workers > 0 else self.workers_that_fit()

    def workers_that_fit(self) -> int:
        resources = self.ray.cluster_resources()
        if self.spec.gpus_per_worker > 0:
            return max(1, int(resources.get("GPU", 0) / self.spec.gpus_per_worker))
        return max(1, int(resources.get("CPU", 1) / max(self.spec.cpus_per_worker, 1e-9)))

    @contextmanager
    def executor(self, factory: Factory, environment: dict[str, str] | None = None) -> Iterator[ActorExecutor]:
        env = {k: v for k, v in (environment or {}).items() if k not in os.environ}
        env.update({k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)})
        actor_class = self.ray.remote(Worker).options(
            num_cpus=self.spec.cpus_per_worker, num_gpus=self.spec.gpus_per_worker, max_restarts=-1,
            max_task_retries=-1, max_concurrency=IN_FLIGHT_PER_WORKER if getattr(factory, "staged", False) else 1,
            runtime_env={"env_vars": env} if env else None)
        actors = [actor_class.remote(factory, os.getcwd()) for _ in range(self.workers)]
        try:
            yield ActorExecutor(actors)
        finally:
            for actor in actors:
                self.ray.kill(actor)

    def map_unordered(self, factory: Factory, tasks: Iterable[Any]) -> Iterator[Any]:
        yield from bounded_unordered(self, factory, tasks)
