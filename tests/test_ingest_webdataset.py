"""WebDataset ingest: tar/tgz shards streamed, members grouped by key, captions become samples."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

from PIL import Image

from etl import schema as S
from etl.images import content_id
from etl.ingest import IngestOptions, ingest
from etl.lake import Lake
from etl.sources import detect_format
from etl.sources.webdataset import WebDatasetReader

from conftest import REALDATA, errors_of, needs_realdata, samples_of

WDS = REALDATA / "webdataset" / "testdata"
CLIP_TARS = REALDATA / "clip_retrieval/tests/test_clip_inference/test_tars"
RESIZE_IMAGES = REALDATA / "img2dataset/tests/resize_test_image"



def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16 + seed, 16), (seed * 40 % 256, 90, 200)).save(buf, "PNG")
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path




def test_captioned_shard_becomes_caption_samples_with_the_configured_prompt(tmp_path):
    shard = write_tar(tmp_path / "shard-000.tar", [
        ("batch1/000.jpg", png(1)), ("batch1/000.txt", b"a red square\n"),
        ("batch1/001.png", png(2)), ("batch1/001.json", json.dumps({"caption": "from json", "url": "u"}).encode()),
        ("batch1/002.webp", png(3)), ("batch1/002.txt.gz", gzip.compress("gzipped caption ü".encode())),
        ("batch1/._002.webp", b"macOS resource fork"),
        ("003.jpg", png(4)), ("003.cls", b"7"),
    ])
    assert detect_format(str(shard)) == "webdataset"
    lake = Lake.open(str(tmp_path / "lake"))

    counts = ingest(lake, [str(shard)], IngestOptions(source="wds", progress=False,
                                                      reader_options={"prompt": "<image>\\nDescribe the image."}))

    samples = samples_of(lake, "wds")
    assert [(s["orig_id"], s["conversations"][1]["value"]) for s in samples] == [
        ("batch1/000", "a red square"), ("batch1/001", "from json"), ("batch1/002", "gzipped caption ü")]
    assert samples[0]["conversations"][0] == {"from": "human", "value": "<image>\nDescribe the image."}
    assert [s["image_ids"] for s in samples] == [[content_id(png(1))], [content_id(png(2))], [content_id(png(3))]]
    assert json.loads(samples[1]["meta"])["json"]["url"] == "u"
    assert counts["images_added"] == 4  # key 003 has no caption: its image is stored, no sample made


def test_member_names_are_never_used_as_paths(tmp_path):
    shard = write_tar(tmp_path / "evil.tar", [("../../outside/pwn.jpg", png(5)), ("../../outside/pwn.txt", b"caption"),
                                              ("/abs/key.png", png(6)), ("/abs/key.txt", b"abs")])
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(shard)], IngestOptions(source="evil", progress=False))

    assert [s["orig_id"] for s in samples_of(lake, "evil")] == ["../../outside/pwn", "/abs/key"]
    assert not (tmp_path.parent / "outside").exists() and not Path("/abs").exists()


def test_truncated_shard_keeps_the_groups_before_the_cut_and_records_one_error(tmp_path):
    members = [(f"{k:03d}.{ext}", png(k) if ext == "png" else f"caption {k}".encode()) for k in range(6)
               for ext in ("png", "txt")]
    whole = write_tar(tmp_path / "whole.tar", members)
    cut_at = tarfile.open(whole).getmember("003.png").offset_data + 10  # inside group 3's image
    (tmp_path / "cut.tar").write_bytes(whole.read_bytes()[:cut_at])
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(tmp_path / "cut.tar")], IngestOptions(source="cut", progress=False))

    samples, errors = samples_of(lake, "cut"), errors_of(lake, "cut")
    assert [s["source_row"] for s in samples] == [0, 1, 2]
    assert [(e["row"], e["kind"]) for e in errors] == [(3, "corrupt_shard")]


def test_start_row_resumes_at_the_right_group(tmp_path):
    shard = write_tar(tmp_path / "s.tar.gz", [(f"{k}.{e}", png(k) if e == "png" else b"c") for k in range(5)
                                              for e in ("png", "txt")], mode="w:gz")
    records = list(WebDatasetReader().read_file(str(shard), "s.tar.gz", start_row=3))
    assert [(r.source_row, r.orig_id) for r in records] == [(3, "3"), (4, "4")]
    assert records[0].images[0].data == png(3)


def test_sample_tgz_ingests_its_90_mnist_images_and_no_samples(tmp_path):
    needs_realdata(WDS / "sample.tgz")
    lake = Lake.open(str(tmp_path / "lake"))

    counts = ingest(lake, [str(WDS / "sample.tgz")], IngestOptions(source="mnist", progress=False))

    assert counts["images_added"] == 90 and counts["samples_added"] == 0 and errors_of(lake, "mnist") == []
    sizes = lake.dataset(S.IMAGES).to_table(columns=["format", "width", "height"]).to_pylist()
    assert {(r["format"], r["width"], r["height"]) for r in sizes} == {("PNG", 28, 28)}


def test_compressed_tar_gunzips_members_under_a_directory_prefix(tmp_path):
    needs_realdata(WDS / "compressed.tar")
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(WDS / "compressed.tar")], IngestOptions(source="gz", progress=False))

    samples = samples_of(lake, "gz")
    assert [(s["orig_id"], s["conversations"]) for s in samples] == [
        (f"compressed/000{i}", [{"from": "gpt", "value": text}]) for i, text in ((1, "hello"), (2, "world"), (3, "gzip"))]
    assert all(s["image_ids"] == [] for s in samples)


def test_clip_retrieval_image_only_shards_store_cross_shard_duplicates_once(tmp_path):
    needs_realdata(CLIP_TARS)
    lake = Lake.open(str(tmp_path / "lake"))

    counts = ingest(lake, [str(CLIP_TARS)], IngestOptions(source="clip", progress=False))

    assert counts["files"] == 4 and counts["samples_added"] == 0
    assert counts["images_added"] == 7 and counts["images_already_in_lake"] == 4  # image3/4 repeat image1
    stored = lake.dataset(S.IMAGES).to_table(columns=["image_id", "width", "height"]).to_pylist()
    if RESIZE_IMAGES.exists():  # the same 7 JPEGs ship, byte-identical, with img2dataset
        assert {r["image_id"] for r in stored} == {content_id(p.read_bytes()) for p in RESIZE_IMAGES.glob("*.jpg")}
    keys = {m.split(".")[0] for t in CLIP_TARS.glob("*.tar") for m in tarfile.open(t).getnames()}
    assert {f"{r['width']}_{r['height']}" for r in stored} == keys  # keys are W_H upstream


def test_cli_prompt_flag_reaches_the_webdataset_reader(tmp_path):
    from conftest import run_cli

    shard = write_tar(tmp_path / "s.tgz", [("k1.jpg", png(1)), ("k1.txt", b"one")], mode="w:gz")
    lake = Lake.open(str(tmp_path / "lake"))

    run_cli("ingest", str(shard), "--source", "cli", "--prompt", "<image>\\nDescribe the image.", "--no-progress",
            lake=lake)

    [sample] = samples_of(lake, "cli")
    assert sample["conversations"] == [{"from": "human", "value": "<image>\nDescribe the image."},
                                       {"from": "gpt", "value": "one"}]


def test_a_json_member_holding_a_llava_record_gives_its_turns_id_and_keys(tmp_path):
    record = {"id": "0007", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                              {"from": "gpt", "value": "A square."}], "source": "web"}
    shard = write_tar(tmp_path / "llava.tar", [("k1.jpg", png(3)), ("k1.json", json.dumps(record).encode()),
                                               ("k1.txt", b"a caption too")])
    lake = Lake.open(str(tmp_path / "lake"))
    ingest(lake, [str(shard)], IngestOptions(source="wds", format="webdataset", progress=False))
    (sample,) = lake.dataset(S.SAMPLES).to_table(columns=["orig_id", "conversations", "meta", "image_ids"]).to_pylist()
    assert sample["orig_id"] == "0007" and sample["conversations"] == record["conversations"]
    assert json.loads(sample["meta"]) == {"source": "web", "txt": "a caption too"} and len(sample["image_ids"]) == 1
