"""sql/checks.sql: every crafted record gets exactly its named reasons (one case per reason, plus the
two bugs of the reference check script: a bad role at an odd position passing, and `<image>` tags
added to text-only records)."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import pyarrow as pa
import pytest
from PIL import Image

from etl import schema as S
from etl.checks import checks_relation, problem_summary
from etl.errors import ErrorRow, errors_table
from etl.images import content_id
from etl.ingest import IngestOptions, ingest
from etl.lake import Lake
from etl.sqlrun import connect

from conftest import run_cli


@dataclass
class Case:
    name: str
    turns: list  # [(from, value)] or a raw list for odd shapes
    images: list[str] = field(default_factory=list)  # file names under the image root
    problems: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)


def qa(question: str, answer: str = "A short answer.") -> list:
    return [("human", question), ("gpt", answer)]


CASES = [
    Case("clean_single_image", qa("<image>\nWhat is shown?"), ["red.png"]),
    Case("clean_tag_last", qa("What is shown?\n<image>"), ["red.png"]),
    Case("clean_text_only", qa("What is a data lake?")),
    Case("clean_interleaved_two_images", qa("Image 1: <image>\nImage 2: <image>\nSame colour?"), ["red.png", "blue.jpg"]),
    Case("clean_four_turns", qa("<image>\nColour?", "Red.") + qa("Shape?", "Square."), ["red.png"]),
    # one case per blocking reason
    Case("no_turns", [], problems=["no_turns"]),
    Case("odd_turn_count", qa("Hi?") + [("human", "Anyone?")], problems=["odd_turn_count"]),
    Case("starts_with_gpt", [("gpt", "Hello."), ("human", "Hi?")], problems=["roles_not_alternating"]),
    Case("unknown_role_name", [("user", "Hi?"), ("assistant", "Hello.")], problems=["roles_not_alternating"]),
    Case("empty_turn", [("human", "<image>\nWhat?"), ("gpt", "")], ["red.png"], problems=["empty_turn"]),
    Case("whitespace_only_turn", [("human", "<image>\nWhat?"), ("gpt", " \n\t ")], ["red.png"], problems=["empty_turn"]),
    Case("too_many_tags", qa("<image>\n<image>\nWhat?"), ["red.png"], problems=["more_image_tags_than_images"]),
    Case("fewer_tags_than_images", qa("Image 1: <image>\nWhat?"), ["red.png", "blue.jpg"],
         problems=["fewer_image_tags_than_images"]),
    # the reference script's bugs
    Case("bad_role_at_odd_position", qa("<image>\nColour?", "Red.") + [("gpt", "Shape?"), ("gpt", "Square.")],
         ["red.png"], problems=["roles_not_alternating"]),
    Case("image_tag_in_text_only_record", qa("<image>\nWhat is a data lake?"), problems=["more_image_tags_than_images"]),
    # fixable: normalised at export, never blocking
    Case("image_tag_missing", qa("What colour is this?"), ["red.png"], fixes=["image_tag_missing"]),
    Case("surrounding_whitespace", qa("  <image>\nWhat?", "Red.\n"), ["red.png"], fixes=["surrounding_whitespace"]),
    Case("several_reasons", [("human", "<image>\n<image>"), ("human", "")], ["red.png"],
         problems=["roles_not_alternating", "empty_turn", "more_image_tags_than_images"]),
]


def png_bytes(colour: str, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> dict:
    """A lake holding every case (ingested from a LLaVA JSON) + a dangling and an undecodable image."""
    root = tmp_path_factory.mktemp("checks")
    images = root / "images"
    images.mkdir()
    (images / "red.png").write_bytes(png_bytes("red", "PNG"))
    (images / "blue.jpg").write_bytes(png_bytes("blue", "JPEG"))
    noisy = io.BytesIO()
    Image.effect_noise((128, 96), 60).convert("RGB").save(noisy, "JPEG")  # header intact, scan data cut
    truncated = noisy.getvalue()[: len(noisy.getvalue()) // 2]
    (images / "truncated.jpg").write_bytes(truncated)
    records = [{"id": c.name, **({"image": c.images[0] if len(c.images) == 1 else c.images} if c.images else {}),
                "conversations": [{"from": f, "value": v} for f, v in c.turns]} for c in CASES]
    records.append({"id": "undecodable_image", "image": "truncated.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Green."}]})
    (root / "cases.json").write_text(json.dumps(records))
    lake = Lake.open(str(root / "lake"))
    ingest(lake, [str(root / "cases.json")], IngestOptions(source="cases", image_roots=[str(images)], progress=False))
    # what `enrich phash` records for bytes it cannot decode: NULL phash + an errors row keyed by image_id
    lake.append(S.ERRORS, errors_table([ErrorRow("phash", content_id(truncated), "decode_error", "image file is truncated",
                                                 raw=content_id(truncated))]))
    # a sample whose image row is gone (e.g. a lake assembled from two versions)
    lake.append(S.SAMPLES, pa.Table.from_pylist([{
        "sample_id": "cases/dangling#0", "source": "cases", "orig_id": "missing_image", "image_ids": ["0" * 64],
        "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "?"}]}],
        schema=S.SAMPLES_SCHEMA))
    con = connect(lake)
    rows = checks_relation(con, only_problems=False).fetchall()
    columns = ["sample_id", "source", "n_images", "n_image_tags", "text_chars", "problems", "fixes"]
    by_id = {s["orig_id"]: s["sample_id"] for s in lake.dataset(S.SAMPLES).to_table(columns=["orig_id", "sample_id"]).to_pylist()}
    results = {dict(zip(columns, r))["sample_id"]: dict(zip(columns, r)) for r in rows}
    return {"lake": lake, "by_name": {name: results[sid] for name, sid in by_id.items()}}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_crafted_record_gets_exactly_its_named_reasons(checked, case):
    row = checked["by_name"][case.name]
    assert sorted(row["problems"]) == sorted(case.problems)
    assert sorted(row["fixes"]) == sorted(case.fixes)


def test_image_id_without_image_row_is_missing_image(checked):
    assert checked["by_name"]["missing_image"]["problems"] == ["missing_image"]


def test_image_whose_phash_failed_is_undecodable_but_an_unhashed_image_is_not_suspected(checked):
    assert checked["by_name"]["undecodable_image"]["problems"] == ["undecodable_image"]
    assert checked["by_name"]["clean_single_image"]["problems"] == []  # no phash computed, no error row


def test_text_longer_than_the_parameter_is_text_too_long(checked):
    con = connect(checked["lake"])
    rows = checks_relation(con, max_text_chars=40, only_problems=False).filter("list_contains(problems, 'text_too_long')")
    long_ids = {r[0] for r in rows.fetchall()}
    lengths = dict(con.execute("select sample_id, list_sum(list_transform(conversations, lambda t: length(t.value))) "
                               "from samples").fetchall())
    assert long_ids == {sid for sid, n in lengths.items() if n and n > 40}
    assert long_ids  # the threshold does cut some cases


def test_summary_counts_samples_passing_and_each_reason(checked):
    rows = problem_summary(connect(checked["lake"])).fetchall()
    summary = {(kind, reason): n for _, kind, reason, n in rows}
    assert summary[("total", "samples")] == len(CASES) + 2
    assert summary[("total", "passing")] == sum(not c.problems for c in CASES)
    assert summary[("problem", "roles_not_alternating")] == 4
    assert summary[("fix", "image_tag_missing")] == 1


def test_checks_command_lists_problem_samples_as_csv(checked):
    out = run_cli("checks", "--list", "--format", "csv", lake=checked["lake"]).stdout
    assert "bad_role_at_odd_position" not in out  # orig ids are not listed, sample ids are
    assert out.count("roles_not_alternating") == 4
    assert "missing_image" in out and "undecodable_image" in out
