"""HF parquet ingest: OneVision/ReCap-style shards, LLaMA-Factory path-only shards, data-juicer bytes."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from etl import schema as S
from etl.images import content_id
from etl.ingest import IngestOptions, KeyIndexUpkeep, ingest
from etl.lake import Lake
from etl.sources import detect_format
from etl.sources import hf_parquet
from etl.sources.hf_parquet import HFParquetReader, iter_row_batches

from conftest import REALDATA, errors_of, needs_realdata, samples_of

DJ_PARQUET = REALDATA / "data_juicer/demos/data/demo-dataset-images-bytes.parquet"
LF_DATASET = REALDATA / "llamafactory/mllm_example_dataset_2024-04"

HF_IMAGE = {"_type": "Image"}
ONEVISION_FEATURES = {
    "id": {"dtype": "string", "_type": "Value"},
    "image": HF_IMAGE,
    "conversations": [{"from": {"dtype": "string", "_type": "Value"}, "value": {"dtype": "string", "_type": "Value"}}],
    "data_source": {"dtype": "string", "_type": "Value"},
}
ONEVISION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
        pa.field("conversations", S.CONVERSATIONS),
        pa.field("data_source", pa.string()),
    ],
    metadata={"huggingface": json.dumps({"info": {"features": ONEVISION_FEATURES}})},
)



def jpeg(seed: int, size: tuple[int, int] = (48, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def onevision_rows(n: int, with_bad_rows: bool = True) -> list[dict]:
    """OneVision-schema rows: embedded JPEGs; with bad rows, also text-only rows (null image), corrupt
    bytes and a row without conversations."""
    rows = []
    for i in range(n):
        image = {"bytes": jpeg(i), "path": f"{i:06d}.jpg"}
        if with_bad_rows and i % 5 == 3:
            image = None
        elif with_bad_rows and i % 7 == 4:
            image = {"bytes": b"\xff\xd8 definitely not a jpeg " + bytes([i]), "path": f"{i:06d}.jpg"}
        turns = [{"from": "human", "value": f"<image>\nWhat colour is image {i}?"}, {"from": "gpt", "value": f"colour {i}"}]
        if with_bad_rows and i == 29:
            turns = None
        rows.append({"id": f"{i:09d}", "image": image, "data_source": "synthetic_ov", "conversations": turns})
    return rows


def write_onevision(path: Path, rows: list[dict], row_group_size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=ONEVISION_SCHEMA), path, row_group_size=row_group_size)




def test_onevision_parquet_keeps_every_good_row_and_records_each_bad_row_with_its_row_number(tmp_path):
    rows = onevision_rows(40)
    write_onevision(tmp_path / "ov" / "CLEVR-Math(MathV360K)" / "train-00000-of-00001.parquet", rows)
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(tmp_path / "ov")], IngestOptions(progress=False, batch_records=16))

    corrupt = [i for i, r in enumerate(rows) if r["image"] and r["image"]["bytes"].startswith(b"\xff\xd8 def")]
    text_only = [i for i, r in enumerate(rows) if r["image"] is None]
    bad = {**{i: "not_an_image" for i in corrupt}, 29: "malformed_record"}
    samples = samples_of(lake, "CLEVR-Math(MathV360K)")
    assert [s["source_row"] for s in samples] == [i for i in range(40) if i not in bad]
    for s in samples:
        row = rows[s["source_row"]]
        assert s["orig_id"] == row["id"]
        assert s["conversations"] == row["conversations"]
        assert json.loads(s["meta"])["data_source"] == "synthetic_ov"
        assert s["image_ids"] == ([] if row["image"] is None else [content_id(row["image"]["bytes"])])
    errors = errors_of(lake, "CLEVR-Math(MathV360K)")
    assert {e["row"]: e["kind"] for e in errors} == bad and len(errors) == len(bad)
    assert all(e["orig_id"] == rows[e["row"]]["id"] for e in errors)
    row_29 = next(e for e in errors if e["row"] == 29)
    assert '"conversations": null' in row_29["raw"] and '"bytes": "<' in row_29["raw"]  # raw row, bytes elided
    assert len(text_only) == 8
    good = {content_id(rows[i]["image"]["bytes"]): rows[i]["image"]["bytes"]
            for i in range(40) if rows[i]["image"] and i not in bad}
    assert lake.image_bytes_by_id(list(good)) == good  # bytes kept exactly as they came (gaps: Arrow `take`)


def test_a_long_ingest_keeps_the_image_key_index_covering_what_it_committed(tmp_path, monkeypatch):
    write_onevision(tmp_path / "ds" / "train-00000-of-00001.parquet", onevision_rows(12, with_bad_rows=False),
                    row_group_size=2)
    monkeypatch.setattr(KeyIndexUpkeep, "every", 4)
    refreshes, refresh = [], Lake.ensure_key_index
    monkeypatch.setattr(Lake, "ensure_key_index", lambda self, name: refreshes.append(self.count(name)) or refresh(self, name))
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(tmp_path / "ds")], IngestOptions(source="ov", progress=False, batch_records=1))

    assert refreshes == [4, 8, 12, 12]  # every 4th image commit, then once at the end of the run


def test_a_crash_mid_file_resumes_from_the_checkpoint_without_duplicating_rows(tmp_path, monkeypatch):
    rows = onevision_rows(30, with_bad_rows=False)
    write_onevision(tmp_path / "ds" / "train-00000-of-00001.parquet", rows, row_group_size=4)
    lake = Lake.open(str(tmp_path / "lake"))
    opts = IngestOptions(source="ov", progress=False, batch_records=5)
    real_record = HFParquetReader.read_file

    def dies_at_row_17(self, path, name, start_row=0):
        for record in real_record(self, path, name, start_row):
            if record.source_row == 17:
                raise KeyboardInterrupt("simulated crash")
            yield record

    monkeypatch.setattr(HFParquetReader, "read_file", dies_at_row_17)
    with pytest.raises(KeyboardInterrupt):
        ingest(lake, [str(tmp_path / "ds")], opts)
    assert 0 < lake.count(S.SAMPLES) < 30
    monkeypatch.setattr(HFParquetReader, "read_file", real_record)

    ingest(lake, [str(tmp_path / "ds")], opts)
    ingest(lake, [str(tmp_path / "ds")], opts)  # a finished file adds nothing

    assert [s["source_row"] for s in samples_of(lake, "ov")] == list(range(30))
    assert lake.count(S.IMAGES) == 30


def test_a_file_read_through_many_small_mapping_windows_yields_every_row_once(tmp_path, monkeypatch):
    path = tmp_path / "train-00000-of-00001.parquet"
    write_onevision(path, onevision_rows(20, with_bad_rows=False), row_group_size=3)
    whole = [(r.source_row, r.orig_id, bytes(r.images[0].data)) for r in HFParquetReader().read_file(str(path), path.name)]
    monkeypatch.setattr(hf_parquet, "WINDOW_BYTES", 1)  # one row group per mapping

    windowed = [(r.source_row, r.orig_id, bytes(r.images[0].data)) for r in HFParquetReader().read_file(str(path), path.name)]

    assert windowed == whole and [row for row, _, _ in whole] == list(range(20))


def test_start_row_skips_whole_row_groups_without_reading_them(tmp_path, monkeypatch):
    path = tmp_path / "train-00000-of-00001.parquet"
    write_onevision(path, onevision_rows(20, with_bad_rows=False), row_group_size=6)
    groups_read, real_iter_batches = [], pq.ParquetFile.iter_batches

    def recording_iter_batches(self, *args, row_groups=None, **kwargs):
        groups_read.extend(row_groups)
        return real_iter_batches(self, *args, row_groups=row_groups, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recording_iter_batches)
    metadata = pq.ParquetFile(path).metadata
    firsts = [first for first, _ in iter_row_batches(str(path), metadata, start_row=13)]
    assert groups_read == [2, 3]  # rows 12-17 and 18-19; groups 0 and 1 are never decoded
    assert firsts[0] == 13
    groups_read.clear()
    assert [first for first, _ in iter_row_batches(str(path), metadata, start_row=6, end_row=12)] == [6]
    assert groups_read == [1]  # a parallel task's range: the groups past it are not read ahead
    records = list(HFParquetReader().read_file(str(path), path.name, start_row=13))
    assert [r.source_row for r in records] == list(range(13, 20))
    assert records[0].orig_id == "000000013"


def test_sequence_of_images_keeps_order_and_path_only_images_resolve_against_the_dataset_folder(tmp_path):
    image_type = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
    schema = pa.schema([pa.field("id", pa.string()), pa.field("images", pa.list_(image_type)),
                        pa.field("conversations", S.CONVERSATIONS)])
    (tmp_path / "ds" / "pics").mkdir(parents=True)
    (tmp_path / "ds" / "pics" / "on_disk.jpg").write_bytes(jpeg(99))
    turns = [{"from": "human", "value": "<image><image><image>"}, {"from": "gpt", "value": "three"}]
    rows = [{"id": "multi", "images": [{"bytes": jpeg(1), "path": None}, {"bytes": None, "path": "pics/on_disk.jpg"},
                                       {"bytes": jpeg(2), "path": "two.jpg"}], "conversations": turns}]
    (tmp_path / "ds" / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(tmp_path / "ds")], IngestOptions(source="seq", progress=False))

    [sample] = samples_of(lake, "seq")
    assert sample["image_ids"] == [content_id(jpeg(1)), content_id(jpeg(99)), content_id(jpeg(2))]
    assert sample["image_paths"] == [None, "pics/on_disk.jpg", "two.jpg"]  # names kept as written


def test_a_directory_with_one_folder_per_config_uses_config_names_as_sources(tmp_path):
    for config, n in (("ai2d(cauldron,llava_format)", 3), ("chartqa", 2)):
        write_onevision(tmp_path / "hub" / config / "train-00000-of-00001.parquet",
                        onevision_rows(n, with_bad_rows=False))
    (tmp_path / "hub" / "README.md").write_text("---\nconfigs: []\n---\n")
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(tmp_path / "hub")], IngestOptions(progress=False))
    assert len(samples_of(lake, "ai2d(cauldron,llava_format)")) == 3
    assert len(samples_of(lake, "chartqa")) == 2

    ingest(lake, [str(tmp_path / "hub")], IngestOptions(source="ov_all", progress=False))
    assert len(samples_of(lake, "ov_all")) == 5  # --source wins over the folder names


def test_data_juicer_parquet_stores_three_samples_with_bytes_identical_to_the_files(tmp_path):
    needs_realdata(DJ_PARQUET)
    assert detect_format(str(DJ_PARQUET)) == "hf-parquet"
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(DJ_PARQUET)], IngestOptions(source="dj", progress=False))

    samples = samples_of(lake, "dj")
    files = [DJ_PARQUET.parent.parent.parent / "tests/ops/data" / n for n in ("img1.png", "img2.jpg", "img3.jpg")]
    expected = [f.read_bytes() for f in files]
    assert [s["image_ids"] for s in samples] == [[content_id(b)] for b in expected]
    assert list(lake.image_bytes_by_id([content_id(b) for b in expected]).values()) == expected
    assert samples[1]["conversations"] == [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A bus."}]
    assert samples[0]["image_paths"] == ["../../tests/ops/data/img1.png"]


def test_llamafactory_path_only_parquet_resolves_its_repo_relative_paths_through_an_image_root(tmp_path):
    parquet = LF_DATASET / "data" / "train-0.parquet"
    needs_realdata(parquet)
    # Upstream the paths (`data/images/1.jpg`) are relative to the LLaMA-Factory checkout; rebuild that root.
    (tmp_path / "llamafactory_root").mkdir()
    os.symlink(LF_DATASET, tmp_path / "llamafactory_root" / "data")
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(parquet)], IngestOptions(source="lf", progress=False,
                                                image_roots=[str(tmp_path / "llamafactory_root")]))

    samples = samples_of(lake, "lf")
    assert len(samples) == 3 and errors_of(lake, "lf") == []
    assert samples[0]["image_ids"] == [content_id((LF_DATASET / "images" / "1.jpg").read_bytes())]
    assert samples[0]["conversations"][0] == {"from": "human", "value": "Who are they?<image>"}
    assert [t["from"] for t in samples[0]["conversations"]] == ["human", "gpt", "human", "gpt"]


def test_llamafactory_parquet_without_its_images_records_one_missing_image_error_per_row(tmp_path):
    parquet = LF_DATASET / "data" / "train-0.parquet"
    needs_realdata(parquet)
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(parquet)], IngestOptions(source="lf", progress=False))

    assert samples_of(lake, "lf") == []
    errors = errors_of(lake, "lf")
    assert [(e["row"], e["kind"]) for e in errors] == [(0, "missing_image"), (1, "missing_image"), (2, "missing_image")]
    assert "data/images/1.jpg" in errors[0]["raw"]


def test_a_truncated_shard_keeps_its_readable_rows_and_records_one_corrupt_file_error(tmp_path):
    write_onevision(tmp_path / "whole.parquet", onevision_rows(10, with_bad_rows=False))
    data = (tmp_path / "whole.parquet").read_bytes()
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "cut.parquet").write_bytes(data[: len(data) // 2])  # an interrupted download
    write_onevision(tmp_path / "ds" / "fine.parquet", onevision_rows(3, with_bad_rows=False))
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(tmp_path / "ds")], IngestOptions(source="cut", progress=False))

    errors = errors_of(lake, "cut")
    assert [(e["row"], e["kind"]) for e in errors] == [(0, "corrupt_file")]
    assert len(samples_of(lake, "cut")) == 3  # the next file still ingests


# -- parallel ingest (--workers N) -------------------------------------------------------------------
def lake_contents(lake: Lake) -> tuple[list, list, list]:
    samples = lake.dataset(S.SAMPLES).to_table(columns=["sample_id", "image_ids", "conversations", "meta"]).to_pylist()
    errors = lake.dataset(S.ERRORS).to_table(columns=["error_id", "row", "kind"]).to_pylist()
    images = lake.dataset(S.IMAGES).to_table(columns=["image_id", "format", "width", "height", "nbytes"]).to_pylist()
    key = lambda r: next(iter(r.values()))  # noqa: E731 - the first column is the key
    return sorted(samples, key=key), sorted(errors, key=key), sorted(images, key=key)


def shards_sharing_images(folder: Path, shards: int = 3, rows: int = 24) -> None:
    """Configs whose shards reuse each other's images (exact duplicates across tasks), with bad rows."""
    for shard in range(shards):
        table_rows = onevision_rows(rows)
        for i, row in enumerate(table_rows):
            row["id"] = f"{shard}-{i}"
            if row["image"] and i % 3 == 0:  # the same bytes in every shard
                row["image"] = {"bytes": jpeg(1000 + i), "path": None}
        write_onevision(folder / f"cfg{shard % 2}" / f"train-{shard:05d}-of-00003.parquet", table_rows, row_group_size=4)


def test_parallel_ingest_builds_the_same_lake_as_the_serial_one(tmp_path):
    shards_sharing_images(tmp_path / "ds")
    serial, parallel = Lake.open(str(tmp_path / "serial")), Lake.open(str(tmp_path / "parallel"))
    small_tasks = IngestOptions(progress=False, batch_bytes=2000, workers=2)  # many tasks, so shared images race

    ingest(serial, [str(tmp_path / "ds")], IngestOptions(progress=False))
    counts = ingest(parallel, [str(tmp_path / "ds")], small_tasks)

    assert lake_contents(parallel) == lake_contents(serial)
    assert counts["samples_added"] == serial.count(S.SAMPLES) and counts["files"] == 3
    ids = parallel.dataset(S.IMAGES).to_table(columns=["image_id"])["image_id"].to_pylist()
    assert len(ids) == len(set(ids))  # each shared image stored once
    again = ingest(parallel, [str(tmp_path / "ds")], small_tasks)
    assert again["files_already_done"] == 3 and lake_contents(parallel) == lake_contents(serial)


@pytest.mark.parametrize("point", ["after_images:3", "after_samples:2"])
def test_parallel_ingest_killed_mid_commit_resumes_to_the_same_lake(tmp_path, point):
    shards_sharing_images(tmp_path / "ds", shards=2)
    serial = Lake.open(str(tmp_path / "serial"))
    ingest(serial, [str(tmp_path / "ds")], IngestOptions(progress=False))
    script = ("import sys; from etl.ingest import IngestOptions, KeyIndexUpkeep, ingest;"
              "from etl.lake import Lake; ingest(Lake.open(sys.argv[1]), [sys.argv[2]],"
              " IngestOptions(progress=False, batch_bytes=2000, workers=2))")
    cmd = [sys.executable, "-c", script, str(tmp_path / "parallel"), str(tmp_path / "ds")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    # capture_output waits for every holder of the pipes: it returns only once the orphaned workers exit
    crashed = subprocess.run(cmd, env={**env, "MMLAKE_FAULT": point}, capture_output=True, timeout=300)
    assert crashed.returncode == 137, crashed.stderr.decode()[-2000:]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)

    assert lake_contents(Lake.open(str(tmp_path / "parallel"))) == lake_contents(serial)


def test_a_task_whose_new_image_another_task_stored_first_is_redone_without_duplicating_it(tmp_path):
    from etl.ingest.parallel import Committer, Task, TaskWorker
    from etl.ingest import expand_inputs
    from etl.runlog import Run

    rows = onevision_rows(6, with_bad_rows=False)
    write_onevision(tmp_path / "a" / "train-00000-of-00001.parquet", rows)
    write_onevision(tmp_path / "b" / "train-00000-of-00001.parquet", rows[:2])  # shares two images with a
    lake, opts = Lake.open(str(tmp_path / "lake")), IngestOptions(progress=False)
    [file] = expand_inputs([str(tmp_path / "a")], opts)
    run = Run("r1", "ingest", {})
    committer = Committer(lake, opts, run)
    started = committer.start_file(file)
    task = Task(file, started.start, 6, committed=frozenset(started.committed), last=True)
    result = TaskWorker(lake.root, opts, run.run_id)(task)  # the worker saw an empty lake: 6 new images

    ingest(lake, [str(tmp_path / "b")], opts)  # meanwhile another task commits two of them
    committer.commit(task, result, tqdm_off())

    ids = lake.dataset(S.IMAGES).to_table(columns=["image_id"])["image_id"].to_pylist()
    assert sorted(ids) == sorted({content_id(r["image"]["bytes"]) for r in rows})
    assert run.counts["tasks_redone_for_shared_images"] == 1
    assert len(samples_of(lake, "a")) == 6


def test_tasks_of_one_run_racing_for_the_same_new_images_are_caught_from_memory(tmp_path, monkeypatch):
    from etl.ingest.parallel import Committer, Task, TaskWorker
    from etl.ingest import expand_inputs
    from etl.runlog import Run

    rows = onevision_rows(6, with_bad_rows=False)
    write_onevision(tmp_path / "a" / "train-00000-of-00001.parquet", rows)
    write_onevision(tmp_path / "b" / "train-00000-of-00001.parquet", rows[:2])  # shares two images with a
    lake, opts = Lake.open(str(tmp_path / "lake")), IngestOptions(progress=False)
    run = Run("r1", "ingest", {})
    committer = Committer(lake, opts, run)
    tasks = []
    for folder, end in (("a", 6), ("b", 2)):
        [file] = expand_inputs([str(tmp_path / folder)], opts)
        started = committer.start_file(file)
        tasks.append(committer.submitted(Task(file, started.start, end, committed=frozenset(started.committed),
                                              last=True)))
    worker = TaskWorker(lake.root, opts, run.run_id)
    first, second = [worker(task) for task in tasks]  # both ran before either committed

    committer.commit(tasks[0], first, tqdm_off())
    with monkeypatch.context() as patched:  # this run made every version since: no need to ask the lake
        patched.setattr(lake, "scan_since", lambda *args: pytest.fail("asked the lake"))
        assert committer.raced(tasks[1], second)
    committer.commit(tasks[1], second, tqdm_off())

    ids = lake.dataset(S.IMAGES).to_table(columns=["image_id"])["image_id"].to_pylist()
    assert sorted(ids) == sorted({content_id(r["image"]["bytes"]) for r in rows})
    assert run.counts["tasks_redone_for_shared_images"] == 1
    assert len(samples_of(lake, "a")) == 6 and len(samples_of(lake, "b")) == 2


def tqdm_off():
    from tqdm import tqdm

    return tqdm(disable=True)


def test_tasks_that_finish_together_commit_as_one_group_and_a_shared_image_still_stores_once(tmp_path):
    from etl.ingest.parallel import Committer, Task, TaskWorker
    from etl.ingest import expand_inputs
    from etl.runlog import Run

    rows = onevision_rows(6, with_bad_rows=False)
    write_onevision(tmp_path / "a" / "train-00000-of-00001.parquet", rows)
    write_onevision(tmp_path / "b" / "train-00000-of-00001.parquet", rows[4:])  # shares two images with a
    serial = Lake.open(str(tmp_path / "serial"))
    for folder in ("a", "b"):
        ingest(serial, [str(tmp_path / folder)], IngestOptions(progress=False))
    lake, opts = Lake.open(str(tmp_path / "lake")), IngestOptions(progress=False)
    run = Run("r1", "ingest", {})
    committer = Committer(lake, opts, run)
    tasks = []
    for folder, ranges in (("a", [(0, 3), (3, 6)]), ("b", [(0, 2)])):
        [file] = expand_inputs([str(tmp_path / folder)], opts)
        committed = frozenset(committer.start_file(file).committed)
        tasks += [committer.submitted(Task(file, first, end, committed=committed, last=end == ranges[-1][1]))
                  for first, end in ranges]
    worker = TaskWorker(lake.root, opts, run.run_id)
    results = [worker(task) for task in tasks]  # all three ran before any committed
    versions_before = {name: lake.dataset(name).version for name in (S.IMAGES, S.SAMPLES)}

    committer.commit_finished(list(zip(tasks, results)), tqdm_off())

    # a's two tasks: one images and one samples version; b's task shares two images with a: redone
    assert lake.dataset(S.IMAGES).version == versions_before[S.IMAGES] + 1
    assert lake.dataset(S.SAMPLES).version == versions_before[S.SAMPLES] + 2
    assert run.counts["tasks_redone_for_shared_images"] == 1 and run.counts["files"] == 2
    assert lake_contents(lake) == lake_contents(serial)
    ids = lake.dataset(S.IMAGES).to_table(columns=["image_id"])["image_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 6
    assert all(lake.checkpoint(f"ingest:{f}", "train-00000-of-00001.parquet")["done"] for f in ("a", "b"))
