"""`ingest --format urls`: image URL lists downloaded into the lake, every failure an errors row.

Each test runs inside a private network namespace (loopback only) against `ImageServer`.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl import schema as S
from etl.faults import ENV as FAULT
from etl.ingest import IngestOptions, ingest
from etl.lake import Lake
from etl.sources import detect_format
from etl.sqlrun import connect

from conftest import REPO, errors_of, needs_realdata, run_cli, samples_of
from http_fixtures import ImageServer, in_private_network, jpeg

FAST = {"timeout": 1.0, "retries": 1, "backoff": 0.1, "max_bytes": 1 << 20}


def ingest_urls(lake: Lake, path, source: str = "web", retry_failed: bool = False, **options) -> dict:
    opts = IngestOptions(source=source, format="urls", reader_options={**FAST, **options}, progress=False,
                         retry_failed=retry_failed)
    return ingest(lake, [str(path)], opts)


def write_jsonl(path, records: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@in_private_network
def test_every_kind_of_answer_ends_as_a_sample_or_an_errors_row(tmp_path, lake):
    files = {"a.jpg": jpeg(1), "b.jpg": jpeg(2), "c.jpg": jpeg(3)}
    with ImageServer(files, slow_seconds=3) as srv:
        rows = [("ok", srv.url("a.jpg")), ("not_found", srv.url("missing")), ("flaky", srv.url("flaky/b.jpg")),
                ("slow", srv.url("slow/a.jpg")), ("redirect", srv.url("redirect/c.jpg")), ("html", srv.url("html")),
                ("truncated", srv.url("truncated")), ("huge", srv.url("huge")), ("again", srv.url("a.jpg")),
                ("ftp", "ftp://127.0.0.1/a.jpg"), ("endless", srv.url("endless")), ("gzip", srv.url("badgzip"))]
        path = write_jsonl(tmp_path / "list.jsonl", [{"key": k, "url": u, "caption": f"a {k} photo"} for k, u in rows])
        counts = ingest_urls(lake, path)
        assert srv.count("/flaky/b.jpg") == 2  # the 500 was retried
        assert srv.count("/huge") == 1  # refused from its Content-Length, not retried
    samples = {s["orig_id"]: s for s in samples_of(lake, "web")}
    assert sorted(samples) == ["again", "flaky", "ok", "redirect"]
    assert samples["ok"]["conversations"] == [{"from": "human", "value": "<image>"},
                                               {"from": "gpt", "value": "a ok photo"}]
    assert samples["ok"]["image_paths"] == [srv.url("a.jpg")] and samples["ok"]["image_ids"] == samples["again"]["image_ids"]
    errors = {e["orig_id"]: e for e in errors_of(lake, "web")}
    assert {k: e["kind"] for k, e in errors.items()} == {
        "not_found": "http_404", "slow": "timeout", "html": "not_an_image", "truncated": "protocol_error",
        "huge": "too_large", "ftp": "bad_url", "endless": "too_large", "gzip": "bad_encoding"}
    assert "HTTP 404 Not Found" in errors["not_found"]["message"] and srv.url("missing") in errors["not_found"]["message"]
    assert "received 100 bytes, expected 1000" in errors["truncated"]["message"]
    assert json.loads(errors["html"]["raw"])["url"] == srv.url("html")
    assert counts["images_added"] == 3 and counts["samples_added"] == 4


@in_private_network
def test_rerunning_a_finished_url_ingest_downloads_nothing(tmp_path, lake):
    files = {f"{k}.jpg": jpeg(k) for k in range(20)}
    with ImageServer(files) as srv:
        path = write_jsonl(tmp_path / "list.jsonl", [{"url": srv.url(f"{k}.jpg")} for k in range(20)])
        ingest_urls(lake, path, source="imgs")
        first = sum(srv.hits.values())
        again = ingest_urls(lake, path, source="imgs")
        assert sum(srv.hits.values()) == first == 20
    assert again["files_already_done"] == 1
    assert lake.dataset(S.IMAGES).count_rows() == 20
    assert lake.dataset(S.SAMPLES).count_rows() == 0  # a list with no caption stores images only


@in_private_network
def test_a_rerun_fetches_again_what_failed_for_a_while_and_not_what_is_gone(tmp_path, lake):
    with ImageServer({"a.jpg": jpeg(1), "b.jpg": jpeg(2)}) as srv:  # /flaky/b.jpg: 500 once, then 200
        rows = [("ok", srv.url("a.jpg")), ("flaky", srv.url("flaky/b.jpg")), ("gone", srv.url("missing"))]
        path = write_jsonl(tmp_path / "list.jsonl", [{"key": k, "url": u, "caption": k} for k, u in rows])
        first = ingest_urls(lake, path, retries=0)
        assert {e["orig_id"]: e["kind"] for e in errors_of(lake, "web")} == {"flaky": "http_500", "gone": "http_404"}
        again = ingest_urls(lake, path, retries=0)
        third = ingest_urls(lake, path, retries=0)
        hits = {p: srv.count(p) for p in ("/a.jpg", "/flaky/b.jpg", "/missing")}
    assert hits == {"/a.jpg": 1, "/flaky/b.jpg": 2, "/missing": 1}  # the 404 is not asked again
    assert first["samples_added"] == 1 and again["samples_added"] == 1 and third["samples_added"] == 0
    assert again["failed_records_refetched"] == again["failed_records_recovered"] == 1
    assert not third["failed_records_refetched"] and third["files_already_done"] == 1
    samples = samples_of(lake, "web")
    assert sorted(s["orig_id"] for s in samples) == ["flaky", "ok"]
    ids = lake.dataset(S.SAMPLES).to_table(columns=["sample_id"]).column(0).to_pylist()
    assert len(ids) == len(set(ids)) == 2  # the recovered record is in the lake once
    flaky = next(s for s in samples if s["orig_id"] == "flaky")
    assert flaky["source_row"] == 1 and flaky["conversations"][1]["value"] == "flaky"
    (gone,) = errors_of(lake, "web")  # the recovered record's errors row is gone, the 404's stays once
    assert gone["orig_id"] == "gone" and gone["kind"] == "http_404"


@in_private_network
def test_retry_failed_fetches_again_what_was_gone_and_keeps_one_errors_row_per_failure(tmp_path, lake):
    files = {"a.jpg": jpeg(1)}
    with ImageServer(files) as srv:
        rows = [("ok", srv.url("a.jpg")), ("later", srv.url("later.jpg")), ("gone", srv.url("missing")),
                ("html", srv.url("html"))]
        path = write_jsonl(tmp_path / "list.jsonl", [{"key": k, "url": u} for k, u in rows])
        ingest_urls(lake, path)
        files["later.jpg"] = jpeg(2)  # put online after the first run
        ingest_urls(lake, path)  # a 404 and an HTML page are not fetched again unasked
        assert srv.count("/later.jpg") == srv.count("/missing") == srv.count("/html") == 1
        asked = ingest_urls(lake, path, retry_failed=True)
        assert srv.count("/later.jpg") == srv.count("/missing") == srv.count("/html") == 2
        assert srv.count("/a.jpg") == 1
    assert asked["failed_records_refetched"] == 3 and asked["failed_records_recovered"] == 1
    assert asked["images_added"] == 1
    errors = errors_of(lake, "web")
    assert sorted((e["orig_id"], e["kind"]) for e in errors) == [("gone", "http_404"), ("html", "not_an_image")]
    last_run = lake.dataset(S.RUNS).to_table().sort_by([("started_at", "descending")]).column("run_id")[0].as_py()
    run_ids = lake.dataset(S.ERRORS).to_table(columns=["run_id"]).column(0).to_pylist()
    assert run_ids == [last_run, last_run]  # one row per failure, replaced by the run that failed again


@in_private_network
def test_kill_9_between_a_refetch_s_commits_then_rerun_keeps_the_sample_once_and_drops_its_error(tmp_path):
    root = tmp_path / "lake"
    with ImageServer({"a.jpg": jpeg(1), "b.jpg": jpeg(2)}) as srv:
        path = write_jsonl(tmp_path / "list.jsonl", [{"id": "ok", "url": srv.url("a.jpg"), "caption": "hi"},
                                                     {"id": "f", "url": srv.url("flaky/b.jpg"), "caption": "hi"}])
        command = [sys.executable, "-m", "etl", "--lake", str(root), "ingest", str(path), "--format", "urls",
                   "--source", "web", "--retries", "0", "--no-progress"]
        subprocess.run(command, check=True, cwd=REPO, capture_output=True)
        crashed = subprocess.run(command, cwd=REPO, capture_output=True, env={**os.environ, FAULT: "refetch_after_samples"})
        assert crashed.returncode == 137, crashed.stderr.decode()[-2000:]
        lake = Lake.open(str(root), create=False)
        assert len(samples_of(lake, "web")) == 2 and len(errors_of(lake, "web")) == 1  # both: the cut
        subprocess.run(command, check=True, cwd=REPO, capture_output=True)
        assert srv.count("/flaky/b.jpg") == 2  # the rerun after the crash fetched nothing
    assert [s["orig_id"] for s in samples_of(lake, "web")] == ["ok", "f"] and errors_of(lake, "web") == []


@in_private_network
def test_kill_9_mid_download_then_rerun_gives_the_same_lake_and_refetches_only_what_is_missing(tmp_path):
    n = 40
    files = {f"{k}.jpg": jpeg(k) for k in range(n)}
    with ImageServer(files) as srv:
        records = [{"id": str(k), "url": srv.url(f"{k}.jpg") + "?delay=0.2", "caption": f"photo {k}"}
                   for k in range(n)]
        records[7]["url"] = srv.url("missing")
        path = write_jsonl(tmp_path / "list.jsonl", records)

        def command(root) -> list[str]:
            return [sys.executable, "-m", "etl", "--lake", str(root), "ingest", str(path), "--format", "urls",
                    "--source", "web", "--batch-size", "5", "--concurrency", "2", "--no-progress"]

        subprocess.run(command(tmp_path / "reference"), check=True, cwd=REPO, capture_output=True)
        before_crash = sum(srv.hits.values())
        srv.hits.clear()
        crashed = subprocess.Popen(command(tmp_path / "lake"), cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        upto = wait_for_checkpoint(tmp_path / "lake", at_least=15, proc=crashed)
        crashed.send_signal(signal.SIGKILL)
        crashed.wait()
        fetched_before_kill = dict(srv.hits)
        srv.hits.clear()
        subprocess.run(command(tmp_path / "lake"), check=True, cwd=REPO, capture_output=True)
        refetched = {p for p in srv.hits}
    assert before_crash == n
    assert upto < n, "the run finished before it could be killed"
    assert not refetched & {f"/{k}.jpg" for k in range(upto)}  # rows below the checkpoint are not fetched again
    assert sum(fetched_before_kill.values()) + sum(srv.hits.values()) < 2 * n
    assert lake_content(tmp_path / "lake") == lake_content(tmp_path / "reference")


def wait_for_checkpoint(root, at_least: int, proc: subprocess.Popen) -> int:
    """The row the ingest's checkpoint says is done, once it is at least `at_least`."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            upto = max(r["upto_row"] for r in Lake.open(str(root), create=False).dataset(S.CHECKPOINTS)
                       .to_table(columns=["upto_row"]).to_pylist())
        except Exception:  # the lake is being created, or has no checkpoint yet
            upto = -1
        if upto >= at_least:
            return upto
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared before the run ended")


def lake_content(root) -> dict:
    con = connect(Lake.open(str(root), create=False))
    return {
        "samples": con.execute("select sample_id, orig_id, image_ids, image_paths, conversations, meta "
                               "from samples order by sample_id").fetchall(),
        "images": con.execute("select image_id, nbytes from images order by image_id").fetchall(),
        "errors": con.execute("select error_id, kind, row, message from errors order by error_id").fetchall(),
    }


@in_private_network
def test_img2dataset_list_checks_sha256_and_records_the_corrupted_hash(tmp_path, lake, realdata):
    listed = realdata / "img2dataset/tests/test_files/sample_image.parquet"
    image = realdata / "img2dataset/tests/blur_test_files/original.png"
    needs_realdata(listed)
    table = pq.read_table(listed)
    real_url = table.column("url")[0].as_py()
    url_path = real_url.split("://", 1)[1].split("/", 1)[1]  # the same path, served from loopback
    with ImageServer({url_path: image.read_bytes()}) as srv:
        local = table.set_column(0, "url", pa.array([srv.url(url_path)] * table.num_rows))
        pq.write_table(local, tmp_path / "sample_image.parquet")  # derived: only the host of the URL changed
        ingest_urls(lake, tmp_path / "sample_image.parquet", source="i2d")
        assert srv.count("/" + url_path) == 1  # the same URL on two rows is fetched once
    (sample,) = samples_of(lake, "i2d")
    assert sample["conversations"][1] == {"from": "gpt", "value": "Lorem Ipsum"}
    assert sample["image_ids"] == [json.loads((realdata / "img2dataset/tests/test_files/hashes.json").read_text())["sha256"]]
    assert json.loads(sample["meta"])["sha256hash"] == sample["image_ids"][0]
    (error,) = errors_of(lake, "i2d")
    assert error["row"] == 1 and error["kind"] == "sha256_mismatch"
    assert "fec7030" in error["message"]


@in_private_network
def test_csv_tsv_and_llava_lists_with_url_images_and_conversations(tmp_path, lake):
    files = {"a.jpg": jpeg(10), "b.jpg": jpeg(11)}
    with ImageServer(files) as srv:
        with open(tmp_path / "laion.tsv", "w", newline="") as f:
            w = csv.writer(f, delimiter="\t")
            w.writerow(["URL", "TEXT", "WIDTH"])
            w.writerow([srv.url("a.jpg"), "a red square", "32"])
            w.writerow(["", "no url here", "0"])
        llava = write_jsonl(tmp_path / "llava.jsonl", [
            {"id": "0001", "image": [srv.url("a.jpg"), srv.url("b.jpg")], "source": "web",
             "conversations": [{"from": "human", "value": "<image>\n<image>\nSame?"}, {"from": "gpt", "value": "No."}]},
            {"id": "0002", "image": "b.jpg", "conversations": [{"from": "human", "value": "<image>"}]},
        ])
        ingest_urls(lake, tmp_path / "laion.tsv", source="laion")
        ingest_urls(lake, llava, source="llava")
    (laion,) = samples_of(lake, "laion")
    assert laion["conversations"][1]["value"] == "a red square" and json.loads(laion["meta"]) == {"WIDTH": "32"}
    (no_url,) = errors_of(lake, "laion")
    assert no_url["kind"] == "malformed_record" and no_url["row"] == 1
    (pair,) = samples_of(lake, "llava")
    assert pair["orig_id"] == "0001" and len(pair["image_ids"]) == 2 and json.loads(pair["meta"]) == {"source": "web"}
    (relative,) = errors_of(lake, "llava")
    assert relative["kind"] == "bad_url" and "b.jpg" in relative["message"]


@in_private_network
def test_per_host_rate_spaces_the_requests_to_one_host(tmp_path, lake):
    files = {f"{k}.jpg": jpeg(k) for k in range(8)}
    with ImageServer(files) as srv:
        path = write_jsonl(tmp_path / "list.jsonl", [{"url": srv.url(f"{k}.jpg")} for k in range(8)])
        ingest_urls(lake, path, per_host_rate=20.0, concurrency=8)
        times = sorted(t for _, t in srv.times)
    # 20/s: slots 50 ms apart whatever the concurrency, so 8 requests span at least 350 ms (less the
    # scheduling jitter of the first); unpaced, 8 threads would send them all within a few ms
    assert len(times) == 8 and times[-1] - times[0] >= 0.3


@in_private_network
def test_cli_ingest_format_urls_reports_counts_and_keeps_going(tmp_path, lake):
    with ImageServer({"a.jpg": jpeg(5)}) as srv:
        path = write_jsonl(tmp_path / "list.jsonl", [{"url": srv.url("a.jpg"), "txt": "hi"}, {"url": srv.url("gone")}])
        proc = run_cli("ingest", str(path), "--format", "urls", "--source", "cli", "--retries", "0",
                       "--timeout", "2", "--no-progress", lake=lake)
        asked = run_cli("ingest", str(path), "--format", "urls", "--source", "cli", "--retry-failed",
                        "--no-progress", lake=lake)
        assert srv.count("/gone") == 2 and srv.count("/a.jpg") == 1
    assert "samples added" in proc.stdout and "http_404" in proc.stdout
    assert "failed records refetched" in asked.stdout
    assert [e["kind"] for e in errors_of(lake, "cli")] == ["http_404"]


@in_private_network
def test_format_auto_downloads_a_parquet_of_urls_and_captions_and_leaves_path_and_bytes_parquets_to_hf(tmp_path, lake):
    with ImageServer({"a.jpg": jpeg(1)}) as srv:
        pq.write_table(pa.table({"url": [srv.url("a.jpg"), None], "caption": ["a red photo", "no url"],
                                 "width": [32, 0]}), tmp_path / "cc3m.parquet")
        pq.write_table(pa.table({"url": ["coco/000001.jpg"], "caption": ["a path"]}), tmp_path / "paths.parquet")
        pq.write_table(pa.table({"url": [srv.url("a.jpg")], "image": [{"bytes": jpeg(2), "path": "a.jpg"}],
                                 "caption": ["bytes kept beside their url"]}), tmp_path / "embedded.parquet")
        assert [detect_format(str(tmp_path / f)) for f in ("cc3m.parquet", "paths.parquet", "embedded.parquet")] \
            == ["urls", "hf-parquet", "hf-parquet"]
        proc = run_cli("ingest", str(tmp_path / "cc3m.parquet"), "--source", "cc3m", "--no-progress", lake=lake)
        assert srv.count("/a.jpg") == 1, proc.stdout + proc.stderr
    (sample,) = samples_of(lake, "cc3m")
    assert sample["image_paths"] == [srv.url("a.jpg")] and sample["conversations"][1]["value"] == "a red photo"
    assert json.loads(sample["meta"]) == {"width": 32}
    assert [(e["row"], e["kind"]) for e in errors_of(lake, "cc3m")] == [(1, "malformed_record")]


def test_format_auto_leaves_a_web_text_dump_with_page_urls_alone_but_takes_a_bare_list_of_image_urls(tmp_path):
    """C4 / FineWeb keep the page's `url` beside its `text`: auto must not start downloading web pages."""
    pq.write_table(pa.table({"text": ["An article about boats."] * 2, "url": ["https://news.example/boats",
                                                                           "https://blog.example/2023/05/boats.html"],
                             "timestamp": ["2023-05-01", "2023-05-02"]}), tmp_path / "c4.parquet")
    pq.write_table(pa.table({"url": ["https://cdn.example/a.JPG?w=512", "https://cdn.example/b.webp"]}),
                   tmp_path / "bare.parquet")
    pq.write_table(pa.table({"URL": ["https://cdn.example/img/123"], "TEXT": ["a dog"], "WIDTH": [640]}),
                   tmp_path / "laion.parquet")
    assert [detect_format(str(tmp_path / f)) for f in ("c4.parquet", "bare.parquet", "laion.parquet")] \
        == ["hf-parquet", "urls", "urls"]


def test_format_auto_takes_csv_and_tsv_lists_of_image_urls_but_not_a_csv_of_web_pages(tmp_path):
    (tmp_path / "cc.tsv").write_text("caption\turl\na dog\thttps://cdn.example/p/123\n")
    (tmp_path / "laion.csv").write_text('URL,TEXT\n"https://cdn.example/a.jpg","a ""red"" car"\n')
    (tmp_path / "pages.csv").write_text("url,text\nhttps://news.example/boats,An article.\n")
    assert [detect_format(str(tmp_path / f)) for f in ("cc.tsv", "laion.csv")] == ["urls", "urls"]
    with pytest.raises(ValueError, match="cannot detect the format"):
        detect_format(str(tmp_path / "pages.csv"))


def test_format_auto_takes_img2dataset_s_own_url_list_for_a_url_list(realdata):
    listed = realdata / "img2dataset/tests/test_files/sample_image.parquet"
    needs_realdata(listed)
    assert detect_format(str(listed)) == "urls"


def test_cli_start_up_does_not_load_the_http_client():
    """httpx costs about half a second to import: only `ingest --format urls` pays it, when it reads a list."""
    probe = "import sys; from etl.cli import build_parser; build_parser(); print('httpx' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert proc.stdout.strip() == "False"
