"""mmlake from Python: open a lake and read it with DuckDB, Polars or PIL, at any version.

    >>> import etl.api as mm
    >>> lake = mm.open_lake("lake")                       # a folder, or "s3://bucket/lake"
    >>> lake.sql("select source, count(*) n from samples group by all")   # a Polars DataFrame
    >>> con = lake.duckdb()                               # DuckDB with the views of sql/views.sql
    >>> lf = lake.table("samples")                        # a Polars LazyFrame (never the blob column)
    >>> lake.image("3f2a…")                               # a PIL image; lake.image_bytes(id) for bytes
    >>> lake.versions()                                   # {"images": 12, "samples": 40, ...}
    >>> old = mm.open_lake("lake", version="v1.0")        # a tag, a samples version, or "samples=3,images=2"

Everything here reads; writing is the CLI's job (`python -m etl ingest|enrich|dedup|...`). A lake
opened at a version stays at that version, so a notebook's numbers do not move under it while an
ingest runs. The tables are plain Lance datasets: `lancedb.connect(lake.root).open_table("samples")`
and `pl.scan_lance(lake.uri("samples"))` open them too.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from etl import schema as S
from etl.lake import Lake

if TYPE_CHECKING:
    import duckdb
    import polars as pl
    from PIL import Image

__all__ = ["LakeReader", "open_lake"]


@dataclass
class LakeReader(Lake):
    """A lake opened for reading at fixed versions (`versions`: table → Lance version)."""

    pins: dict[str, int] = field(default_factory=dict)

    def versions(self) -> dict[str, int]:
        """The version of each table this reader sees (the latest when it was opened, or the pinned ones)."""
        return dict(self.pins)

    @property
    def tables(self) -> list[str]:
        return list(self.pins)

    def duckdb(self) -> "duckdb.DuckDBPyConnection":
        """An in-memory DuckDB connection with the lake's views (images without the blob, samples,
        errors, runs, checkpoints, and job outputs such as dup_exact) at this reader's versions."""
        from etl.sqlrun import connect

        return connect(self, version=self.pins)

    def sql(self, query: str) -> "pl.DataFrame":
        """Run DuckDB SQL over the views; the result as a Polars DataFrame."""
        return self.duckdb().sql(query).pl()

    def table(self, name: str) -> "pl.LazyFrame":
        """A lazy Polars scan of a table at this reader's version; the images' blob column is left out
        (read bytes with `image_bytes`)."""
        import polars as pl

        if name not in self.pins:
            raise ValueError(f"no table {name!r} in {self.root} (tables: {', '.join(self.pins)})")
        lf = pl.scan_lance(self.uri(name), version=self.pins[name])
        return lf.drop(S.BLOB_COLUMN) if name == S.IMAGES else lf

    def image_bytes(self, image_id: str) -> bytes:
        """The stored bytes of one image, exactly as ingested."""
        found = self.images_bytes([image_id])
        if image_id not in found:
            raise KeyError(f"no image {image_id} in {self.root} (images version {self.pins.get(S.IMAGES)})")
        return found[image_id]

    def images_bytes(self, image_ids: Sequence[str]) -> dict[str, bytes]:
        """Bytes of several images by id (ids not in the lake are absent from the result)."""
        return self.image_bytes_by_id(list(image_ids), self.pins[S.IMAGES])

    def image(self, image_id: str) -> "Image.Image":
        """One image decoded with PIL (bytes as stored; no orientation or colour change)."""
        from PIL import Image

        return Image.open(io.BytesIO(self.image_bytes(image_id)))


def open_lake(uri: str | None = None, version: int | str | None = None) -> LakeReader:
    """Open the lake at `uri` (a folder or an object-store URI; default `$ETL_LAKE`, else ./lake)
    for reading, at its latest versions or at `version`: a tag, a samples version number, or
    `table=N,...` pairs as in an export manifest. A path that is not a lake raises ValueError with
    one clear line."""
    from etl.upkeep import resolve

    reader = LakeReader.open(uri, create=False)
    reader.pins = resolve(reader, None if version is None else str(version))
    return reader
