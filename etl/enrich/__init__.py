"""Enrichers, one module per column family, registered by CLI name (`python -m etl enrich NAME`).

Modules are imported lazily so that the core installs light: an enricher whose extra is missing
(torch for `loss`/`tags`) fails with a message naming the extra, only when it is used.
"""
from __future__ import annotations

import importlib

from etl.enrich.base import EnrichBatch, Enricher, EnrichFailure, EnrichResult

# name -> "module:Class"; the module must import without the heavy extra (import torch inside setup).
ENRICHERS: dict[str, str] = {
    "phash": "etl.enrich.phash:PhashEnricher",
    "tags": "etl.enrich.ram_plus:RamPlusEnricher",
    "loss": "etl.enrich.qwen_loss:QwenLossEnricher",
}


def get_enricher(name: str) -> type[Enricher]:
    try:
        module, cls = ENRICHERS[name].split(":")
    except KeyError:
        raise SystemExit(f"unknown enricher {name!r}; choose one of: {', '.join(ENRICHERS)}") from None
    return getattr(importlib.import_module(module), cls)


__all__ = ["ENRICHERS", "EnrichBatch", "EnrichFailure", "EnrichResult", "Enricher", "get_enricher"]
