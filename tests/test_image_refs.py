"""Image paths written in a source are followed only inside the allowed roots (etl/imagerefs.py).

"Never read" is checked on the file itself: its access time is set to 1970 first, and any read of
it would move it (the file system is mounted relatime: a read updates an atime older than the
mtime); the test with `allow_outside_roots` shows the check does notice a read.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import errors_of, samples_of
from etl import schema as S
from etl.cli import main
from etl.images import content_id
from etl.ingest import IngestOptions, ingest

IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (seed * 40 % 256, 90, 10)).save(buf, "JPEG")
    return buf.getvalue()


def secret(tmp_path: Path) -> Path:
    """A private image outside every root, its access time set to 1970 (see `was_read`)."""
    path = tmp_path / "outside" / "secret.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg(7))
    os.utime(path, (0, path.stat().st_mtime))
    return path


def was_read(path: Path) -> bool:
    return path.stat().st_atime != 0


def llava(folder: Path, images: list[str], name: str = "data.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = [{"id": str(i), "image": p, "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": p}]}
               for i, p in enumerate(images)]
    (folder / name).write_text(json.dumps(records))
    return folder / name


def run(lake, paths: list[Path], **options) -> dict:
    return ingest(lake, [str(p) for p in paths], IngestOptions(source="s", progress=False, **options))


def stored_ids(lake) -> set[str]:
    return set(lake.dataset(S.IMAGES).to_table(columns=["image_id"]).column(0).to_pylist())


def test_a_reference_outside_the_image_root_is_an_error_and_the_file_is_never_read(lake, tmp_path):
    private = secret(tmp_path)
    (tmp_path / "dataset" / "images").mkdir(parents=True)
    (tmp_path / "dataset" / "images" / "ok.jpg").write_bytes(jpeg(1))
    source = llava(tmp_path / "dataset", ["ok.jpg", "../../outside/secret.jpg", "../outside/secret.jpg"])

    run(lake, [source], image_roots=[str(tmp_path / "dataset" / "images")])

    assert [s["orig_id"] for s in samples_of(lake, "s")] == ["0"]  # the good row is kept
    errors = errors_of(lake, "s")
    assert [(e["row"], e["kind"]) for e in errors] == [(1, "image_outside_roots"), (2, "image_outside_roots")]
    assert str(private) in errors[0]["message"] and "--image-root" in errors[0]["message"]
    assert content_id(jpeg(7)) not in stored_ids(lake)
    assert not was_read(private)


def test_a_symlink_inside_the_image_root_pointing_out_of_it_is_an_error(lake, tmp_path):
    private = secret(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    (images / "cat.jpg").symlink_to(private)
    (images / "sub").symlink_to(private.parent, target_is_directory=True)
    source = llava(tmp_path / "ann", ["cat.jpg", "sub/secret.jpg"])

    run(lake, [source], image_roots=[str(images)])

    assert [e["kind"] for e in errors_of(lake, "s")] == ["image_outside_roots"] * 2
    assert lake.count(S.IMAGES) == 0 and not was_read(private)


def test_a_symlink_that_stays_inside_the_image_root_is_followed(lake, tmp_path):
    images = tmp_path / "images"
    (images / "real").mkdir(parents=True)
    (images / "real" / "a.jpg").write_bytes(jpeg(2))
    (images / "alias.jpg").symlink_to(images / "real" / "a.jpg")
    run(lake, [llava(tmp_path / "ann", ["alias.jpg", "real/a.jpg"])], image_roots=[str(images)])
    assert len(samples_of(lake, "s")) == 2 and lake.count(S.IMAGES) == 1


def test_an_absolute_path_is_followed_only_inside_an_image_root(lake, tmp_path):
    private = secret(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(jpeg(3))
    source = llava(tmp_path / "ann", [str(images / "a.jpg"), str(private), "/etc/passwd", "/proc/self/environ"])

    run(lake, [source], image_roots=[str(images)])

    assert [s["orig_id"] for s in samples_of(lake, "s")] == ["0"]
    assert [(e["row"], e["kind"]) for e in errors_of(lake, "s")] == [(1, "image_outside_roots"), (2, "image_outside_roots"),
                                                                     (3, "image_outside_roots")]
    assert not was_read(private)


def test_a_missing_absolute_path_is_still_a_missing_image(lake, tmp_path):
    run(lake, [llava(tmp_path / "ann", ["/mnt/bn/cluster/cc3m/000.jpg"])])
    assert [e["kind"] for e in errors_of(lake, "s")] == ["missing_image"]


def test_path_only_parquet_images_cannot_leave_the_dataset_folder(lake, tmp_path):
    private = secret(tmp_path)
    dataset = tmp_path / "hub" / "owner" / "name"
    (dataset / "data" / "images").mkdir(parents=True)
    (dataset / "data" / "images" / "1.jpg").write_bytes(jpeg(4))
    (dataset / "README.md").write_text("---\ndataset_info: {}\n---\n")
    rows = [{"id": str(i), "images": [{"bytes": None, "path": p}], "text": "caption"}
            for i, p in enumerate(["data/images/1.jpg", "../../../outside/secret.jpg", str(private)])]
    schema = pa.schema([pa.field("id", pa.string()), pa.field("images", pa.list_(IMAGE)), pa.field("text", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), dataset / "data" / "train-0.parquet")

    run(lake, [dataset])

    assert [s["orig_id"] for s in samples_of(lake, "s")] == ["0"]
    assert [(e["row"], e["kind"]) for e in errors_of(lake, "s")] == [(1, "image_outside_roots"), (2, "image_outside_roots")]
    assert not was_read(private)


def test_the_folder_given_to_ingest_is_an_allowed_root_for_the_files_under_it(lake, tmp_path):
    dataset = tmp_path / "dataset"
    (dataset / "images").mkdir(parents=True)
    (dataset / "images" / "a.jpg").write_bytes(jpeg(5))
    source = llava(dataset / "annotations", ["../images/a.jpg"])

    run(lake, [source])  # the JSON alone: its folder is the root, `../images` is outside
    assert [e["kind"] for e in errors_of(lake, "s")] == ["image_outside_roots"]

    ingest(lake, [str(dataset)], IngestOptions(source="whole", progress=False))  # the dataset folder: inside
    assert len(samples_of(lake, "whole")) == 1 and errors_of(lake, "whole") == []


def test_allow_outside_roots_follows_paths_for_a_trusted_source_but_never_into_kernel_files(lake, tmp_path):
    private = secret(tmp_path)
    source = llava(tmp_path / "ann", ["../outside/secret.jpg", "/proc/self/environ", "/sys/kernel/notes"])

    run(lake, [source], allow_outside_roots=True)

    assert [s["orig_id"] for s in samples_of(lake, "s")] == ["0"]
    assert was_read(private) and content_id(jpeg(7)) in stored_ids(lake)
    assert [(e["row"], e["kind"]) for e in errors_of(lake, "s")] == [(1, "image_outside_roots"), (2, "image_outside_roots")]


def test_a_fifo_named_like_an_image_is_never_opened(lake, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    os.mkfifo(images / "pipe.jpg")  # opening it for reading would block the ingest forever
    run(lake, [llava(tmp_path / "ann", ["pipe.jpg"])], image_roots=[str(images)])
    errors = errors_of(lake, "s")
    assert [e["kind"] for e in errors] == ["unreadable_image"] and "not a regular file" in errors[0]["message"]


def test_from_hub_refuses_allow_outside_roots_before_downloading_anything(tmp_path, capsys):
    mirror = tmp_path / "mirror"
    code = main(["--lake", str(tmp_path / "lake"), "ingest", "--from-hub", "owner/name", "--hub-mirror", str(mirror),
                 "--allow-outside-roots"])
    assert code == 2 and "--allow-outside-roots cannot be used with --from-hub" in capsys.readouterr().err
    assert not (tmp_path / "lake").exists()


@pytest.mark.parametrize("workers", [2])
def test_parallel_ingest_applies_the_same_roots(lake, tmp_path, workers):
    private = secret(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ok.jpg").write_bytes(jpeg(6))
    sources = [llava(tmp_path / "ann", ["ok.jpg", "../outside/secret.jpg"], name=f"{i}.json") for i in range(2)]
    run(lake, sources, image_roots=[str(tmp_path / "images")], workers=workers)
    assert len(samples_of(lake, "s")) == 2
    assert [e["kind"] for e in errors_of(lake, "s")] == ["image_outside_roots"] * 2
    assert not was_read(private)


def test_paths_no_file_can_have_are_missing_images_not_crashes(lake, tmp_path):
    run(lake, [llava(tmp_path / "ann", ["a\x00b/c.jpg", "../x\x00/..", "x" * 5000 + ".jpg"])])
    assert [e["kind"] for e in errors_of(lake, "s")] == ["missing_image"] * 3
