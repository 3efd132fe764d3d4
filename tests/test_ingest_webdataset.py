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
    assert [(s["orig_id"], s["conversations"][1]["value"]) for s in samples[:3]] == [
        ("batch1/000", "a red square"), ("batch1/001", "from json"), ("batch1/002", "gzipped caption ü")]
    assert samples[0]["conversations"][0] == {"from": "human", "value": "<image>\nDescribe the image."}
    assert [s["image_ids"] for s in samples] == [[content_id(png(k))] for k in (1, 2, 3, 4)]
    assert json.loads(samples[1]["meta"])["json"]["url"] == "u"
    # key 003 has a label but no caption: a sample with no turns that keeps the label
    assert samples[3]["orig_id"] == "003" and samples[3]["conversations"] == [] and json.loads(samples[3]["meta"]) == {"cls": "7"}
    assert counts["images_added"] == 4


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


def test_sample_tgz_ingests_its_90_mnist_images_as_samples_keeping_their_labels(tmp_path):
    needs_realdata(WDS / "sample.tgz")
    lake = Lake.open(str(tmp_path / "lake"))

    counts = ingest(lake, [str(WDS / "sample.tgz")], IngestOptions(source="mnist", progress=False))

    assert counts["images_added"] == 90 and counts["samples_added"] == 90 and errors_of(lake, "mnist") == []
    with tarfile.open(WDS / "sample.tgz") as tar:
        labels = {m.name[: -len(".cls")]: tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".cls")}
    samples = samples_of(lake, "mnist")
    assert {s["orig_id"]: json.loads(s["meta"])["cls"] for s in samples} == labels
    assert all(s["conversations"] == [] and len(s["image_ids"]) == 1 for s in samples)
    sizes = lake.dataset(S.IMAGES).to_table(columns=["format", "width", "height"]).to_pylist()
    assert {(r["format"], r["width"], r["height"]) for r in sizes} == {("PNG", 28, 28)}


def test_compressed_tar_gunzips_members_under_a_directory_prefix(tmp_path):
    """Its members are captions without images: each is an orphan_caption error keeping the gunzipped text."""
    needs_realdata(WDS / "compressed.tar")
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(WDS / "compressed.tar")], IngestOptions(source="gz", progress=False))

    assert samples_of(lake, "gz") == []
    errors = errors_of(lake, "gz")
    assert [(e["orig_id"], e["kind"], json.loads(e["raw"])["caption"]) for e in errors] == [
        (f"compressed/000{i}", "orphan_caption", text) for i, text in ((1, "hello"), (2, "world"), (3, "gzip"))]


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


def link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def write_tar_with_links(path: Path, entries: list, mode: str = "w") -> Path:
    """`entries`: (name, bytes) file members or TarInfo link members, in shard order."""
    with tarfile.open(path, mode) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
    return path


def test_gnu_tar_hard_links_give_the_linked_members_bytes(tmp_path):
    """GNU tar stores a second name of a hard-linked file as a link member with no data."""
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "000.jpg").write_bytes(png(1))
    (folder / "000.txt").write_text("first")
    (folder / "001.jpg").hardlink_to(folder / "000.jpg")
    (folder / "001.txt").write_text("second, same picture")
    for mode, suffix in (("w", "tar"), ("w:gz", "tgz")):
        shard = tmp_path / f"hard.{suffix}"
        with tarfile.open(shard, mode) as tar:
            for name in ("000.jpg", "000.txt", "001.jpg", "001.txt"):
                tar.add(folder / name, arcname=name)
        assert tarfile.open(shard).getmember("001.jpg").islnk()
        lake = Lake.open(str(tmp_path / f"lake-{suffix}"))

        ingest(lake, [str(shard)], IngestOptions(source="hard", progress=False))

        samples = samples_of(lake, "hard")
        assert [(s["orig_id"], s["image_ids"]) for s in samples] == [("000", [content_id(png(1))]), ("001", [content_id(png(1))])]
        assert errors_of(lake, "hard") == []


def test_symlink_members_resolve_inside_the_shard_and_never_on_disk(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(png(9))
    shard = write_tar_with_links(tmp_path / "sym.tar", [
        ("imgs/a.png", png(1)), ("imgs/a.txt", b"the file itself"),
        link("b.png", tarfile.SYMTYPE, "imgs/a.png"), ("b.txt", b"symlink to an earlier member"),
        link("imgs/c.png", tarfile.SYMTYPE, "../later.png"), ("imgs/c.txt", b"symlink to a later member"),
        link("d.png", tarfile.SYMTYPE, str(outside)), ("d.txt", b"absolute: outside the shard"),
        link("e.png", tarfile.SYMTYPE, "../secret.png"), ("e.txt", b"climbs out of the shard"),
        link("f.png", tarfile.SYMTYPE, "nowhere.png"), ("f.txt", b"no such member"),
        link("g.png", tarfile.SYMTYPE, "h.png"), ("g.txt", b"a loop"), link("h.png", tarfile.SYMTYPE, "g.png"),
        ("later.png", png(2)), ("later.txt", b"the later member"),
    ])
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(shard)], IngestOptions(source="sym", progress=False))

    samples = {s["orig_id"]: s["image_ids"] for s in samples_of(lake, "sym")}
    assert samples == {"imgs/a": [content_id(png(1))], "b": [content_id(png(1))], "imgs/c": [content_id(png(2))],
                       "later": [content_id(png(2))]}
    errors = {e["orig_id"]: e["kind"] for e in errors_of(lake, "sym")}
    assert errors == dict.fromkeys("defgh", "unresolved_link")
    assert content_id(png(9)) not in set(lake.dataset(S.IMAGES).to_table(columns=["image_id"]).column(0).to_pylist())


def test_an_orphan_caption_is_an_error_that_keeps_the_caption(tmp_path):
    shard = write_tar(tmp_path / "o.tar", [("0.jpg", png(1)), ("0.txt", b"kept"), ("1.txt", b"its image got lost"),
                                            ("1.json", b'{"url": "http://x/1.jpg"}')])
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(shard)], IngestOptions(source="o", progress=False))

    assert [s["orig_id"] for s in samples_of(lake, "o")] == ["0"]
    (error,) = errors_of(lake, "o")
    assert error["kind"] == "orphan_caption" and error["orig_id"] == "1"
    assert json.loads(error["raw"]) == {"key": "1", "members": ["1.txt", "1.json"], "caption": "its image got lost",
                                        "json": {"url": "http://x/1.jpg"}}


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
