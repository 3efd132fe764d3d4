"""The Python API a notebook or script uses (etl.api), and other tools opening the same tables."""
from __future__ import annotations

import hashlib

import polars as pl
import pytest

import etl.api as mm
from etl import schema as S
from etl.ingest import IngestOptions, ingest

from conftest import REALDATA, needs_realdata

PRETRAIN = REALDATA / "llava_pretrain_pr1902/playground/data/LLaVA-Pretrain"
SUBSET = PRETRAIN / "blip_laion_cc_sbu_2k.subset200.json"


@pytest.fixture
def lcs_lake(lake):
    needs_realdata(SUBSET)
    ingest(lake, [str(SUBSET)], IngestOptions(source="lcs", image_roots=[str(PRETRAIN / "images")], progress=False))
    return lake


def test_a_notebook_opens_the_lake_and_reads_sql_polars_and_images(lcs_lake):
    lake = mm.open_lake(lcs_lake.root)
    assert lake.sql("select source, count(*) as n from samples group by all").to_dicts() == [{"source": "lcs", "n": 200}]
    samples = lake.table("samples").filter(pl.col("source") == "lcs").select("sample_id", "image_ids").collect()
    assert samples.height == 200
    images = lake.table("images").collect()
    assert S.BLOB_COLUMN not in images.columns and images.height == 200
    image_id = samples["image_ids"][0][0]
    data = lake.image_bytes(image_id)
    assert hashlib.sha256(data).hexdigest() == image_id
    assert lake.image(image_id).size == tuple(images.filter(pl.col("image_id") == image_id).select("width", "height").row(0))
    assert set(lake.versions()) >= set(S.TABLES)
    with pytest.raises(KeyError, match="no image"):
        lake.image_bytes("0" * 64)


def test_a_lake_opened_in_python_stays_at_its_version_while_others_write(lcs_lake):
    lake = mm.open_lake(lcs_lake.root)
    ingest(lcs_lake, [str(REALDATA / "fastchat/data/dummy_conversation.json")], IngestOptions(source="chat", progress=False))
    assert lake.sql("select count(*) as n from samples")["n"][0] == 200
    assert lake.table("samples").collect().height == 200
    assert mm.open_lake(lcs_lake.root).sql("select count(*) as n from samples")["n"][0] == 700
    old = mm.open_lake(lcs_lake.root, version=lake.versions()[S.SAMPLES])
    assert old.duckdb().sql("select count(*) from samples").fetchall() == [(200,)]


def test_opening_something_that_is_not_a_lake_is_one_clear_error(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a lake"):
        mm.open_lake(str(tmp_path / "x.txt"))
    with pytest.raises(ValueError, match="does not exist"):
        mm.open_lake(str(tmp_path / "none"))


def test_lancedb_connect_opens_the_lake_tables_as_they_are(lcs_lake):
    lancedb = pytest.importorskip("lancedb", reason="lancedb is in the `notebooks` extra")
    db = lancedb.connect(lcs_lake.root)
    assert set(S.TABLES) <= set(db.list_tables().tables if hasattr(db.list_tables(), "tables") else db.list_tables())
    samples = db.open_table("samples")
    assert samples.count_rows() == 200 and samples.version == lcs_lake.latest_version(S.SAMPLES)
    first = samples.search().where("source = 'lcs'").select(["sample_id", "image_ids"]).limit(1).to_arrow().to_pylist()[0]
    images = db.open_table("images").to_lance()
    row = images.to_table(columns=["image_id"], filter=f"image_id = '{first['image_ids'][0]}'", with_row_id=True)
    blob = images.take_blobs(S.BLOB_COLUMN, ids=row["_rowid"].to_pylist())[0].read()
    assert hashlib.sha256(blob).hexdigest() == first["image_ids"][0]
