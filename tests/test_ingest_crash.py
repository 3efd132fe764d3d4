"""kill -9 during an ingest, then rerun: the lake ends exactly as after an uninterrupted run."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from etl.lake import Lake
from etl.sqlrun import connect

from conftest import REPO


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[list[str], str]:
    """Three LLaVA files over 120 distinct small JPEGs, with shared images and missing ones."""
    root = tmp_path_factory.mktemp("src")
    images = root / "images"
    images.mkdir()
    rng = random.Random(7)
    for k in range(120):
        Image.new("RGB", (64, 48), (k, 255 - k, (7 * k) % 256)).save(images / f"{k}.jpg", quality=90)
    files = []
    for f in range(3):
        records = []
        for r in range(1000):
            k = rng.randrange(130)  # 120..129 do not exist: missing-image errors
            records.append({"id": f"{f}-{r}", "image": f"{k}.jpg", "conversations": [
                {"from": "human", "value": f"<image>\nQuestion {r}?"}, {"from": "gpt", "value": f"Answer {k}."}]})
            if r % 50 == 0:
                records.append({"id": f"{f}-{r}-text", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]})
        path = root / f"part{f}.json"
        path.write_text(json.dumps(records))
        files.append(str(path))
    return files, str(images)


def ingest_cmd(lake_root: str, files: list[str], images: str) -> list[str]:
    return [sys.executable, "-m", "etl", "--lake", lake_root, "ingest", *files, "--source", "crash",
            "--image-root", images, "--batch-size", "40", "--no-progress"]


def lake_content(root: str) -> dict:
    con = connect(Lake.open(root, create=False))
    return {
        "samples": con.execute("select sample_id, image_ids, conversations from samples order by sample_id").fetchall(),
        "images": con.execute("select image_id, nbytes from images order by image_id").fetchall(),
        "errors": con.execute("select error_id, kind, row from errors order by error_id").fetchall(),
        "dup_samples": con.execute("select count(*) - count(distinct sample_id) from samples").fetchall(),
        "dup_images": con.execute("select count(*) - count(distinct image_id) from images").fetchall(),
    }


@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory) -> dict:
    """The lake of an uninterrupted run, and how long that run took (kills are timed within it)."""
    files, images = sources
    root = str(tmp_path_factory.mktemp("ref") / "lake")
    started = time.perf_counter()
    subprocess.run(ingest_cmd(root, files, images), check=True, cwd=REPO, capture_output=True)
    return {**lake_content(root), "seconds": time.perf_counter() - started}


def test_reference_run_counts(reference):
    assert len(reference["samples"]) + len(reference["errors"]) == 3 * (1000 + 20)
    assert reference["dup_samples"] == [(0,)] and reference["dup_images"] == [(0,)]


@pytest.mark.parametrize("point,nth", [("after_images", 5), ("after_errors", 17), ("after_samples", 30)])
def test_crash_between_commits_then_rerun_matches_uninterrupted(sources, reference, tmp_path, point, nth):
    files, images = sources
    root = str(tmp_path / "lake")
    crashed = subprocess.run(ingest_cmd(root, files, images), cwd=REPO, capture_output=True,
                             env={**os.environ, "MMLAKE_FAULT": f"{point}:{nth}"})
    assert crashed.returncode == 137, crashed.stderr.decode()[-2000:]
    subprocess.run(ingest_cmd(root, files, images), check=True, cwd=REPO, capture_output=True)
    assert lake_content(root) == without_time(reference)


def without_time(reference: dict) -> dict:
    return {k: v for k, v in reference.items() if k != "seconds"}


def kill_at_random(files, images, root, rng, run_seconds: float) -> bool:
    """Start an ingest, SIGKILL it 30-65% into an uninterrupted run's time; True when it was still
    running (a real mid-run kill)."""
    proc = subprocess.Popen(ingest_cmd(root, files, images), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.3, 0.65) * run_seconds)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return running


def test_kill_9_at_a_random_moment_then_rerun_matches_uninterrupted(sources, reference, tmp_path):
    files, images = sources
    root = str(tmp_path / "lake")
    assert kill_at_random(files, images, root, random.Random(1), reference["seconds"]), "ingest finished before the kill"
    subprocess.run(ingest_cmd(root, files, images), check=True, cwd=REPO, capture_output=True)
    assert lake_content(root) == without_time(reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
def test_repeated_kill_9_then_rerun_matches_uninterrupted(sources, reference, tmp_path, seed):
    files, images = sources
    root = str(tmp_path / "lake")
    rng = random.Random(seed)
    killed = [kill_at_random(files, images, root, rng, reference["seconds"]) for _ in range(3)]
    assert killed[0], "the first ingest finished before the kill"
    subprocess.run(ingest_cmd(root, files, images), check=True, cwd=REPO, capture_output=True)
    assert lake_content(root) == without_time(reference)
