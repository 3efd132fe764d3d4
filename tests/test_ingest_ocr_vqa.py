"""OCR-VQA's `dataset.json` (an object keyed by book id, images by URL) ingested as Q/A conversations.

No OCR-VQA file is in ../shared/realdata: the fixture is written in the real layout (one line,
`json.dump`'s separators, ASIN keys, `imageURL`/`questions`/`answers`/`title`/`authorName`/`genre`/
`split`), served from a loopback server inside a private network namespace.
"""
from __future__ import annotations

import json

from etl.sources import detect_format
from etl.sources.jsonstream import BadStretch
from etl.sources.ocr_vqa import OcrVqaReader

from conftest import errors_of, run_cli, samples_of
from http_fixtures import ImageServer, in_private_network, jpeg


def book(url: str, title: str, questions: list, answers: list, genre: str = "Travel") -> dict:
    return {"imageURL": url, "questions": questions, "answers": answers, "title": title,
            "authorName": "Gerald A. Durkee", "genre": genre, "split": 1}


def write_dataset(path, members: list[tuple[str, str]]):
    """`members`: (key, value as JSON text), so that a member can be broken on purpose."""
    path.write_text("{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in members) + "}")
    return path


def dataset(tmp_path, url) -> tuple:
    ok = book(url("51Z8tIv%2BpSL.jpg"), "Texas Fishing Guide",
              ["Who wrote this book?", "What is the title of this book?", "Is this a travel book?"],
              ["Gerald A. Durkee", "Texas Fishing Guide", "Yes"])
    members = [
        ("0001048791", json.dumps(ok)),
        ("0001062417", json.dumps(book(url("gone.jpg"), "Lost Cover", ["Who wrote this book?"], ["Nobody"]))),
        ("0001381245", json.dumps(book(url("51Z8tIv%2BpSL.jpg"), "Two Questions", ["Q1?", "Q2?"], ["only one"]))),
        ("0001713353", '{"imageURL": "http://x", "questions": ["Q?" "R?"], "answers": ["A", "B"]}'),  # a lost comma
        ("000171337X", json.dumps(book(url("other.jpg"), "Second Book", ["What is the genre of this book?"],
                                       ["Humor & Entertainment"], genre="Humor & Entertainment"))),
    ]
    return write_dataset(tmp_path / "dataset.json", members)


@in_private_network
def test_ocr_vqa_entries_become_question_answer_conversations_with_their_cover_downloaded(tmp_path, lake):
    with ImageServer({"51Z8tIv%2BpSL.jpg": jpeg(1), "other.jpg": jpeg(2)}) as srv:
        path = dataset(tmp_path, srv.url)
        assert detect_format(str(path)) == "ocr-vqa"
        proc = run_cli("ingest", str(path), "--source", "ocr_vqa", "--retries", "0", "--no-progress", lake=lake)
        assert srv.count("/51Z8tIv%2BpSL.jpg") == 1, proc.stdout + proc.stderr  # the malformed entry fetches nothing
    first, second = samples_of(lake, "ocr_vqa")
    assert (first["orig_id"], first["source_row"], second["orig_id"], second["source_row"]) == \
        ("0001048791", 0, "000171337X", 4)
    assert first["conversations"] == [
        {"from": "human", "value": "<image>\nWho wrote this book?"}, {"from": "gpt", "value": "Gerald A. Durkee"},
        {"from": "human", "value": "What is the title of this book?"}, {"from": "gpt", "value": "Texas Fishing Guide"},
        {"from": "human", "value": "Is this a travel book?"}, {"from": "gpt", "value": "Yes"}]
    assert first["image_paths"] == [srv.url("51Z8tIv%2BpSL.jpg")]
    assert json.loads(first["meta"]) == {"title": "Texas Fishing Guide", "authorName": "Gerald A. Durkee",
                                         "genre": "Travel", "split": 1}
    errors = errors_of(lake, "ocr_vqa")
    assert [(e["row"], e["kind"]) for e in errors] == [(1, "http_404"), (2, "malformed_record"), (3, "bad_json_record")]
    assert errors[1]["orig_id"] is None and "0001381245" in errors[1]["message"]
    assert json.loads(errors[1]["raw"])["0001381245"]["answers"] == ["only one"]  # the entry as written
    assert errors[0]["orig_id"] == "0001062417" and "0001062417" in errors[0]["raw"]


def test_reading_from_a_row_gives_the_same_entries_as_reading_from_the_start(tmp_path):
    path = dataset(tmp_path, lambda name: f"http://127.0.0.1:9/{name}")
    reader = OcrVqaReader()
    whole = [(row, describe(item)) for row, item in reader.rows(str(path), 0)]
    assert [row for row, _ in whole] == [0, 1, 2, 3, 4]
    assert [kind for _, kind in whole] == ["0001048791", "0001062417", "malformed_record", "bad_json_record",
                                           "000171337X"]
    assert [(row, describe(item)) for row, item in reader.rows(str(path), 3)] == whole[3:]


def test_a_cut_dataset_json_keeps_every_whole_entry_and_records_the_cut(tmp_path):
    path = dataset(tmp_path, lambda name: f"http://127.0.0.1:9/{name}")
    text = path.read_text()
    path.write_text(text[: text.index('"000171337X"') + 40])
    rows = [(row, describe(item)) for row, item in OcrVqaReader().rows(str(path), 0)]
    assert rows[:2] == [(0, "0001048791"), (1, "0001062417")] and rows[-1] == (4, "truncated_json")


def test_other_json_objects_are_not_taken_for_ocr_vqa(tmp_path):
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"annotations": [{"image": "a.jpg", "conversations": []}]}))
    keyed = tmp_path / "keyed.json"
    keyed.write_text(json.dumps({"1": {"image": "a.jpg", "caption": "no url"}}))
    assert detect_format(str(wrapped)) != "ocr-vqa" and detect_format(str(keyed)) != "ocr-vqa"


def describe(item) -> str:
    return item.kind if isinstance(item, BadStretch) else item.record["id"]
