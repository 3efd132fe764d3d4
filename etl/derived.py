"""Derived tables (dup_exact, image_clusters, dup_near): which version of each is committed, and
whether the lake has changed since it was computed.

A job that writes derived tables stamps each one's schema metadata with its run id and the inputs it
read (`mmlake:run_id`, `mmlake:inputs`). The job's `runs` row, written when it ends, is what commits
the whole set: readers take, per table, the newest version whose run finished `ok`. A run killed
after writing one table of its set leaves no `runs` row, so readers keep the previous run's tables —
a set is read whole, never mixed. (Lance keeps the older versions an overwrite replaces.)

Inputs are recorded as fingerprints of exactly what a decision depends on, so unrelated writes (a
loss or tags enrichment) do not make a table stale, while new samples or new phashes do:
- `samples`: count and xor of hash(sample_id) over all samples (which samples exist);
- `phash`: count and xor of hash(image_id, phash) over images with a phash (which images are hashed, how).
"""
from __future__ import annotations

import json
from collections.abc import Mapping

import duckdb
import lance

from etl import schema as S
from etl.lake import Lake, dumps

RUN_KEY, INPUTS_KEY, PARAMS_KEY = "mmlake:run_id", "mmlake:inputs", "mmlake:params"
# what each derived table's decisions read; the command that recomputes it
DEPENDS_ON = {S.DUP_EXACT: ("samples", "phash"), S.IMAGE_CLUSTERS: ("phash",), S.DUP_NEAR: ("samples", "phash")}
FINGERPRINT_SQL = {
    "samples": "select count(*) || ':' || coalesce(bit_xor(hash(sample_id)), 0) from samples",
    "phash": "select count(*) || ':' || coalesce(bit_xor(hash(image_id, phash)), 0) from images "
             "where phash::hugeint is not null",  # the cast: no UBIGINT filter push-down into Lance
}


class StaleDerivedTable(ValueError):
    """A derived table was computed from another lake state than the one being read; the message
    names the command that recomputes it, `reason` says what changed."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def fingerprints(con: duckdb.DuckDBPyConnection, kinds=("samples", "phash")) -> dict[str, str]:
    """The inputs' fingerprints as the connection's (pinned) views see them."""
    return {kind: con.execute(FINGERPRINT_SQL[kind]).fetchall()[0][0] for kind in kinds}


def stamp(params: Mapping, run_id: str, inputs: Mapping) -> dict[str, str]:
    """Schema metadata for a derived table written by run `run_id` from `inputs`."""
    return {PARAMS_KEY: dumps(dict(params)), RUN_KEY: run_id, INPUTS_KEY: dumps(dict(inputs))}


def metadata(ds: lance.LanceDataset) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (ds.schema.metadata or {}).items()}


def committed_versions(lake: Lake) -> dict[str, int]:
    """{derived table: the newest version written by a run that finished ok}. Tables written before
    runs were stamped (no run id) count as committed at their newest version; a table with no
    committed version is left out (as if absent)."""
    tables = [t for t in S.DERIVED_SCHEMAS if lake.exists(t)]
    if not tables:
        return {}
    runs = lake.dataset(S.RUNS).to_table(columns=["run_id", "status"]).to_pylist() if lake.exists(S.RUNS) else []
    ok = {r["run_id"] for r in runs if r["status"] == "ok"}
    out: dict[str, int] = {}
    for table in tables:
        newest = lake.dataset(table)
        for version in sorted((v["version"] for v in newest.versions()), reverse=True):
            run_id = metadata(lake.dataset(table, version)).get(RUN_KEY)
            if run_id is None or run_id in ok:
                out[table] = version
                break
    return out


def table_info(lake: Lake, table: str, version: int) -> dict:
    """{version, run_id, params, inputs} of one derived table version (for manifests and checks)."""
    meta = metadata(lake.dataset(table, version))
    return {"version": version, "run_id": meta.get(RUN_KEY), "params": json.loads(meta.get(PARAMS_KEY, "{}")),
            "inputs": json.loads(meta.get(INPUTS_KEY, "{}"))}


def check_fresh(con: duckdb.DuckDBPyConnection, info: dict, table: str, command: str) -> None:
    """Raise StaleDerivedTable unless the table's recorded inputs equal what `con` sees now."""
    kinds = DEPENDS_ON[table]
    recorded = info["inputs"]
    if not all(k in recorded for k in kinds):
        raise StaleDerivedTable(f"`{table}` does not record the lake state it was computed from (written by an "
                                f"older mmlake): run `{command}` to recompute it", "inputs not recorded")
    now = fingerprints(con, kinds)
    changed = [k for k in kinds if recorded[k] != now[k]]
    if changed:
        what = {"samples": "samples were added or removed", "phash": "images or their phashes changed"}
        reason = " and ".join(what[k] for k in changed)
        raise StaleDerivedTable(f"`{table}` is stale: since it was computed ({info['run_id']}), {reason}: "
                                f"run `{command}` to recompute it", reason)
