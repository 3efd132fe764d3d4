"""Source readers, one module per format, registered by format name.

`READERS` maps `--format` names to reader classes; `detect_format` picks one for `--format auto`.
Adding a format is one module with one class decorated by `@register`.
"""
from __future__ import annotations

import importlib

from etl.sources.base import ImageRef, SourceReader, SourceRecord

READERS: dict[str, type[SourceReader]] = {}

# Modules imported on first use of the registry; each registers its reader(s).
_READER_MODULES = [
    "etl.sources.urls",  # URL lists to download: parquet with a URL column and no image bytes, else --format urls
    "etl.sources.ocr_vqa",  # OCR-VQA's dataset.json: a JSON object of entries keyed by id, with imageURL
    "etl.sources.hf_parquet",  # .parquet with the PAR1 magic
    "etl.sources.webdataset",  # .tar / .tgz
    "etl.sources.vila",  # JSON whose first key is test_cases
    "etl.sources.messages",  # JSON/JSONL whose first record has `messages`
    "etl.sources.data_juicer",  # JSON/JSONL whose first record has `text` (+ `images`)
    "etl.sources.llava",  # any other JSON/JSONL: must stay last
]


def register(cls: type[SourceReader]) -> type[SourceReader]:
    READERS[cls.format_name] = cls
    return cls


def readers() -> dict[str, type[SourceReader]]:
    """Every reader, in `_READER_MODULES` order (readers import each other, so import order differs)."""
    for module in _READER_MODULES:
        importlib.import_module(module)
    rank = {module: i for i, module in enumerate(_READER_MODULES)}
    return dict(sorted(READERS.items(), key=lambda item: rank.get(item[1].__module__, len(rank))))


def detect_format(path: str) -> str:
    """The first registered reader whose `sniff` accepts `path` (registration order = priority)."""
    for name, cls in readers().items():
        if cls.sniff(path):
            return name
    raise ValueError(f"cannot detect the format of {path}; pass --format (one of: {', '.join(readers())})")


__all__ = ["ImageRef", "READERS", "SourceReader", "SourceRecord", "detect_format", "readers", "register"]
