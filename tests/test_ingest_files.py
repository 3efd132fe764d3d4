"""Image files are read into shared Arrow buffers, the kernel reading ahead (etl/ingest/files.py):
the bytes stored are the file's bytes exactly, whatever the file's size, and a file that must not be
read is refused with the same errors as before."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

from PIL import Image

from conftest import errors_of, samples_of
from etl.images import content_id
from etl.ingest import IngestOptions, ingest
from etl.ingest import files as F


def jpeg(seed: int, size: tuple[int, int] = (24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 40 + seed).convert("RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def read_all(paths: list[Path], segment_bytes: int) -> tuple[list[F.FileRead], list]:
    reader = F.FileReader(segment_bytes)
    reads = list(reader.read([str(p) for p in paths]))
    return reads, reader.arrays()


def stored(read: F.FileRead, arrays: list) -> bytes:
    """The bytes a read leaves for the lake: its Arrow row (or its own bytes)."""
    return bytes(read.data) if read.segment is None else arrays[read.segment][read.row].as_py()


def test_files_are_packed_into_segments_with_their_exact_bytes(tmp_path):
    sizes = [5000, 0, 70_000, 12_000, 3, 40_000]  # 70 KB: bigger than a 64 KB segment, gets its own
    paths = []
    for i, n in enumerate(sizes):
        paths.append(tmp_path / f"{i}.bin")
        paths[-1].write_bytes(os.urandom(n))
    reads, arrays = read_all(paths, segment_bytes=64 << 10)
    assert [r.error for r in reads] == [None] * len(sizes)
    assert [stored(r, arrays) for r in reads] == [p.read_bytes() for p in paths]
    assert [bytes(r.data) for r in reads] == [p.read_bytes() for p in paths]
    assert len(arrays) > 1  # the reads did span segments


def test_an_empty_file_read_first_is_stored_as_empty_bytes(tmp_path):
    """The hostile-inputs story: `empty.jpg` was the batch's first file and no segment existed yet."""
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "next.bin").write_bytes(b"abc")
    reads, arrays = read_all([tmp_path / "empty.jpg", tmp_path / "next.bin"], segment_bytes=64 << 10)
    assert [bytes(r.data) for r in reads] == [b"", b"abc"]
    assert [stored(r, arrays) for r in reads] == [b"", b"abc"]


def test_a_fifo_or_a_swapped_in_symlink_is_refused_without_reading(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it for reading would block forever without O_NONBLOCK
    target = tmp_path / "real.jpg"
    target.write_bytes(jpeg(1))
    link = tmp_path / "link.jpg"
    link.symlink_to(target)
    reads, _ = read_all([fifo, link, target], segment_bytes=1 << 20)
    assert reads[0].error == ("unreadable_image", f"{fifo}: not a regular file")
    assert reads[1].error[0] == "unreadable_image" and reads[1].data is None
    assert bytes(reads[2].data) == target.read_bytes()


def test_a_file_that_grows_between_its_size_and_its_read_is_read_whole(tmp_path):
    first, second = tmp_path / "a.jpg", tmp_path / "b.jpg"
    first.write_bytes(b"a" * 1000)
    second.write_bytes(b"b" * 1000)
    reader = F.FileReader(1 << 20)
    reads = reader.read([str(first), str(second)])
    next(reads)  # both files are open and sized by now (read ahead)
    with open(second, "ab") as f:
        f.write(b"c" * 500)
    grown = next(reads)
    assert grown.segment is None and bytes(grown.data) == b"b" * 1000 + b"c" * 500


def test_ingesting_files_across_many_read_segments_stores_every_image_exactly(lake, tmp_path, monkeypatch):
    monkeypatch.setattr(F, "SEGMENT_BYTES", 4 << 10)  # a few images per segment
    monkeypatch.setattr(F, "AHEAD_FILES", 3)
    images = tmp_path / "images"
    images.mkdir()
    records = []
    for i in range(40):
        (images / f"{i}.jpg").write_bytes(jpeg(i, (40 + i, 30)))
        records.append({"id": str(i), "image": f"{i}.jpg",
                        "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "This."}]})
    records.append({"id": "gone", "image": "missing.jpg", "conversations": records[0]["conversations"]})
    (images / "not.jpg").write_bytes(b"not an image at all")
    records.append({"id": "bad", "image": "not.jpg", "conversations": records[0]["conversations"]})
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    counts = ingest(lake, [str(data)], IngestOptions(source="files", image_roots=[str(images)], progress=False,
                                                     batch_records=7))
    assert counts["samples_added"] == 40 and counts["images_added"] == 40
    assert sorted(e["kind"] for e in errors_of(lake, "files")) == ["missing_image", "not_an_image"]
    wanted = {content_id((images / f"{i}.jpg").read_bytes()): (images / f"{i}.jpg").read_bytes() for i in range(40)}
    assert lake.image_bytes_by_id(list(wanted)) == wanted
    by_id = {s["orig_id"]: s["image_ids"] for s in samples_of(lake, "files")}
    assert all(by_id[str(i)] == [content_id((images / f"{i}.jpg").read_bytes())] for i in range(40))
