"""The command line as a user meets it: help, SQL over the lake, stats, the DuckDB shell, the demo."""
from __future__ import annotations

import csv
import io
import json
import os
import importlib.util
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from etl.cli import COMMANDS
from etl.ingest import IngestOptions, ingest

from conftest import run_cli


def test_help_lists_every_command_and_each_command_has_examples():
    top = run_cli("--help").stdout
    for command in COMMANDS:
        if importlib.util.find_spec(f"etl.commands.{command}") is None:
            continue
        assert command in top
        assert "examples:" in run_cli(command, "--help").stdout


def test_commands_other_than_report_start_without_loading_the_plotting_stack():
    """Every command's parser is built at start-up: matplotlib (and polars) would cost each
    `ingest`/`export`/`sql` call, and each `--help`, about half a second."""
    probe = "import sys; from etl.cli import build_parser; build_parser(); print(sorted({'matplotlib', 'polars'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_a_wrong_flag_is_a_clear_usage_error():
    proc = run_cli("ingest", "--no-such-flag", "x.json", check=False)
    assert proc.returncode == 2 and "unrecognized arguments: --no-such-flag" in proc.stderr


def test_a_missing_input_file_is_a_clear_error(lake, tmp_path):
    proc = run_cli("ingest", str(tmp_path / "nope.json"), "--source", "x", lake=lake, check=False)
    assert proc.returncode == 2 and "nope.json: no such file or directory" in proc.stderr


@pytest.fixture
def fastchat_lake(lake, realdata):
    ingest(lake, [str(realdata / "fastchat/data/dummy_conversation.json")], IngestOptions(source="fastchat"))
    ingest(lake, [str(realdata / "llamafactory/llava_instruct_100/llava_instruct_100.json")], IngestOptions(source="instruct"))
    return lake


def test_sql_answers_in_table_csv_json_and_parquet(fastchat_lake, tmp_path):
    q = "select source, count(*) as n from samples group by all order by 1"
    assert "fastchat" in run_cli("sql", q, lake=fastchat_lake).stdout
    rows = list(csv.DictReader(io.StringIO(run_cli("sql", q, "--format", "csv", lake=fastchat_lake).stdout)))
    assert rows == [{"source": "fastchat", "n": "500"}]
    assert json.loads(run_cli("sql", q, "--format", "json", lake=fastchat_lake).stdout) == [{"source": "fastchat", "n": 500}]
    out = tmp_path / "r.parquet"
    run_cli("sql", q, "--format", "parquet", "--output", str(out), lake=fastchat_lake)
    assert pq.read_table(out).to_pylist() == [{"source": "fastchat", "n": 500}]


def test_the_images_view_never_exposes_the_blob(lake, realdata, tmp_path):
    img = str(realdata / "llava/llava/serve/examples/waterview.jpg")
    (tmp_path / "a.json").write_text(json.dumps([{"id": "1", "image": img, "conversations": []}]))
    ingest(lake, [str(tmp_path / "a.json")], IngestOptions(source="a", image_roots=[os.path.dirname(img)]))
    out = json.loads(run_cli("sql", "select * from images", "--format", "json", lake=lake).stdout)
    assert len(out) == 1 and "image" not in out[0] and out[0]["format"] == "JPEG" and out[0]["width"] == 1000


def test_stats_per_source(fastchat_lake):
    got = json.loads(run_cli("stats", "--format", "json", lake=fastchat_lake).stdout)
    by_source = {r["source"]: r for r in got}
    assert by_source["fastchat"]["samples"] == 500 and by_source["fastchat"]["text_only"] == 500
    assert by_source["instruct"]["samples"] == 0 and by_source["instruct"]["errors_by_kind"] == {"missing_image": 100}


def test_shell_is_the_real_duckdb_cli_with_the_same_views(fastchat_lake):
    from etl.commands.shell import duckdb_cli, lance_extension, cli_version

    try:
        lance_extension(cli_version(duckdb_cli()))
    except FileNotFoundError as exc:
        pytest.skip(f"DuckDB shell not installed here ({exc}); scripts/setup.sh installs it")
    proc = run_cli("shell", "-c", "select count(*) as n from samples; select version() as v;", lake=fastchat_lake)
    assert "500" in proc.stdout and "v1.5.5" in proc.stdout
