"""Engines decide who runs a shard of work: a local process pool (default) or Ray workers.

An engine runs a picklable worker factory on each of its workers (a model or a lake handle is set up
once per worker) and hands them tasks: `executor(factory)` for ordered, bounded submission (ingest
commits in task order), `map_unordered(factory, tasks)` for results in completion order (enrich).
The job that uses it commits: workers never do, so any engine keeps the lake consistent.
"""
from etl.engine.base import Engine, EngineSpec, Executor, bounded_unordered

__all__ = ["Engine", "EngineSpec", "Executor", "bounded_unordered"]
