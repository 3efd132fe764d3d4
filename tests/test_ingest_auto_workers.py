"""`ingest --workers auto` (the default): parallel only where it was measured faster than serial."""
from __future__ import annotations

import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from etl.commands.ingest import auto_workers
from etl.ingest import IngestOptions

from conftest import run_cli

CORES = len(os.sched_getaffinity(0))


def jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (i * 37 % 256, i * 91 % 256, 40)).save(buf, "JPEG")
    return buf.getvalue()


def parquet_shard(path, rows: int = 20) -> str:
    """A OneVision-style shard: each row embeds its image bytes, which the workers read themselves."""
    image = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
    turns = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A photo."}]
    table = pa.table({"id": [str(i) for i in range(rows)],
                      "image": pa.array([{"bytes": jpeg(i), "path": None} for i in range(rows)], image),
                      "conversations": [turns] * rows})
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": {
        "id": {"_type": "Value", "dtype": "string"}, "image": {"_type": "Image"}}}})}), path)
    return str(path)


def llava_json(path, records: int = 50) -> str:
    path.write_text(json.dumps([{"id": str(i), "image": f"{i}.jpg", "conversations": [
        {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A photo."}]} for i in range(records)]))
    return str(path)


def test_a_parquet_input_below_the_crossover_is_ingested_serially(tmp_path):
    shard = parquet_shard(tmp_path / "train-00000.parquet")
    assert auto_workers([shard], IngestOptions(source="x")) == 1


def test_parquet_above_the_crossover_gets_one_more_worker_per_step_up_to_the_cores(tmp_path):
    shard = parquet_shard(tmp_path / "train-00000.parquet")
    size = os.path.getsize(shard)
    assert auto_workers([shard], IngestOptions(source="x"), from_bytes=size) == min(CORES, 2)
    assert auto_workers([str(tmp_path)], IngestOptions(source="x"), from_bytes=size // 100) == CORES


def test_json_sources_stay_serial_whatever_their_size(tmp_path):
    """The committing process parses JSON and ships the records: workers never won there."""
    data = llava_json(tmp_path / "data.json")
    assert auto_workers([data], IngestOptions(source="x"), from_bytes=1) == 1


def test_the_default_ingest_command_records_the_workers_auto_chose(lake, tmp_path):
    shard = parquet_shard(tmp_path / "train-00000.parquet")
    run_cli("ingest", shard, "--source", "ov", "--no-progress", lake=lake)
    params = json.loads(run_cli("sql", "select params from runs", "--format", "json", lake=lake).stdout)[0]["params"]
    assert json.loads(params)["workers"] == 1


def test_workers_must_be_auto_or_a_positive_number(lake, tmp_path):
    for bad in ("0", "two", "-1"):
        proc = run_cli("ingest", str(tmp_path / "x.json"), "--workers", bad, lake=lake, check=False)
        assert proc.returncode == 2 and "expected 'auto' or a number of processes >= 1" in proc.stderr
