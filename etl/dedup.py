"""The `dedup` job: run the dedup SQL over the lake and materialise its decisions as lake tables.

`sql/dedup_exact.sql` decides which samples repeat an earlier one (same phash list and, by default,
same conversations, within a source); with `near_k`, `sql/dedup_near.sql` clusters images whose
phashes differ in at most `near_k` bits and decides which samples those clusters make redundant.
Nothing is deleted: the decisions land in `dup_exact`, `image_clusters` and `dup_near` (schemas in
`etl.schema`, each row tagged with the run_id whose `runs` row holds the parameters): the lake-wide
view the report and notebooks show. The tables are one set: readers see them only once this run's
`runs` row is written (etl/derived.py), and each records the inputs it was computed from, so a reader
of a changed lake is told to rerun dedup. A recipe's `dedup`/`near_dup_k` decides within the mixture
(etl/recipe.py); it reads only `image_clusters`. `python -m etl dedup`
(etl/commands/dedup.py) prints, per source, what would be removed.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lance
import pyarrow as pa

from etl import schema as S
from etl.derived import fingerprints, stamp
from etl.faults import crash_point
from etl.lake import Lake
from etl.runlog import recorded_run
from etl.sqlrun import connect, run_file

PER_SOURCE_SUMMARY = """
select s.source,
       count(*) as samples,
       count(e.sample_id) as exact_duplicates,
       count(n.sample_id) filter (where e.sample_id is null) as near_duplicates,
       count(*) - count(e.sample_id) - count(n.sample_id) filter (where e.sample_id is null) as kept
from samples s
left join exact_result e using (sample_id)
left join near_result n using (sample_id)
group by s.source
order by s.source
"""


@dataclass
class DedupOptions:
    near_k: int | None = None  # None: exact dedup only
    near_bands: int | None = None  # pigeonhole bands; default near_k + 2 (see sql/dedup_near.sql)
    scope: str = "source"  # source | global: where an "earlier" duplicate is looked for
    consider_text: bool = True  # also require equal conversations
    # DuckDB spills to disk beyond this. The band join runs in parts (sql/dedup_near.sql): 10.1M hashes
    # at k=3 peak at ~2.6 GB process RSS (bench/bench_near_dup.py), so the limit is a guard for bigger lakes.
    memory_limit: str | None = "4GB"

    def sql_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"dedup_scope": self.scope, "dedup_consider_text": self.consider_text}
        if self.near_k is not None:
            params["near_k"] = self.near_k
            params["near_bands"] = self.near_bands if self.near_bands is not None else self.near_k + 2
        return params


@dataclass
class DedupReport:
    run_id: str
    per_source: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


def run_dedup(lake: Lake, opts: DedupOptions) -> DedupReport:
    """Run the dedup SQL, overwrite the result tables, return per-source counts."""
    if opts.scope not in ("source", "global"):
        raise ValueError(f"--scope must be source or global, not {opts.scope!r}")
    if opts.memory_limit and not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", opts.memory_limit):
        raise ValueError(f"--memory-limit must look like 4GB or 512MiB, not {opts.memory_limit!r}")
    params = {"command": "dedup", **opts.sql_params(), "memory_limit": opts.memory_limit}
    with recorded_run(lake, "dedup", params) as run:
        con = connect(lake, version={t: lake.dataset(t).version for t in (S.SAMPLES, S.IMAGES, S.ERRORS)},
                      params=opts.sql_params())
        inputs = fingerprints(con)  # of the pinned versions the SQL reads
        if opts.memory_limit:
            con.execute(f"set memory_limit = '{opts.memory_limit}'")
        run.counts["images_with_phash"] = con.execute(
            "select count(*) from images where phash::hugeint is not null").fetchone()[0]
        stamped = stamp(params, run.run_id, inputs)
        exact = _write(lake, S.DUP_EXACT, run_file(con, "dedup_exact"), stamped, run_id=run.run_id)
        con.register("exact_result", exact)
        run.counts["exact_duplicates"] = exact.count_rows()
        if opts.near_k is None:
            con.register("near_result", pa.table({"sample_id": pa.array([], pa.string())}))
        else:
            near_rel = run_file(con, "dedup_near")  # the statements before the last fill near_image_clusters
            tags = {"near_k": opts.near_k, "run_id": run.run_id}
            clusters = _write(lake, S.IMAGE_CLUSTERS, con.sql("select * from near_image_clusters"), stamped, **tags)
            crash_point("dedup_between_tables")
            near = _write(lake, S.DUP_NEAR, near_rel, stamped, **tags)
            con.register("near_result", near)
            run.counts["clustered_images"] = clusters.count_rows()
            run.counts["clusters"] = clusters.count_rows(filter="is_representative")
            run.counts["near_duplicates"] = near.count_rows()
        per_source = con.sql(PER_SOURCE_SUMMARY).to_arrow_table().to_pylist()
    return DedupReport(run.run_id, per_source, run.counts)


def _write(lake: Lake, name: str, rel, stamped: dict[str, str], **constants: Any) -> lance.LanceDataset:
    """Stream the relation's rows into table `name` (overwritten: a new Lance version).

    Rows are conformed to the declared schema, with the constant columns (run_id, near_k) added;
    the table's schema metadata holds the run's id, parameters and inputs (etl.derived.stamp): the
    version counts for readers once the run's `runs` row says it finished (etl.derived).
    """
    schema = S.DERIVED_SCHEMAS[name].with_metadata(stamped)

    def conformed() -> Iterator[pa.RecordBatch]:
        for batch in rel.to_arrow_reader(65536):
            columns = dict(zip(batch.schema.names, batch.columns))
            columns.update({k: pa.array([v] * batch.num_rows) for k, v in constants.items()})
            yield pa.RecordBatch.from_arrays(
                [columns[f.name].cast(f.type) if f.name in columns else pa.nulls(batch.num_rows, f.type)
                 for f in schema], schema=schema)

    return lake.overwrite(name, pa.RecordBatchReader.from_batches(schema, conformed()), schema)
