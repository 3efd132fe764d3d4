"""The lake as it was at given versions, for readers that cannot time-travel by themselves.

The DuckDB shell's lance extension has no time travel ("Catalog type does not support time
travel"), and the report reads its tables in many places. Both open a folder of Lance shallow
clones instead: one per table at the pinned version (metadata only; the data files stay the lake's),
which they read like the lake itself. The folder is removed afterwards.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from etl import schema as S
from etl import storage
from etl.lake import Lake
from etl.lakeformat import MARKER


@contextmanager
def lake_at(lake: Lake, pins: Mapping[str, int]) -> Iterator[Lake]:
    """A read-only lake of every table at `pins`; a table not pinned is taken as a reader would take
    it now (a derived table at its last finished run's version, any other at its latest)."""
    from etl.derived import committed_versions
    from etl.sqlrun import lake_tables

    if storage.is_remote(lake.root):
        raise ValueError("--version for `report` and `shell` needs a lake on a local filesystem")
    derived = committed_versions(lake)
    with tempfile.TemporaryDirectory(prefix="mmlake-version-") as folder:
        for table in lake_tables(lake):
            if table in S.DERIVED_SCHEMAS and table not in pins and table not in derived:
                continue  # no finished run wrote it: readers treat it as absent
            version = pins.get(table) or derived.get(table) or lake.latest_version(table)
            lake.dataset(table, version).shallow_clone(os.path.join(folder, f"{table}.lance"), version)
        os.makedirs(os.path.dirname(os.path.join(folder, MARKER)), exist_ok=True)
        shutil.copyfile(os.path.join(lake.root, MARKER), os.path.join(folder, MARKER))
        yield Lake(folder)
