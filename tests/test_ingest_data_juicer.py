"""data-juicer's own JSONL (`text` with `<__dj__image>` + `images`), beside its parquet layout."""
from __future__ import annotations

import json

from etl.images import content_id
from etl.ingest import IngestOptions, ingest
from etl.sources import detect_format
from etl.sqlrun import connect
from conftest import errors_of

DJ = "data_juicer/demos/data"


def test_data_juicer_image_jsonl_stores_the_files_bytes_and_shares_them_with_the_parquet(lake, realdata):
    jsonl, parquet = realdata / DJ / "demo-dataset-images.jsonl", realdata / DJ / "demo-dataset-images-bytes.parquet"
    assert detect_format(str(jsonl)) == "data-juicer"
    # its paths climb two folders (`../../tests/ops/data/img1.png`): that folder must be allowed by name
    ingest(lake, [str(jsonl)], IngestOptions(source="dj_jsonl", image_roots=[str(realdata / "data_juicer")]))
    counts = ingest(lake, [str(parquet)], IngestOptions(source="dj_parquet"))
    assert counts["images_added"] == 0 and counts["images_already_in_lake"] == 3  # the same bytes, stored once
    got = connect(lake).execute(
        "select image_ids, conversations from samples where source = 'dj_jsonl' order by source_row").fetchall()
    files = ["img1.png", "img2.jpg", "img3.jpg"]
    assert [ids for ids, _ in got] == [[content_id((realdata / "data_juicer/tests/ops/data" / f).read_bytes())] for f in files]
    assert got[1][1] == [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A bus."}]


def test_data_juicer_paths_climbing_out_of_the_files_folder_are_errors_until_that_folder_is_an_image_root(lake, realdata):
    ingest(lake, [str(realdata / DJ / "demo-dataset-images.jsonl")], IngestOptions(source="dj", progress=False))
    errors = errors_of(lake, "dj")
    assert [e["kind"] for e in errors] == ["image_outside_roots"] * 3
    assert "../../tests/ops/data/img1.png" in errors[0]["message"] and "--image-root" in errors[0]["message"]


def test_a_plain_text_corpus_becomes_text_only_samples_with_its_meta(lake, realdata):
    path = realdata / DJ / "demo-dataset.jsonl"
    ingest(lake, [str(path)], IngestOptions(source="corpus"))
    rows = connect(lake).execute("select conversations, image_ids, meta from samples order by source_row").fetchall()
    original = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(rows) == len(original) == 6
    for (turns, image_ids, meta), rec in zip(rows, original):
        assert turns == [{"from": "gpt", "value": rec["text"]}] and image_ids == []
        assert json.loads(meta) == {"meta": rec["meta"]}
