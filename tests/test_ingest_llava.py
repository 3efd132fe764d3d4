"""Ingesting the LLaVA family: real files, their quirks, and what happens to bad input."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.compute as pc

from etl.images import content_id
from etl.ingest import IngestOptions, ingest
from etl.sqlrun import connect

PRETRAIN = "llava_pretrain_pr1902/playground/data/LLaVA-Pretrain"


def rows(lake, sql):
    return connect(lake).execute(sql).fetchall()


def test_lcs558k_full_json_stores_200_samples_and_1983_missing_image_errors(lake, realdata):
    counts = ingest(lake, [str(realdata / PRETRAIN / "images/blip_laion_cc_sbu_2k.json")], IngestOptions(source="lcs"))
    assert counts["samples_added"] == 200 and counts["errors.missing_image"] == 1983
    assert lake.count("samples") == 200 and lake.count("errors") == 1983 and lake.count("images") == 200
    # every record is accounted for exactly once, by row
    (n_rows,) = rows(lake, "select count(distinct source_row) from samples")[0]
    (e_rows,) = rows(lake, "select count(distinct row) from errors")[0]
    assert n_rows + e_rows == 2183


def test_lcs558k_ids_conversations_and_bytes_round_trip_exactly(lake, realdata):
    path = realdata / PRETRAIN / "blip_laion_cc_sbu_2k.subset200.json"
    ingest(lake, [str(path)], IngestOptions(source="lcs", image_roots=[str(realdata / PRETRAIN / "images")]))
    original = {r["id"]: r for r in json.loads(path.read_text())}
    got = connect(lake).execute("select orig_id, conversations, image_ids, meta from samples").fetchall()
    assert len(got) == 200 == len(original)
    for orig_id, conversations, image_ids, meta in got:
        rec = original[orig_id]  # zero-padded string ids survive ("000019465")
        assert conversations == rec["conversations"]
        assert json.loads(meta) == {}
        data = (realdata / PRETRAIN / "images" / rec["image"]).read_bytes()
        assert image_ids == [content_id(data)]
    some = next(iter(original.values()))
    blob = lake.image_bytes_by_id([content_id((realdata / PRETRAIN / "images" / some["image"]).read_bytes())])
    assert list(blob.values())[0] == (realdata / PRETRAIN / "images" / some["image"]).read_bytes()


def test_llava_instruct_100_without_images_gives_100_error_rows_with_raw_records(lake, realdata):
    path = realdata / "llamafactory/llava_instruct_100/llava_instruct_100.json"
    ingest(lake, [str(path)], IngestOptions(source="instruct100"))
    assert lake.count("samples") == 0
    errs = lake.dataset("errors").to_table().to_pylist()
    assert len(errs) == 100 and {e["kind"] for e in errs} == {"missing_image"}
    raw = {json.loads(e["raw"])["id"]: json.loads(e["raw"]) for e in errs}
    assert raw == {r["id"]: r for r in json.loads(path.read_text())}
    assert all(e["orig_id"] == json.loads(e["raw"])["id"] for e in errs)
    assert all(e["message"].startswith("image file not found") for e in errs)


def test_fastchat_text_only_records_become_500_samples_without_images(lake, realdata):
    path = realdata / "fastchat/data/dummy_conversation.json"
    ingest(lake, [str(path)], IngestOptions(source="fastchat"))
    got = rows(lake, "select count(*), count(*) filter (where len(image_ids) = 0), count(distinct orig_id) from samples")
    assert got == [(500, 500, 500)]
    original = json.loads(path.read_text())
    first = rows(lake, "select conversations from samples where source_row = 0")[0][0]
    assert first == original[0]["conversations"]


def test_llava_bench_jsonl_with_repeated_image_ids_keeps_every_record(lake, realdata, tmp_path):
    # the COCO images are not shipped: give the first record's image from the LLaVA demo photos
    src = realdata / "llava/playground/data/coco2014_val_gpt4_qa_30x3.jsonl"
    images = tmp_path / "coco"
    images.mkdir()
    first = json.loads(src.read_text().splitlines()[0])
    shutil.copy(realdata / "llava/llava/serve/examples/waterview.jpg", images / first["image"])
    ingest(lake, [str(src)], IngestOptions(source="bench", image_roots=[str(images)]))
    # the three records about that image become three samples sharing one stored image
    assert lake.count("samples") == 3 and lake.count("images") == 1 and lake.count("errors") == 87
    turns = rows(lake, "select conversations from samples order by source_row limit 1")[0][0]
    assert turns == [{"from": "human", "value": first["instruction"]}, {"from": "gpt", "value": first["output"]}]
    assert rows(lake, "select distinct json_extract_string(meta, '$.type') from samples order by 1") == [("complex",), ("conv",), ("detail",)]


def test_recaption_dump_with_absolute_cluster_paths_records_missing_images(lake, realdata):
    path = realdata / "llava_next/playground/cc3m_llava34b_cap/progress_6_or_24.json"
    ingest(lake, [str(path)], IngestOptions(source="recap"))
    errs = rows(lake, "select count(*), min(message) from errors where kind = 'missing_image'")[0]
    assert errs[0] == 1792 and "/mnt/bn/" in errs[1]


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


def test_quirky_records_keep_their_text_ids_and_extra_keys(lake, realdata, tmp_path):
    img = realdata / "llava/llava/serve/examples/extreme_ironing.jpg"
    records = [
        {"id": 41361, "image": str(img), "conversations": [  # integer id, absolute path, <image> mid-turn
            {"from": "human", "value": "  Look at this <image> please  "},
            {"from": "gpt", "value": "An ironing board on a taxi.", "text": "x", "markdown": "y"}]},
        {"id": "000123", "image": [str(img), str(img)], "conversations": [
            {"from": "human", "value": "Image 1: <image>\nImage 2: <image>\nSame?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "t", "model": "", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    ]
    # an absolute path is followed inside an image root
    ingest(lake, [str(write_json(tmp_path / "q.json", records))], IngestOptions(source="q", image_roots=[str(img.parent)]))
    got = {r[0]: r[1:] for r in rows(lake, "select orig_id, image_ids, conversations, meta from samples")}
    assert set(got) == {"41361", "000123", "t"}
    assert got["41361"][1][0]["value"] == "  Look at this <image> please  "  # whitespace kept as written
    assert json.loads(got["41361"][2]) == {"turn_extras": {"1": {"text": "x", "markdown": "y"}}}
    assert len(got["000123"][0]) == 2 and got["000123"][0][0] == got["000123"][0][1]
    assert got["t"][0] == [] and json.loads(got["t"][2]) == {"model": ""}
    assert lake.count("images") == 1  # the same bytes, referenced three times, stored once


def test_non_images_are_errors_but_truncated_jpegs_are_stored(lake, realdata, tmp_path):
    pil = realdata / "pillow_test_images/Tests/images"
    bad = tmp_path / "bad.jpg"
    bad.write_text("<html>not found</html>")
    names = ["truncated_jpeg.jpg", "junk_jpeg_header.jpg", "pil_sample_cmyk.jpg", "i_trns.png", "iss634.gif", "hopper.webp"]
    records = [{"id": n, "image": str(pil / n), "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": n}]}
               for n in names]
    records.append({"id": "bad", "image": str(bad), "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "?"}]})
    ingest(lake, [str(write_json(tmp_path / "c.json", records))], IngestOptions(source="corrupt", image_roots=[str(pil)]))
    assert sorted(r[0] for r in rows(lake, "select orig_id from samples")) == sorted(names)
    assert rows(lake, "select orig_id, kind from errors") == [("bad", "not_an_image")]
    fmts = dict(rows(lake, "select s.orig_id, i.format from samples s join images i on s.image_ids[1] = i.image_id"))
    assert fmts["truncated_jpeg.jpg"] == "JPEG" and fmts["iss634.gif"] == "GIF" and fmts["hopper.webp"] == "WEBP"


def test_malformed_records_and_bad_jsonl_lines_are_errors_and_the_run_goes_on(lake, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join([
        json.dumps({"id": "a", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}),
        '{"id": "cut", "conversations": [',
        json.dumps({"id": "no_turns", "text": "just text"}),
        json.dumps({"id": "b", "conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]}),
        "",
    ]))
    counts = ingest(lake, [str(path)], IngestOptions(source="chat"))
    assert counts["samples_added"] == 2
    errs = {r[0]: r[1:] for r in rows(lake, "select kind, row, raw from errors")}
    assert errs["bad_json_line"] == (1, '{"id": "cut", "conversations": [')
    assert errs["malformed_record"][0] == 2 and json.loads(errs["malformed_record"][1])["id"] == "no_turns"


def test_running_the_same_ingest_twice_adds_nothing(lake, realdata):
    args = [str(realdata / PRETRAIN / "images/blip_laion_cc_sbu_2k.json")]
    ingest(lake, args, IngestOptions(source="lcs"))
    before = lake.versions()
    again = ingest(lake, args, IngestOptions(source="lcs"))
    assert again["files_already_done"] == 1 and again["samples_added"] == 0
    assert {t: v for t, v in lake.versions().items() if t in ("samples", "images", "errors")} == \
           {t: v for t, v in before.items() if t in ("samples", "images", "errors")}


def test_same_bytes_from_two_sources_are_stored_once(lake, realdata, tmp_path):
    img = str(realdata / "llava/llava/serve/examples/waterview.jpg")
    rec = lambda i: {"id": i, "image": img, "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "w"}]}
    roots = [os.path.dirname(img)]
    ingest(lake, [str(write_json(tmp_path / "a.json", [rec("1"), rec("2")]))], IngestOptions(source="a", image_roots=roots))
    counts = ingest(lake, [str(write_json(tmp_path / "b.json", [rec("1")]))], IngestOptions(source="b", image_roots=roots))
    assert counts["images_already_in_lake"] == 1 and counts["images_added"] == 0
    assert lake.count("images") == 1 and lake.count("samples") == 3


def test_directories_and_globs_name_files_relative_to_the_argument(lake, realdata, tmp_path):
    for sub in ("x", "y"):
        (tmp_path / "d" / sub).mkdir(parents=True)
        shutil.copy(realdata / "fastchat/data/dummy_conversation.json", tmp_path / "d" / sub / "part.json")
    ingest(lake, [str(tmp_path / "d")], IngestOptions(source="dir"))
    ingest(lake, [str(tmp_path / "d" / "*" / "part.json")], IngestOptions(source="glob"))
    got = rows(lake, "select source, source_file, count(*) from samples group by all order by all")
    assert got == [("dir", "x/part.json", 500), ("dir", "y/part.json", 500),
                   ("glob", "x/part.json", 500), ("glob", "y/part.json", 500)]
    ids = pc.count_distinct(lake.dataset("samples").to_table(columns=["sample_id"])["sample_id"]).as_py()
    assert ids == 2000
