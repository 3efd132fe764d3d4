"""Run an enricher over every row that still lacks its column, committing as it goes.

rows where `columns[0]` IS NULL (and no `errors` row of this stage, unless --retry-errors),
optionally narrowed by a DuckDB `--where` and `--limit` → batches → engine workers call
`Enricher.process` (reading image bytes themselves) → the coordinator commits values with a column
rewrite (`Lake.fill_columns`, blobs untouched) and failures as `errors` rows. A kill -9 loses at
most the uncommitted batches; the rerun selects exactly the rows still missing.
"""
from __future__ import annotations

import importlib.util
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
from tqdm import tqdm

from etl import schema as S
from etl.engine.base import EngineSpec
from etl.enrich.base import EnrichBatch, Enricher, EnrichResult
from etl.errors import ErrorRow, errors_table
from etl.faults import crash_point
from etl.lake import Lake
from etl.runlog import recorded_run
from etl.sqlrun import connect

TODO_SQL = """
select {columns} from {table} t
where t.{marker} is null and ({where})
  and ({retry} or not exists (
        select 1 from errors e where e.stage = $stage and e.error_id = $stage || '/' || t.{key}))
{limit}
"""


@dataclass
class RunOptions:
    workers: int = 1  # 0: one locally, as many as fit on a Ray cluster
    engine: EngineSpec = field(default_factory=EngineSpec)  # who runs the workers (etl/engine/)
    batch_size: int = 256
    commit_rows: int = 4096  # commit when this many values wait...
    commit_seconds: float = 30.0  # ...or when the last commit is this old
    where: str | None = None  # DuckDB predicate over the table's view
    limit: int | None = None
    retry_errors: bool = False
    progress: bool | None = None


def check_requirements(enricher: type[Enricher]) -> None:
    missing = [m for m in enricher.requires if importlib.util.find_spec(m) is None]
    if missing:
        extra = f" (pip install 'mmlake[{enricher.extra}]')" if enricher.extra else ""
        raise SystemExit(f"enrich {enricher.name} needs {', '.join(missing)}{extra}")


def input_columns(enricher: Enricher) -> list[str]:
    key = S.KEYS[enricher.table]
    extra = ["image_ids"] if enricher.table == S.SAMPLES and enricher.needs_image_bytes else []
    cols = [key, *enricher.input_columns, *extra]
    if enricher.table == S.SAMPLES:
        cols.append("source")
    return list(dict.fromkeys(cols))


def todo_batches(lake: Lake, enricher: Enricher, opts: RunOptions) -> tuple[int, Iterator[pa.Table]]:
    """The number of rows to do and a stream of their input batches (keys in a stable order)."""
    con = connect(lake)
    sql = TODO_SQL.format(
        columns=", ".join(f"t.{c}" for c in input_columns(enricher)), table=enricher.table,
        marker=enricher.columns[0], key=S.KEYS[enricher.table], where=opts.where or "true",
        retry="true" if opts.retry_errors else "false", limit=f"limit {int(opts.limit)}" if opts.limit else "",
    )
    params = {"stage": enricher.name}
    total = con.execute(f"select count(*) from ({sql})", params).fetchall()[0][0]

    def batches() -> Iterator[pa.Table]:
        reader = con.sql(sql, params=params).to_arrow_reader(opts.batch_size)
        for rb in reader:
            yield pa.Table.from_batches([rb])

    return total, batches()


class EnrichWorker:
    """Lives in a worker: one lake handle and the enricher, set up once (its model loads once).

    A task goes through two stages, so that an engine can overlap them: `prepare` reads the rows'
    image bytes from the lake and lets the enricher start its decoding (thread-safe, I/O and CPU),
    `compute` runs the model on a prepared batch (one at a time). Calling the worker does both.
    """

    def __init__(self, lake_root: str, enricher: Enricher):
        self.lake, self.enricher = Lake(lake_root), enricher
        self.enricher.setup()
        self.setups = 1  # reported once, with the first result: the runs table shows how often models loaded

    def __call__(self, rows: pa.Table) -> EnrichResult:
        return self.compute(self.prepare(rows))

    def prepare(self, rows: pa.Table) -> EnrichBatch:
        return self.enricher.prepare(EnrichBatch(rows, self.image_bytes(rows)))

    def compute(self, batch: EnrichBatch) -> EnrichResult:
        result = self.enricher.process(batch)
        if self.setups:
            result.stats["worker_setups"] = result.stats.get("worker_setups", 0) + self.setups
            self.setups = 0
        return result

    def image_bytes(self, rows: pa.Table) -> list:
        if not self.enricher.needs_image_bytes:
            return []
        if self.enricher.table == S.IMAGES:
            ids = rows["image_id"].to_pylist()
            found = self.lake.image_bytes_by_id(ids)
            return [found.get(i) for i in ids]
        lists = rows["image_ids"].to_pylist()
        found = self.lake.image_bytes_by_id(sorted({i for ids in lists for i in ids or []}))
        return [[found.get(i) for i in ids or []] for ids in lists]


class _Factory:
    """Spawn-safe factory: builds an EnrichWorker inside the worker process."""

    staged = True  # its workers prepare (bytes, decoding) apart from computing: see etl/engine/base.py

    def __init__(self, lake_root: str, enricher: Enricher):
        self.lake_root, self.enricher = lake_root, enricher

    def __call__(self) -> EnrichWorker:
        return EnrichWorker(self.lake_root, self.enricher)


class Committer:
    """Buffers results and commits them: values by column rewrite, failures as errors rows."""

    def __init__(self, lake: Lake, enricher: Enricher, opts: RunOptions, run):
        self.lake, self.enricher, self.opts, self.run = lake, enricher, opts, run
        self.values: list[pa.Table] = []
        self.failures: list[ErrorRow] = []
        self.last_commit = time.monotonic()

    def add(self, result: EnrichResult, rows: pa.Table | None = None) -> None:
        if result.values.num_rows:
            self.values.append(result.values)
        for f in result.failures:
            self.failures.append(ErrorRow(self.enricher.name, f.key, f.kind, f.message, raw=f.key,
                                          run_id=self.run.run_id))
        self.run.counts["computed"] += result.values.num_rows
        self.run.counts.update(f"errors.{f.kind}" for f in result.failures)
        for k, v in result.stats.items():
            self.run.counts[k] += v
        pending = sum(t.num_rows for t in self.values) + len(self.failures)
        if pending >= self.opts.commit_rows or time.monotonic() - self.last_commit > self.opts.commit_seconds:
            self.commit()

    def commit(self) -> None:
        if self.values:
            self.lake.fill_columns(self.enricher.table, pa.concat_tables(self.values, promote_options="default"))
            self.run.counts["commits"] += 1
            crash_point("after_enrich_commit")
        self.lake.append_new(S.ERRORS, errors_table(self.failures))  # a retried failure keeps one row
        self.values, self.failures, self.last_commit = [], [], time.monotonic()


def run_enricher(lake: Lake, enricher: Enricher, opts: RunOptions) -> Counter:
    """Fill the enricher's columns for every row that lacks them; returns the run's counts."""
    check_requirements(type(enricher))
    params = {"enricher": enricher.name, **enricher.params(), "workers": opts.workers, "engine": opts.engine.kind,
              "batch_size": opts.batch_size, "where": opts.where, "limit": opts.limit}
    with recorded_run(lake, f"enrich {enricher.name}", params) as run:
        total, batches = todo_batches(lake, enricher, opts)
        run.counts["todo"] = total
        committer = Committer(lake, enricher, opts, run)
        engine = opts.engine.build(opts.workers)
        disable = {True: False, False: True, None: None}[opts.progress]
        with tqdm(total=total, desc=f"enrich {enricher.name}", unit=" rows", disable=disable) as bar:
            try:
                for result in engine.map_unordered(_Factory(lake.root, enricher), batches):
                    committer.add(result)
                    bar.update(result.values.num_rows + len(result.failures))
                    if run.counts["tokens"]:  # enrichers that report stats["tokens"] (loss) get tokens/s
                        bar.set_postfix_str(f"{run.counts['tokens'] / max(bar.format_dict['elapsed'], 1e-9):,.0f} tok/s")
            finally:
                committer.commit()
        lake.compact(S.ERRORS)
    return run.counts
