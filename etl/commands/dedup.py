"""`python -m etl dedup`: exact and near-duplicate decisions as lake tables (see etl/dedup.py)."""
from __future__ import annotations

from etl.dedup import EXAMPLES, HELP, configure, run

__all__ = ["EXAMPLES", "HELP", "configure", "run"]
