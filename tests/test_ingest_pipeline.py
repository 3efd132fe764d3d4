"""The serial ingest's pipeline (etl/ingest/serial.py): batch N is written and committed (writer thread)
while batch N+1 is read, and the next file is read while the last batch of a file is still being written
(its checkpoint follows on the writer thread). The lake must end exactly as if every batch had been
written and committed one after another."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from conftest import errors_of, samples_of
from etl import schema as S
from etl.cli import main
from etl.images import sniff
from etl.imagerefs import ImageRoots
from etl.ingest import IngestOptions, Ingestor, StoredPaths, ingest
from etl.ingest import files as F
from etl.sources.base import ImageRef


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 12), (seed * 37 % 256, seed * 11 % 256, 60)).save(buf, "JPEG")
    return buf.getvalue()


def llava_file(path: Path, images: list[str | None]) -> Path:
    """A LLaVA JSON with one record per entry of `images` (None: a text-only record)."""
    records = [{"id": f"{path.stem}-{i}", **({"image": p} if p else {}),
                "conversations": [{"from": "human", "value": "<image>\nWhat?" if p else "Hi"},
                                  {"from": "gpt", "value": f"answer {i}"}]}
               for i, p in enumerate(images)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


def run(lake, paths: list[Path], **options) -> dict:
    return ingest(lake, [str(p) for p in paths], IngestOptions(source="s", progress=False, **options))


def image_ids(lake) -> list[str]:
    return lake.dataset(S.IMAGES).to_table(columns=["image_id"]).column(0).to_pylist()


def checkpoints(lake) -> dict[str, tuple[int, bool]]:
    return {os.path.basename(name): (cp["upto_row"], cp["done"]) for name, cp in lake.checkpoints("ingest:s").items()}


@pytest.fixture
def folder(tmp_path) -> Path:
    """Twelve distinct images, 0.jpg ... 11.jpg, plus a copy of 0.jpg named copy.jpg."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        (images / f"{i}.jpg").write_bytes(jpeg(i))
    (images / "copy.jpg").write_bytes(jpeg(0))
    return images


def test_files_read_while_the_last_batch_of_the_one_before_commits_end_as_if_ingested_one_by_one(
        lake, tmp_path, folder):
    # batches of 2 records: a.json (4 rows) and c.json (2 rows) end on a cut, b.json (3 rows) does not
    a = llava_file(tmp_path / "a.json", ["0.jpg", "1.jpg", "2.jpg", None])
    b = llava_file(tmp_path / "b.json", ["3.jpg", "missing.jpg", "4.jpg"])
    c = llava_file(tmp_path / "c.json", ["5.jpg", "6.jpg"])
    counts = run(lake, [a, b, c], image_roots=[str(folder)], batch_records=2)
    assert counts["files"] == 3 and counts["samples_added"] == 8 and counts["images_added"] == 7
    assert sorted(r["orig_id"] for r in samples_of(lake, "s")) == [
        "a-0", "a-1", "a-2", "a-3", "b-0", "b-2", "c-0", "c-1"]
    assert [e["orig_id"] for e in errors_of(lake, "s")] == ["b-1"]
    assert checkpoints(lake) == {"a.json": (4, True), "b.json": (3, True), "c.json": (2, True)}
    assert len(image_ids(lake)) == len(set(image_ids(lake))) == 7
    assert run(lake, [a, b, c], image_roots=[str(folder)], batch_records=2)["files_already_done"] == 3


def test_a_file_named_twice_in_one_run_is_ingested_once(lake, tmp_path, folder):
    a = llava_file(tmp_path / "a.json", ["0.jpg", "1.jpg", "2.jpg"])
    counts = run(lake, [a, a], image_roots=[str(folder)], batch_records=2)
    assert counts["samples_added"] == 3 and counts["files_already_done"] == 1
    assert len(samples_of(lake, "s")) == 3


def test_the_same_image_in_consecutive_batches_is_stored_once(lake, tmp_path, folder):
    """copy.jpg holds 0.jpg's bytes under another path: the second batch finds it stored by the first."""
    a = llava_file(tmp_path / "a.json", ["0.jpg", "copy.jpg", "1.jpg", "copy.jpg", "0.jpg"])
    counts = run(lake, [a], image_roots=[str(folder)], batch_records=1)
    assert counts["samples_added"] == 5 and counts["images_added"] == 2
    assert sorted(image_ids(lake)) == sorted({sniff(jpeg(0)).image_id, sniff(jpeg(1)).image_id})


def test_a_failed_commit_stops_the_run_before_any_later_batch_commits_and_a_rerun_completes_it(
        lake, tmp_path, folder, monkeypatch):
    a = llava_file(tmp_path / "a.json", [f"{i}.jpg" for i in range(8)])
    original, calls = Ingestor.commit_rows, []

    def fails_on_the_second_batch(self, *args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(self, *args, **kw)

    monkeypatch.setattr(Ingestor, "commit_rows", fails_on_the_second_batch)
    with pytest.raises(OSError, match="disk full"):
        run(lake, [a], image_roots=[str(folder)], batch_records=2)
    assert len(calls) == 2  # no batch after the failed one committed
    assert [r["orig_id"] for r in samples_of(lake, "s")] == ["a-0", "a-1"]
    assert checkpoints(lake) == {"a.json": (2, False)}
    monkeypatch.setattr(Ingestor, "commit_rows", original)
    counts = run(lake, [a], image_roots=[str(folder)], batch_records=2)
    assert counts["samples_added"] == 6
    assert [r["orig_id"] for r in samples_of(lake, "s")] == [f"a-{i}" for i in range(8)]
    assert len(image_ids(lake)) == len(set(image_ids(lake))) == 8


def test_a_dangling_symlink_is_a_missing_image(lake, tmp_path, folder):
    os.symlink(folder / "gone.jpg", folder / "link.jpg")
    a = llava_file(tmp_path / "a.json", ["link.jpg", "0.jpg"])
    run(lake, [a], image_roots=[str(folder)])
    assert [e["kind"] for e in errors_of(lake, "s")] == ["missing_image"]
    assert len(samples_of(lake, "s")) == 1


def test_an_image_path_resolves_with_one_lstat_and_through_symlinked_folders(tmp_path, folder):
    (tmp_path / "linked").symlink_to(folder, target_is_directory=True)
    roots = ImageRoots([str(tmp_path)])
    located = roots.locate(ImageRef(path="linked/3.jpg"))
    assert located.path == str(folder / "3.jpg") and located.error is None
    assert roots.locate(ImageRef(path="linked")).error[0] == "missing_image"  # a folder is not an image


def test_a_stored_file_is_known_by_its_stamp_when_opened_and_read_again_once_it_changes(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(jpeg(1))
    [read] = F.FileReader().read([str(path)])
    st = path.stat()
    assert read.stamp == (st.st_size, st.st_mtime_ns)
    stored = StoredPaths()
    stored.put(str(path), sniff(jpeg(1)), read.stamp)
    assert stored.get(str(path)) == sniff(jpeg(1))
    path.write_bytes(jpeg(2) + b"\0")  # another size: another file now
    assert stored.get(str(path)) is None


def test_a_folder_whose_files_all_gave_samples_ends_with_0_and_one_that_gave_none_is_named(
        lake, tmp_path, folder, capsys):
    data = tmp_path / "data"
    llava_file(data / "a.json", ["0.jpg", "1.jpg"])
    llava_file(data / "b.json", [None])
    args = ["--lake", lake.root, "ingest", str(data), "--source", "s", "--image-root", str(folder), "--no-progress"]
    assert main(args) == 0
    assert "gave no sample" not in capsys.readouterr().err
    llava_file(data / "c.json", ["missing.jpg"])
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "1 file(s) gave no sample: c.json (read as llava: missing_image 1;" in err

