"""VILA inference-test reader: `{"test_cases": [{"name", "image_paths": [...], "QAs": [...]}]}`.

NVlabs/VILA's `inference_test/inference_test.json` is the small real source of multi-image samples
(up to eight images per question, interleaved `Image 1: <image>` tags). Each QA becomes one sample
`[{"from": "human", "value": question}, {"from": "gpt", "value": expected_answer}]` with all of its
case's images, in order. QAs of one case are independent questions (each repeats its `<image>`
tags), so they are separate samples, not one dialogue.

Rows count QAs through the file (case by case). `orig_id` is the case `name` (not unique upstream:
"Fuyu comparison" appears twice), so `meta` keeps `case` and `qa` indices plus any other key.
Image paths are relative to the JSON's `test_data/` folder (where VILA keeps them) when it exists,
else to the JSON's folder; an `--image-root` is tried first.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from etl import storage
from etl.sources import register
from etl.sources.base import ImageRef, SourceReader, SourceRecord, raw_json
from etl.sources.jsonfiles import iter_json_records
from etl.sources.jsonstream import BadStretch

FIRST_KEY = re.compile(rb'^(?:\xef\xbb\xbf)?\s*\{\s*"test_cases"\s*:')
IMAGE_FOLDER = "test_data"
CASE_KEYS = ("name", "image_paths", "QAs")
QA_KEYS = ("question", "expected_answer")


@register
class VilaReader(SourceReader):
    """Reads VILA `inference_test.json` files: one sample per QA, multi-image."""

    format_name = "vila"
    extensions = (".json",)

    @classmethod
    def sniff(cls, path: str) -> bool:
        """A .json object whose first key is `test_cases`."""
        if not path.lower().endswith(cls.extensions):
            return False
        return FIRST_KEY.match(storage.read_head(path, 4096)) is not None

    def read_file(self, path: str, name: str, start_row: int = 0, end_row: int | None = None) -> Iterator[SourceRecord]:
        folder = storage.parent(path)
        base_dir = storage.join(folder, IMAGE_FOLDER) if storage.is_dir(storage.join(folder, IMAGE_FOLDER)) else folder
        row = 0
        for case_index, case in iter_json_records(path):  # the cases of `test_cases`, streamed
            if isinstance(case, BadStretch):
                records = [SourceRecord(name, row, raw=case.raw, error=(case.kind, f"case {case_index}: {case.message}"))]
            else:
                records = case_records(case, case_index, name, row, base_dir)
            for record in records:
                if record.source_row >= start_row:
                    yield record
                row += 1


def case_records(case: Any, case_index: int, name: str, first_row: int, base_dir: str) -> list[SourceRecord]:
    """The samples of one test case (one per QA), or one error row when the case is unusable."""
    qas = case.get("QAs") if isinstance(case, dict) else None
    paths = case.get("image_paths") if isinstance(case, dict) else None
    paths_ok = isinstance(paths, list) and all(isinstance(p, str) for p in paths)
    if not isinstance(qas, list) or not qas or not paths_ok:
        return [SourceRecord(name, first_row, raw=raw_json(case),
                             error=("malformed_record", f"case {case_index}: needs `image_paths` and `QAs` lists"))]
    case_meta = {k: v for k, v in case.items() if k not in CASE_KEYS}
    return [qa_record(case, qa, case_index, qa_index, name, first_row + qa_index, base_dir, case_meta)
            for qa_index, qa in enumerate(qas)]


def qa_record(case: dict, qa: Any, case_index: int, qa_index: int, name: str, row: int, base_dir: str,
              case_meta: dict) -> SourceRecord:
    record = SourceRecord(name, row, orig_id=case.get("name"), raw=raw_json({**case, "QAs": [qa]}))
    if not isinstance(qa, dict) or not all(isinstance(qa.get(k), str) for k in QA_KEYS):
        record.error = ("malformed_record", f"case {case_index} QA {qa_index}: needs `question` and `expected_answer`")
        return record
    record.conversations = [{"from": "human", "value": qa["question"]}, {"from": "gpt", "value": qa["expected_answer"]}]
    record.images = [ImageRef(path=p, base_dir=base_dir) for p in case["image_paths"]]
    extra = {k: v for k, v in qa.items() if k not in QA_KEYS}
    record.meta = {"case": case_index, "qa": qa_index, **case_meta, **extra}
    return record
