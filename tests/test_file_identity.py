"""A source file is its path, and a checkpoint knows the content it covered.

Users build one source from many folders that hold files of the same name (LLaVA-OneVision-Data:
one `train-00000-of-00001.parquet` per config folder); nothing of one may be taken for the other.
"""
from __future__ import annotations

import json
import os
import shutil

import lance
import pyarrow as pa
import pytest

from etl import schema as S
from etl.ingest import IngestOptions, ingest
from etl.lake import Lake

from conftest import run_cli, samples_of
from test_ingest_parquet import onevision_rows, write_onevision


def llava_file(path, tag: str, n: int = 5) -> None:
    """n text-only LLaVA records; `tag` changes the text but not the file's size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [{"id": f"{tag}{i}", "conversations": [{"from": "human", "value": f"question {tag} {i}"},
                                                     {"from": "gpt", "value": f"answer {tag} {i}"}]} for i in range(n)]
    path.write_text(json.dumps(records))


def opts(**kw) -> IngestOptions:
    return IngestOptions(progress=False, **kw)


def test_two_files_of_the_same_name_in_two_folders_are_both_ingested_whole(lake, tmp_path, monkeypatch):
    """The issue's story: same name, same size, same mtime — b used to be skipped as already done."""
    monkeypatch.chdir(tmp_path)
    llava_file(tmp_path / "a" / "train.json", "a")
    llava_file(tmp_path / "b" / "train.json", "b")
    stamp = os.stat(tmp_path / "a" / "train.json").st_mtime
    os.utime(tmp_path / "b" / "train.json", (stamp, stamp))
    assert os.path.getsize("a/train.json") == os.path.getsize("b/train.json")

    ingest(lake, ["a/train.json"], opts(source="s"))
    counts = ingest(lake, ["b/train.json"], opts(source="s"))

    assert counts["samples_added"] == 5 and counts["records_already_in_lake"] == 0
    samples = samples_of(lake, "s")
    assert sorted(r["orig_id"] for r in samples) == [f"{t}{i}" for t in "ab" for i in range(5)]
    files = lake.dataset(S.SAMPLES).to_table(columns=["source_file"])["source_file"].to_pylist()
    assert sorted(set(files)) == ["a/train.json", "b/train.json"]


def test_a_source_of_config_folders_with_identically_named_shards_keeps_every_row(lake, tmp_path):
    """LLaVA-OneVision-Data's layout, ingested one folder at a time into one source."""
    for config, n in (("CLEVR", 6), ("ai2d", 4)):
        write_onevision(tmp_path / config / "train-00000-of-00001.parquet", onevision_rows(n, with_bad_rows=False)[:n])
    for config in ("CLEVR", "ai2d"):
        ingest(lake, [str(tmp_path / config / "train-00000-of-00001.parquet")], opts(source="ov"))
    assert len(samples_of(lake, "ov")) == 10


def test_a_rerun_from_another_folder_or_on_a_copy_with_a_new_mtime_ingests_nothing(lake, tmp_path, monkeypatch):
    llava_file(tmp_path / "data" / "train.json", "x")
    monkeypatch.chdir(tmp_path)
    ingest(lake, ["data/train.json"], opts(source="s"))
    monkeypatch.chdir(tmp_path / "data")  # the same file, named `train.json` from here: same content
    assert ingest(lake, ["train.json"], opts(source="s"))["samples_added"] == 0
    os.utime(tmp_path / "data" / "train.json", (1, 1))  # touched or copied: same bytes
    counts = ingest(lake, ["train.json"], opts(source="s"))
    assert counts["files_already_done"] == 1 and counts["samples_added"] == 0


def test_the_cli_rerun_from_another_folder_exits_0_and_does_not_call_the_file_empty(lake, tmp_path):
    llava_file(tmp_path / "data" / "train.json", "x")
    run_cli("ingest", "data/train.json", "--source", "s", lake=lake, cwd=tmp_path)
    again = run_cli("ingest", "train.json", "--source", "s", lake=lake, cwd=tmp_path / "data")
    assert "gave no sample" not in again.stdout + again.stderr
    assert len(samples_of(lake, "s")) == 5


def test_a_file_whose_content_changed_under_the_same_name_is_read_again_and_counted(lake, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    llava_file(tmp_path / "train.json", "old", n=3)
    ingest(lake, ["train.json"], opts(source="s"))
    llava_file(tmp_path / "train.json", "new", n=5)  # two more records at the end
    counts = ingest(lake, ["train.json"], opts(source="s"))
    assert counts["files_changed_since_ingested"] == 1
    assert counts["samples_added"] == 2 and counts["records_already_in_lake"] == 3


def test_a_lake_written_before_files_were_named_by_path_is_resumed_under_its_old_names(tmp_path, monkeypatch):
    """Older lakes named a file given on its own by its bare name, with a `size:mtime` fingerprint:
    rerunning the same command must neither re-ingest it nor duplicate its samples."""
    lake = Lake.open(str(tmp_path / "lake"))
    llava_file(tmp_path / "data" / "train.json", "x")
    monkeypatch.chdir(tmp_path / "data")
    ingest(lake, ["train.json"], opts(source="s", batch_records=2))
    legacy = lake.dataset(S.CHECKPOINTS).to_table()
    st = os.stat(tmp_path / "data" / "train.json")
    legacy = legacy.set_column(legacy.schema.get_field_index("fingerprint"), "fingerprint",
                               pa.array([f"{st.st_size}:{int(st.st_mtime)}"] * legacy.num_rows))
    lance.write_dataset(legacy, lake.uri(S.CHECKPOINTS), mode="overwrite")

    monkeypatch.chdir(tmp_path)  # the same command from another folder now names it data/train.json
    counts = ingest(lake, ["data/train.json"], opts(source="s"))
    assert counts["files_already_done"] == 1 and counts["samples_added"] == 0
    assert len(samples_of(lake, "s")) == 5


@pytest.mark.parametrize("workers", [1, 2])
def test_a_directory_argument_names_files_by_their_path_below_it(lake, tmp_path, workers):
    for config in ("one", "two"):
        write_onevision(tmp_path / "ds" / config / "train-00000-of-00001.parquet",
                        onevision_rows(3, with_bad_rows=False)[:3])
    shutil.copy(tmp_path / "ds" / "one" / "train-00000-of-00001.parquet", tmp_path / "ds" / "extra.parquet")
    ingest(lake, [str(tmp_path / "ds")], opts(source="ds", workers=workers))
    files = set(lake.dataset(S.SAMPLES).to_table(columns=["source_file"])["source_file"].to_pylist())
    assert files == {"one/train-00000-of-00001.parquet", "two/train-00000-of-00001.parquet", "extra.parquet"}
