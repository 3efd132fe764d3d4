"""The same jobs on a Ray cluster, and with the lake on object storage, end as on one machine.

The stories need a Ray cluster (a head and one more node, 1 CPU each) and an S3 server (moto) that
listen on 127.0.0.1 only. Ray listens on every interface whatever it is told, so they run inside a
private network namespace: `test_the_scale_out_stories_run_in_a_private_network_namespace` re-runs
this module under `unshare -n` (loopback only), where one cluster and one S3 server are started for
all the stories (`services`). Outside it those stories show as skipped; the outer test fails when
one of them fails. Skipped with a clear reason when Ray or moto are not installed
(`pip install -e '.[dev]'`) or when `unshare -n` is not allowed (not root).
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pytest

from etl import schema as S
from etl.cli import main
from etl.engine.ray_engine import MISSING_RAY
from etl.lake import Lake
from etl.sqlrun import connect, lake_tables

from conftest import REPO
from test_concurrency import assert_all_ok, assert_same, content, corpus, run_together  # noqa: F401 (fixture)

IN_NAMESPACE = os.environ.get("MMLAKE_SCALE_OUT_NETNS") == "1"
MISSING = [m for m in ("ray", "moto", "boto3") if importlib.util.find_spec(m) is None]
needs_ray_and_moto = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}: pip install -e '.[dev]'")
inside = pytest.mark.skipif(not IN_NAMESPACE, reason="runs inside the private network namespace "
                            "(test_the_scale_out_stories_run_in_a_private_network_namespace)")
BUCKET = "mmlake"


# -- the outer run ------------------------------------------------------------------------------------
@needs_ray_and_moto
def test_the_scale_out_stories_run_in_a_private_network_namespace(pytestconfig):
    if IN_NAMESPACE:
        pytest.skip("this is the run inside the namespace")
    if shutil.which("unshare") is None or shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs root, `unshare` and `ip` to start Ray and S3 on a private loopback")
    slow = ["--runslow"] if pytestconfig.getoption("--runslow") or os.environ.get("MMLAKE_SLOW") == "1" else []
    inner = " ".join([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, *slow])
    proc = subprocess.run(["unshare", "-n", "bash", "-c", f"ip link set lo up && exec {inner}"], cwd=REPO,
                          env={**os.environ, "MMLAKE_SCALE_OUT_NETNS": "1"}, capture_output=True, text=True)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, f"stories failed inside the namespace:\n{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}"
    assert " passed" in proc.stdout.strip().splitlines()[-1], proc.stdout[-3000:]


# -- without a cluster -------------------------------------------------------------------------------
def test_engine_ray_without_ray_installed_is_one_clear_error_line(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from etl.cli import main; "
            f"sys.exit(main(['--lake', {str(tmp_path / 'lake')!r}, 'enrich', 'phash', '--engine', 'ray']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2  # an environment problem (a missing extra): see `python -m etl --help`
    assert proc.stderr.strip() == f"error: {MISSING_RAY}"
    assert not (tmp_path / "lake").exists()  # refused before the lake was touched


def test_ray_sizing_options_without_engine_ray_are_refused(tmp_path, capsys):
    assert main(["--lake", str(tmp_path / "lake"), "enrich", "phash", "--gpus-per-worker", "1"]) == 2
    assert "need --engine ray" in capsys.readouterr().err


def test_sql_sees_the_tables_jobs_add_to_the_lake(lake):
    import lance
    import pyarrow as pa

    lance.write_dataset(pa.table({"sample_id": ["x"]}), lake.uri("dup_exact"))
    assert lake_tables(lake) == [*S.TABLES, "dup_exact"]


def unknown_commit(monkeypatch, applied: bool) -> list[int]:
    """Make the next Lance commit end with "result unknown", after committing when `applied`."""
    import lance

    real, calls = lance.LanceDataset.commit, []

    def commit(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            return real(*args, **kwargs)
        version = real(*args, **kwargs).version if applied else kwargs["read_version"] + 1
        raise OSError(f"Commit result for version {version} is unknown: the commit may or may not have been applied")

    monkeypatch.setattr(lance.LanceDataset, "commit", staticmethod(commit))
    return calls


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not applied"])
def test_a_commit_whose_result_is_unknown_is_looked_up_and_made_exactly_once(lake, monkeypatch, applied):
    import pyarrow as pa

    rows = pa.Table.from_pylist([{"job": "j", "file": f"f{i}", "fingerprint": "x", "upto_row": i, "done": False}
                                 for i in range(3)], schema=S.CHECKPOINTS_SCHEMA)
    fragments = lake.write_fragments(S.CHECKPOINTS, rows)
    calls = unknown_commit(monkeypatch, applied)
    version = lake.commit_fragments(S.CHECKPOINTS, fragments)
    assert lake.count(S.CHECKPOINTS) == 3
    assert version == lake.latest_version(S.CHECKPOINTS)
    assert len(calls) == (1 if applied else 2)


# -- the services: one S3 server, one 2-node Ray cluster ----------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def services():
    """moto's S3 server on 127.0.0.1 (the AWS_* variables point every process at it) and a Ray
    cluster of a head and one node with 1 CPU each, this process connected as the driver."""
    if not IN_NAMESPACE:
        pytest.skip("runs inside the private network namespace")
    scratch = tempfile.mkdtemp(prefix="mmray")  # short: Ray's socket paths live under it
    token = Path(scratch, "token")
    token.write_text(secrets.token_hex(16))
    port = free_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT": f"http://127.0.0.1:{port}",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true",
           "RAY_TMPDIR": scratch, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_USAGE_STATS_ENABLED": "0", "MMLAKE_QUIET_LOCK": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}  # tests/: actors unpickle test classes
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3
    import ray  # after the RAY_* variables: Ray reads them once, at import
    from ray.cluster_utils import Cluster

    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cluster, replacements = None, []
    try:
        wait_for_port(port, moto)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        started = time.monotonic()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        second = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, logging_level="WARNING")
        print(f"ray cluster up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield {"cluster": cluster, "second": second, "address": cluster.address, "replacements": replacements}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for node in replacements:  # `ray start --block` stops its node's processes on SIGTERM
            node.terminate()
            node.wait(60)
        if cluster is not None:
            cluster.shutdown()
        moto.send_signal(signal.SIGTERM)
        moto.wait(30)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        shutil.rmtree(scratch, ignore_errors=True)


def s3_lake(name: str) -> str:
    return f"s3://{BUCKET}/{name}-{secrets.token_hex(3)}"


def etl(lake: str, *args: str) -> None:
    """`python -m etl --lake LAKE ARGS...` in this process (the Ray driver), which must succeed."""
    assert main(["--lake", lake, *args]) == 0


RAY = ("--engine", "ray")


def pipeline(corpus: dict, lake: str, engine: tuple[str, ...], batch: int = 40) -> None:
    """LLaVA JSON, HF parquet and webdataset sources, then phash, with the given engine options."""
    common = ("--image-root", corpus["images"], "--batch-size", str(batch), "--no-progress", *engine)
    etl(lake, "ingest", corpus["a"], "--source", "a", *common)
    etl(lake, "ingest", corpus["ov"], "--source", "ov", *common)
    etl(lake, "ingest", corpus["wds"], "--source", "wds", *common)
    etl(lake, "enrich", "phash", "--rows-per-task", "32", "--no-progress", *engine)


@pytest.fixture(scope="module")
def shards(corpus) -> dict:
    """`corpus` plus a folder of two webdataset shards over its images: captioned groups (one
    caption lost its image) and an image + label shard whose tail was cut off in transfer."""
    folder = Path(corpus["root"]) / "wds"
    folder.mkdir(exist_ok=True)
    images = Path(corpus["images"])
    captioned = [(f"{k:04d}.jpg", (images / f"{k}.jpg").read_bytes()) for k in range(100, 150)]
    captioned += [(f"{k:04d}.txt", f"noise picture {k}".encode()) for k in range(100, 151)]  # 150: no image
    write_shard(folder / "shard-000000.tar", sorted(captioned))
    labelled = [m for k in range(20, 60) for m in ((f"{k:04d}.jpg", (images / f"{k}.jpg").read_bytes()),
                                                 (f"{k:04d}.cls", str(k % 7).encode()))]
    cut = write_shard(folder / "shard-000001.tar", labelled)
    with tarfile.open(cut) as tar:
        last = tar.getmembers()[-1]
    cut.write_bytes(cut.read_bytes()[:last.offset_data])  # the last label is cut off: a corrupt_shard error
    return {**corpus, "wds": str(folder)}


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1
            tar.addfile(info, io.BytesIO(data))
    return path


def full_content(lake: str) -> dict:
    """`content` plus every phash value and whether each stored blob hashes to its key."""
    got = content(lake)
    lake_ = Lake.open(lake, create=False)
    images = lake_.dataset(S.IMAGES).to_table(columns=["image_id", "phash"]).to_pylist()
    got["phash values"] = sorted((r["image_id"], r["phash"]) for r in images)
    stored = lake_.image_bytes_by_id([r["image_id"] for r in images])
    got["blobs that do not hash to their key"] = [i for i, b in stored.items() if hashlib.sha256(b).hexdigest() != i]
    return got


@pytest.fixture(scope="module")
def local_lake(shards, tmp_path_factory) -> dict:
    """The pipeline on one machine with the local engine, lake on local disk: what every story must equal."""
    if not IN_NAMESPACE:
        pytest.skip("runs inside the private network namespace")
    root = str(tmp_path_factory.mktemp("local") / "lake")
    pipeline(shards, root, ())
    return {"root": root, "content": full_content(root)}


# -- the stories ----------------------------------------------------------------------------------------
@inside
def test_ray_ingest_of_llava_json_hf_parquet_and_webdataset_then_phash_equals_the_local_lake(
        services, shards, local_lake, tmp_path):
    root = str(tmp_path / "lake")
    pipeline(shards, root, RAY)
    got = full_content(root)
    assert got["blobs that do not hash to their key"] == []
    assert_same(got, local_lake["content"])
    assert got["phash"][0][0] == len(got["images"]) > 0
    assert {"orphan_caption", "corrupt_shard"} <= {e[5] for e in got["errors"]}  # the shards' faults, recorded


@pytest.fixture(scope="module")
def s3_pipeline(services, shards, local_lake, tmp_path_factory) -> dict:
    """The pipeline on Ray with the lake on S3, then `dedup` and `export` of one recipe from it and
    from the local lake: the S3 lake's address and both export folders."""
    lake, out = s3_lake("pipeline"), tmp_path_factory.mktemp("exports")
    pipeline(shards, lake, RAY)
    recipe = out / "mix.yaml"
    recipe.write_text("name: mix\nseed: 1\ndefaults:\n  checks: pass\n  dedup: exact\n"
                      "sources:\n  - a\n  - ov\n  - wds\n")
    for name, root in (("s3", lake), ("local", local_lake["root"])):
        etl(root, "dedup")  # dup_exact: a job table the export finds by listing the lake
        etl(root, "export", str(recipe), "--out", str(out / name))
    return {"lake": lake, "exports": {name: out / name for name in ("s3", "local")}}


@inside
def test_a_lake_on_s3_runs_the_pipeline_and_exports_byte_identical_to_a_local_disk_lake(
        s3_pipeline, local_lake, tmp_path):
    lake, exports = s3_pipeline["lake"], {name: tree(path) for name, path in s3_pipeline["exports"].items()}
    assert_same(full_content(lake), local_lake["content"])
    assert exports["s3"] == exports["local"]
    assert len(exports["s3"]) > 50  # the JSON, its images and their checksums
    etl(lake, "stats")
    etl(lake, "sql", "select count(*) from dup_exact", "--format", "csv", "--output", str(tmp_path / "dups.csv"))
    assert int((tmp_path / "dups.csv").read_text().splitlines()[1]) > 0


@inside
def test_checks_and_the_report_on_an_s3_lake_say_what_they_say_on_a_local_disk_lake(s3_pipeline, local_lake,
                                                                                    tmp_path):
    said = {}
    for name, root in (("s3", s3_pipeline["lake"]), ("local", local_lake["root"])):
        for what in ("summary", "list"):
            out = tmp_path / f"{name}-checks-{what}.csv"
            etl(root, "checks", f"--{what}", "--format", "csv", "--output", str(out))
            said[name, what] = out.read_text()
        etl(root, "report", "--out", str(tmp_path / f"{name}.html"),
            "--compare", *map(str, s3_pipeline["exports"].values()))
        said[name, "report"] = re.sub(r'<p class="meta">.*?</p>', "", (tmp_path / f"{name}.html").read_text())
    for what in ("summary", "list", "report"):
        assert said["s3", what] == said["local", what], what
    assert "no_turns" in said["s3", "summary"]  # the labelled webdataset samples
    assert not Path("s3:").exists()  # nothing took the lake's address for a local path
    assert "not computed yet" in said["s3", "report"] and "wds" in said["s3", "report"]


@inside
@pytest.mark.parametrize("notebook", [pytest.param("mixture_analysis", marks=pytest.mark.slow), "explore_samples"])
def test_the_notebooks_run_on_an_s3_lake(s3_pipeline, notebook):
    """(The mixture analysis is the report's: in CI the report story covers it.)"""
    pytest.importorskip("nbclient", reason="needs the `notebooks` extra")
    import nbclient
    import nbformat

    path = REPO / "notebooks" / f"{notebook}.ipynb"
    env = {"ETL_LAKE": s3_pipeline["lake"], "ETL_RECIPE_A": str(s3_pipeline["exports"]["s3"]),
           "ETL_RECIPE_B": str(s3_pipeline["exports"]["local"])}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits them, the AWS_* variables too
    try:
        nb = nbclient.NotebookClient(nbformat.read(path, as_version=4), timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    shown = {mime: " ".join(str(o["data"][mime]) for c in nb.cells if c.cell_type == "code" for o in c.outputs
                            if mime in o.get("data", {})) for mime in ("text/html", "text/plain", "image/png")}
    if notebook == "mixture_analysis":  # plots, and the sources' composition
        assert shown["image/png"] and re.search(r"\bwds\b", shown["text/html"] + shown["text/plain"])
    else:  # thumbnails: image bytes read from the S3 lake's blobs
        assert "data:image/jpeg;base64," in shown["text/html"]
    assert not (path.parent / "s3:").exists()  # nothing took the lake's address for a local path


def tree(out: Path) -> dict[str, str]:
    """sha256 of every file an export wrote, but those naming where it was written or the lake's
    address and versions (data.yaml, manifest.json)."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("data.yaml", "manifest.json")}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """The tiny random RAM++ checkpoint and Qwen2-VL folder the model tests build, in their real formats."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from qwen_fixtures import build_tiny_qwen_vl
    from ram_fixtures import write_tiny_ram

    root = tmp_path_factory.mktemp("models")
    return {"tags": str(write_tiny_ram(root / "ram")), "loss": str(build_tiny_qwen_vl(root / "qwen", "qwen2_vl"))}


def tag_job(lake: str, models: dict[str, str], *engine: str) -> None:
    """RAM++ tags on every image, in small tasks."""
    etl(lake, "enrich", "tags", "--model", models["tags"], "--image-size", "64", "--batch-size", "4",
        "--rows-per-task", "24", "--no-progress", *engine)


def model_jobs(lake: str, models: dict[str, str], *engine: str) -> None:
    """RAM++ tags on every image, Qwen2-VL loss on the webdataset samples (their captions), small tasks."""
    tag_job(lake, models, *engine)
    etl(lake, "enrich", "loss", "--model", models["loss"], "--max-pixels", str(28 * 28 * 16), "--where",
        "source = 'wds'", "--rows-per-task", "12", "--no-progress", *engine)


def model_columns(lake: str) -> dict:
    """Every tags and loss value of the lake, the failures of those jobs, and each run's counts."""
    con = connect(Lake.open(lake, create=False))
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    runs = {c: json.loads(n) for c, n in q("select command, counts from runs where command like 'enrich %'")}
    return {"tags": q("select image_id, tags, tag_scores, tag_model from images order by image_id"),
            "loss": q("select sample_id, loss, loss_tokens, loss_model from samples order by sample_id"),
            "errors": q("select error_id, kind, message from errors where stage in ('tags', 'loss') order by 1"),
            "runs": runs}


@inside
def test_ray_tags_and_loss_load_each_model_once_per_actor_and_equal_the_local_run(
        services, local_lake, tiny_models, tmp_path):
    lakes = {name: str(shutil.copytree(local_lake["root"], tmp_path / name)) for name in ("local", "ray")}
    model_jobs(lakes["local"], tiny_models)
    model_jobs(lakes["ray"], tiny_models, *RAY, "--workers", "2")
    got, want = model_columns(lakes["ray"]), model_columns(lakes["local"])
    assert_same_tags(got, want)
    assert sum(r[1] is not None for r in got["tags"]) == len(got["tags"]) > 150  # every image tagged
    assert [(r[0], r[2], r[3]) for r in got["loss"]] == [(r[0], r[2], r[3]) for r in want["loss"]]
    assert [r[1] for r in got["loss"]] == pytest.approx([r[1] for r in want["loss"]], abs=1e-4, nan_ok=False)
    assert sum(r[1] is not None for r in got["loss"]) >= 45  # the captioned samples; the labelled ones have no answer
    assert got["errors"] == want["errors"] and any(e[1] == "no_answer" for e in got["errors"])
    for job, tasks in (("enrich tags", math.ceil(len(got["tags"]) / 24)), ("enrich loss", 85 // 12)):
        assert got["runs"][job]["worker_setups"] == 2 < tasks  # one model per actor, loaded once for all its tasks
        assert want["runs"][job]["worker_setups"] == 1


def assert_same_tags(got: dict, want: dict) -> None:
    assert [r[:2] + r[3:] for r in got["tags"]] == [r[:2] + r[3:] for r in want["tags"]]
    assert [s for r in got["tags"] for s in r[2]] == pytest.approx([s for r in want["tags"] for s in r[2]], abs=1e-5)


class OverlapProbe:
    """A staged worker (as enrich's): counts the tasks whose `prepare` began while another computed,
    and the most computing at once. It is its own factory."""

    staged = True

    def __init__(self):
        self.computing, self.most, self.overlaps, self.lock = 0, 0, 0, threading.Lock()

    def prepare(self, task: int) -> int:
        with self.lock:
            self.overlaps += self.computing > 0
        return task

    def compute(self, task: int) -> tuple[int, int]:
        with self.lock:
            self.computing += 1
            self.most = max(self.most, self.computing)
        time.sleep(0.3)  # the model's time
        with self.lock:
            self.computing -= 1
            return self.overlaps, self.most

    def __call__(self, task: int) -> tuple[int, int]:
        return self.compute(self.prepare(task))


@inside
def test_a_ray_actor_prepares_the_next_task_while_it_computes_one(services):
    from etl.engine.base import EngineSpec

    overlaps, most = max(EngineSpec("ray").build(1).map_unordered(OverlapProbe, range(8)))
    assert overlaps >= 4  # one actor: 7 tasks arrive while it computes one
    assert most == 1  # the model computes one task at a time


@inside
def test_two_ingests_at_once_on_one_s3_lake_store_each_shared_image_once(services, corpus, tmp_path):
    lake = s3_lake("together")
    commands = [["ingest", corpus[name], "--source", name, "--image-root", corpus["images"], "--batch-size", "50",
                 "--no-progress"] for name in ("a", "b")]
    assert_all_ok(run_together(lake, commands, random.Random(1), "lease"))
    serial = str(tmp_path / "serial")
    for args in commands:
        etl(serial, *args)
    assert_same(content(lake), content(serial))


@inside
def test_an_ingest_and_a_phash_at_once_on_one_s3_lake_end_as_if_run_one_after_the_other(services, corpus, tmp_path):
    lake = s3_lake("ingest-phash")
    ingest = [["ingest", corpus[name], "--source", name, "--image-root", corpus["images"], "--batch-size", "50",
               "--no-progress"] for name in ("a", "b")]
    etl(lake, *ingest[0])
    assert_all_ok(run_together(lake, [ingest[1], ["enrich", "phash", "--no-progress"]], random.Random(2), "lease"))
    etl(lake, "enrich", "phash", "--no-progress")  # what the first phash could not see yet
    serial = str(tmp_path / "serial")
    for args in [*ingest, ["enrich", "phash", "--no-progress"]]:
        etl(serial, *args)
    assert_same(full_content(lake), full_content(serial))

# -- faults (--runslow) ---------------------------------------------------------------------------------
def busy_ray_worker(seconds: float = 120) -> int | None:
    """The pid of one of this test's Ray actor processes while it runs a task (its process title
    is then `ray::Worker.run`), waiting up to `seconds` for one."""
    import psutil

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for p in psutil.Process().children(recursive=True):
            try:
                if "ray::Worker.run" in " ".join(p.cmdline()):
                    return p.pid
            except psutil.Error:
                continue
        time.sleep(0.05)
    return None


def in_background(action) -> threading.Thread:
    """Run `action` on a thread; what it returns lands in the thread's `result` list."""
    thread = threading.Thread(target=lambda: thread.result.append(action()), daemon=True)
    thread.result = []  # type: ignore[attr-defined]
    thread.start()
    return thread


def kill_a_busy_ray_worker() -> int | None:
    pid = busy_ray_worker()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    return pid


@inside
@pytest.mark.slow
def test_a_ray_worker_killed_mid_ingest_and_mid_phash_ends_equal_to_the_local_lake(
        services, shards, local_lake, tmp_path):
    corpus = shards
    root = str(tmp_path / "lake")
    common = ("--image-root", corpus["images"], "--batch-size", "10", "--no-progress", *RAY)
    killer = in_background(kill_a_busy_ray_worker)
    etl(root, "ingest", corpus["a"], "--source", "a", *common)
    killer.join()
    assert killer.result[0], "no Ray worker was seen running an ingest task"
    etl(root, "ingest", corpus["ov"], "--source", "ov", *common)
    etl(root, "ingest", corpus["wds"], "--source", "wds", *common)
    killer = in_background(kill_a_busy_ray_worker)
    etl(root, "enrich", "phash", "--rows-per-task", "8", "--no-progress", *RAY)
    killer.join()
    assert killer.result[0], "no Ray worker was seen running a phash task"
    assert_same(full_content(root), local_lake["content"])


@inside
@pytest.mark.slow
def test_a_ray_actor_killed_mid_tags_is_restarted_and_the_tags_equal_the_local_run(
        services, local_lake, tiny_models, tmp_path):
    lakes = {name: str(shutil.copytree(local_lake["root"], tmp_path / name)) for name in ("local", "ray")}
    tag_job(lakes["local"], tiny_models)
    killer = in_background(kill_a_busy_ray_worker)
    tag_job(lakes["ray"], tiny_models, *RAY, "--workers", "2")
    killer.join()
    assert killer.result[0], "no Ray worker was seen running a tags task"
    got, want = model_columns(lakes["ray"]), model_columns(lakes["local"])
    assert_same_tags(got, want)
    assert got["errors"] == want["errors"]


@inside
@pytest.mark.slow
def test_the_driver_killed_between_commits_then_rerun_ends_equal_to_the_local_lake(
        services, shards, local_lake, tmp_path):
    corpus = shards
    lake = s3_lake("driver-killed")
    common = ["--image-root", corpus["images"], "--batch-size", "10", "--no-progress", *RAY,
              "--ray-address", services["address"]]
    env = {**os.environ, "MMLAKE_FAULT": "after_samples:5"}
    first = subprocess.run([sys.executable, "-m", "etl", "--lake", lake, "ingest", corpus["a"], "--source", "a",
                            *common], cwd=REPO, env=env, capture_output=True, text=True)
    assert first.returncode != 0, first.stderr[-2000:]
    etl(lake, "ingest", corpus["a"], "--source", "a", *common)
    etl(lake, "ingest", corpus["ov"], "--source", "ov", *common)
    etl(lake, "ingest", corpus["wds"], "--source", "wds", *common)
    etl(lake, "enrich", "phash", "--rows-per-task", "32", "--no-progress", *RAY)
    assert_same(full_content(lake), local_lake["content"])


@inside
@pytest.mark.slow
def test_the_second_nodes_raylet_killed_mid_ingest_and_replaced_ends_equal_to_the_local_lake(
        services, shards, local_lake, tmp_path):
    """A node dies (kill -9 of its raylet, its workers go with it) and the cluster replaces it, as
    KubeRay or an autoscaler would: its actors restart on the new node, their tasks run again."""
    from ray._private import ray_constants

    cluster, lost, corpus = services["cluster"], services["second"], shards
    root = str(tmp_path / "lake")
    common = ("--image-root", corpus["images"], "--batch-size", "10", "--no-progress", *RAY)

    def kill_and_replace() -> bool:
        if busy_ray_worker() is None:
            return False
        os.kill(lost.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid, signal.SIGKILL)
        cluster.remove_node(lost, allow_graceful=False)  # what the raylet left behind
        # the replacement joins like a new machine would (Cluster.add_node only works on the main thread)
        services["replacements"].append(subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--address", services["address"], "--num-cpus", "1",
             "--block", "--disable-usage-stats"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return True

    thread = in_background(kill_and_replace)
    etl(root, "ingest", corpus["a"], "--source", "a", *common)
    thread.join()
    assert thread.result[0], "the node was not taken down"
    etl(root, "ingest", corpus["ov"], "--source", "ov", *common)
    etl(root, "ingest", corpus["wds"], "--source", "wds", *common)
    etl(root, "enrich", "phash", "--rows-per-task", "32", "--no-progress", *RAY)
    assert_same(full_content(root), local_lake["content"])
