"""Running a lake for years, as a user meets it: fixing a wrong ingest (delete, --redo, rename),
versions and tags, compaction, cleanup, doctor, lake format checks."""
from __future__ import annotations

import filecmp
import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pytest

import etl.api as mm
from etl import schema as S
from etl.ingest import IngestOptions, ingest
from etl.lake import Lake
from etl.upkeep import cleanup_lake, create_tag, delete_source, fragment_counts, parse_age, tag_versions

from conftest import REALDATA, needs_realdata, run_cli

PRETRAIN = REALDATA / "llava_pretrain_pr1902/playground/data/LLaVA-Pretrain"
SUBSET = PRETRAIN / "blip_laion_cc_sbu_2k.subset200.json"
IMAGES = PRETRAIN / "images"
CHAT = REALDATA / "fastchat/data/dummy_conversation.json"


@pytest.fixture(autouse=True)
def _realdata():
    needs_realdata(SUBSET)
    needs_realdata(CHAT)


def lake_content(lake: Lake) -> dict:
    """Everything a user reads from a lake, run ids and times left out (they differ by design)."""
    def rows(table, drop=()):
        cols = [c for c in lake.dataset(table).schema.names if c not in (*drop, S.BLOB_COLUMN)]
        return sorted(lake.dataset(table).to_table(columns=cols).to_pylist(), key=repr)
    return {"samples": rows(S.SAMPLES), "errors": rows(S.ERRORS, ("run_id", "created_at")),
            "checkpoints": rows(S.CHECKPOINTS, ("updated_at",)), "images": rows(S.IMAGES)}


def cli_counts(stdout: str) -> dict[str, int]:
    """The `label  value` lines a command prints (etl/commands/summary.py), by counter name."""
    from etl.runlog import COUNTER_LABELS

    names = {label: key for key, label in COUNTER_LABELS.items()}
    counts = {}
    for line in stdout.splitlines():
        label, _, value = line.strip().rpartition("  ")
        if line.startswith("  ") and value.strip().split(" ")[0].replace(",", "").isdigit():
            label = label.strip()
            counts[names.get(label, label.replace(" ", "_"))] = int(value.strip().split(" ")[0].replace(",", ""))
    return counts


def correct_ingest(lake: Lake, **kw):
    return ingest(lake, [str(SUBSET)], IngestOptions(source="lcs", image_roots=[str(IMAGES)], progress=False, **kw))


# -- fixing a wrong ingest ------------------------------------------------------------------------------
def test_a_wrong_format_then_delete_source_and_a_correct_ingest_gives_the_lake_of_a_correct_first_ingest(tmp_path):
    first = Lake.open(str(tmp_path / "first"))
    correct_ingest(first)
    lake = Lake.open(str(tmp_path / "fixed"))
    wrong = ingest(lake, [str(SUBSET)], IngestOptions(source="lcs", format="messages", image_roots=[str(IMAGES)]))
    assert wrong["errors.malformed_record"] == 200 and correct_ingest(lake)["files_already_done"] == 1
    counts = cli_counts(run_cli("delete", "--source", "lcs", lake=lake).stdout)
    assert counts["errors_deleted"] == 200 and counts["checkpoints_deleted"] == 1
    correct_ingest(lake)
    assert lake_content(lake) == lake_content(first)


def test_ingest_redo_after_a_wrong_image_root_gives_the_lake_of_a_correct_first_ingest(tmp_path):
    first = Lake.open(str(tmp_path / "first"))
    correct_ingest(first)
    lake = Lake.open(str(tmp_path / "fixed"))
    args = [str(SUBSET), "--source", "lcs", "--no-progress"]
    run_cli("ingest", *args, "--image-root", str(tmp_path), lake=lake, check=False)  # wrong: every image missing
    assert lake.count(S.ERRORS, "kind = 'missing_image'") == 200
    out = cli_counts(run_cli("ingest", *args, "--image-root", str(IMAGES), "--redo", lake=lake).stdout)
    assert out["samples_added"] == 200 and out["errors_deleted"] == 200
    assert lake_content(lake) == lake_content(first)
    rerun = cli_counts(run_cli("ingest", *args, "--image-root", str(IMAGES), lake=lake).stdout)
    assert rerun["files_already_done"] == 1


def test_deleting_some_files_of_a_source_keeps_the_others_and_a_dry_run_deletes_nothing(lake, tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for name in ("a.json", "b.json"):
        (folder / name).write_bytes(CHAT.read_bytes())
    ingest(lake, [str(folder)], IngestOptions(source="chat", progress=False))
    before = lake.versions()
    dry = delete_source(lake, "chat", "a.*", dry_run=True)
    assert dry["samples_deleted"] == 500 and lake.versions() == before and lake.count(S.SAMPLES) == 1000
    delete_source(lake, "chat", "a.*")
    assert lake.dataset(S.SAMPLES).to_table(columns=["source_file"])["source_file"].unique().to_pylist() == ["b.json"]
    assert set(lake.checkpoints("ingest:chat")) == {"b.json"}
    proc = run_cli("delete", "--source", "nope", lake=lake, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no source named 'nope'")


def test_renaming_a_source_renames_its_samples_errors_and_checkpoints_and_a_rerun_adds_nothing(lake):
    ingest(lake, [str(PRETRAIN / "images/blip_laion_cc_sbu_2k.json")], IngestOptions(source="lcs", progress=False))
    run_cli("sources", "--rename", "lcs", "lcs558k", lake=lake)
    ids = lake.dataset(S.SAMPLES).to_table(columns=["sample_id", "source"]).to_pylist()
    assert len(ids) == 200 and all(r["source"] == "lcs558k" and r["sample_id"].startswith("lcs558k/") for r in ids)
    errors = lake.dataset(S.ERRORS).to_table(columns=["error_id", "source"]).to_pylist()
    assert len(errors) == 1983 and all(e["error_id"].startswith("ingest/lcs558k/") and e["source"] == "lcs558k" for e in errors)
    again = ingest(lake, [str(PRETRAIN / "images/blip_laion_cc_sbu_2k.json")], IngestOptions(source="lcs558k", progress=False))
    assert again["files_already_done"] == 1
    listing = run_cli("sources", "--format", "csv", lake=lake).stdout.splitlines()
    assert listing[0] == "source,files,samples,errors,first_ingest,last_ingest" and listing[1].startswith("lcs558k,1,200,1983,")


# -- versions, tags, cleanup ----------------------------------------------------------------------------
def test_cleanup_after_tag_keeps_the_tagged_version_readable_and_removes_the_images_nobody_uses(lake):
    correct_ingest(lake)
    ingest(lake, [str(CHAT)], IngestOptions(source="chat", progress=False))
    some_image = lake.dataset(S.IMAGES).to_table(columns=["image_id"], limit=1)["image_id"][0].as_py()
    run_cli("tag", "v1", lake=lake)
    delete_source(lake, "lcs")
    counts = cleanup_lake(lake, parse_age("0s"))
    assert counts["images_deleted"] == 200 and counts["versions_removed"] > 0
    assert lake.count(S.IMAGES) == 0 and lake.count(S.SAMPLES) == 500
    tagged = mm.open_lake(lake.root, version="v1")
    assert tagged.sql("select count(*) n from samples")["n"][0] == 700
    assert len(tagged.image_bytes(some_image)) > 0
    out = run_cli("sql", "select count(*) from images", "--format", "csv", "--version", "v1", lake=lake).stdout
    assert out.split() == ["count_star()", "200"]
    kept = {v["version"] for v in lake.dataset(S.SAMPLES).versions()}
    assert kept == {tag_versions(lake)["v1"][S.SAMPLES], lake.latest_version(S.SAMPLES)}


def test_cleanup_never_removes_the_version_a_running_reader_started_on(lake):
    ingest(lake, [str(CHAT)], IngestOptions(source="chat", progress=False))
    reader = mm.open_lake(lake.root)  # e.g. a notebook or an export that started a moment ago
    delete_source(lake, "chat")
    cleanup_lake(lake, parse_age("1h"))
    assert reader.sql("select count(*) n from samples")["n"][0] == 500
    assert reader.table("samples").collect().height == 500


def test_cleanup_deletes_orphan_files_of_killed_writers_only_when_older_than_an_hour(lake):
    ingest(lake, [str(CHAT)], IngestOptions(source="chat", progress=False))
    fresh = lake.local_files(S.SAMPLES, lake.write_fragments(S.SAMPLES, pa.table({"sample_id": ["x"], "source": ["x"]})))
    old = lake.local_files(S.SAMPLES, lake.write_fragments(S.SAMPLES, pa.table({"sample_id": ["y"], "source": ["y"]})))
    for path in old:
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    counts = cleanup_lake(lake, parse_age("0s"))
    assert counts["orphan_files"] == 1
    assert all(os.path.exists(p) for p in fresh) and not any(os.path.exists(p) for p in old)
    assert lake.count(S.SAMPLES) == 500


def test_log_shows_each_version_with_the_run_that_made_it_and_tags_lists_tags(lake):
    ingest(lake, [str(CHAT)], IngestOptions(source="chat", progress=False))
    delete_source(lake, "chat", dry_run=False)
    create_tag(lake, "after-delete")
    rows = json.loads(run_cli("log", "--table", "samples", "--format", "json", lake=lake).stdout)
    made_by = [(r["command"], r["rows"]) for r in rows]
    assert ("ingest", 500) in made_by and made_by[-1] == ("delete", 0)
    assert rows[-1]["tags"] == "after-delete" and "@" in rows[-1]["user"]
    assert "after-delete" in run_cli("tags", lake=lake).stdout
    proc = run_cli("tag", "after-delete", lake=lake, check=False)
    assert proc.returncode == 2 and "exists already" in proc.stderr


def test_report_and_the_duckdb_shell_read_a_tagged_version_while_the_lake_moved_on(lake, tmp_path):
    """The shell's lance extension cannot time-travel: it reads shallow clones at the tag."""
    ingest(lake, [str(CHAT)], IngestOptions(source="chat", progress=False))
    create_tag(lake, "v1")
    correct_ingest(lake)
    shell = run_cli("shell", "--version", "v1", "-c", "select count(*) as n from samples", lake=lake).stdout
    assert "500" in shell and "700" not in shell
    now = run_cli("shell", "-c", "select count(*) as n from samples", lake=lake).stdout
    assert "700" in now
    run_cli("report", "--version", "v1", "--out", str(tmp_path / "v1.html"), lake=lake)
    page = (tmp_path / "v1.html").read_text()
    assert "chat" in page and "lcs" not in page
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("mmlake-version-*"))  # clones removed


# -- compaction -----------------------------------------------------------------------------------------
RECIPE = """name: mix
defaults:
  checks: pass
sources:
  - source: lcs
    sampling: all
  - source: chat
    sampling: first:50%
"""


def outputs(lake: Lake, tmp_path: Path, name: str) -> tuple[dict, Path]:
    recipe = tmp_path / "mix.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "mix"  # the data yaml names its own folder: export to one place, then move it
    run_cli("export", str(recipe), "--out", str(out), lake=lake)
    out = out.rename(tmp_path / name)
    queries = {cmd: run_cli(*cmd, lake=lake).stdout for cmd in [
        ("stats", "--format", "csv"), ("checks", "--list", "--format", "csv"), ("sources", "--format", "csv"),
        ("sql", "select * exclude (loss, loss_tokens, loss_model) from samples order by sample_id", "--format", "json"),
        ("sql", "select * from images order by image_id", "--format", "json")]}
    return queries, out


def test_compact_keeps_every_query_and_export_identical_and_reduces_the_fragment_count(lake, tmp_path):
    correct_ingest(lake, batch_records=20)
    ingest(lake, [str(CHAT)], IngestOptions(source="chat", batch_records=50, progress=False))
    before = fragment_counts(lake)
    assert before[S.IMAGES] >= 10 and before[S.SAMPLES] >= 20
    queries_before, export_before = outputs(lake, tmp_path, "before")
    counts = run_cli("compact", lake=lake).stdout
    after = fragment_counts(lake)
    assert after[S.IMAGES] == 1 and after[S.SAMPLES] == 1 and cli_counts(counts)["samples_fragments_after"] == 1
    queries_after, export_after = outputs(lake, tmp_path, "after")
    assert queries_after == queries_before
    files = sorted(str(p.relative_to(export_before)) for p in export_before.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(export_after)) for p in export_after.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(export_before, export_after, [f for f in files if f != "manifest.json"], shallow=False)
    assert not mismatch and not errors
    assert run_cli("doctor", lake=lake).returncode == 0


# -- doctor ---------------------------------------------------------------------------------------------
def test_doctor_finds_each_injected_fault_and_repair_fixes_the_safe_ones(lake):
    correct_ingest(lake)
    assert run_cli("doctor", lake=lake).returncode == 0
    bad_id = "0" * 64  # a blob whose bytes do not hash to its id
    lake.append(S.IMAGES, pa.table({"image_id": [bad_id], S.BLOB_COLUMN: __import__("lance").blob_array([b"not it"]),
                                    "nbytes": [7]}))
    dangling = "f" * 64  # a sample pointing at an image the lake does not hold
    lake.append(S.SAMPLES, pa.table({"sample_id": ["lcs/x.json#0"], "source": ["lcs"], "source_file": ["x.json"],
                                     "source_row": [0], "image_ids": [[dangling]]}))
    cp = lake.checkpoint("ingest:lcs", SUBSET.name) or next(iter(lake.checkpoints("ingest:lcs").values()))
    lake.delete_rows(S.SAMPLES, "source_row >= 150 AND source_file <> 'x.json'")  # rows lost behind the checkpoint
    orphan = lake.local_files(S.SAMPLES, lake.write_fragments(S.SAMPLES, pa.table({"sample_id": ["o"], "source": ["o"]})))
    for path in orphan:
        os.utime(path, (time.time() - 7200, time.time() - 7200))

    proc = run_cli("doctor", "--format", "json", lake=lake, check=False)
    found = {(f["check"], f["subject"]) for f in json.loads(proc.stdout)}
    assert proc.returncode == 1
    assert ("blob_hash", bad_id) in found and ("dangling_image_id", dangling) in found
    assert ("checkpoint_ahead", f"lcs/{cp['file']}") in found
    assert any(check == "orphan_file" for check, _ in found)

    repaired = run_cli("doctor", "--repair", lake=lake, check=False)
    assert "2 repaired" in repaired.stdout.splitlines()[-1] and not any(os.path.exists(p) for p in orphan)
    correct_ingest(lake)  # the checkpoint is gone: the lost rows come back, nothing twice
    assert lake.count(S.SAMPLES, "source_file <> 'x.json'") == 200
    left = {json.loads(run_cli("doctor", "--format", "json", lake=lake, check=False).stdout)[i]["check"] for i in range(2)}
    assert left == {"blob_hash", "dangling_image_id"}


# -- format ---------------------------------------------------------------------------------------------
def one_line_error(proc) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


def test_a_file_a_foreign_folder_or_a_missing_lake_is_one_clear_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert "is a file, not a lake" in one_line_error(run_cli("--lake", str(tmp_path / "notes.txt"), "stats", check=False))
    assert "is not a lake (it holds other files" in one_line_error(run_cli("--lake", str(tmp_path), "stats", check=False))
    assert "is not a lake (it holds other files" in one_line_error(
        run_cli("--lake", str(tmp_path), "ingest", str(CHAT), "--source", "c", check=False))
    assert "does not exist" in one_line_error(run_cli("--lake", str(tmp_path / "nope"), "stats", check=False))
    assert not (tmp_path / "nope").exists() and sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_a_lake_from_a_newer_mmlake_is_refused_and_an_older_one_is_migrated_on_request(lake):
    marker = Path(lake.root) / "_mmlake/format.json"
    marker.write_text('{"format": 99}')
    assert "written by a newer mmlake (lake format 99" in one_line_error(run_cli("stats", lake=lake, check=False))
    marker.unlink()  # a lake written before the format was recorded
    err = one_line_error(run_cli("stats", lake=lake, check=False))
    assert "older mmlake" in err and f"python -m etl --lake {lake.root} migrate" in err
    assert "format 0 -> 1" in run_cli("migrate", lake=lake).stdout
    assert run_cli("stats", lake=lake).returncode == 0
    assert "already at format 1" in run_cli("migrate", lake=lake).stdout


def test_dry_runs_count_what_would_go_and_change_nothing(lake):
    ingest(lake, [str(CHAT)], IngestOptions(source="chat", progress=False))
    before = lake.versions()
    assert cli_counts(run_cli("delete", "--source", "chat", "--dry-run", lake=lake).stdout)["samples_deleted"] == 500
    delete_source(lake, "chat")
    after_delete = lake.versions()
    counts = cli_counts(run_cli("cleanup", "--older-than", "0s", "--dry-run", lake=lake).stdout)
    assert counts.get("images_deleted", 0) == 0 and counts["versions_removed"] > 0
    assert lake.versions() == after_delete != before
    assert lake.dataset(S.SAMPLES, before[S.SAMPLES]).count_rows() == 500


def test_deleting_a_source_makes_the_dedup_tables_stale_and_doctor_says_so(lake):
    ingest(lake, [str(CHAT)], IngestOptions(source="chat", progress=False))
    ingest(lake, [str(REALDATA / "llamafactory/llava_instruct_100/llava_instruct_100.json")],
           IngestOptions(source="instruct", progress=False))
    run_cli("dedup", lake=lake)
    assert "derived_stale" not in run_cli("doctor", "--no-blobs", lake=lake).stdout
    delete_source(lake, "instruct")  # only errors (its images are missing): the dedup inputs are unchanged
    assert "derived_stale" not in run_cli("doctor", "--no-blobs", lake=lake).stdout
    delete_source(lake, "chat", "dummy_*")
    proc = run_cli("doctor", "--no-blobs", "--format", "json", lake=lake)
    assert {(f["check"], f["subject"]) for f in json.loads(proc.stdout)} >= {("derived_stale", S.DUP_EXACT)}


def test_a_cleanup_between_an_ingests_image_check_and_its_commit_leaves_no_dangling_image(lake, monkeypatch):
    """Another source's ingest finds the 200 released images still stored; a cleanup in another
    process deletes them before that ingest commits: the ingest stores them again."""
    from etl.ingest import Ingestor

    correct_ingest(lake)
    delete_source(lake, "lcs")
    check_images = Ingestor.write_new_images
    raced = []

    def cleanup_right_after_the_check(self, images):
        out = check_images(self, images)
        if not raced:
            raced.append(cli_counts(run_cli("cleanup", "--older-than", "7d", lake=lake).stdout))
        return out

    monkeypatch.setattr(Ingestor, "write_new_images", cleanup_right_after_the_check)
    counts = ingest(lake, [str(SUBSET)], IngestOptions(source="again", image_roots=[str(IMAGES)], progress=False))
    assert raced[0]["images_deleted"] == 200 and counts["images_stored_again_after_cleanup"] == 200
    assert lake.count(S.IMAGES) == 200 and lake.count(S.SAMPLES) == 200
    assert run_cli("doctor", lake=lake).returncode == 0


def test_with_parallel_workers_a_racing_cleanup_leaves_no_dangling_image_either(lake, monkeypatch):
    from etl.ingest.parallel import Committer

    correct_ingest(lake)
    delete_source(lake, "lcs")
    commit = Committer.commit_finished
    raced = []

    def cleanup_before_the_first_commit(self, finished, bar):
        if not raced:
            raced.append(cli_counts(run_cli("cleanup", "--older-than", "7d", lake=lake).stdout))
        return commit(self, finished, bar)

    monkeypatch.setattr(Committer, "commit_finished", cleanup_before_the_first_commit)
    counts = ingest(lake, [str(SUBSET)], IngestOptions(source="again", image_roots=[str(IMAGES)], progress=False,
                                                       workers=2, batch_records=50))
    assert raced[0]["images_deleted"] == 200 and counts["tasks_redone_for_shared_images"] >= 1
    assert lake.count(S.IMAGES) == 200 and lake.count(S.SAMPLES) == 200
    assert run_cli("doctor", lake=lake).returncode == 0
