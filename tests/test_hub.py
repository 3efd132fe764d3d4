"""`ingest --from-hub`: the snapshot_download wiring, exercised offline against Hub-shaped folders."""
from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from etl import schema as S
from etl.hub import fetch_dataset, ingest_arguments, parse_hub_ref
from etl.ingest import IngestOptions, ingest
from etl.lake import Lake

REPO = "lmms-lab/LLaVA-OneVision-Data"
IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("image", IMAGE), pa.field("conversations", S.CONVERSATIONS),
                    pa.field("data_source", pa.string())],
                   metadata={"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"}}}})})


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (seed * 30 % 256, 0, 0)).save(buf, "JPEG")
    return buf.getvalue()


def hub_snapshot(folder, configs: dict[str, int]):
    """A folder laid out like a downloaded Hub dataset: README card, one folder per config, HF cache dir."""
    seed = 0
    for config, rows in configs.items():
        table = pa.Table.from_pylist([
            {"id": f"{config}-{i}", "image": {"bytes": jpeg(seed := seed + 1), "path": None}, "data_source": config,
             "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": str(i)}]}
            for i in range(rows)], schema=SCHEMA)
        (folder / config).mkdir(parents=True)
        pq.write_table(table, folder / config / "train-00000-of-00001.parquet")
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: x\n---\n")
    (folder / ".cache" / "huggingface" / "download").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "download" / "README.md.metadata").write_text("abc\n")
    return folder


def sources(lake: Lake) -> dict[str, int]:
    rows = lake.dataset(S.SAMPLES).to_table(columns=["source"]).column("source").to_pylist()
    return {s: rows.count(s) for s in set(rows)}


def test_offline_from_hub_returns_the_downloaded_snapshot_and_ingests_the_included_configs(tmp_path, monkeypatch):
    local_dir = hub_snapshot(tmp_path / "hub" / "ov", {"CLEVR-Math(MathV360K)": 3, "chartqa(cauldron)": 2, "ai2d": 4})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the real snapshot_download, told not to touch the network
    ref = parse_hub_ref(REPO, include=["chartqa*/*.parquet", "CLEVR-Math(MathV360K)/*"])

    folder = fetch_dataset(ref, local_dir=str(local_dir))
    lake = Lake.open(str(tmp_path / "lake"))
    ingest(lake, ingest_arguments(folder, ref.include), IngestOptions(progress=False))

    assert folder == str(local_dir.resolve())
    assert sources(lake) == {"CLEVR-Math(MathV360K)": 3, "chartqa(cauldron)": 2}  # ai2d not included

    counts = ingest(lake, ingest_arguments(folder, ref.include), IngestOptions(progress=False))
    assert counts["files_already_done"] == 2 and counts["samples_added"] == 0  # the ingest resumes too


def test_a_single_config_repo_downloaded_to_the_hub_dir_is_named_after_the_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("ETL_HUB_DIR", str(tmp_path / "hubdir"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = parse_hub_ref("lmms-lab/LLaVA-ReCap-558K", include=["data/*.parquet"])
    hub_snapshot(tmp_path / "hubdir" / "lmms-lab" / "LLaVA-ReCap-558K", {"data": 3})
    (tmp_path / "hubdir" / "lmms-lab" / "LLaVA-ReCap-558K" / "data" / "train-00000-of-00001.parquet").rename(
        tmp_path / "hubdir" / "lmms-lab" / "LLaVA-ReCap-558K" / "data" / "train-00000-of-00002.parquet")

    folder = fetch_dataset(ref)  # no local_dir: $ETL_HUB_DIR/<owner>/<name>
    lake = Lake.open(str(tmp_path / "lake"))
    ingest(lake, ingest_arguments(folder, ref.include), IngestOptions(progress=False))

    assert sources(lake) == {"LLaVA-ReCap-558K": 3}


def test_offline_without_a_snapshot_fails_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception, match="offline|outgoing traffic has been disabled|local disk"):
        fetch_dataset(parse_hub_ref(REPO), local_dir=str(tmp_path / "empty"))


def test_a_local_mirror_is_used_in_place_and_a_whole_repo_ingests_every_config(tmp_path, monkeypatch):
    hub_snapshot(tmp_path / "mirror" / "lmms-lab" / "LLaVA-OneVision-Data", {"a": 2, "b": 1})
    monkeypatch.setenv("ETL_HUB_MIRROR", str(tmp_path / "mirror"))

    folder = fetch_dataset(parse_hub_ref(REPO))
    lake = Lake.open(str(tmp_path / "lake"))
    ingest(lake, ingest_arguments(folder), IngestOptions(progress=False))

    assert folder == str(tmp_path / "mirror" / "lmms-lab" / "LLaVA-OneVision-Data")
    assert sources(lake) == {"a": 2, "b": 1}
    with pytest.raises(FileNotFoundError, match="not in the mirror"):
        fetch_dataset(parse_hub_ref("someone/absent"))


def test_hf_paths_name_a_repo_and_a_folder_inside_it():
    ref = parse_hub_ref("hf://datasets/lmms-lab/LLaVA-OneVision-Data/CLEVR-Math(MathV360K)")
    assert ref.repo_id == REPO and ref.include == ("CLEVR-Math(MathV360K)/*",)
    assert parse_hub_ref("hf://datasets/o/n/cfg", include=["*.parquet"]).include == ("cfg/*.parquet",)
    assert parse_hub_ref("lmms-lab/LLaVA-ReCap-558K").include == ()
    with pytest.raises(ValueError, match="owner"):
        parse_hub_ref("not-a-repo-id")


def test_the_cli_ingests_from_a_hub_mirror_with_two_workers(tmp_path):
    from conftest import run_cli

    hub_snapshot(tmp_path / "mirror" / "lmms-lab" / "LLaVA-OneVision-Data", {"a": 2, "b": 1})
    lake = Lake.open(str(tmp_path / "lake"))
    out = run_cli("ingest", "--from-hub", REPO, "--hub-mirror", str(tmp_path / "mirror"), "--include", "a/*",
                  "--workers", "2", "--no-progress", lake=lake).stdout
    assert "samples added" in out
    assert sources(lake) == {"a": 2}
