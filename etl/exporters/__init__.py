"""Export formats that carry the images inside their files (webdataset tar shards, HF parquet shards).

`etl.export` selects the samples (recipe → SQL → `decisions`) exactly as for the LLaVA JSON export;
a module here only writes that selection (`records.iter_selected`) in its own format. Each module
has `validate(opts)` (options it cannot honour fail before the output folder is touched) and
`write(lake, con, out, recipe, opts, pins) -> (files, image_counts)` for the manifest.
Modules are imported when their format is used, so `etl.export` can name them without importing them.
"""
from __future__ import annotations

import importlib
from types import ModuleType

EXPORTERS = {
    "webdataset": "etl.exporters.webdataset",  # tar shards: <key>.jpg + <key>.json, index.json
    "hf-parquet": "etl.exporters.hf_parquet",  # parquet shards with HF Image features + README.md card
}


def exporter(name: str) -> ModuleType:
    return importlib.import_module(EXPORTERS[name])
