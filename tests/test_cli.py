"""The command line as a user meets it: help, SQL over the lake, stats, the DuckDB shell, the demo.

Every mistake or environment problem ends with one `error: ...` line and a non-zero exit, never a
traceback; results go to the real stdout (safe with `>>` and `| head`).
"""
from __future__ import annotations

import csv
import io
import json
import importlib.util
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from etl.cli import COMMANDS
from etl.ingest import IngestOptions, ingest

from conftest import REPO, errors_of, run_cli


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


def test_help_answers_without_importing_the_data_stack():
    """`python -m etl --help` (and a usage error) must not pay ~0.4 s for lance/pyarrow/duckdb:
    command modules import them in `run`, and only the command on the line is configured."""
    heavy = "{'lance', 'pyarrow', 'duckdb', 'polars', 'torch', 'matplotlib'}"
    probe = (f"import sys; from etl.cli import COMMANDS, build_parser, load_command; build_parser([]); "
             f"[load_command(c) for c in COMMANDS]; print(sorted({heavy} & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
    assert "ingest" in run_cli("--help").stdout


def test_help_states_the_lake_defaults_the_lake_module_uses():
    from etl import cli, lake

    assert (cli.DEFAULT_LAKE, cli.ENV_LAKE) == (lake.DEFAULT_LAKE, lake.ENV_LAKE)


def assert_one_error_line(proc: subprocess.CompletedProcess, code: int, *words: str) -> None:
    """The command failed with `code` and said why in one `error:` line naming `words`, no traceback."""
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert all(w in lines[0] for w in words), lines[0]


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
    rows = list(csv.DictReader(io.StringIO(run_cli("sql", q + " -- per source", "--format", "csv", lake=fastchat_lake).stdout)))
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


# -- user mistakes and environment problems: one line, non-zero --------------------------------------------
def test_a_bad_column_in_sql_is_one_error_line_and_debug_shows_the_traceback(fastchat_lake):
    proc = run_cli("sql", "select nope from samples", lake=fastchat_lake, check=False)
    assert_one_error_line(proc, 2, "nope", "Candidate bindings")
    assert_one_error_line(run_cli("sql", "selec 1", lake=fastchat_lake, check=False), 2, "syntax error")
    debug = run_cli("sql", "select nope from samples", "--debug", lake=fastchat_lake, check=False)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    env = run_cli("sql", "select nope from samples", lake=fastchat_lake, check=False, env={**os.environ, "MMLAKE_DEBUG": "1"})
    assert "Traceback" in env.stderr


@pytest.mark.parametrize("root, says", [("a_file", "is a file"), ("a_folder", "is not a lake"), ("nothing", "does not exist")])
def test_a_file_a_plain_folder_or_nothing_as_lake_is_one_error_line(tmp_path, root, says):
    (tmp_path / "a_file").write_text("not a lake")
    (tmp_path / "a_folder").mkdir()
    for command in (["stats"], ["enrich", "phash", "--no-progress"]):
        proc = run_cli("--lake", str(tmp_path / root), *command, check=False)
        assert_one_error_line(proc, 2, str(tmp_path / root), says)
    assert not (tmp_path / "nothing").exists()  # a command that reads a lake never creates one


def test_a_file_as_lake_for_ingest_is_one_error_line(tmp_path, realdata):
    (tmp_path / "a_file").write_text("not a lake")
    proc = run_cli("--lake", str(tmp_path / "a_file"), "ingest", str(realdata / "fastchat/data/dummy_conversation.json"),
                   check=False)
    assert_one_error_line(proc, 2, "is a file")


def test_lake_is_accepted_before_and_after_the_command_name(fastchat_lake):
    q = "select count(*) as n from samples"
    after = run_cli("sql", q, "--format", "csv", "--lake", fastchat_lake.root).stdout
    before = run_cli("--lake", fastchat_lake.root, "sql", q, "--format", "csv").stdout
    assert after == before == "n\n500\n"
    out = run_cli("enrich", "phash", "--no-progress", "--lake", fastchat_lake.root).stdout
    assert "rows to compute" in out


def test_report_without_the_notebooks_extra_names_the_extra(fastchat_lake, tmp_path):
    """A missing optional dependency is one line naming the package and the extra that brings it."""
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'matplotlib'\", name='matplotlib')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}
    proc = run_cli("report", "--out", str(tmp_path / "r.html"), lake=fastchat_lake, check=False, env=env)
    assert_one_error_line(proc, 2, "'matplotlib'", "mmlake[notebooks]")


def wait_for_threads(pid: int, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = open(f"/proc/{pid}/status").read()
        if int(status.split("Threads:")[1].split()[0]) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} did not start {n} threads in {timeout} s")


def test_ctrl_c_during_a_query_is_one_error_line(fastchat_lake):
    """DuckDB does not watch Python's signal flag while it scans the Lance views: the CLI interrupts it."""
    cmd = [sys.executable, "-m", "etl", "--lake", fastchat_lake.root, "sql",
           "select sum(hash(range)) from range(100000000000), (select count(*) from samples)"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    wait_for_threads(proc.pid, 4)  # lance and DuckDB start theirs once the command runs
    time.sleep(1)  # inside the query (it runs for hours)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == "error: interrupted\n", err


# -- output: the real stdout, safe with >> and pipes -------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_results_appended_with_a_double_redirect_keep_what_was_before(fastchat_lake, tmp_path, fmt):
    """`sql ... --format csv >> file` appends (DuckDB reopening /dev/stdout used to truncate it and
    write NUL bytes); what is appended is byte for byte what --output writes."""
    q = "select source, count(*) as n from samples group by all"
    target = tmp_path / f"all.{fmt}"
    target.write_bytes(b"before\n")
    with open(target, "ab") as appended:
        cmd = [sys.executable, "-m", "etl", "--lake", fastchat_lake.root, "sql", q, "--format", fmt]
        subprocess.run(cmd, stdout=appended, check=True, cwd=REPO)
    run_cli("sql", q, "--format", fmt, "--output", str(tmp_path / f"one.{fmt}"), lake=fastchat_lake)
    assert target.read_bytes() == b"before\n" + (tmp_path / f"one.{fmt}").read_bytes()
    assert b"\0" not in target.read_bytes()


def test_checks_and_stats_write_through_the_same_output_options(fastchat_lake, tmp_path):
    stats = list(csv.DictReader(io.StringIO(run_cli("stats", "--format", "csv", lake=fastchat_lake).stdout)))
    assert {r["source"]: r["samples"] for r in stats} == {"fastchat": "500", "instruct": "0"}
    run_cli("stats", "--format", "parquet", "--output", str(tmp_path / "s.parquet"), lake=fastchat_lake)
    assert pq.read_table(tmp_path / "s.parquet").num_rows == 2
    problems = json.loads(run_cli("checks", "--format", "json", lake=fastchat_lake).stdout)
    assert isinstance(problems, list)
    run_cli("checks", "--output", str(tmp_path / "checks.txt"), lake=fastchat_lake)  # the table, as text
    assert "source" in (tmp_path / "checks.txt").read_text()


def read_one_line_then_close(cmd: list[str]) -> tuple[int, str, str]:
    """What `cmd | head -1` does: read a line, close the pipe, let the command end."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    first = proc.stdout.readline().decode()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=60), first, err


def test_a_long_result_piped_into_head_ends_quietly(fastchat_lake):
    for fmt in ("csv", "table"):
        code, first, err = read_one_line_then_close([sys.executable, "-m", "etl", "--lake", fastchat_lake.root, "sql",
                                                     "select * from range(3000000)", "--format", fmt, "--max-rows", "100000"])
        assert first.strip() and err == "" and code == 141  # 128 + SIGPIPE, as a shell reports `yes | head`


def test_export_piped_into_a_closed_pipe_ends_quietly(fastchat_lake, tmp_path):
    (tmp_path / "r.yaml").write_text("name: fc\nsources: [fastchat]\n")
    cmd = [sys.executable, "-m", "etl", "--lake", fastchat_lake.root, "export", str(tmp_path / "r.yaml"), "--dry-run"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


# -- ingest: a file that gives nothing is not a success; summaries speak English -----------------------------
def test_ingesting_json_as_webdataset_fails_naming_the_file_and_the_format_it_looks_like(lake, realdata):
    path = str(realdata / "fastchat/data/dummy_conversation.json")
    proc = run_cli("ingest", path, "--source", "fc", "--format", "webdataset", "--no-progress", lake=lake, check=False)
    assert_one_error_line(proc, 1, "dummy_conversation.json", "--format auto", "llava")
    assert "samples added" in proc.stdout
    assert [e["kind"] for e in errors_of(lake, "fc")] == ["corrupt_shard"]  # the error is still recorded
    again = run_cli("ingest", path, "--source", "fc", "--format", "webdataset", "--no-progress", lake=lake, check=False)
    assert again.returncode == 1  # a rerun still says the file gave nothing


def test_ingest_summary_uses_human_labels(lake, realdata):
    out = run_cli("ingest", str(realdata / "fastchat/data/dummy_conversation.json"), "--source", "fc", "--no-progress",
                  lake=lake).stdout
    assert "samples added" in out and "images already in the lake" in out and "500" in out
    assert "_" not in out.split(":", 1)[1].replace("fastchat", "")  # no counter keys


def test_report_loss_window_before_enrich_loss_says_so_in_one_line(fastchat_lake, tmp_path):
    proc = run_cli("report", "--out", str(tmp_path / "r.html"), "--loss-window", "0.5", "4", lake=fastchat_lake)
    assert proc.stderr.count("\n") == 1 and "enrich loss" in proc.stderr
    assert "not computed yet" in (tmp_path / "r.html").read_text()


def test_an_unexpected_error_is_one_line_that_says_how_to_see_the_traceback(capsys):
    from etl.commands.failure import ended_by

    assert ended_by(TypeError("'NoneType' object is not subscriptable")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: TypeError: ") and "--debug" in err and "MMLAKE_DEBUG=1" in err
