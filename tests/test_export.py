"""Export: the realdata lake (LLaVA, multi-image VILA, text-only FastChat, messages) → LLaVA JSON /
messages + images + LLaVA-NeXT yaml + manifest, re-ingested to the same samples; byte-identical reruns;
the GIF-under-.jpg trap; fixes normalised; hardlink/symlink from the image cache; --force; --version."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from PIL import Image

from etl import schema as S
from etl.export import ExportError, ExportOptions, export
from etl.ingest import IngestOptions, ingest
from etl.lake import Lake
from etl.sqlrun import connect

from conftest import run_cli

PRETRAIN = "llava_pretrain_pr1902/playground/data/LLaVA-Pretrain"
ALL_SOURCES = ("lcs", "vila", "fastchat", "mllm_demo")


def import_reader(module: str) -> None:
    """Readers written by another helper: skip the part that needs one when it is not there yet."""
    try:
        __import__(f"etl.sources.{module}")
    except ImportError as exc:
        pytest.skip(f"etl/sources/{module}.py not importable yet: {exc}")


@pytest.fixture(scope="module")
def real_lake(realdata, tmp_path_factory) -> Lake:
    import_reader("vila")
    import_reader("messages")
    lake = Lake.open(str(tmp_path_factory.mktemp("real") / "lake"))
    for paths, opts in (
        ([f"{PRETRAIN}/blip_laion_cc_sbu_2k.subset200.json"], IngestOptions(source="lcs", image_roots=[str(realdata / PRETRAIN / "images")])),
        (["vila_inference_test/inference_test/inference_test.json"], IngestOptions(source="vila", format="vila")),
        (["fastchat/data/dummy_conversation.json"], IngestOptions(source="fastchat")),
        (["llamafactory/mllm_demo/mllm_demo.json"], IngestOptions(source="mllm_demo", format="messages")),
    ):
        opts.progress = False
        ingest(lake, [str(realdata / p) for p in paths], opts)
    return lake


def write_recipe(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def all_recipe(tmp_path: Path, name: str = "realdata") -> str:
    return write_recipe(tmp_path / f"{name}.yaml", f"name: {name}\nseed: 1\nsources: [{', '.join(ALL_SOURCES)}]\n")


def lake_samples(lake: Lake, where: str | None = None) -> list[tuple]:
    """Samples as comparable tuples: (id, [(from, stripped value)], image content ids); the id as
    export writes it: orig_id, or sample_id where orig_id is missing or shared by several samples."""
    rows = lake.dataset(S.SAMPLES).to_table(columns=["sample_id", "orig_id", "conversations", "image_ids"],
                                            filter=where).to_pylist()
    shared = {i for i, n in Counter(r["orig_id"] or r["sample_id"] for r in rows).items() if n > 1}
    return sorted((r["sample_id"] if (r["orig_id"] or r["sample_id"]) in shared else r["orig_id"] or r["sample_id"], tuple((t["from"], t["value"].strip()) for t in r["conversations"]),
                   tuple(r["image_ids"])) for r in rows)


def reingest(out: Path, tmp_path: Path, fmt: str = "llava") -> Lake:
    lake = Lake.open(str(tmp_path / "again"))
    files = sorted(p for p in out.glob("*.json") if p.name not in ("manifest.json", "dataset_info.json"))
    ingest(lake, [str(p) for p in files], IngestOptions(source="again", format=fmt, image_roots=[str(out / "images")],
                                                        progress=False))
    return lake


def llava_next_datasets(yaml_path: Path) -> list[dict]:
    """What LLaVA-NeXT's LazySupervisedDataset does with a data yaml: open each json_path, apply
    `sampling_strategy` (`all`, or first|end|random `:` N or integer P%, count = ceil(P·len/100))."""
    loaded = []
    for entry in yaml.safe_load(yaml_path.read_text())["datasets"]:
        records = json.load(open(entry["json_path"]))
        strategy = entry.get("sampling_strategy", "all")
        if strategy != "all":
            kind, number = strategy.split(":")
            assert kind in ("first", "end", "random")
            n = math.ceil(int(number[:-1]) * len(records) / 100) if number.endswith("%") else int(number)
            records = records[:n] if kind != "end" else records[-n:]
        loaded.extend(records)
    return loaded


# -- round trips -----------------------------------------------------------------------------------
def test_llava_export_reingests_to_the_same_samples_and_images(real_lake, tmp_path):
    out = tmp_path / "out"
    export(real_lake, all_recipe(tmp_path), ExportOptions(out=str(out)))
    again = reingest(out, tmp_path)
    assert lake_samples(again) == lake_samples(real_lake)
    assert again.count(S.ERRORS) == 0  # every exported image path resolved under images/


def test_messages_export_reingests_to_the_same_samples(real_lake, tmp_path):
    out = tmp_path / "out"
    export(real_lake, all_recipe(tmp_path), ExportOptions(out=str(out), format="messages", split_by_source=True))
    info = json.loads((out / "dataset_info.json").read_text())
    assert sorted(info) == sorted(ALL_SOURCES)
    assert all(v["formatting"] == "sharegpt" and (out / v["file_name"]).is_file() for v in info.values())
    again = reingest(out, tmp_path, fmt="messages")
    assert lake_samples(again) == lake_samples(real_lake)


def test_llava_json_shape_image_string_list_or_absent_and_string_ids(real_lake, tmp_path):
    out = tmp_path / "out"
    export(real_lake, all_recipe(tmp_path), ExportOptions(out=str(out), split_by_source=True))
    records = {s: json.loads((out / f"{s}.json").read_text()) for s in ALL_SOURCES}
    assert all("image" not in r for r in records["fastchat"]) and len(records["fastchat"]) == 500
    assert all(isinstance(r["image"], str) for r in records["lcs"])
    assert any(isinstance(r["image"], list) and len(r["image"]) == 8 for r in records["vila"])
    every = [r for rs in records.values() for r in rs]
    assert all(isinstance(r["id"], str) and list(r)[-1] == "conversations" for r in every)
    assert all(set(t) == {"from", "value"} for r in every for t in r["conversations"])
    assert "null" not in (out / "fastchat.json").read_text()


def test_yaml_follows_llava_next_parsing_and_images_open_under_the_image_folder(real_lake, tmp_path):
    out = tmp_path / "out"
    export(real_lake, all_recipe(tmp_path), ExportOptions(out=str(out), split_by_source=True))
    text = (out / "data.yaml").read_text()
    folder = re.search(r"--image_folder (\S+)", text).group(1)
    records = llava_next_datasets(out / "data.yaml")
    assert len(records) == real_lake.count(S.SAMPLES)
    for record in records:
        for rel in [record["image"]] if isinstance(record.get("image"), str) else record.get("image", []):
            path = Path(os.path.join(folder, rel)).resolve()
            assert path.is_relative_to(out.resolve())
            with Image.open(path) as im:
                assert im.format and Path(rel).suffix == {"JPEG": ".jpg", "PNG": ".png"}[im.format]


# -- reproducibility and the manifest --------------------------------------------------------------
def tree_hashes(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*")) if p.is_file()}


def test_same_recipe_same_version_gives_byte_identical_files(real_lake, tmp_path):
    recipe = write_recipe(tmp_path / "mix.yaml", "name: mix\nseed: 5\nsources:\n  - {source: lcs, sampling: 'random:25%'}\n"
                                                 "  - {source: fastchat, sampling: 'end:7', repeat: 3}\n  - vila\n")
    out = tmp_path / "out"
    export(real_lake, recipe, ExportOptions(out=str(out)))
    first = tree_hashes(out)
    real_lake.append(S.SAMPLES, pa.Table.from_pylist([{  # the lake moves on after the first export
        "sample_id": "fastchat/late#0", "source": "fastchat", "source_file": "late", "source_row": 0, "orig_id": "late",
        "image_ids": [], "conversations": [{"from": "human", "value": "Late?"}, {"from": "gpt", "value": "Yes."}]}],
        schema=S.SAMPLES_SCHEMA))
    pinned = json.loads((out / "manifest.json").read_text())["lake"]["versions"]
    version = ",".join(f"{t}={v}" for t, v in pinned.items())
    result = export(real_lake, recipe, ExportOptions(out=str(out), force=True, version=version))
    assert tree_hashes(out) == first
    assert result.manifest["counts"]["per_source"] == {"lcs": 50, "fastchat": 21, "vila": 14}
    unpinned = export(real_lake, recipe, ExportOptions(out=str(tmp_path / "now")))
    assert unpinned.manifest["counts"]["sources"]["fastchat"]["considered"] == 501


def test_manifest_records_versions_recipe_hash_counts_by_reason_and_every_file_hash(real_lake, tmp_path):
    recipe = write_recipe(tmp_path / "m.yaml", "name: m\nsources:\n  - {source: vila, where: 'n_images > 1'}\n"
                                               "  - {source: lcs, sampling: 'first:10'}\n")
    out = tmp_path / "out"
    manifest = export(real_lake, recipe, ExportOptions(out=str(out))).manifest
    assert manifest["recipe"]["sha256"] == hashlib.sha256(Path(recipe).read_bytes()).hexdigest()
    assert manifest["lake"]["versions"][S.SAMPLES] == real_lake.dataset(S.SAMPLES).version
    assert manifest["counts"]["removed"] == {"vila": {"where": 10}, "lcs": {"sampling": 190}}
    assert manifest["counts"]["per_source"] == {"vila": 4, "lcs": 10}
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"]
    for line in (out / "images.sha256").read_text().splitlines():
        digest, rel = line.split("  ")
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    multi_image_vila = connect(real_lake).execute(
        "select count(distinct i) from (select unnest(image_ids) as i from samples "
        "where source = 'vila' and len(image_ids) > 1)").fetchone()[0]
    assert manifest["counts"]["images"]["written"] == len((out / "images.sha256").read_text().splitlines()) \
        == 10 + multi_image_vila


# -- the fixes, the GIF trap, image modes ----------------------------------------------------------
@pytest.fixture
def crafted_lake(tmp_path) -> Lake:
    """A small source with GIF bytes under a .jpg name, a missing <image> tag, stray whitespace and text-only."""
    images = tmp_path / "src" / "ocr"
    images.mkdir(parents=True)
    Image.new("P", (40, 30), 3).save(images / "cover.jpg", "GIF")  # OCR-VQA: GIF bytes, .jpg name
    Image.new("RGB", (40, 30), "red").save(images / "red.jpg", "JPEG")
    records = [
        {"id": 1, "image": "ocr/cover.jpg", "conversations": [{"from": "human", "value": "<image>\nTitle?"},
                                                              {"from": "gpt", "value": "  A Book.  "}]},
        {"id": "no_tag", "image": "ocr/red.jpg", "conversations": [{"from": "human", "value": "What colour?"},
                                                                   {"from": "gpt", "value": "Red."}]},
        {"id": "text", "conversations": [{"from": "human", "value": "Hello?"}, {"from": "gpt", "value": "Hi."}]},
    ]
    (tmp_path / "src" / "ocr.json").write_text(json.dumps(records))
    lake = Lake.open(str(tmp_path / "lake"))
    ingest(lake, [str(tmp_path / "src" / "ocr.json")], IngestOptions(source="ocr", image_roots=[str(tmp_path / "src")],
                                                                     progress=False))
    return lake


def test_gif_bytes_named_jpg_are_written_as_gif_with_the_same_bytes(crafted_lake, tmp_path):
    out = tmp_path / "out"
    export(crafted_lake, write_recipe(tmp_path / "r.yaml", "name: ocr\nsources: [ocr]\n"), ExportOptions(out=str(out)))
    record = next(r for r in json.loads((out / "ocr.json").read_text()) if r["id"] == "1")
    assert record["image"].endswith(".gif")
    data = (out / "images" / record["image"]).read_bytes()
    assert data[:6] in (b"GIF87a", b"GIF89a")
    assert data == (tmp_path / "src" / "ocr" / "cover.jpg").read_bytes()


def test_fixable_problems_are_normalised_and_text_only_records_get_no_image_tag(crafted_lake, tmp_path):
    out = tmp_path / "out"
    manifest = export(crafted_lake, write_recipe(tmp_path / "r.yaml", "name: ocr\nsources: [ocr]\n"),
                      ExportOptions(out=str(out), images="none")).manifest
    records = {r["id"]: r for r in json.loads((out / "ocr.json").read_text())}
    assert set(records) == {"1", "no_tag", "text"}  # the integer id became a string
    assert records["1"]["conversations"][1]["value"] == "A Book."
    assert records["no_tag"]["conversations"][0]["value"] == "<image>\nWhat colour?"
    assert records["text"]["conversations"][0]["value"] == "Hello?" and "image" not in records["text"]
    assert manifest["counts"]["fixes_applied"] == {"ocr": {"image_tag_missing": 1, "surrounding_whitespace": 1}}
    assert not (out / "images").exists()


@pytest.mark.parametrize("mode", ["hardlink", "symlink"])
def test_linked_images_point_into_the_shared_content_addressed_cache(crafted_lake, tmp_path, mode):
    recipe = write_recipe(tmp_path / "r.yaml", "name: ocr\nsources: [ocr]\n")
    for out in (tmp_path / "exports" / "a", tmp_path / "exports" / "b"):
        export(crafted_lake, recipe, ExportOptions(out=str(out), images=mode))
    cache = tmp_path / "exports" / ".mmlake-image-cache"
    cached = sorted(cache.rglob("*.*"))
    assert len(cached) == 2
    for out in (tmp_path / "exports" / "a", tmp_path / "exports" / "b"):
        files = sorted(p for p in (out / "images").rglob("*") if p.is_file() or p.is_symlink())
        assert len(files) == 2
        for f in files:
            if mode == "hardlink":
                assert not f.is_symlink() and f.stat().st_nlink == 3  # cache + two exports
            else:
                assert f.is_symlink() and Path(os.readlink(f)).parent.parent == cache.resolve()
            assert hashlib.sha256(f.read_bytes()).hexdigest() == f.stem


# -- refusing to destroy things --------------------------------------------------------------------
def test_export_refuses_a_non_empty_dir_without_force_and_a_foreign_dir_even_with_force(crafted_lake, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", "name: ocr\nsources: [ocr]\n")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="--force"):
        export(crafted_lake, recipe, ExportOptions(out=str(foreign)))
    with pytest.raises(ExportError, match="refusing to delete"):
        export(crafted_lake, recipe, ExportOptions(out=str(foreign), force=True))
    assert (foreign / "notes.txt").read_text() == "mine"
    proc = run_cli("export", recipe, "--out", str(foreign), lake=crafted_lake, check=False)
    assert proc.returncode == 2 and "--force" in proc.stderr


def test_cli_export_prints_the_training_flags_and_replaces_its_own_export_with_force(crafted_lake, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", "name: ocr\nsources: [ocr]\n")
    out = tmp_path / "out"
    first = run_cli("export", recipe, "--out", str(out), lake=crafted_lake).stdout
    assert f"--image_folder {out.resolve() / 'images'}" in first
    (out / "stray.txt").write_text("left over")
    run_cli("export", recipe, "--out", str(out), "--force", "--split-by-source", lake=crafted_lake)
    assert not (out / "stray.txt").exists()
    assert yaml.safe_load((out / "data.yaml").read_text())["datasets"][0]["json_path"] == str(out.resolve() / "ocr.json")


def test_dedup_exact_over_unhashed_images_warns_and_strict_stops_before_writing(crafted_lake, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", "name: ocr\ndefaults: {dedup: exact}\nsources: [ocr]\n")
    proc = run_cli("export", recipe, "--out", str(tmp_path / "out"), lake=crafted_lake)
    assert "warning: ocr: 2 samples have an image without phash" in proc.stderr and "enrich phash" in proc.stderr
    proc = run_cli("export", recipe, "--out", str(tmp_path / "strict"), "--strict", lake=crafted_lake, check=False)
    assert proc.returncode == 2 and "--strict" in proc.stderr and not (tmp_path / "strict").exists()


def test_a_where_on_loss_before_enrich_loss_warns_that_loss_is_not_computed_and_removes_everything(crafted_lake, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", 'name: ocr\nsources: [{source: ocr, where: "loss < 3"}]\n')
    result = export(crafted_lake, recipe, ExportOptions(out=str(tmp_path / "out"), images="none"))
    assert result.manifest["counts"]["samples"] == 0
    assert any("reads `loss`, which is NULL for every sample" in w and "enrich loss" in w for w in result.warnings)
    assert any("removes all 3 samples that reach it" in w for w in result.warnings)
    assert any("ocr: 0 of 3 samples selected" in w for w in result.warnings)
    assert result.manifest["warnings"] == result.warnings
    with pytest.raises(ExportError, match="--strict: .*loss"):
        export(crafted_lake, recipe, ExportOptions(out=str(tmp_path / "strict"), images="none", strict=True))
    tags = write_recipe(tmp_path / "t.yaml", 'name: ocr\nsources: [{source: ocr, where: "not list_contains(tags, \'text\')"}]\n')
    warned = export(crafted_lake, tags, ExportOptions(out=str(tmp_path / "t"), images="none")).warnings
    assert any("reads `tags`, which no image of the source has yet" in w and "enrich tags" in w for w in warned)
    quiet = write_recipe(tmp_path / "q.yaml", 'name: ocr\nsources: [{source: ocr, where: "n_images = 1"}]\n')
    assert export(crafted_lake, quiet, ExportOptions(out=str(tmp_path / "q"), images="none")).warnings == []


def test_original_layout_keeps_written_paths_inside_dir_with_the_real_extension(crafted_lake, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", "name: ocr\nsources: [ocr]\n")
    rows = crafted_lake.dataset(S.SAMPLES).to_table(columns=["sample_id", "orig_id", "image_paths"]).to_pylist()
    assert all(len(r["image_paths"]) == (0 if r["orig_id"] == "text" else 1) for r in rows)  # ingest keeps them
    written = {"1": ["../../ocr/cover.jpg"], "no_tag": ["/abs/ocr/red.jpg"], "text": []}
    crafted_lake.fill_columns(S.SAMPLES, pa.table({  # paths as another source could have written them
        "sample_id": [r["sample_id"] for r in rows],
        "image_paths": pa.array([written[r["orig_id"]] for r in rows], pa.list_(pa.string()))}))
    out = tmp_path / "out"
    export(crafted_lake, recipe, ExportOptions(out=str(out), layout="original"))
    records = {r["id"]: r for r in json.loads((out / "ocr.json").read_text())}
    assert records["1"]["image"] == "ocr/ocr/cover.gif"
    assert records["no_tag"]["image"] == "ocr/abs/ocr/red.jpg"
    assert (out / "images" / "ocr/ocr/cover.gif").read_bytes()[:3] == b"GIF"


def test_a_recipe_naming_a_source_the_lake_lacks_fails_and_lists_the_sources(crafted_lake, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", "name: ocr\nsources: [ocr, orc_typo]\n")
    with pytest.raises(ExportError, match=r"\['orc_typo'\].*\['ocr'\]"):
        export(crafted_lake, recipe, ExportOptions(out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_version_tag_pins_every_table_to_the_tagged_state(crafted_lake, tmp_path):
    for table in crafted_lake.versions():
        crafted_lake.tag(table, "v1")
    crafted_lake.append(S.SAMPLES, pa.Table.from_pylist([{
        "sample_id": "ocr/late#0", "source": "ocr", "source_file": "late", "source_row": 0, "orig_id": "late",
        "image_ids": [], "conversations": [{"from": "human", "value": "Late?"}, {"from": "gpt", "value": "Yes."}]}],
        schema=S.SAMPLES_SCHEMA))
    recipe = write_recipe(tmp_path / "r.yaml", "name: ocr\nsources: [ocr]\n")
    tagged = export(crafted_lake, recipe, ExportOptions(out=str(tmp_path / "tagged"), version="v1", images="none"))
    now = export(crafted_lake, recipe, ExportOptions(out=str(tmp_path / "now"), images="none"))
    assert tagged.manifest["counts"]["per_source"] == {"ocr": 3} and now.manifest["counts"]["per_source"] == {"ocr": 4}
    assert tagged.manifest["lake"]["versions"][S.SAMPLES] == now.manifest["lake"]["versions"][S.SAMPLES] - 1
    with pytest.raises(ExportError, match="no such tag"):
        export(crafted_lake, recipe, ExportOptions(out=str(tmp_path / "x"), version="v9"))


# -- the exact bytes ----------------------------------------------------------------------------------
def test_llava_json_text_is_pinned_byte_for_byte(tmp_path):
    """The array's exact text (framing, separators, key order, fixes, one/several/no image) stays what
    trainers and earlier exports saw, whatever the query plan: a speed-up must not change one byte."""
    import lance

    from etl.images import content_id

    lake = Lake.open(str(tmp_path / "lake"))
    blobs = [b"GIF89a pinned-1", b"\xff\xd8\xff pinned-2"]
    ids = [content_id(b) for b in blobs]
    lake.append(S.IMAGES, pa.table({"image_id": ids, S.BLOB_COLUMN: lance.blob_array(blobs), "format": ["GIF", "JPEG"],
                                    "width": pa.array([1, 1], pa.int32()), "height": pa.array([1, 1], pa.int32()),
                                    "nbytes": pa.array([len(b) for b in blobs], pa.int64())}))

    def sample(i, source, orig_id, image_ids, human, gpt):
        return {"sample_id": f"{source}/p.json#{i}", "source": source, "source_file": "p.json", "source_row": i,
                "orig_id": orig_id, "image_ids": image_ids,
                "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]}

    lake.append(S.SAMPLES, pa.Table.from_pylist([
        sample(0, "a", "one", [ids[0]], "<image>\nTitle?", "\t A \"Book\".\n "),
        sample(1, "a", None, [ids[1]], "Colour?", "Red."),
        sample(2, "b", "text", [], "Héllo?", "Hi."),
        sample(3, "b", "two", [ids[1], ids[0]], "<image> and <image>: same?", "No."),
    ], schema=S.SAMPLES_SCHEMA))
    gif, jpg = f"{ids[0][:2]}/{ids[0]}.gif", f"{ids[1][:2]}/{ids[1]}.jpg"
    # the same text whether the records are built in the deciding pass (no sampling) or joined back
    # after a sampling recipe's ranking (here a sampling that keeps everything)
    for i, sources in enumerate(("[b, a]", "[{source: b, sampling: 'first:100%'}, {source: a, sampling: 'end:2'}]")):
        out = tmp_path / f"out{i}"
        export(lake, write_recipe(tmp_path / f"r{i}.yaml", f"name: pinned\nsources: {sources}\n"),
               ExportOptions(out=str(out), images="none"))
        assert (out / "pinned.json").read_bytes().decode() == pinned_text(gif, jpg), sources
    export(lake, write_recipe(tmp_path / "none.yaml", "name: none\nsources: [{source: a, where: 'false'}]\n"),
           ExportOptions(out=str(tmp_path / "empty"), images="none"))
    assert (tmp_path / "empty" / "none.json").read_bytes() == b"[]\n"


def pinned_text(gif: str, jpg: str) -> str:
    return (
        '[\n'
        '{"id":"text","conversations":[{"from":"human","value":"Héllo?"},{"from":"gpt","value":"Hi."}]},\n'
        f'{{"id":"two","image":["{jpg}","{gif}"],"conversations":['
        '{"from":"human","value":"<image> and <image>: same?"},'
        '{"from":"gpt","value":"No."}]},\n'
        f'{{"id":"one","image":"{gif}","conversations":[{{"from":"human","value":"<image>\\nTitle?"}},'
        '{"from":"gpt","value":"A \\"Book\\"."}]},\n'
        f'{{"id":"a/p.json#1","image":"{jpg}","conversations":[{{"from":"human","value":"<image>\\nColour?"}},'
        '{"from":"gpt","value":"Red."}]}\n'
        ']\n')


@pytest.mark.parametrize("fmt", ["llava", "messages"])
def test_records_are_the_same_bytes_with_and_without_a_sampling_ranking(real_lake, tmp_path, fmt):
    """A sampling recipe ranks the samples with a window (its decisions come out in another order than
    the scan's); the records' order and text must not depend on it: both write the same files."""
    everything = ", ".join(f"{{source: {s}, sampling: 'first:100%'}}" for s in ALL_SOURCES)
    texts = []
    for name, sources in (("plain", ", ".join(ALL_SOURCES)), ("sampled", everything)):
        out = tmp_path / name
        export(real_lake, write_recipe(tmp_path / f"{name}.yaml", f"name: mix\nseed: 1\nsources: [{sources}]\n"),
               ExportOptions(out=str(out), images="none", format=fmt, split_by_source=True))
        texts.append({p.name: p.read_bytes() for p in sorted(out.glob("*.json")) if p.name != "manifest.json"})
    assert texts[0] == texts[1] and len(texts[0]) >= len(ALL_SOURCES)


def test_checks_off_exports_turnless_samples_as_they_are_and_fixes_only_real_turns(tmp_path):
    """`checks: off` keeps broken samples: NULL turns stay `null` (never get a tag turn made up), a
    NULL turn stays `null`, and the fixes apply only where a turn exists — with or without sampling."""
    import lance

    from etl.images import content_id

    lake = Lake.open(str(tmp_path / "lake"))
    blob = b"\xff\xd8\xff turnless"
    image = content_id(blob)
    lake.append(S.IMAGES, pa.table({"image_id": [image], S.BLOB_COLUMN: lance.blob_array([blob]), "format": ["JPEG"],
                                    "width": pa.array([1], pa.int32()), "height": pa.array([1], pa.int32()),
                                    "nbytes": pa.array([len(blob)], pa.int64())}))
    rows = [([image, image], None), ([image], []), ([image], [None, {"from": "gpt", "value": " x "}]),
            ([], [{"from": "human", "value": " Hi "}, {"from": None, "value": None}])]
    lake.append(S.SAMPLES, pa.Table.from_pylist([
        {"sample_id": f"t/t.json#{i}", "source": "t", "source_file": "t.json", "source_row": i, "orig_id": str(i),
         "image_ids": ids, "conversations": turns} for i, (ids, turns) in enumerate(rows)], schema=S.SAMPLES_SCHEMA))
    path = f"{image[:2]}/{image}.jpg"
    expected = (
        '[\n'
        f'{{"id":"0","image":["{path}","{path}"],"conversations":null}},\n'
        f'{{"id":"1","image":"{path}","conversations":[]}},\n'
        f'{{"id":"2","image":"{path}","conversations":[{{"from":null,"value":null}},{{"from":"gpt","value":"x"}}]}},\n'
        '{"id":"3","conversations":[{"from":"human","value":"Hi"},{"from":null,"value":null}]}\n'
        ']\n')
    for i, sampling in enumerate(("all", "first:100%")):
        out = tmp_path / f"out{i}"
        recipe = f"name: t\nsources: [{{source: t, checks: off, sampling: '{sampling}'}}]\n"
        export(lake, write_recipe(tmp_path / f"r{i}.yaml", recipe), ExportOptions(out=str(out), images="none"))
        assert (out / "t.json").read_text() == expected, sampling


# -- every layout with every sampling, unique ids, an interrupted export -----------------------------
@pytest.fixture
def two_source_lake(tmp_path) -> Lake:
    """Sources `a` and `b` with the same orig ids ("1", "2", "3"), one-image, two-image and text-only records."""
    lake = Lake.open(str(tmp_path / "lake"))
    for source, colour in (("a", "red"), ("b", "blue")):
        folder = tmp_path / "src" / source
        (folder / "img").mkdir(parents=True)
        for name, size in (("one.jpg", (30, 20)), ("two.png", (20, 40))):
            Image.new("RGB", size, colour).save(folder / "img" / name)
        records = [
            {"id": 1, "image": "img/one.jpg", "conversations": [{"from": "human", "value": "<image>\nColour?"},
                                                               {"from": "gpt", "value": colour}]},
            {"id": 2, "image": ["img/one.jpg", "img/two.png"],
             "conversations": [{"from": "human", "value": "<image>\n<image>\nSame?"}, {"from": "gpt", "value": "No."}]},
            {"id": 3, "conversations": [{"from": "human", "value": f"Text {source}?"}, {"from": "gpt", "value": "Yes."}]},
        ]
        (folder / "data.json").write_text(json.dumps(records))
        ingest(lake, [str(folder / "*.json")], IngestOptions(source=source, image_roots=[str(folder)], progress=False))
    return lake


@pytest.mark.parametrize("layout", ["hashed", "original"])
@pytest.mark.parametrize("sampling", ["all", "first:2", "first:50%", "end:1", "end:100%", "random:2", "random:34%"])
def test_every_layout_works_with_every_sampling_and_every_image_path_exists(two_source_lake, tmp_path, layout, sampling):
    recipe = write_recipe(tmp_path / "r.yaml", f"name: mix\nseed: 3\nsources:\n  - {{source: a, sampling: '{sampling}'}}\n"
                                               "  - {source: b, sampling: all}\n")
    out = tmp_path / "out"
    manifest = export(two_source_lake, recipe, ExportOptions(out=str(out), layout=layout)).manifest
    records = json.loads((out / "mix.json").read_text())
    selected = {"all": 3, "first:2": 2, "first:50%": 2, "end:1": 1, "end:100%": 3, "random:2": 2, "random:34%": 2}
    assert manifest["counts"]["sources"]["a"]["selected"] == selected[sampling]
    assert len(records) == selected[sampling] + 3
    for record in records:
        images = record.get("image", [])
        for path in [images] if isinstance(images, str) else images:
            assert (out / "images" / path).is_file(), path
    assert not (out / ".mmlake-export-in-progress").exists()


def test_repeated_samples_and_orig_ids_shared_by_two_sources_get_unique_stable_ids(two_source_lake, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", "name: mix\nsources:\n  - {source: a, repeat: 2, sampling: 'first:2'}\n"
                                               "  - {source: b, sampling: 'first:2'}\n")
    ids = []
    for name in ("one", "two"):
        export(two_source_lake, recipe, ExportOptions(out=str(tmp_path / name), images="none"))
        ids.append([r["id"] for r in json.loads((tmp_path / name / "mix.json").read_text())])
    assert ids[0] == ids[1]  # stable
    assert len(set(ids[0])) == len(ids[0]) == 6  # unique
    # "1" and "2" are in both sources: written under the lake's sample_id; the 2nd copy gets #r2
    assert ids[0] == ["a/data.json#0", "a/data.json#1", "a/data.json#0#r2", "a/data.json#1#r2",
                      "b/data.json#0", "b/data.json#1"]
    only_a = write_recipe(tmp_path / "a.yaml", "name: mix\nsources: [{source: a, repeat: 2}]\n")
    export(two_source_lake, only_a, ExportOptions(out=str(tmp_path / "a"), images="none"))
    assert [r["id"] for r in json.loads((tmp_path / "a" / "mix.json").read_text())] == \
        ["1", "2", "3", "1#r2", "2#r2", "3#r2"]  # no clash: the source's own ids



@pytest.mark.parametrize("layout", ["hashed", "original"])
@pytest.mark.parametrize("fmt", ["llava", "messages"])
def test_records_are_the_same_bytes_whatever_the_write_batch_size(two_source_lake, tmp_path, layout, fmt):
    """Records are written in batches (turns taken by row offset, text made per batch): a batch edge
    inside a repeat, a source or a multi-image record changes no byte of any file, nor do image paths
    carried in record_order (a lake of many images) instead of looked up per batch."""
    recipe = write_recipe(tmp_path / "r.yaml", "name: mix\nsources:\n  - {source: a, repeat: 2}\n"
                                               "  - {source: b, sampling: 'random:2'}\n")
    texts = []
    for rows in (1, 2, 5, 25_000, 3):
        out = tmp_path / f"rows{rows}"  # 3 rows: paths carried in record_order, as in a big export
        export(two_source_lake, recipe, ExportOptions(out=str(out), images="none", layout=layout, format=fmt,
                                                      split_by_source=rows % 2 == 0, batch_rows=rows,
                                                      carry_paths_from=0 if rows == 3 else 2_000_000))
        texts.append({p.name: p.read_bytes() for p in out.glob("*.json") if p.name not in ("manifest.json",)})
    merged, split = texts[0], texts[1]
    assert texts[2] == merged and texts[3] == split and texts[4] == merged
    assert json.loads(merged["mix.json"]) == json.loads(split["a.json"]) + json.loads(split["b.json"])
    assert len(json.loads(merged["mix.json"])) == 3 * 2 + 2


def test_an_image_gone_from_the_lake_is_named_like_an_image_of_unknown_format_and_counted_missing(
        two_source_lake, tmp_path):
    """`checks: off` keeps a record whose image the lake no longer holds: its path is `ab/<id>.bin`
    whether paths are looked up per batch or carried in record_order, and the export counts it missing."""
    gone = two_source_lake.dataset(S.SAMPLES).to_table(columns=["image_ids"], filter="sample_id = 'a/data.json#0'") \
        .column("image_ids")[0].as_py()[0]
    two_source_lake.delete_rows(S.IMAGES, f"image_id = '{gone}'")
    recipe = write_recipe(tmp_path / "r.yaml", "name: mix\nsources: [{source: a, checks: off}]\n")
    written = []
    for carry_from in (0, 2_000_000):
        out = tmp_path / f"carry{carry_from}"
        manifest = export(two_source_lake, recipe, ExportOptions(out=str(out), carry_paths_from=carry_from)).manifest
        records = json.loads((out / "mix.json").read_text())
        assert records[0]["image"] == f"{gone[:2]}/{gone}.bin" and records[1]["image"][0] == records[0]["image"]
        assert manifest["counts"]["images"]["missing"] == 1 and manifest["counts"]["images"]["written"] == 1
        written.append((out / "mix.json").read_bytes())
    assert written[0] == written[1]


def test_an_export_after_samples_were_deleted_writes_each_record_from_its_own_row(two_source_lake, tmp_path):
    """A deleted sample leaves a hole in the Lance rows: the records' turns are taken by row offset in
    the pinned version, so each record keeps its own turns; pinned before the delete, it is back."""
    before = two_source_lake.dataset(S.SAMPLES).version
    two_source_lake.delete_rows(S.SAMPLES, "sample_id in ('a/data.json#0', 'b/data.json#1')")
    recipe = write_recipe(tmp_path / "r.yaml", "name: mix\nsources: [a, b]\n")
    written = {}
    for name, version in (("now", None), ("before", str(before))):
        export(two_source_lake, recipe, ExportOptions(out=str(tmp_path / name), images="none", version=version))
        written[name] = [(r["id"], [t["value"] for t in r["conversations"]])
                         for r in json.loads((tmp_path / name / "mix.json").read_text())]
    assert written["now"] == [("2", ["<image>\n<image>\nSame?", "No."]), ("a/data.json#2", ["Text a?", "Yes."]),
                              ("1", ["<image>\nColour?", "blue"]), ("b/data.json#2", ["Text b?", "Yes."])]
    assert written["before"][0] == ("a/data.json#0", ["<image>\nColour?", "red"]) and len(written["before"]) == 6

SLOW_EXPORT = """
import sys, time
import etl.export as export
place = export.ImagePlacer.place
export.ImagePlacer.place = lambda *args: (time.sleep(0.3), place(*args))[1]  # time to be killed mid-images
from etl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_an_export_killed_mid_images_is_cleared_by_the_rerun_and_by_force(two_source_lake, tmp_path):
    """kill -9 while images are written leaves JSON, data.yaml and part of images/: the rerun (with or
    without --force) clears that folder and writes the whole export; a foreign folder stays refused."""
    import signal
    import subprocess
    import sys
    import time

    recipe = write_recipe(tmp_path / "r.yaml", "name: mix\nsources: [a, b]\n")
    out = tmp_path / "out"
    for rerun in (["--force"], []):
        proc = subprocess.Popen([sys.executable, "-c", SLOW_EXPORT, "--lake", two_source_lake.root, "export", recipe,
                                 "--out", str(out), "--threads", "1", *rerun], cwd=Path(__file__).resolve().parents[1])
        deadline = time.monotonic() + 60
        while not any((out / "images").rglob("*.*")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        assert (out / "data.yaml").exists() and not (out / "manifest.json").exists()
        written = [p for p in (out / "images").rglob("*") if p.is_file()]
        assert 0 < len(written) < 4
        done = run_cli("export", recipe, "--out", str(out), *rerun, lake=two_source_lake)
        assert "samples written" in done.stdout
        assert len([p for p in (out / "images").rglob("*") if p.is_file()]) == 4
        assert json.loads((out / "manifest.json").read_text())["counts"]["samples"] == 6
        assert not (out / ".mmlake-export-in-progress").exists()
        for line in (out / "images.sha256").read_text().splitlines():  # every image whole
            digest, path = line.split()
            assert hashlib.sha256((out / path).read_bytes()).hexdigest() == digest
        out = tmp_path / "out2"


# -- dedup decided within the mixture, nothing stale -----------------------------------------------
def noise_images(folder: Path, names: list[str], seed: int) -> None:
    """Textured PNGs with distinct phashes (flat colours would all hash alike)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).resize((128, 96)).save(folder / name)


def captioned(names: list[str], prefix: str = "") -> list[dict]:
    return [{"id": f"{prefix}{i}", "image": f"img/{n}", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                                          {"from": "gpt", "value": f"Picture {n}."}]}
            for i, n in enumerate(names)]


def ingest_json(lake: Lake, path: Path, source: str, records: list[dict]) -> None:
    path.write_text(json.dumps(records))
    ingest(lake, [str(path)], IngestOptions(source=source, image_roots=[str(path.parent)], progress=False))


def test_dedup_then_more_copies_ingested_and_hashed_export_dedups_them_without_a_stale_table(tmp_path):
    """`dedup`, then ingest more copies into the same source, `enrich phash`, export with `dedup: exact`:
    the copies are removed (12 considered, 6 written), not exported from a stale dup_exact; the
    lake-wide dup_exact the report shows is known stale and names the command to rerun."""
    from etl.derived import StaleDerivedTable, check_fresh, committed_versions, table_info

    lake = Lake.open(str(tmp_path / "lake"))
    names = [f"p{i}.png" for i in range(6)]
    noise_images(tmp_path / "src" / "img", names, seed=1)
    ingest_json(lake, tmp_path / "src" / "first.json", "photos", captioned(names))
    run_cli("enrich", "phash", lake=lake)
    run_cli("dedup", lake=lake)
    ingest_json(lake, tmp_path / "src" / "second.json", "photos", captioned(names, prefix="copy"))
    run_cli("enrich", "phash", lake=lake)
    recipe = write_recipe(tmp_path / "r.yaml", "name: mix\ndefaults: {dedup: exact}\nsources: [photos]\n")
    manifest = export(lake, recipe, ExportOptions(out=str(tmp_path / "out"), images="none")).manifest
    assert manifest["counts"]["sources"]["photos"] == {"considered": 12, "selected": 6, "written": 6}
    assert manifest["counts"]["removed"] == {"photos": {"dedup_exact": 6}}
    assert sorted(r["id"] for r in json.loads((tmp_path / "out" / "mix.json").read_text())) == \
        sorted(str(i) for i in range(6))  # the first file's copies are kept
    used = manifest["decisions"]["dedup_exact"]["versions"]
    assert used[S.SAMPLES] == manifest["lake"]["versions"][S.SAMPLES] and used[S.IMAGES] == manifest["lake"]["versions"][S.IMAGES]
    info = table_info(lake, S.DUP_EXACT, committed_versions(lake)[S.DUP_EXACT])
    with pytest.raises(StaleDerivedTable, match=r"samples were added.*python -m etl dedup"):
        check_fresh(connect(lake), info, S.DUP_EXACT, "python -m etl dedup")
    from etl import analysis as an  # the report and notebooks say so instead of showing old numbers

    shown = an.exact_duplicates_removed(lake)
    assert isinstance(shown, an.NotComputed) and shown.command == "python -m etl dedup"
    assert str(shown) == "exact duplicates: stale (samples were added or removed) — run `python -m etl dedup`"
    run_cli("dedup", lake=lake)
    assert an.exact_duplicates_removed(lake).to_dicts() == [{"source": "photos", "exact_removed": 6}]


@pytest.fixture
def globally_deduped_lake(tmp_path) -> Lake:
    """`keep` (3 samples) and `other` (the same 3 samples, its images JPEG re-encodes of keep's PNGs)
    after `dedup --near 4 --scope global`: the lake-wide view keeps `keep`'s copies, drops all of `other`."""
    lake = Lake.open(str(tmp_path / "lake"))
    names = [f"p{i}.png" for i in range(3)]
    noise_images(tmp_path / "src" / "img", names, seed=2)
    for name in names:
        Image.open(tmp_path / "src" / "img" / name).save(tmp_path / "src" / "img" / f"{name}.jpg", quality=90)
    ingest_json(lake, tmp_path / "src" / "keep.json", "keep", captioned(names, prefix="k"))
    other = [{**r, "image": r["image"] + ".jpg"} for r in captioned(names, prefix="o")]
    ingest_json(lake, tmp_path / "src" / "other.json", "other", other)
    run_cli("enrich", "phash", lake=lake)
    run_cli("dedup", "--near", "4", "--scope", "global", lake=lake)
    assert {r["source"] for r in lake.dataset(S.DUP_NEAR).to_table().to_pylist()} == {"other"}
    return lake


def test_after_global_dedup_a_recipe_without_the_kept_source_still_exports_the_other_sources_samples(
        globally_deduped_lake, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", "name: mix\ndefaults: {dedup: exact, near_dup_k: 4}\nsources: [other]\n")
    manifest = export(globally_deduped_lake, recipe, ExportOptions(out=str(tmp_path / "out"), images="none")).manifest
    assert manifest["counts"]["sources"]["other"] == {"considered": 3, "selected": 3, "written": 3}
    assert manifest["decisions"]["near_dup"]["near_k"] == 4 and manifest["decisions"]["near_dup"]["run_id"]


def test_with_both_sources_dedup_keeps_one_copy_the_first_listed_or_the_preferred_source(globally_deduped_lake, tmp_path):
    def written(text: str) -> dict:
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        return export(globally_deduped_lake, write_recipe(tmp_path / "r.yaml", text),
                      ExportOptions(out=str(out), images="none")).manifest["counts"]["per_source"]

    both = "name: mix\ndefaults: {near_dup_k: 4}\nsources: [other, keep]\n"
    assert written(both) == {"other": 3, "keep": 0}  # recipe order, not the lake-wide choice
    assert written("dedup_prefer: [keep]\n" + both) == {"other": 0, "keep": 3}
    # a source that does not dedup holds its copies: the deduplicating source gives way, whatever the order
    assert written("name: mix\nsources: [other, {source: keep, near_dup_k: 4}]\n") == {"other": 3, "keep": 0}
    assert written("name: mix\nsources: [{source: other, near_dup_k: 4}, keep]\n") == {"other": 0, "keep": 3}


def test_near_dup_over_image_clusters_computed_before_new_images_were_hashed_refuses_with_the_command(
        globally_deduped_lake, tmp_path):
    lake = globally_deduped_lake
    noise_images(tmp_path / "late" / "img", ["late.png"], seed=3)
    ingest_json(lake, tmp_path / "late" / "late.json", "other", captioned(["late.png"], prefix="late"))
    recipe = write_recipe(tmp_path / "r.yaml", "name: mix\ndefaults: {near_dup_k: 4}\nsources: [other]\n")
    export(lake, recipe, ExportOptions(out=str(tmp_path / "ok"), images="none"))  # phashes unchanged: still fresh
    run_cli("enrich", "phash", lake=lake)
    proc = run_cli("export", recipe, "--out", str(tmp_path / "out"), lake=lake, check=False)
    assert proc.returncode == 2 and "image_clusters` is stale" in proc.stderr
    assert "run `python -m etl dedup --near 4`" in proc.stderr and not (tmp_path / "out").exists()
    run_cli("dedup", "--near", "4", lake=lake)
    assert "other: 4 considered, 4 selected" in run_cli("export", recipe, "--out", str(tmp_path / "out"), lake=lake).stdout


def test_a_dedup_killed_between_its_tables_leaves_the_previous_set_whole_for_every_reader(globally_deduped_lake):
    from etl.derived import committed_versions, table_info

    lake = globally_deduped_lake
    before = committed_versions(lake)
    first_run = {table_info(lake, t, v)["run_id"] for t, v in before.items()}
    assert len(first_run) == 1
    proc = run_cli("dedup", "--near", "2", lake=lake, check=False, env={**os.environ, "MMLAKE_FAULT": "dedup_between_tables:1"})
    assert proc.returncode == 137
    assert lake.dataset(S.IMAGE_CLUSTERS).version > before[S.IMAGE_CLUSTERS]  # the killed run wrote two tables
    assert committed_versions(lake) == before
    con = connect(lake)
    assert {r[0] for r in con.execute("select distinct run_id from dup_exact union select distinct run_id from "
                                      "image_clusters union select distinct run_id from dup_near").fetchall()} <= first_run
    assert con.execute("select distinct near_k from image_clusters").fetchall() == [(4,)]


# -- image properties in recipes --------------------------------------------------------------------
def test_where_filters_on_per_sample_image_sizes_aspect_ratio_and_formats(two_source_lake, tmp_path):
    """a: "1" has one 30x20 JPEG, "2" that JPEG and a 20x40 PNG, "3" is text-only (no image properties: NULL)."""
    def kept(where: str) -> list[str]:
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        recipe = write_recipe(tmp_path / "r.yaml", f'name: mix\nsources: [{{source: a, where: "{where}"}}]\n')
        export(two_source_lake, recipe, ExportOptions(out=str(out), images="none"))
        return sorted(r["id"] for r in json.loads((out / "mix.json").read_text()))

    assert kept("min_width >= 30") == ["1"]
    assert kept("max_height >= 40") == ["2"]
    assert kept("min_aspect_ratio >= 1.5") == ["1"] and kept("min_aspect_ratio < 1") == ["2"]
    assert kept("list_contains(image_formats, 'PNG')") == ["2"]
    assert kept("max_nbytes < 100000 or n_images = 0") == ["1", "2", "3"]
    con = connect(two_source_lake)  # the same facts in SQL, per image and per sample
    assert con.execute("select width, height, aspect_ratio from image_properties where format = 'PNG' "
                       "order by width").fetchall() == [(20, 40, 0.5), (20, 40, 0.5)]
    assert con.execute("select n_images, min_width, max_height, image_formats from sample_image_stats "
                       "where sample_id = 'a/data.json#1'").fetchall() == [(2, 20, 40, ["JPEG", "PNG"])]


def test_where_on_the_near_duplicate_cluster_size_of_a_samples_images(globally_deduped_lake, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", 'name: mix\nsources: [{source: other, where: "max_cluster_size >= 2"}]\n')
    manifest = export(globally_deduped_lake, recipe, ExportOptions(out=str(tmp_path / "out"), images="none")).manifest
    assert manifest["counts"]["per_source"] == {"other": 3}
    recipe = write_recipe(tmp_path / "r.yaml", 'name: mix\nsources: [{source: other, where: "max_cluster_size = 1"}]\n')
    manifest = export(globally_deduped_lake, recipe, ExportOptions(out=str(tmp_path / "one"), images="none")).manifest
    assert manifest["counts"]["per_source"] == {"other": 0}
