"""Dedup as SQL: data-juicer's 14 expectations, real near-duplicate pairs and hard negatives,
exact recall of the banded near-duplicate search, and the `dedup` job writing lake tables."""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import duckdb
import lance
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from etl import schema as S
from etl.dedup import DedupOptions, run_dedup
from etl.enrich.phash import phash_exact
from etl.images import content_id, sniff
from etl.sqlrun import SQL_DIR, define_models, run_file

imagehash = pytest.importorskip("imagehash")

DJ_METHODS = {"phash": imagehash.phash, "dhash": imagehash.dhash, "whash": imagehash.whash,
              "ahash": imagehash.average_hash}


# -- helpers: the contract views as plain DuckDB tables ---------------------------------------------
def sql_lake(images: list[dict], samples: list[dict]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with `images` and `samples` tables shaped like the lake views."""
    con = duckdb.connect()
    images_tbl = pa.Table.from_pylist(images, schema=pa.schema([
        ("image_id", pa.string()), ("phash", pa.uint64()), ("width", pa.int32()), ("height", pa.int32()),
        ("format", pa.string()), ("nbytes", pa.int64())]))
    samples_tbl = pa.Table.from_pylist(samples, schema=pa.schema([
        ("sample_id", pa.string()), ("source", pa.string()), ("source_file", pa.string()),
        ("source_row", pa.int64()), ("image_ids", pa.list_(pa.string())), ("conversations", S.CONVERSATIONS)]))
    con.register("images_arrow", images_tbl)
    con.register("samples_arrow", samples_tbl)
    con.execute("create table images as select * from images_arrow")
    con.execute("create table samples as select * from samples_arrow")
    define_models(con, [SQL_DIR / "sample_images.sql", SQL_DIR / "dedup_keys.sql"])  # what the dedup SQL reads
    return con


def human(text: str | None) -> list[dict]:
    return [{"from": "human", "value": text}] if text is not None else []


def u64(h) -> int:
    return int(str(h), 16)


# -- data-juicer's image deduplicator expectations ----------------------------------------------------
def dj_cases(realdata: Path) -> list[dict]:
    spec = json.loads((realdata / "data_juicer" / "image_deduplicator_expected.json").read_text())
    return spec["cases"]


def run_dj_case(realdata: Path, case: dict) -> list[dict]:
    """Load a case's records as samples (images hashed with the case's method), return the kept ones."""
    hash_fn = DJ_METHODS[case["method"]]
    images, samples = {}, []
    for row, record in enumerate(case["input"]):
        ids = []
        for rel in record["images"]:
            data = (realdata / "data_juicer" / rel).read_bytes()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = phash_exact(data) if case["method"] == "phash" else u64(hash_fn(Image.open(io.BytesIO(data))))
            images[content_id(data)] = {"image_id": content_id(data), "phash": value, "width": 1, "height": 1}
            ids.append(content_id(data))
        samples.append({"sample_id": f"{case['test']}-{row}", "source": "data_juicer", "source_file": "case.jsonl",
                        "source_row": row, "image_ids": ids, "conversations": human(record.get("text"))})
    con = sql_lake(list(images.values()), samples)
    removed = {r[0] for r in run_file(con, "dedup_exact", {"dedup_consider_text": case["consider_text"]}).fetchall()}
    return [record for row, record in enumerate(case["input"]) if f"{case['test']}-{row}" not in removed]


def test_the_14_data_juicer_dedup_cases_keep_the_expected_records(realdata):
    cases = dj_cases(realdata)
    assert len(cases) == 14
    for case in cases:
        if case["method"] == "error":
            continue  # covered by test_unknown_hash_method_is_a_value_error
        assert run_dj_case(realdata, case) == case["expected"], case["test"]


def test_unknown_hash_method_is_a_value_error(realdata):
    from etl.enrich.phash import PhashEnricher, phash_batch

    case = [c for c in dj_cases(realdata) if c["method"] == "error"][0]
    assert case["expect_exception"] == "ValueError"
    with pytest.raises(ValueError):
        phash_batch([b""], "error")
    with pytest.raises(ValueError):
        PhashEnricher(mode="error")


# -- exact rule details ---------------------------------------------------------------------------------
def test_exact_dedup_is_per_source_by_default_and_global_on_request():
    images = [{"image_id": "a", "phash": 2**63 + 1, "width": 1, "height": 1}]
    samples = [
        {"sample_id": "x1", "source": "coco", "source_file": "f", "source_row": 0, "image_ids": ["a"], "conversations": human("hi")},
        {"sample_id": "y1", "source": "vg", "source_file": "f", "source_row": 0, "image_ids": ["a"], "conversations": human("hi")},
        {"sample_id": "x2", "source": "coco", "source_file": "f", "source_row": 1, "image_ids": ["a"], "conversations": human("hi")},
    ]
    con = sql_lake(images, samples)
    per_source = run_file(con, "dedup_exact").fetchall()
    assert [(r[0], r[2]) for r in per_source] == [("x2", "x1")]
    everywhere = run_file(con, "dedup_exact", {"dedup_scope": "global"}).fetchall()
    assert sorted((r[0], r[2]) for r in everywhere) == [("x2", "x1"), ("y1", "x1")]


def test_a_sample_whose_image_has_no_phash_is_never_a_duplicate():
    images = [{"image_id": "a", "phash": None, "width": 1, "height": 1}]
    samples = [{"sample_id": f"s{i}", "source": "src", "source_file": "f", "source_row": i, "image_ids": ["a"],
                "conversations": human("same")} for i in range(3)]
    assert run_file(sql_lake(images, samples), "dedup_exact").fetchall() == []


def test_text_only_samples_dedup_on_conversations_only_when_text_counts():
    samples = [{"sample_id": f"t{i}", "source": "sharegpt", "source_file": "f", "source_row": i, "image_ids": [],
                "conversations": human(text)} for i, text in enumerate(["a", "b", "a"])]
    con = sql_lake([], samples)
    assert [r[0] for r in run_file(con, "dedup_exact").fetchall()] == ["t2"]
    assert run_file(con, "dedup_exact", {"dedup_consider_text": False}).fetchall() == []


def test_same_images_with_different_conversations_are_kept():
    images = [{"image_id": "a", "phash": 7, "width": 1, "height": 1}]
    samples = [{"sample_id": f"s{i}", "source": "llava", "source_file": "f", "source_row": i, "image_ids": ["a"],
                "conversations": human(q)} for i, q in enumerate(["What is this?", "Describe it."])]
    assert run_file(sql_lake(images, samples), "dedup_exact").fetchall() == []


def test_bad_scope_is_a_clear_sql_error():
    with pytest.raises(duckdb.Error, match="dedup_scope must be source or global"):
        run_file(sql_lake([], []), "dedup_exact", {"dedup_scope": "everywhere"}).fetchall()


# -- near-duplicates on real pairs ---------------------------------------------------------------------
def scout_pairs(realdata: Path) -> dict:
    return json.loads((realdata / "SCOUT_OBSERVED_phash_pairs.json").read_text())


def clusters_for(realdata: Path, paths: list[str], k: int) -> dict[str, str]:
    images = {}
    for rel in paths:
        data = (realdata / rel).read_bytes()
        info = sniff(data)
        images[rel] = {"image_id": info.image_id, "phash": phash_exact(data), "width": info.width, "height": info.height}
    con = sql_lake(list(images.values()), [])
    run_file(con, "dedup_near", {"near_k": k}).fetchall()
    cluster_of = dict(con.execute("select image_id, cluster_id from near_image_clusters").fetchall())
    return {rel: cluster_of.get(img["image_id"]) for rel, img in images.items()}


def test_real_near_duplicates_cluster_at_k2_and_hard_negatives_do_not_at_k3(realdata):
    pairs = scout_pairs(realdata)
    near = [(p["a"], p["b"]) for p in pairs["true_near_duplicates"] if "phash_distance" in p and p["phash_distance"] <= 2]
    negatives = [(p["a"], p["b"]) for p in pairs["hard_negatives"] if 4 <= p["phash_distance"] <= 6]
    names = [n for n, _ in near] + [n for _, n in near]
    assert any("cmyk" in n for n in names) and any(n.endswith(".png") for n in names)  # CMYK vs RGB, PNG vs JPEG
    assert any("img_pair_1" in a for a, _ in negatives) and len(negatives) >= 3  # plane/boat (4), mock-ups (6)

    at_k2 = clusters_for(realdata, sorted({p for pair in near for p in pair}), k=2)
    for a, b in near:
        assert at_k2[a] is not None and at_k2[a] == at_k2[b], (a, b)

    at_k3 = clusters_for(realdata, sorted({p for pair in negatives for p in pair}), k=3)
    for a, b in negatives:
        assert at_k3[a] is None or at_k3[a] != at_k3[b], (a, b)


def test_the_representative_is_the_largest_copy(realdata):
    small = "llamafactory/mllm_demo/mllm_demo_data/3.jpg"
    large = "llamafactory/mllm_example_dataset_2024-04/images/3.jpg"
    clusters = clusters_for(realdata, [small, large], k=2)
    assert clusters[small] == clusters[large] == content_id((realdata / large).read_bytes())


# -- exact recall of the banded search ----------------------------------------------------------------
def brute_force_components(hashes: np.ndarray, k: int) -> set[frozenset[int]]:
    parent = list(range(len(hashes)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i in range(len(hashes)):
        for j in np.flatnonzero(np.bitwise_count(hashes[i] ^ hashes[i + 1:]) <= k) + i + 1:
            parent[root(i)] = root(int(j))
    groups: dict[int, set[int]] = {}
    for i in range(len(hashes)):
        groups.setdefault(root(i), set()).add(i)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def planted_hashes(n: int, seed: int) -> np.ndarray:
    """Random hashes plus copies with 0..5 flipped bits, and one chain whose ends are 8 bits apart."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    copies = base[rng.integers(0, n, n // 5)].copy()
    for j in range(len(copies)):
        for bit in rng.choice(64, int(rng.integers(0, 6)), replace=False):
            copies[j] ^= np.uint64(1) << np.uint64(bit)
    chain = [base[0]]
    for bit in range(0, 8, 2):  # each step flips 2 bits: neighbours at 2, ends at 8
        chain.append(chain[-1] ^ (np.uint64(3) << np.uint64(bit + 40)))
    return np.concatenate([base, copies, np.array(chain[1:], np.uint64)])


@pytest.mark.parametrize("k,bands", [(0, None), (1, None), (2, None), (3, None), (3, 4), (4, 8)])
def test_near_duplicate_clusters_equal_brute_force_connected_components(k, bands):
    hashes = planted_hashes(1500, seed=k)
    images = [{"image_id": f"i{i:05d}", "phash": int(h), "width": 8, "height": 8} for i, h in enumerate(hashes)]
    con = sql_lake(images, [])
    params = {"near_k": k} | ({"near_bands": bands} if bands else {})
    run_file(con, "dedup_near", params).fetchall()
    got: dict[str, set[int]] = {}
    for image_id, cluster_id in con.execute("select image_id, cluster_id from near_image_clusters").fetchall():
        got.setdefault(cluster_id, set()).add(int(image_id[1:]))
    assert {frozenset(g) for g in got.values()} == brute_force_components(hashes, k)


def test_near_duplicate_search_over_200k_hashes_fits_in_64_mb_of_duckdb_memory():
    """The band join runs a part of the combinations at a time: with DuckDB held to 64 MB and no
    disk to spill to, 200k hashes at k = 3 still cluster (one join over all ten combinations at
    once needed more than 150 MB here) and the planted pairs are found."""
    rng = np.random.default_rng(9)
    hashes = rng.integers(0, 2**64 - 1, 200_000, dtype=np.uint64, endpoint=True)
    hashes[1::1000] = hashes[::1000] ^ np.uint64(0b1011)  # 200 planted pairs at distance 3
    n = len(hashes)
    con = sql_lake([], [])
    con.register("planted", pa.table({"image_id": pa.array([f"i{i:06d}" for i in range(n)]),
                                      "phash": pa.array(hashes, pa.uint64()), "width": pa.array(np.ones(n, np.int32)),
                                      "height": pa.array(np.ones(n, np.int32)), "format": pa.array(["jpeg"] * n),
                                      "nbytes": pa.array(np.ones(n, np.int64))}))
    con.execute("insert into images select * from planted")
    con.unregister("planted")
    con.execute("set memory_limit = '64MB'; set temp_directory = ''; set threads = 1")
    run_file(con, "dedup_near", {"near_k": 3})
    clusters = dict(con.execute("select image_id, cluster_id from near_image_clusters").fetchall())
    assert all(clusters.get(f"i{i:06d}") is not None and clusters[f"i{i:06d}"] == clusters.get(f"i{i + 1:06d}")
               for i in range(0, n, 1000))


def test_near_k_larger_than_the_bands_allow_is_rejected():
    with pytest.raises(duckdb.Error, match="near_bands must be > near_k"):
        run_file(sql_lake([], []), "dedup_near", {"near_k": 3, "near_bands": 3}).fetchall()


# -- the dedup job on a real lake -------------------------------------------------------------------
def fill_lake(lake, realdata: Path) -> dict[str, str]:
    """Images from realdata (with their exact phash) and samples across two sources."""
    files = {
        "cat": "data_juicer/tests/ops/data/cat.jpg",
        "rgb": "pillow_test_images/Tests/images/pil_sample_rgb.jpg",
        "cmyk": "pillow_test_images/Tests/images/pil_sample_cmyk.jpg",
        "plane": "data_juicer/tests/ops/data/img_pair_1.jpg",
        "boat": "data_juicer/tests/ops/data/img_pair_2.jpg",
        "frame1": "vila_inference_test/inference_test/test_data/factory_count_1.jpg",
        "frame2": "vila_inference_test/inference_test/test_data/factory_count_2.jpg",
    }
    rows, blobs, ids = [], [], {}
    for key, rel in files.items():
        data = (realdata / rel).read_bytes()
        info = sniff(data)
        ids[key] = info.image_id
        rows.append({"image_id": info.image_id, "format": info.format, "width": info.width, "height": info.height,
                     "nbytes": info.nbytes, "phash": phash_exact(data), "phash_mode": "exact"})
        blobs.append(data)
    fields = [S.IMAGES_SCHEMA.field(name) for name in rows[0]]
    table = pa.Table.from_pylist(rows, schema=pa.schema(fields)).append_column(S.BLOB_COLUMN, lance.blob_array(blobs))
    lake.append(S.IMAGES, table)

    def sample(sid, source, row, keys, text):
        return {"sample_id": sid, "source": source, "source_file": f"{source}.json", "source_row": row,
                "orig_id": sid, "image_ids": [ids[k] for k in keys], "conversations": human(text), "meta": "{}"}

    lake.append(S.SAMPLES, pa.Table.from_pylist([
        sample("a0", "alpha", 0, ["cat"], "what animal?"),
        sample("a1", "alpha", 1, ["cat"], "what animal?"),     # exact duplicate of a0
        sample("a2", "alpha", 2, ["rgb"], "describe"),
        sample("a3", "alpha", 3, ["cmyk"], "describe"),        # CMYK copy: equal phash, exact duplicate
        sample("a4", "alpha", 4, ["plane"], "what flies?"),
        sample("a5", "alpha", 5, ["boat"], "what flies?"),     # hard negative (distance 4): kept
        sample("a6", "alpha", 6, ["frame1"], "count"),
        sample("a7", "alpha", 7, ["frame2"], "count"),         # next video frame (distance 2): near duplicate
        sample("b0", "beta", 0, ["cat"], "what animal?"),      # other source: kept with scope=source
        sample("b1", "beta", 1, [], "hello"),
        sample("b2", "beta", 2, [], "hello"),                  # text-only duplicate
    ]))
    return ids


def test_dedup_job_writes_tagged_tables_and_counts_removals_per_source(lake, realdata):
    ids = fill_lake(lake, realdata)
    report = run_dedup(lake, DedupOptions(near_k=2))
    by_source = {r["source"]: r for r in report.per_source}
    assert by_source["alpha"] == {"source": "alpha", "samples": 8, "exact_duplicates": 2, "near_duplicates": 1, "kept": 5}
    assert by_source["beta"] == {"source": "beta", "samples": 3, "exact_duplicates": 1, "near_duplicates": 0, "kept": 2}

    exact = lance.dataset(lake.uri(S.DUP_EXACT)).to_table().to_pylist()
    assert sorted((r["sample_id"], r["kept_sample_id"]) for r in exact) == [("a1", "a0"), ("a3", "a2"), ("b2", "b1")]
    assert {r["run_id"] for r in exact} == {report.run_id}
    near = lance.dataset(lake.uri(S.DUP_NEAR)).to_table().to_pylist()
    # the near rule also finds the exact duplicates whose images are in a cluster (distance 0)
    assert [(r["sample_id"], r["kept_sample_id"], r["near_k"]) for r in near] == [("a3", "a2", 2), ("a7", "a6", 2)]
    clusters = lance.dataset(lake.uri(S.IMAGE_CLUSTERS))
    members = {r["image_id"]: r["cluster_id"] for r in clusters.to_table().to_pylist()}
    assert members[ids["rgb"]] == members[ids["cmyk"]] and members[ids["frame1"]] == members[ids["frame2"]]
    assert ids["plane"] not in members and ids["boat"] not in members
    assert json.loads(clusters.schema.metadata[b"mmlake:params"])["near_k"] == 2

    runs = lake.dataset(S.RUNS).to_table().to_pylist()
    assert [json.loads(r["params"])["near_k"] for r in runs if r["command"] == "dedup"] == [2]


def test_dedup_cli_prints_the_per_source_summary_and_sql_can_join_the_results(lake, realdata):
    from conftest import run_cli
    from etl.sqlrun import connect

    fill_lake(lake, realdata)
    out = run_cli("dedup", "--near", "2", lake=lake).stdout
    assert "what would be removed per source" in out and "alpha" in out and "beta" in out
    con = connect(lake)
    remaining = con.execute(
        "select count(*) from samples where sample_id not in (select sample_id from dup_exact)"
        " and sample_id not in (select sample_id from dup_near)").fetchone()[0]
    assert remaining == 7
