"""Printing rows (a DuckDB relation or a list of dicts) as a table, CSV or JSON, the same way for
the maintenance commands (sources, log, tags, doctor)."""
from __future__ import annotations

import sys

FORMATS = ["table", "csv", "json"]


def show(rel, fmt: str = "table", max_rows: int = 1000) -> None:
    """A DuckDB relation as a table, CSV or JSON on stdout."""
    if fmt == "table":
        rel.show(max_rows=max_rows, max_width=250)
        return
    show_rows(rel.fetch_arrow_table().to_pylist(), fmt)


def show_rows(rows: list[dict], fmt: str = "table", max_rows: int = 1000) -> None:
    """Rows (dicts) as a table, CSV or JSON on stdout."""
    if fmt == "table":
        if not rows:
            print("(none)")
            return
        import duckdb
        import pyarrow as pa

        show(duckdb.from_arrow(pa.Table.from_pylist(rows)), fmt, max_rows)
    elif fmt == "json":
        import json

        json.dump(rows, sys.stdout, default=str, indent=1)
        print()
    else:
        import csv

        if rows:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
