"""Two clean runs over the same bad inputs write the same `errors` rows, word for word.

Pillow's messages quote the file object they read (`cannot identify image file <_io.BytesIO object
at 0x7f...>`); those addresses change at every run, so every message is stored without them.
"""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from etl import schema as S
from etl.enrich.phash import PhashEnricher
from etl.enrich.runner import RunOptions, run_enricher
from etl.ingest import IngestOptions, ingest
from etl.lake import Lake

IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def jpeg(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (seed * 50 % 256, 20, 200)).save(buf, "JPEG")
    return buf.getvalue()


def noisy_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((200, 200), 60).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as out:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


def hostile_inputs(root: Path) -> Path:
    """A folder of sources whose every kind of bad record and bad image is represented once."""
    src, images = root / "src", root / "src" / "images"
    images.mkdir(parents=True)
    (images / "good.jpg").write_bytes(jpeg(1))
    (images / "html.jpg").write_bytes(b"<html><body>404 not found</body></html>" * 50)
    (images / "empty.png").write_bytes(b"")
    (images / "cut_header.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (images / "truncated.jpg").write_bytes(noisy_jpeg()[:3000])  # header intact: stored, fails at phash
    (root / "outside.jpg").write_bytes(jpeg(3))
    refs = ["images/good.jpg", "images/html.jpg", "images/empty.png", "images/cut_header.png", "images/truncated.jpg",
            "images/missing.jpg", "../outside.jpg"]
    lines = [json.dumps({"id": str(i), "image": r, "conversations": [{"from": "human", "value": "<image>"},
                                                                        {"from": "gpt", "value": r}]})
             for i, r in enumerate(refs)]
    (src / "llava.jsonl").write_text("\n".join([*lines, "{not json", '{"id": "x", "conversations": 5}']) + "\n")
    tar(src / "shard.tar", [("a.jpg", b"GIF89a-but-not-really" * 10), ("a.txt", b"caption"),
                            ("b.jpg", jpeg(4)), ("b.txt.gz", b"not gzip at all"),
                            ("c.txt", b"orphan caption"), ("d.txt", b"\xff\xfe bad utf-8 caption")])
    rows = [{"id": "p0", "image": {"bytes": b"\x00\x01garbage" * 30, "path": None}, "text": "t"},
            {"id": "p1", "image": {"bytes": None, "path": "../outside.jpg"}, "text": "t"}]
    schema = pa.schema([pa.field("id", pa.string()), pa.field("image", IMAGE), pa.field("text", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), src / "data.parquet")
    (src / "broken.parquet").write_bytes(b"PAR1" + gzip.compress(b"nonsense") + b"PAR1")
    return src


def errors_table_of(lake: Lake) -> list[dict]:
    rows = lake.dataset(S.ERRORS).to_table().to_pylist()
    for row in rows:
        del row["run_id"], row["created_at"]
    return sorted(rows, key=lambda r: r["error_id"])


def test_two_clean_runs_over_the_same_hostile_inputs_write_identical_errors_tables(tmp_path):
    src = hostile_inputs(tmp_path)
    tables = []
    for name in ("one", "two"):
        lake = Lake.open(str(tmp_path / name))
        ingest(lake, [str(src)], IngestOptions(source="hostile", progress=False))
        run_enricher(lake, PhashEnricher(mode="exact"), RunOptions(workers=1, progress=False))
        tables.append(errors_table_of(lake))

    one, two = tables
    assert one == two
    kinds = sorted(e["kind"] for e in one)
    assert kinds == sorted(["not_an_image"] * 5 + ["missing_image", "image_outside_roots", "image_outside_roots",
                                                     "bad_json_line", "malformed_record", "malformed_record",
                                                     "malformed_record", "orphan_caption", "corrupt_file",
                                                     "decode_error"])
    assert not [e["message"] for e in one if " at 0x" in e["message"]]
    assert any("cannot identify image file" in e["message"] for e in one)  # the message that carried an address
