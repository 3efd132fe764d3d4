"""DuckDB over the lake: the views of `sql/views.sql`, and `sql/*.sql` files run with parameters.

In Python each Lance dataset is registered as a relation `<table>_lance` (a pyarrow dataset, with
projection and filter push-down); `sql/views.sql` turns those into the user-facing views. Tables
other than the contract's (e.g. `dup_exact`, `image_clusters` written by jobs) get a plain view of
the same name. The DuckDB shell (`python -m etl shell`) builds the same relations with the lance
extension reading the files directly, then runs the same `views.sql`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import lance
import pyarrow as pa
import pyarrow.dataset as pads
from lance.file import LanceFileSession

from etl import schema as S
from etl import storage
from etl.derived import committed_versions
from etl.lake import Lake

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
VIEWS_SQL = SQL_DIR / "views.sql"
# Views and macros over the lake views, defined on every connection (nothing runs until a query
# reads them): image properties, dedup keys, the check results recipes select from, export's fixes.
MODEL_FILES = [SQL_DIR / f"{name}.sql" for name in ("sample_images", "dedup_keys", "checked_samples", "fixes")]
VIEWS_IN_VIEWS_SQL = set(S.SCHEMAS)


class PushdownSafeDataset(lance.LanceDataset):
    """A Lance dataset whose filter push-down never fails on types Lance cannot convert.

    DuckDB pushes `WHERE` filters into the scan; Lance 14 converts them to Substrait and rejects
    unsigned integers (e.g. `phash IS NULL` fails). For such filters we scan the referenced
    columns without a filter and let Arrow apply it (`Scanner.from_batches`), so every query works;
    other filters keep Lance's push-down.
    """

    def scanner(self, columns=None, filter=None, **kwargs):
        if filter is None or not self._mentions_unsigned(filter):
            return super().scanner(columns=columns, filter=filter, **kwargs)
        text = str(filter)
        wanted = [f.name for f in self.schema if f.name != S.BLOB_COLUMN
                  and (f.name in text or columns is None or f.name in columns)]
        base = super().scanner(columns=wanted, batch_size=kwargs.get("batch_size"))
        return pads.Scanner.from_batches(base.to_batches(), schema=base.projected_schema,
                                         columns=columns, filter=filter)

    def _mentions_unsigned(self, filter) -> bool:
        text = str(filter)
        return any(pa.types.is_unsigned_integer(f.type) and f.name in text for f in self.schema)


def sql_path(name: str) -> Path:
    """`sql/<name>.sql` (a bare name) or a path to any .sql file."""
    p = Path(name)
    return p if p.suffix == ".sql" and p.exists() else SQL_DIR / f"{p.stem}.sql"


def lake_tables(lake: Lake) -> list[str]:
    """Every Lance table under the lake root (contract tables first, then job outputs such as
    `dup_exact`). Lance lists the root, so a lake on object storage is listed like a local one."""
    listed = LanceFileSession(lake.root).list_with_delimiter().common_prefixes
    children = (c.rstrip("/").rsplit("/", 1)[-1] for c in listed)
    found = sorted(c[: -len(".lance")] for c in children if c.endswith(".lance"))
    return [t for t in S.TABLES if t in found] + [t for t in found if t not in S.SCHEMAS]


def connect(lake: Lake, version: Mapping[str, int | str] | None = None,
            params: Mapping[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake's views; `version` pins tables to Lance versions/tags."""
    con = duckdb.connect()
    try:
        con.execute("set enable_progress_bar = false")
    except duckdb.InvalidInputException:
        pass  # inside Jupyter without ipywidgets DuckDB refuses the setting; the bar is already off there
    pins = {**committed_versions(lake), **(version or {})}  # a derived set as its last finished run left it
    tables = [t for t in lake_tables(lake) if t in pins or t not in S.DERIVED_SCHEMAS]
    for table in tables:
        ds = PushdownSafeDataset(lake.uri(table), version=pins.get(table))
        con.register(f"{table}_lance", ds)
    con.execute(VIEWS_SQL.read_text())
    for table in tables:
        if table not in VIEWS_IN_VIEWS_SQL:
            con.execute(f'create or replace view "{table}" as select * from "{table}_lance"')
    define_models(con)
    set_variables(con, {"lake": lake.root, **(params or {})})
    return con


def define_models(con: duckdb.DuckDBPyConnection, paths=MODEL_FILES) -> None:
    """Create the views and macros of sql/ over a connection that has the lake views."""
    for path in paths:
        for statement in split_statements(path.read_text()):
            con.execute(statement)


def sql_literal(value: str) -> str:
    """A SQL string literal (quotes doubled): the one place Python quotes a value into SQL text."""
    return "'" + str(value).replace("'", "''") + "'"


def set_variables(con: duckdb.DuckDBPyConnection, params: Mapping[str, Any]) -> None:
    """Bind parameters for `getvariable('name')` in SQL files."""
    for name, value in params.items():
        con.execute(f"set variable {name} = ?", [value])


def run_file(con: duckdb.DuckDBPyConnection, name: str, params: Mapping[str, Any] | None = None):
    """Run `sql/<name>.sql` with parameters; returns the relation of its last statement."""
    set_variables(con, params or {})
    statements = [s for s in split_statements(sql_path(name).read_text()) if s.strip()]
    for stmt in statements[:-1]:
        con.execute(stmt).fetchall()  # duckdb 2.0: an unread result would block the connection
    return con.sql(statements[-1])


def split_statements(text: str) -> list[str]:
    """Split a SQL file on `;` at line ends (our files keep one statement per `;`-terminated block)."""
    parts, current = [], []
    for line in text.splitlines():
        current.append(line)
        if line.rstrip().endswith(";") and not line.lstrip().startswith("--"):
            parts.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    tail = "\n".join(current).strip()
    if tail and not all(l.strip().startswith("--") or not l.strip() for l in current):
        parts.append(tail)
    return [p for p in parts if _has_code(p)]


def _has_code(stmt: str) -> bool:
    return any(l.strip() and not l.strip().startswith("--") for l in stmt.splitlines())


def shell_init_script(lake: Lake, extension_path: str) -> str:
    """The DuckDB shell's init: load the lance extension, map tables to files, then views.sql."""
    lines = [f"LOAD {sql_literal(extension_path)};"]
    for table in lake_tables(lake):
        path = os.path.abspath(lake.uri(table)) if not storage.is_remote(lake.root) else lake.uri(table)
        lines.append(f"create or replace view \"{table}_lance\" as select * from {sql_literal(path)};")
    lines.append(VIEWS_SQL.read_text())
    for table in lake_tables(lake):
        if table not in VIEWS_IN_VIEWS_SQL:
            lines.append(f'create or replace view "{table}" as select * from "{table}_lance";')
    lines.extend(path.read_text() for path in MODEL_FILES)
    lines.append(f"set variable lake = {sql_literal(lake.root)};")
    return "\n".join(lines) + "\n"
