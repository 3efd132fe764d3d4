"""Several commands on one lake at once end exactly as if they had run one after another.

Each story starts real `python -m etl` processes together (with a random stagger and batch size per
seed), waits for all of them, and compares the lake with the one the same commands build when run
serially: every sample, image and error row, and no key twice. Each runs with both commit-lock
backends (`file`: flock, local lakes; `lease`: a Lance compare-and-swap lease, the object-store one).
CI runs two seeds per story; `--runslow` runs twelve.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from etl.lake import Lake
from etl.sqlrun import connect

from conftest import REPO
from test_ingest_parquet import onevision_rows, write_onevision

SEEDS = range(12) if (os.environ.get("MMLAKE_SLOW") == "1" or "--runslow" in sys.argv) else range(2)
BACKENDS = ("file", "lease")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, str]:
    """Two LLaVA sources over 160 distinct noisy JPEGs (80 shared), with missing images and a
    broken record, and a OneVision-style parquet shard with embedded images."""
    root = tmp_path_factory.mktemp("corpus")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for k in range(160):
        pixels = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{k}.jpg", quality=85)
    for name, ks in (("a", range(0, 120)), ("b", range(40, 165))):  # 160..164 are missing files
        records = [{"id": f"{name}{i}", "image": f"{k}.jpg",
                    "conversations": [{"from": "human", "value": f"<image>\nWhat is {k}?"},
                                      {"from": "gpt", "value": f"Picture {k} of {name}."}]}
                   for i, k in enumerate(list(ks) * 3)]
        records.insert(17, {"id": f"{name}-broken", "conversations": "not a list"})
        (root / f"{name}.json").write_text(json.dumps(records))
    write_onevision(root / "ov" / "train-00000-of-00001.parquet", onevision_rows(60), row_group_size=4)
    return {"root": str(root), "images": str(images), "a": str(root / "a.json"), "b": str(root / "b.json"),
            "ov": str(root / "ov")}


def ingest(corpus: dict, what: str, batch: int, *extra: str, into: str | None = None) -> list[str]:
    sources = {"a": [corpus["a"], "--source", into or "a"], "b": [corpus["b"], "--source", into or "b"],
               "ov": [corpus["ov"]]}
    return ["ingest", *sources[what], "--image-root", corpus["images"], "--batch-size", str(batch), "--no-progress", *extra]


def run_together(root: str, commands: list[list[str]], rng: random.Random, backend: str) -> list[subprocess.CompletedProcess]:
    """Start every command (staggered by up to 0.4 s), wait for all; their exit codes and output."""
    env = {**os.environ, "MMLAKE_COMMIT_LOCK": backend, "MMLAKE_QUIET_LOCK": "1"}
    procs = []
    for args in commands:
        procs.append(subprocess.Popen([sys.executable, "-m", "etl", "--lake", root, *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(rng.uniform(0, 0.4))
    outputs = [p.communicate() for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outputs)]


def run_serially(root: str, commands: list[list[str]]) -> None:
    for args in commands:
        subprocess.run([sys.executable, "-m", "etl", "--lake", root, *args], cwd=REPO, check=True,
                       capture_output=True)


def content(root: str) -> dict:
    """Everything a user can see in the lake, run ids and times aside, in a stable order."""
    con = connect(Lake.open(root, create=False))
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    return {
        "samples": q("select sample_id, source, source_file, source_row, orig_id, image_ids, conversations, meta "
                     "from samples order by sample_id"),
        "images": q("select image_id, format, width, height, nbytes from images order by image_id"),
        "phash": q("select count(*) filter (where phash is not null) from images"),
        "errors": q("select error_id, stage, source, file, row, kind, message from errors order by error_id"),
        "duplicate keys": q("select (select count(*) - count(distinct sample_id) from samples),"
                            " (select count(*) - count(distinct image_id) from images),"
                            " (select count(*) - count(distinct error_id) from errors)"),
    }


def assert_same(got: dict, expected: dict) -> None:
    """Equal lakes; on a difference, name the table and the first rows only one of them has."""
    for table in expected:
        extra = [r for r in got[table] if r not in expected[table]][:3]
        missing = [r for r in expected[table] if r not in got[table]][:3]
        assert got[table] == expected[table], f"{table}: {len(got[table])} rows vs {len(expected[table])}; " \
            f"only here: {extra}; only in the serial lake: {missing}"


def assert_all_ok(procs: list[subprocess.CompletedProcess]) -> None:
    for p in procs:
        assert p.returncode == 0, f"{p.args} exited {p.returncode}\n{p.stderr[-3000:]}"
        assert "Traceback" not in p.stderr, p.stderr[-3000:]


@pytest.fixture(scope="module")
def serial(corpus, tmp_path_factory):
    """Lakes built by running the stories' commands one after another (computed once per story)."""
    built: dict[str, dict] = {}

    def build(name: str, commands: list[list[str]]) -> dict:
        if name not in built:
            root = str(tmp_path_factory.mktemp("serial") / "lake")
            run_serially(root, commands)
            built[name] = content(root)
        return built[name]

    return build


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_two_ingests_of_sources_sharing_images_store_each_image_once(corpus, serial, tmp_path, seed, backend):
    rng = random.Random(seed)
    commands = [ingest(corpus, "a", rng.choice([16, 50, 200])), ingest(corpus, "b", rng.choice([16, 50, 200]))]
    root = str(tmp_path / "lake")
    assert_all_ok(run_together(root, commands, rng, backend))
    assert_same(content(root), serial("a+b", [ingest(corpus, "a", 1000), ingest(corpus, "b", 1000)]))


# the source, its batch sizes, and whether the first of the two ingests runs `--workers 2` (by seed)
SAME_INGEST_TWICE = {"ov": ([4, 8, 64], lambda seed: seed % 2 == 0), "a": ([16, 50], lambda seed: True)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("what", ["ov", "a"], ids=["parquet", "json"])
def test_the_same_ingest_started_twice_at_once_ingests_it_once(corpus, serial, tmp_path, seed, backend, what):
    rng = random.Random(seed)
    batches, first_parallel = SAME_INGEST_TWICE[what]
    workers = ["--workers", "2"] if first_parallel(seed) else []
    commands = [ingest(corpus, what, rng.choice(batches), *workers), ingest(corpus, what, rng.choice(batches))]
    root = str(tmp_path / "lake")
    assert_all_ok(run_together(root, commands, rng, backend))
    assert_same(content(root), serial(what, [ingest(corpus, what, 1000)]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_phash_while_an_ingest_adds_images_hashes_every_image_once_rerun(corpus, serial, tmp_path, seed, backend):
    """enrich ∥ ingest: the enrich hashes what it found at its start; rerun, it hashes the rest."""
    rng = random.Random(seed)
    root = str(tmp_path / "lake")
    run_serially(root, [ingest(corpus, "a", 1000)])
    enrich = ["enrich", "phash", "--rows-per-task", "16", "--no-progress"]
    assert_all_ok(run_together(root, [ingest(corpus, "b", rng.choice([16, 50])), enrich], rng, backend))
    run_serially(root, [enrich])
    assert_same(content(root), serial("a+b+phash", [ingest(corpus, "a", 1000), ingest(corpus, "b", 1000), enrich]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_an_export_while_an_ingest_runs_writes_one_consistent_version(corpus, serial, tmp_path, seed, backend):
    """The export reads one lake version throughout, while a second file of its source comes in."""
    rng = random.Random(seed)
    root = str(tmp_path / "lake")
    run_serially(root, [ingest(corpus, "a", 1000)])
    recipe = tmp_path / "mix.yaml"
    recipe.write_text("name: mix\ndefaults:\n  checks: off\nsources:\n  - a\n")
    out = tmp_path / "mix"
    export = ["export", str(recipe), "--out", str(out)]
    second_file = ingest(corpus, "b", rng.choice([16, 50]), into="a")
    assert_all_ok(run_together(root, [second_file, export], rng, backend))
    assert_same(content(root), serial("a+b as a", [ingest(corpus, "a", 1000), ingest(corpus, "b", 1000, into="a")]))
    ids = [r["id"] for r in json.loads((out / "mix.json").read_text())]
    assert len(ids) == len(set(ids))
    version = json.loads((out / "manifest.json").read_text())["lake"]["versions"]["samples"]
    assert len(ids) == Lake(root).dataset("samples", version).count_rows() > 0
