"""Export as webdataset tar shards and as HF parquet: each ingests back into an equal lake, reads with
the tools trainers use (tar member grouping, `datasets.load_dataset`), and reruns byte for byte."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from etl import schema as S
from etl.export import ExportError, ExportOptions, export
from etl.ingest import IngestOptions, ingest
from etl.lake import Lake

from conftest import run_cli

PRETRAIN = "llava_pretrain_pr1902/playground/data/LLaVA-Pretrain"
SOURCES = ("lcs", "vila", "fastchat", "mllm_demo")


@pytest.fixture(scope="module")
def lake(realdata, tmp_path_factory) -> Lake:
    """Real sources: 200 LCS captions (JPEGs), VILA multi-image, FastChat text-only, LLaMA-Factory messages."""
    lake = Lake.open(str(tmp_path_factory.mktemp("real") / "lake"))
    for path, opts in (
        (f"{PRETRAIN}/blip_laion_cc_sbu_2k.subset200.json", IngestOptions(source="lcs", image_roots=[str(realdata / PRETRAIN / "images")])),
        ("vila_inference_test/inference_test/inference_test.json", IngestOptions(source="vila", format="vila")),
        ("fastchat/data/dummy_conversation.json", IngestOptions(source="fastchat")),
        ("llamafactory/mllm_demo/mllm_demo.json", IngestOptions(source="mllm_demo", format="messages")),
    ):
        opts.progress = False
        ingest(lake, [str(realdata / path)], opts)
    return lake


@pytest.fixture
def recipe(tmp_path) -> str:
    path = tmp_path / "mix.yaml"
    path.write_text(f"name: mix\nseed: 3\nsources: [{', '.join(SOURCES)}]\n")
    return str(path)


def content(lake: Lake, with_paths: bool = False) -> list[tuple]:
    """Samples as comparable tuples: id, turns (the export strips surrounding whitespace), meta, images."""
    columns = ["sample_id", "orig_id", "conversations", "meta", "image_ids", "image_paths"]
    rows = lake.dataset(S.SAMPLES).to_table(columns=columns).to_pylist()
    return sorted((r["orig_id"] or r["sample_id"], tuple((t["from"], t["value"].strip()) for t in r["conversations"]),
                   json.loads(r["meta"] or "{}"), tuple(r["image_ids"]), tuple(r["image_paths"] or []) if with_paths else ())
                  for r in rows)


def image_rows(lake: Lake) -> list[tuple]:
    return sorted(lake.dataset(S.IMAGES).to_table(columns=["image_id", "format", "width", "height", "nbytes"]).to_pylist(),
                  key=lambda r: r["image_id"])


def tree(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*")) if p.is_file()}


# -- webdataset ------------------------------------------------------------------------------------------
def test_webdataset_export_ingests_back_into_an_equal_lake(lake, recipe, tmp_path):
    out = tmp_path / "wds"
    result = export(lake, recipe, ExportOptions(out=str(out), format="webdataset", shard_size=256 << 10))
    again = Lake.open(str(tmp_path / "again"))
    counts = ingest(again, [str(out / "shards")], IngestOptions(source="again", format="webdataset", progress=False))
    assert again.count(S.ERRORS) == 0 and counts["samples_added"] == lake.count(S.SAMPLES)
    assert content(again) == content(lake)
    assert image_rows(again) == image_rows(lake)
    index = json.loads((out / "index.json").read_text())
    assert len(index["shardlist"]) == len(list((out / "shards").glob("*.tar"))) > 1
    assert sum(s["nsamples"] for s in index["shardlist"]) == result.manifest["counts"]["samples"] == lake.count(S.SAMPLES)


def test_webdataset_shards_hold_one_key_per_sample_with_images_and_json_and_fixed_headers(lake, recipe, tmp_path):
    out = tmp_path / "wds"
    export(lake, recipe, ExportOptions(out=str(out), format="webdataset", shard_size=256 << 10))
    groups: dict[str, list[str]] = {}
    shards = []  # (bytes, keys) per shard
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            shards.append((shard.stat().st_size, {m.name.split(".")[0] for m in tar}))
            for member in tar:
                assert (member.mtime, member.uid, member.gid, member.uname, member.mode) == (0, 0, 0, "", 0o644)
                key, ext = member.name.split(".", 1)
                groups.setdefault(key, []).append(ext)
                if ext.endswith("jpg"):
                    assert Image.open(io.BytesIO(tar.extractfile(member).read())).format == "JPEG"
                if ext == "json":
                    record = json.loads(tar.extractfile(member).read())
                    assert list(record)[:2] == ["id", "conversations"]
    assert list(groups) == sorted(groups) and all(exts[-1] == "json" for exts in groups.values())
    assert any(exts == ["json"] for exts in groups.values())  # text-only samples
    assert any(exts[:2] == ["0.jpg", "1.jpg"] for exts in groups.values())  # multi-image samples keep their order
    assert all(size <= 256 << 10 or len(keys) == 1 for size, keys in shards)  # only a lone big sample is over
    assert max(size for size, keys in shards if len(keys) > 1) > 128 << 10


def test_webdataset_export_rerun_is_byte_identical(lake, recipe, tmp_path):
    first = export(lake, recipe, ExportOptions(out=str(tmp_path / "a"), format="webdataset", shard_size=1 << 20))
    assert without_manifest(tree(tmp_path / "a")) == {k: v["sha256"] for k, v in first.manifest["files"].items()}
    again = export(lake, recipe, ExportOptions(out=str(tmp_path / "b"), format="webdataset", shard_size=1 << 20))
    assert without_manifest(tree(tmp_path / "b")) == without_manifest(tree(tmp_path / "a"))
    assert again.manifest["files"] == first.manifest["files"]


def without_manifest(files: dict[str, str]) -> dict[str, str]:
    """Every file but manifest.json (which names the lake versions: the `runs` table grows with each export)."""
    return {k: v for k, v in files.items() if k != "manifest.json"}


def test_a_sampling_recipe_with_repeats_writes_each_repeat_under_its_own_key(lake, tmp_path):
    recipe = tmp_path / "sampled.yaml"
    recipe.write_text("name: sampled\nseed: 2\nsources:\n  - {source: fastchat, sampling: 'random:10%', repeat: 2}\n")
    out = tmp_path / "wds"
    result = export(lake, str(recipe), ExportOptions(out=str(out), format="webdataset"))
    with tarfile.open(next((out / "shards").glob("*.tar"))) as tar:
        ids = [json.loads(tar.extractfile(m).read())["id"] for m in tar if m.name.endswith(".json")]
    assert len(ids) == result.manifest["counts"]["samples"] == 100 and len(set(ids)) == 50


# -- HF parquet --------------------------------------------------------------------------------------------
def test_hf_parquet_export_loads_with_datasets_as_images(lake, recipe, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "hf"
    export(lake, recipe, ExportOptions(out=str(out), format="hf-parquet", shard_size=512 << 10))
    files = sorted(str(p) for p in (out / "data").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds.features["images"], datasets.List) and isinstance(ds.features["images"].feature, datasets.Image)
    assert len(files) > 1 and len(ds) == lake.count(S.SAMPLES)
    sizes = {r["image_id"]: (r["width"], r["height"]) for r in image_rows(lake)}
    expected = sorted((id_, turns, json.dumps(meta, sort_keys=True), tuple(sizes[i] for i in image_ids))
                      for id_, turns, meta, image_ids, _ in content(lake))
    loaded = sorted((row["id"], tuple((t["from"], t["value"]) for t in row["conversations"]),
                     json.dumps(json.loads(row["meta"]), sort_keys=True), tuple(im.size for im in row["images"]))
                    for row in ds)  # `images` decoded to PIL images
    assert loaded == expected


def test_hf_parquet_export_ingests_back_into_an_equal_lake_paths_included(lake, recipe, tmp_path):
    out = tmp_path / "hf"
    export(lake, recipe, ExportOptions(out=str(out), format="hf-parquet", shard_size=512 << 10))
    again = Lake.open(str(tmp_path / "again"))
    ingest(again, [str(out / "data")], IngestOptions(source="again", progress=False))
    assert again.count(S.ERRORS) == 0
    assert content(again, with_paths=True) == content(lake, with_paths=True)
    assert image_rows(again) == image_rows(lake)


def test_hf_parquet_card_declares_features_splits_and_the_recipe(lake, recipe, tmp_path):
    out = tmp_path / "hf"
    result = export(lake, recipe, ExportOptions(out=str(out), format="hf-parquet"))
    card = (out / "README.md").read_text()
    header = __import__("yaml").safe_load(card.split("---")[1])
    assert header["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*"}]
    assert {f["name"] for f in header["dataset_info"]["features"]} == {"id", "images", "conversations", "meta"}
    assert header["dataset_info"]["splits"][0]["num_examples"] == lake.count(S.SAMPLES)
    assert Path(recipe).read_text().strip() in card and result.manifest["recipe"]["sha256"] in card
    assert list(result.manifest["files"]) == ["README.md", "data/train-00000-of-00001.parquet"]
    export(lake, recipe, ExportOptions(out=str(tmp_path / "hf2"), format="hf-parquet"))
    assert without_manifest(tree(tmp_path / "hf2")) == without_manifest(tree(out))  # reproducible bytes


# -- options -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["webdataset", "hf-parquet"])
def test_embedded_formats_refuse_options_they_cannot_honour_before_writing(lake, recipe, tmp_path, fmt):
    for options in ({"images": "none"}, {"split_by_source": True}):
        with pytest.raises(ExportError, match="embeds the images"):
            export(lake, recipe, ExportOptions(out=str(tmp_path / "out"), format=fmt, **options))
    assert not (tmp_path / "out").exists()


def test_cli_exports_webdataset_shards_of_the_given_size(lake, recipe, tmp_path):
    out = tmp_path / "cli"
    proc = run_cli("export", recipe, "--out", str(out), "--format", "webdataset", "--shard-size", "300KB", lake=lake)
    assert "webdataset shards" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["shard_size"] == 300 << 10 and len(list((out / "shards").glob("*.tar"))) > 1
    bad = run_cli("export", recipe, "--out", str(out), "--shard-size", "lots", lake=lake, check=False)
    assert bad.returncode == 2 and "not a size" in bad.stderr
