"""Sources read in place: `ingest s3://bucket/...` and `ingest hf://datasets/ORG/NAME/...` stream the
files through their file system (etl/storage.py), with no local copy, and end as an ingest of the
same files from local disk: samples row for row, images blob for blob, files named relative to the
folder or glob they were found under.

S3 is a real server (moto) on 127.0.0.1 inside a private network namespace: the outer test
`test_the_object_storage_stories_run_in_a_private_network_namespace` re-runs this module under
`unshare -n`, where the `s3` fixture starts it; outside it those stories show as skipped and the
outer test fails when one of them fails. The Hub cannot be reached here: the `hub` fixture
registers, under fsspec's `hf` protocol, a file system serving a local folder laid out like a Hub
snapshot (`datasets/ORG/NAME/...`); ingest finds it by fsspec's protocol lookup, as it finds
huggingface_hub's HfFileSystem in production.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from etl import schema as S
from etl import storage
from etl.cli import main
from etl.lake import Lake

from conftest import REPO
from test_concurrency import content
from test_ingest_parquet import onevision_rows, write_onevision
from test_scale_out import free_port, wait_for_port

IN_NAMESPACE = os.environ.get("MMLAKE_REMOTE_NETNS") == "1"
MISSING = [m for m in ("moto", "boto3") if importlib.util.find_spec(m) is None]
inside = pytest.mark.skipif(not IN_NAMESPACE, reason="runs inside the private network namespace "
                            "(test_the_object_storage_stories_run_in_a_private_network_namespace)")
outside = pytest.mark.skipif(IN_NAMESPACE, reason="runs outside the namespace (needs no server)")
BUCKET = "mmlake-sources"


# -- the outer run ------------------------------------------------------------------------------------
@outside
@pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}: pip install -e '.[dev]'")
def test_the_object_storage_stories_run_in_a_private_network_namespace():
    if shutil.which("unshare") is None or shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs root, `unshare` and `ip` to start an S3 server on a private loopback")
    inner = " ".join([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__])
    proc = subprocess.run(["unshare", "-n", "bash", "-c", f"ip link set lo up && exec {inner}"], cwd=REPO,
                          env={**os.environ, "MMLAKE_REMOTE_NETNS": "1"}, capture_output=True, text=True)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, f"stories failed inside the namespace:\n{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}"
    assert " passed" in proc.stdout.strip().splitlines()[-1], proc.stdout[-3000:]


# -- the S3 server ------------------------------------------------------------------------------------
class Bucket:
    """The test bucket: `upload` copies a local folder under a fresh prefix and returns its URL."""

    def __init__(self, client):
        self.client = client

    def upload(self, folder: Path, name: str) -> str:
        prefix = f"{name}-{secrets.token_hex(3)}"
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.client.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(folder).as_posix()}",
                                   Body=path.read_bytes())
        return f"s3://{BUCKET}/{prefix}"


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1; the AWS_* variables (the ones the lake reads too) point this
    process and its children at it."""
    if not IN_NAMESPACE:
        pytest.skip("runs inside the private network namespace")
    port = free_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_ALLOW_HTTP": "true", "MMLAKE_QUIET_LOCK": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, moto)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield Bucket(client)
    finally:
        moto.send_signal(signal.SIGTERM)
        moto.wait(30)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


# -- the Hub as a local folder --------------------------------------------------------------------------
class LocalHub(DirFileSystem):
    """A folder laid out like the Hub (`datasets/ORG/NAME/...`) served under the `hf` protocol;
    remembers the files opened through it. `down_after_reads`: the Hub goes away (every request
    fails like a dropped connection) after that many reads."""

    protocol = "hf"
    cachable = False
    root: str = ""
    opened: list[str] = []
    reads = 0
    down_after_reads: int | None = None

    def __init__(self, **kwargs):
        super().__init__(path=self.root, fs=LocalFileSystem(), **kwargs)

    @classmethod
    def answer(cls) -> None:
        if cls.down_after_reads is not None and cls.reads >= cls.down_after_reads:
            raise ConnectionResetError("the Hub went away")

    def open(self, path, *args, **kwargs):
        self.answer()
        LocalHub.opened.append(path)
        return HubFile(super().open(path, *args, **kwargs))

    def info(self, path, **kwargs):
        self.answer()
        return super().info(path, **kwargs)


class HubFile:
    """A file read from the LocalHub: each read counts, and fails once the Hub is down."""

    def __init__(self, f):
        self.f = f

    def read(self, *args):
        LocalHub.answer()
        LocalHub.reads += 1
        return self.f.read(*args)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def hub(tmp_path):
    """`hf://` served from tmp_path/hub for this test (fsspec's registry entry restored after)."""
    import fsspec
    from fsspec.registry import _registry

    root = tmp_path / "hub"
    root.mkdir()
    saved = _registry.get("hf")
    LocalHub.root, LocalHub.opened, LocalHub.reads, LocalHub.down_after_reads = str(root), [], 0, None
    fsspec.register_implementation("hf", LocalHub, clobber=True)
    try:
        yield root
    finally:
        if saved is None:
            _registry.pop("hf", None)
        else:
            _registry["hf"] = saved


# -- sources ----------------------------------------------------------------------------------------------
def parquet_dataset(root: Path) -> Path:
    """An HF dataset folder: a README, two config folders of OneVision-style shards (embedded JPEGs,
    text-only rows, corrupt bytes, a row without turns)."""
    rows = onevision_rows(50)
    (root / "README.md").parent.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("---\nconfigs: []\n---\n")
    write_onevision(root / "CLEVR" / "train-00000-of-00002.parquet", rows[:20], row_group_size=4)
    write_onevision(root / "CLEVR" / "train-00001-of-00002.parquet", rows[20:35], row_group_size=4)
    write_onevision(root / "chart" / "train-00000-of-00001.parquet", rows[35:], row_group_size=4)
    return root


def llava_folder(root: Path) -> Path:
    """LLaVA annotations (a JSON array and a JSONL) beside their image folder, and one image outside it:
    records name images relative to the image root, relative to their own folder, missing, or
    escaping both."""
    (root / "images").mkdir(parents=True)
    (root / "ann").mkdir()
    (root / "secret").mkdir()
    for k in range(12):
        Image.new("RGB", (24 + k, 16), (k * 20, 90, 200)).save(root / "images" / f"{k}.png")
    (root / "secret" / "x.png").write_bytes((root / "images" / "0.png").read_bytes())
    turns = lambda k: [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": f"picture {k}"}]  # noqa: E731
    array = [{"id": f"a{k}", "image": f"{k}.png", "conversations": turns(k)} for k in range(8)]
    array.append({"id": "a-missing", "image": "99.png", "conversations": turns(99)})
    array.append({"id": "a-escape", "image": "../secret/x.png", "conversations": turns(0)})
    (root / "ann" / "a.json").write_text(json.dumps(array))
    lines = [{"id": f"b{k}", "image": f"../images/{k}.png", "conversations": turns(k)} for k in range(4, 12)]
    lines.insert(3, {"id": "b-broken", "conversations": "not a list"})
    (root / "ann" / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16 + seed, 16), (seed * 40 % 256, 90, 200)).save(buf, "PNG")
    return buf.getvalue()


def webdataset_shards(root: Path) -> Path:
    """Two caption shards (one gzipped), one with a hard-link member (read by a seek in the shard)."""
    root.mkdir(parents=True)
    for name, mode, first in (("shard-000.tar", "w", 0), ("shard-001.tgz", "w:gz", 5)):
        with tarfile.open(root / name, mode) as tar:
            for k in range(first, first + 5):
                for member, data in ((f"{k:04d}.png", png(k)), (f"{k:04d}.txt", f"caption {k}".encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            linked = tarfile.TarInfo(f"{first + 5:04d}.png")
            linked.type, linked.linkname = tarfile.LNKTYPE, f"{first:04d}.png"
            tar.addfile(linked)
            caption = b"the first picture again"
            info = tarfile.TarInfo(f"{first + 5:04d}.txt")
            info.size = len(caption)
            tar.addfile(info, io.BytesIO(caption))
    return root


# -- helpers ------------------------------------------------------------------------------------------------
def etl(lake: str, *args: str) -> int:
    return main(["--lake", lake, *args])


def blobs(root: str) -> dict[str, bytes]:
    lake = Lake.open(root, create=False)
    ids = lake.dataset(S.IMAGES).to_table(columns=["image_id"]).column(0).to_pylist()
    return lake.image_bytes_by_id(ids)


def without_messages(got: dict) -> dict:
    """`content` with error messages left out (they name the roots looked in: local or remote)."""
    return {**got, "errors": [row[:-1] for row in got["errors"]]}


def ingest_both(tmp_path: Path, local: list[str], remote: list[str], *options: str) -> tuple[str, str]:
    """The same ingest from local disk and from its URLs (each list: paths, then their own options),
    into two lakes; both must succeed."""
    lakes = str(tmp_path / "local-lake"), str(tmp_path / "remote-lake")
    for lake, arguments in zip(lakes, (local, remote)):
        assert etl(lake, "ingest", *arguments, "--batch-size", "8", "--no-progress", *options) == 0
    return lakes


def assert_same_lakes(local: str, remote: str, messages: bool = True) -> dict:
    got, expected = content(remote), content(local)
    if not messages:
        got, expected = without_messages(got), without_messages(expected)
    assert got == expected
    assert blobs(remote) == blobs(local)
    return got


# -- S3 stories ------------------------------------------------------------------------------------------------
@inside
def test_a_parquet_dataset_folder_on_s3_ingests_like_the_same_folder_on_local_disk_and_a_rerun_adds_nothing(
        s3, tmp_path, capsys):
    folder = parquet_dataset(tmp_path / "LLaVA-OV")
    url = s3.upload(folder, "ov") + "/"

    local, remote = ingest_both(tmp_path, [str(folder)], [url])

    got = assert_same_lakes(local, remote)
    names = {(source, name) for _, source, name, *_ in got["samples"]}
    assert names == {("CLEVR", "CLEVR/train-00000-of-00002.parquet"), ("CLEVR", "CLEVR/train-00001-of-00002.parquet"),
                     ("chart", "chart/train-00000-of-00001.parquet")}  # relative to the folder, as locally
    assert len(got["samples"]) > 30 and len(got["images"]) > 30
    assert {row[-2] for row in got["errors"]} == {"not_an_image", "malformed_record"}
    capsys.readouterr()
    assert etl(remote, "ingest", url, "--no-progress") == 0
    assert "files already ingested (skipped)   3" in capsys.readouterr().out
    assert content(remote) == got


@inside
def test_parquet_shards_on_s3_read_by_two_worker_processes_equal_the_serial_ingest(s3, tmp_path):
    folder = parquet_dataset(tmp_path / "LLaVA-OV")
    url = s3.upload(folder, "ov-par")
    lakes = {workers: str(tmp_path / f"lake-{workers}") for workers in ("1", "2")}

    for workers, lake in lakes.items():  # 2: worker processes open the URLs themselves
        assert etl(lake, "ingest", url, "--workers", workers, "--batch-size", "8", "--no-progress") == 0

    assert_same_lakes(lakes["1"], lakes["2"])


@inside
def test_llava_json_and_jsonl_on_s3_resolve_their_images_under_the_remote_roots_only(s3, tmp_path):
    folder = llava_folder(tmp_path / "llava")
    url = s3.upload(folder, "llava")
    options = ("--source", "llava", "--format", "llava")

    local, remote = ingest_both(tmp_path, [str(folder / "ann"), "--image-root", str(folder / "images")],
                                [url + "/ann", "--image-root", url + "/images"], *options)

    assert_same_lakes(local, remote, messages=False)
    lake = Lake.open(remote, create=False)
    errors = {r["orig_id"]: r for r in lake.dataset(S.ERRORS).to_table().to_pylist()}
    assert errors["a-missing"]["kind"] == "missing_image"
    assert errors["a-escape"]["kind"] == "image_outside_roots"  # s3://.../secret/x.png: never read
    assert f"{url}/secret/x.png" in errors["a-escape"]["message"]
    assert errors["b-broken"]["kind"] == "malformed_record"
    assert lake.count(S.SAMPLES) == 16  # a0..a7 via the image root, b4..b11 via ../images


@inside
def test_llava_json_on_s3_with_its_image_root_given_as_a_url(s3, tmp_path):
    folder = llava_folder(tmp_path / "llava")
    url = s3.upload(folder, "llava-root")
    lake = str(tmp_path / "lake")

    assert etl(lake, "ingest", url + "/ann/a.json", "--image-root", url + "/images", "--no-progress") == 0

    samples = Lake.open(lake, create=False).dataset(S.SAMPLES).to_table().to_pylist()
    assert sorted(s["orig_id"] for s in samples) == [f"a{k}" for k in range(8)]
    assert {s["source_file"] for s in samples} == {f"{url}/ann/a.json"}  # a URL named alone is its URL


@inside
def test_webdataset_tars_on_s3_ingest_like_local_ones_hard_links_included(s3, tmp_path):
    folder = webdataset_shards(tmp_path / "wds")
    url = s3.upload(folder, "wds")

    local, remote = ingest_both(tmp_path, [str(folder)], [url + "/*"], "--source", "wds")

    got = assert_same_lakes(local, remote)
    assert len(got["samples"]) == 12 and got["errors"] == []


@inside
def test_a_killed_ingest_from_s3_resumes_and_ends_like_an_uninterrupted_one(s3, tmp_path):
    folder = parquet_dataset(tmp_path / "LLaVA-OV")
    url = s3.upload(folder, "ov-crash")
    reference, crashed = str(tmp_path / "reference"), str(tmp_path / "crashed")
    assert etl(reference, "ingest", url, "--batch-size", "8", "--no-progress") == 0
    command = [sys.executable, "-m", "etl", "--lake", crashed, "ingest", url, "--batch-size", "8", "--no-progress"]

    killed = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "MMLAKE_FAULT": "after_samples:3"})
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert 0 < Lake.open(crashed, create=False).count(S.SAMPLES) < Lake.open(reference, create=False).count(S.SAMPLES)
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    assert content(crashed) == content(reference)


@inside
@pytest.mark.parametrize("what", ["object", "prefix", "glob", "bucket"])
def test_a_missing_file_on_s3_is_one_clear_error_line(s3, tmp_path, what):
    url = {"object": f"s3://{BUCKET}/nothing/here.parquet", "prefix": f"s3://{BUCKET}/nothing/",
           "glob": f"s3://{BUCKET}/nothing/*.parquet", "bucket": "s3://no-such-bucket-here/x.json"}[what]
    proc = subprocess.run([sys.executable, "-m", "etl", "--lake", str(tmp_path / "lake"), "ingest", url],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and url.rstrip("/") in proc.stderr


@inside
def test_an_unreadable_parquet_object_on_s3_is_an_errors_row_and_the_other_files_go_in(s3, tmp_path):
    folder = parquet_dataset(tmp_path / "LLaVA-OV")
    whole = (folder / "chart" / "train-00000-of-00001.parquet").read_bytes()
    (folder / "chart" / "train-00000-of-00001.parquet").write_bytes(whole[: len(whole) // 2])  # cut download
    url = s3.upload(folder, "ov-cut")
    lake = str(tmp_path / "lake")

    proc = subprocess.run([sys.executable, "-m", "etl", "--lake", lake, "ingest", url, "--no-progress"],
                          cwd=REPO, capture_output=True, text=True)

    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "chart/train-00000-of-00001.parquet (read as hf-parquet: corrupt_file 1" in proc.stderr
    errors = Lake.open(lake, create=False).dataset(S.ERRORS).to_table().to_pylist()
    assert [(e["file"], e["kind"]) for e in errors if e["kind"] == "corrupt_file"] == \
        [("chart/train-00000-of-00001.parquet", "corrupt_file")]
    assert Lake.open(lake, create=False).count(S.SAMPLES) > 20  # the CLEVR shards


@inside
def test_the_fingerprint_of_an_object_reads_its_size_and_content_by_ranged_reads(s3, tmp_path):
    from etl.sources.base import file_fingerprint, same_content

    big = tmp_path / "big" / "blob.bin"
    big.parent.mkdir()
    big.write_bytes(os.urandom(9 << 20))  # over 8 MB: 16 windows, not the whole object
    url = s3.upload(big.parent, "fp") + "/blob.bin"

    local, remote = file_fingerprint(str(big)), file_fingerprint(url)

    assert same_content(local, remote)  # same size and content, whatever the mtimes
    assert remote.split(":")[0] == str(9 << 20)


# -- Hub stories (no server: the `hub` fixture) ------------------------------------------------------------------
def hub_dataset(hub: Path) -> Path:
    """`datasets/org/recap`: a card, two shards under data/, the second with path-only images
    (HF Image structs without bytes) naming files of the repo's images/ folder."""
    root = hub / "datasets" / "org" / "recap"
    (root / "images").mkdir(parents=True)
    (root / "README.md").write_text("---\nlicense: cc\n---\n")
    rows = onevision_rows(24)
    write_onevision(root / "data" / "train-00000-of-00002.parquet", rows[:12], row_group_size=4)
    for row in rows[12:]:
        if row["image"] and row["image"]["bytes"].startswith(b"\xff\xd8\xff"):
            (root / "images" / row["image"]["path"]).write_bytes(row["image"]["bytes"])
            row["image"] = {"bytes": None, "path": f"images/{row['image']['path']}"}
    write_onevision(root / "data" / "train-00001-of-00002.parquet", rows[12:], row_group_size=4)
    return root


@outside
def test_a_glob_of_parquet_shards_on_the_hub_ingests_in_place_like_the_local_snapshot(hub, tmp_path):
    root = hub_dataset(hub)

    local, remote = ingest_both(tmp_path, [str(root / "data" / "*.parquet")],
                                ["hf://datasets/org/recap/data/*.parquet"])

    got = assert_same_lakes(local, remote, messages=False)
    assert {(source, name) for _, source, name, *_ in got["samples"]} == \
        {("recap", "train-00000-of-00002.parquet"), ("recap", "train-00001-of-00002.parquet")}
    assert any(row[5] for row in got["samples"] if row[2] == "train-00001-of-00002.parquet")  # path-only images found
    assert "datasets/org/recap/data/train-00001-of-00002.parquet" in LocalHub.opened  # fsspec's `hf` was used
    assert "datasets/org/recap/images/000012.jpg" in LocalHub.opened


@outside
def test_a_hub_dataset_folder_reads_the_same_content_twice_as_one_ingest(hub, tmp_path, capsys):
    hub_dataset(hub)
    lake = str(tmp_path / "lake")
    assert etl(lake, "ingest", "hf://datasets/org/recap", "--no-progress") == 0
    first = content(lake)
    capsys.readouterr()

    assert etl(lake, "ingest", "hf://datasets/org/recap/", "--no-progress") == 0

    assert "files already ingested (skipped)   2" in capsys.readouterr().out and content(lake) == first
    assert {row[2] for row in first["samples"]} == {"data/train-00000-of-00002.parquet",
                                                   "data/train-00001-of-00002.parquet"}


@outside
@pytest.mark.parametrize("down_after", [0.1, 0.5, 0.9], ids=["early", "halfway", "late"])
def test_the_hub_going_away_mid_ingest_stops_it_with_one_line_and_the_rerun_completes_it(hub, tmp_path, capsys,
                                                                                         down_after):
    hub_dataset(hub)
    reference, lake = str(tmp_path / "reference"), str(tmp_path / "lake")
    arguments = ["ingest", "hf://datasets/org/recap/data/", "--batch-size", "4", "--no-progress"]
    assert etl(reference, *arguments) == 0
    capsys.readouterr()
    LocalHub.reads, LocalHub.down_after_reads = 0, int(LocalHub.reads * down_after)

    assert etl(lake, *arguments) == 2

    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the Hub went away" in err and "hf://datasets/org/recap/" in err
    Lake.open(lake)  # (gone early: no lake yet)
    assert set(content(lake)["errors"]) <= set(content(reference)["errors"])  # the Hub's failure: no error row
    LocalHub.down_after_reads = None
    assert etl(lake, *arguments) == 0
    assert content(lake) == content(reference)


@outside
def test_a_shard_the_hub_stops_serving_mid_read_stops_the_reader_instead_of_passing_for_a_corrupt_file(
        hub, monkeypatch):
    from etl.sources import hf_parquet

    hub_dataset(hub)
    monkeypatch.setattr(hf_parquet, "WINDOW_BYTES", 1)  # one row group per read
    records = hf_parquet.HFParquetReader().read_file("hf://datasets/org/recap/data/train-00000-of-00002.parquet", "x")
    assert next(records).source_row == 0
    LocalHub.down_after_reads = LocalHub.reads

    with pytest.raises(storage.StoreError, match="the Hub went away"):
        list(records)


@outside
def test_an_image_path_leaving_the_hub_dataset_is_refused_and_allow_outside_roots_is_not_accepted(hub, tmp_path, capsys):
    root = hub / "datasets" / "org" / "llava"
    (root / "images").mkdir(parents=True)
    (hub / "datasets" / "org" / "other").mkdir()
    (hub / "datasets" / "org" / "other" / "x.png").write_bytes(png(1))
    (root / "images" / "a.png").write_bytes(png(2))
    turns = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a picture"}]
    (root / "train.jsonl").write_text(json.dumps({"id": "in", "image": "images/a.png", "conversations": turns}) + "\n"
                                      + json.dumps({"id": "out", "image": "../other/x.png", "conversations": turns}) + "\n")
    lake = str(tmp_path / "lake")

    assert etl(lake, "ingest", "hf://datasets/org/llava/train.jsonl", "--no-progress") == 0
    errors = Lake.open(lake, create=False).dataset(S.ERRORS).to_table().to_pylist()
    assert [(e["orig_id"], e["kind"]) for e in errors] == [("out", "image_outside_roots")]
    assert "datasets/org/other/x.png" not in LocalHub.opened
    capsys.readouterr()
    assert etl(lake, "ingest", "hf://datasets/org/llava/train.jsonl", "--allow-outside-roots") == 2
    assert "cannot be used with hf://" in capsys.readouterr().err


def test_a_url_of_a_scheme_without_its_package_is_one_clear_error(tmp_path, capsys):
    assert etl(str(tmp_path / "lake"), "ingest", "nosuchscheme://bucket/x.parquet") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: nosuchscheme://bucket/x.parquet") and len(err.splitlines()) == 1


def test_local_paths_and_urls_are_told_apart_and_joined_like_their_kind():
    assert storage.is_remote("s3://b/k") and storage.is_remote("hf://datasets/o/n")
    assert not storage.is_remote("data/x.json") and not storage.is_remote("/data/s3:/x.json")
    assert storage.join("s3://b/ds/ann", "../images/1.png") == "s3://b/ds/images/1.png"
    assert storage.parent("s3://b/ds/x.json") == "s3://b/ds" and storage.parent("s3://b") == "s3://b"
    assert storage.relative_to("s3://b/ds/a/x.json", "s3://b/ds/") == "a/x.json"
    assert storage.normalize("s3://b/../../etc") == "s3://../etc"  # above the bucket: inside no root
