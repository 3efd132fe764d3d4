"""The enrichment runner: fills only missing values, records failures once, resumes after a crash."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import imagehash
import pyarrow as pa
import pytest
from PIL import Image

from etl import schema as S
from etl.enrich.base import EnrichBatch, Enricher, EnrichFailure, EnrichResult
from etl.enrich.runner import RunOptions, run_enricher
from etl.ingest import IngestOptions, ingest
from etl.sqlrun import connect

from conftest import REPO


class ReferencePhash(Enricher):
    """imagehash.phash per image, the seed script's way: the runner's behaviour, not speed, is tested."""

    name = "phash"
    table = S.IMAGES
    columns = ("phash", "phash_mode")

    def process(self, batch: EnrichBatch) -> EnrichResult:
        keys, values, failures = [], [], []
        for image_id, data in zip(batch.rows["image_id"].to_pylist(), batch.image_bytes):
            try:
                values.append(int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16))
                keys.append(image_id)
            except Exception as exc:  # noqa: BLE001 - any decode failure is a recorded failure
                failures.append(EnrichFailure(image_id, "decode_error", f"{type(exc).__name__}: {exc}"))
        tbl = pa.table({"image_id": keys, "phash": pa.array(values, pa.uint64()), "phash_mode": ["reference"] * len(keys)})
        return EnrichResult(tbl, failures)


@pytest.fixture
def pillow_lake(lake, realdata, tmp_path):
    pil = realdata / "pillow_test_images/Tests/images"
    names = ["hopper.jpg", "hopper.png", "truncated_jpeg.jpg", "pil_sample_cmyk.jpg", "hopper_gray.jpg", "l_trns.png"]
    import json
    recs = [{"id": n, "image": str(pil / n), "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": n}]}
            for n in names]
    (tmp_path / "p.json").write_text(json.dumps(recs))
    ingest(lake, [str(tmp_path / "p.json")], IngestOptions(source="pil", image_roots=[str(pil)]))
    return lake


def phashes(lake) -> dict:
    return dict(connect(lake).execute("select image_id, phash from images").fetchall())


def test_runner_fills_every_missing_value_and_records_the_truncated_jpeg_once(pillow_lake):
    counts = run_enricher(pillow_lake, ReferencePhash(), RunOptions(batch_size=2))
    assert counts["computed"] == 5 and counts["errors.decode_error"] == 1
    values = phashes(pillow_lake)
    assert sum(v is None for v in values.values()) == 1
    errs = connect(pillow_lake).execute("select stage, kind, raw from errors where stage = 'phash'").fetchall()
    assert len(errs) == 1 and values[errs[0][2]] is None
    # a second run finds nothing to do: values are not recomputed and the failure is not retried
    again = run_enricher(pillow_lake, ReferencePhash(), RunOptions())
    assert again["todo"] == 0 and again["computed"] == 0
    retried = run_enricher(pillow_lake, ReferencePhash(), RunOptions(retry_errors=True))
    assert retried["todo"] == 1 and pillow_lake.count("errors", "stage = 'phash'") == 1


def test_runner_never_rewrites_blobs(pillow_lake):
    before = {f.path for frag in pillow_lake.dataset("images").get_fragments() for f in frag.data_files()}
    run_enricher(pillow_lake, ReferencePhash(), RunOptions())
    after = {f.path for frag in pillow_lake.dataset("images").get_fragments() for f in frag.data_files()}
    assert before <= after  # the original data files (blobs included) are still the ones in use
    ids = [r[0] for r in connect(pillow_lake).execute("select image_id from images").fetchall()]
    assert all(len(b) > 0 for b in pillow_lake.image_bytes_by_id(ids).values())


def test_where_and_limit_narrow_the_rows(pillow_lake):
    counts = run_enricher(pillow_lake, ReferencePhash(), RunOptions(where="format = 'PNG'", limit=1))
    assert counts["todo"] == 1
    got = connect(pillow_lake).execute("select format, count(phash) from images group by all order by 1").fetchall()
    assert dict(got) == {"JPEG": 0, "PNG": 1}


def test_two_worker_processes_give_the_same_values_as_one(pillow_lake, tmp_path):
    run_enricher(pillow_lake, ReferencePhash(), RunOptions(workers=2, batch_size=1))
    expected = {}
    for image_id, data in pillow_lake.image_bytes_by_id(list(phashes(pillow_lake))).items():
        try:
            expected[image_id] = int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)
        except OSError:
            expected[image_id] = None
    assert phashes(pillow_lake) == expected


def test_a_killed_run_resumes_with_the_rows_still_missing(pillow_lake):
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO / 'tests')!r})
        from test_enrich_runner import ReferencePhash
        from etl.lake import Lake
        from etl.enrich.runner import RunOptions, run_enricher
        run_enricher(Lake.open({pillow_lake.root!r}), ReferencePhash(), RunOptions(batch_size=1, commit_rows=1))
    """)
    env = {**os.environ, "MMLAKE_FAULT": "after_enrich_commit:2"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True)
    assert proc.returncode == 137, proc.stderr.decode()[-2000:]
    done_before = sum(v is not None for v in phashes(pillow_lake).values())
    assert 0 < done_before < 5
    counts = run_enricher(pillow_lake, ReferencePhash(), RunOptions())
    assert counts["computed"] == 5 - done_before
    assert sum(v is not None for v in phashes(pillow_lake).values()) == 5
