"""Engines decide who runs a shard of work: a local process pool (default) or Ray workers.

An engine maps a picklable worker factory over tasks and yields results as they finish; the job
that uses it (ingest, enrich) commits. Workers never commit, so any engine keeps the lake consistent.
"""
