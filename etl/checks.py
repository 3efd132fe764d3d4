"""Sample checks: sql/checks.sql over the lake, per sample or summarised per source and reason."""
from __future__ import annotations

import duckdb

from etl.sqlrun import run_file, set_variables, sql_literal


def checks_relation(con: duckdb.DuckDBPyConnection, source: str | None = None,
                    max_text_chars: int | None = None, only_problems: bool = True) -> duckdb.DuckDBPyRelation:
    """One row per sample (of `source`) with `problems` and `fixes`; by default only samples with any."""
    if max_text_chars is not None:
        set_variables(con, {"max_text_chars": max_text_chars})
    rel = run_file(con, "checks")
    if source is not None:
        rel = rel.filter(f"source = {sql_literal(source)}")
    if only_problems:
        rel = rel.filter("len(problems) > 0 or len(fixes) > 0")
    return rel.order("source, sample_id")


def problem_summary(con: duckdb.DuckDBPyConnection, source: str | None = None,
                    max_text_chars: int | None = None) -> duckdb.DuckDBPyRelation:
    """Samples per source and reason: `problem` rows block a `checks: pass` recipe, `fix` rows do not."""
    checked = checks_relation(con, source, max_text_chars, only_problems=False)
    return con.sql(f"""
        with checked as ({checked.sql_query()}),
        reasons as (
            select source, 'problem' as kind, unnest(problems) as reason from checked
            union all
            select source, 'fix' as kind, unnest(fixes) as reason from checked
        ),
        totals as (
            select source, 'total' as kind, 'samples' as reason, count(*) as samples from checked group by source
            union all
            select source, 'total', 'passing', count(*) filter (where len(problems) = 0) from checked group by source
        )
        select * from totals
        union all
        select source, kind, reason, count(*) from reasons group by all
        order by source, kind desc, reason""")
