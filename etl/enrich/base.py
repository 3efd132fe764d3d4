"""The enricher contract: one class per column family, a pure function from a batch to values.

An enricher never opens the lake, never commits and never knows which engine runs it (local
process pool, Ray). The runner (`etl.enrich.runner`) selects the rows that still lack the column,
fetches their inputs (image bytes included), calls `process` in a worker, and commits the values
with a column rewrite plus one `errors` row per failed key.
"""
from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa


@dataclass
class EnrichBatch:
    """The rows an enricher works on.

    `rows` holds the key column and `input_columns` (never the blob).
    `image_bytes[i]` is the bytes of row i's image (images table), or for samples the list of
    bytes of row i's `image_ids` in order; None where the bytes could not be read.
    """

    rows: pa.Table
    image_bytes: list[Any] = field(default_factory=list)
    started: Any = None  # what the enricher's `prepare` set going for this batch (decodes under way)


@dataclass
class EnrichFailure:
    key: str  # image_id or sample_id
    kind: str  # e.g. decode_error, too_long, oom
    message: str


@dataclass
class EnrichResult:
    """Values for the rows that succeeded (key + output columns) and failures for the others."""

    values: pa.Table
    failures: list[EnrichFailure] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)  # summed by the runner (e.g. tokens)


class Enricher(ABC):
    """Compute `columns` of `table` for rows where `columns[0]` is NULL.

    Subclasses declare the class attributes and implement `process`; `setup` loads models once per
    worker (after the worker process started, so nothing heavy crosses process boundaries).
    """

    name: ClassVar[str]  # CLI name: `python -m etl enrich <name>`
    table: ClassVar[str]  # schema.IMAGES or schema.SAMPLES
    columns: ClassVar[tuple[str, ...]]  # output columns; NULL in columns[0] means "to do"
    input_columns: ClassVar[tuple[str, ...]] = ()
    needs_image_bytes: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules, checked before any work
    extra: ClassVar[str | None] = None  # pip extra that provides `requires`

    def __init__(self, **options: Any):
        self.options = options

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this enricher's own options to `python -m etl enrich <name>` (model path, mode...)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Enricher":
        """Build the enricher from parsed CLI options (default: no options)."""
        return cls()

    def setup(self) -> None:
        """Load models or tables; called once in each worker before the first batch."""

    def prepare(self, batch: EnrichBatch) -> EnrichBatch:
        """Optionally start CPU work on `batch` (decoding its images) and keep it in `batch.started`.

        Engines may call this on another thread while the previous batch is in `process`, so the
        model does not wait for decoding between batches. It must be thread-safe and must not change
        what `process` computes. Default: nothing started (`process` does all the work).
        """
        return batch

    @abstractmethod
    def process(self, batch: EnrichBatch) -> EnrichResult:
        """Return the values of `columns` for the rows of `batch`, keyed like the table."""

    def params(self) -> dict[str, Any]:
        """What identifies this computation in `runs` (model id, mode, thresholds...)."""
        return dict(self.options)
