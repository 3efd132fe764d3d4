"""Mixture recipes: YAML validation, LLaVA-NeXT sampling semantics, seeded random picks that do not
move when another source joins, filters (checks, where, dedup) with their removal reasons."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time

import lance
import pyarrow as pa
import pytest

from etl import schema as S
from etl.ingest import IngestOptions, ingest
from etl.lake import Lake
from etl.recipe import RecipeError, compile_recipe, lake_columns, parse_recipe
from etl.sqlrun import connect, split_statements

from conftest import run_cli


def qa(i: int, question: str | None = None) -> dict:
    return {"id": f"{i:05d}", "conversations": [{"from": "human", "value": question or f"Question {i}?"},
                                                {"from": "gpt", "value": f"Answer {i}."}]}


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    """Text-only sources: alpha (37 samples, two of them broken), beta (10), gamma (5)."""
    root = tmp_path_factory.mktemp("recipe")
    alpha = [qa(i) for i in range(35)] + [
        {"id": "broken_roles", "conversations": [{"from": "gpt", "value": "Hi"}, {"from": "human", "value": "?"}]},
        {"id": "tag_without_image", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                      {"from": "gpt", "value": "Nothing."}]}]
    for name, records in (("alpha", alpha), ("beta", [qa(i) for i in range(10)]), ("gamma", [qa(i) for i in range(5)])):
        (root / f"{name}.json").write_text(json.dumps(records))
        ingest_lake = Lake.open(str(root / "lake"))
        ingest(ingest_lake, [str(root / f"{name}.json")], IngestOptions(source=name, progress=False))
    lake = Lake.open(str(root / "lake"))
    # loss as an enricher would fill it: NULL for two samples (not computed), values elsewhere
    ids = [r["sample_id"] for r in lake.dataset(S.SAMPLES).to_table(columns=["sample_id"], filter="source = 'beta'").to_pylist()]
    losses = pa.table({"sample_id": ids[:8], "loss": pa.array([0.1 * (i + 1) for i in range(8)], pa.float32())})
    lake.fill_columns(S.SAMPLES, losses)
    return lake


def decisions(lake: Lake, text: str) -> dict[str, dict[str, str | None]]:
    """{source: {orig_id: removed_by}} for a recipe given as YAML text."""
    con = connect(lake)
    compiled = compile_recipe(parse_recipe(text), lake_columns(con))
    out: dict[str, dict] = {}
    for source, orig_id, removed_by in con.execute(compiled.decisions_sql("source, orig_id, removed_by")).fetchall():
        out.setdefault(source, {})[orig_id] = removed_by
    return out


def picked(d: dict[str, str | None]) -> list[str]:
    return sorted(k for k, v in d.items() if v is None)


# -- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("name: x\nsources: [{source: a, sampling: 'half'}]", "sampling 'half'"),
    ("name: x\nsources: [{source: a, sampling: 'first:12.5%'}]", "integer percent"),
    ("name: x\nsources: [{source: a, sampling: 'random:150%'}]", "≤ 100"),
    ("name: x\nsources: [{source: a, sampling: 'first:0'}]", "≥ 1"),
    ("name: x\nsources: [{source: a, sampl: all}]", "unknown key(s) ['sampl']"),
    ("name: x\nsources: [a, a]", "listed twice"),
    ("name: x\nseed: abc\nsources: [a]", "`seed` must be an integer"),
    ("name: ../escape\nsources: [a]", "file-name-safe"),
    ("name: x\nsources: [{source: a, repeat: 0}]", "repeat must be an integer ≥ 1"),
    ("name: x\ndefaults: {checks: strict}\nsources: [a]", "checks must be one of"),
    ("name: x\nsources: [{source: a, where: 'true; drop table samples'}]", "one SQL boolean expression"),
    ("name: x\nsources: []", "non-empty list"),
])
def test_invalid_recipe_is_refused_with_a_message_naming_the_mistake(text, message):
    with pytest.raises(RecipeError) as err:
        parse_recipe(text)
    assert message in str(err.value)


def test_defaults_apply_to_every_source_and_entries_override_them():
    recipe = parse_recipe("name: m\nseed: 7\ndefaults: {checks: off, dedup: exact, near_dup_k: 2}\n"
                          "sources:\n  - a\n  - {source: b, dedup: none, sampling: 'end:3', repeat: 2}\n")
    a, b = recipe.sources
    assert (a.checks, a.dedup, a.near_dup_k, str(a.sampling), a.repeat) == ("off", "exact", 2, "all", 1)
    assert (b.checks, b.dedup, b.near_dup_k, str(b.sampling), b.repeat) == ("off", "none", 2, "end:3", 2)


# -- sampling semantics ----------------------------------------------------------------------------
def test_percent_takes_ceil_of_p_times_eligible_over_100_like_llava_next(lake):
    d = decisions(lake, "name: m\nsources: [{source: alpha, sampling: 'first:10%'}]")["alpha"]
    eligible = [k for k, v in d.items() if v != "checks"]
    assert len(eligible) == 35
    assert len(picked(d)) == math.ceil(10 * 35 / 100) == 4


def test_first_and_end_count_in_source_order_after_the_filters(lake):
    first = decisions(lake, "name: m\nsources: [{source: alpha, sampling: 'first:3'}]")["alpha"]
    end = decisions(lake, "name: m\nsources: [{source: alpha, sampling: 'end:3'}]")["alpha"]
    assert picked(first) == ["00000", "00001", "00002"]
    assert picked(end) == ["00032", "00033", "00034"]  # the two broken records at the end were removed first
    assert first["broken_roles"] == end["broken_roles"] == "checks"


def test_random_is_seeded_stable_and_unaffected_by_adding_a_source(lake):
    alone = decisions(lake, "name: m\nseed: 42\nsources: [{source: alpha, sampling: 'random:30%'}]")
    again = decisions(lake, "name: m\nseed: 42\nsources: [{source: alpha, sampling: 'random:30%'}]")
    with_more = decisions(lake, "name: m\nseed: 42\nsources:\n  - {source: beta, sampling: 'random:5'}\n"
                                "  - {source: alpha, sampling: 'random:30%'}\n  - gamma\n")
    other_seed = decisions(lake, "name: m\nseed: 43\nsources: [{source: alpha, sampling: 'random:30%'}]")
    assert picked(alone["alpha"]) == picked(again["alpha"]) == picked(with_more["alpha"])
    assert len(picked(alone["alpha"])) == math.ceil(30 * 35 / 100)
    assert picked(other_seed["alpha"]) != picked(alone["alpha"])
    assert len(picked(with_more["beta"])) == 5 and len(picked(with_more["gamma"])) == 5


def test_random_picks_are_not_simply_the_first_rows(lake):
    d = decisions(lake, "name: m\nseed: 1\nsources: [{source: alpha, sampling: 'random:5'}]")["alpha"]
    assert picked(d) != ["00000", "00001", "00002", "00003", "00004"]


def test_sources_mixing_random_first_end_and_all_decide_as_each_would_alone(lake):
    """Every source is decided in one pass (one ranking window for all sampled sources): mixing
    strategies, filters and repeats in one recipe must give each source its own recipe's decisions."""
    specs = ["{source: alpha, sampling: 'random:30%'}", "{source: beta, sampling: 'end:4', where: 'loss is not null'}",
             "{source: gamma, sampling: 'first:2', repeat: 2}"]
    mixed = decisions(lake, "name: m\nseed: 9\nsources:\n" + "".join(f"  - {s}\n" for s in specs))
    for spec in specs:
        alone = decisions(lake, f"name: m\nseed: 9\nsources: [{spec}]")
        source = next(iter(alone))
        assert mixed[source] == alone[source], source
    assert len(picked(mixed["beta"])) == 4 and mixed["beta"]["00009"] == "where"
    with_all = decisions(lake, "name: m\nseed: 9\nsources:\n  - alpha\n  - " + specs[2] + "\n")
    assert picked(with_all["alpha"]) == picked(decisions(lake, "name: m\nsources: [alpha]")["alpha"])
    assert picked(with_all["gamma"]) == picked(mixed["gamma"]) == ["00000", "00001"]


def test_random_pick_is_the_lowest_md5_of_seed_and_sample_id_among_the_samples_checks_kept(lake):
    """The seeded pick, recomputed in Python: a query rewrite must select exactly these samples."""
    con = connect(lake)
    compiled = compile_recipe(parse_recipe("name: m\nseed: 42\nsources: [{source: alpha, sampling: 'random:30%'}]"),
                              lake_columns(con))
    rows = con.execute(compiled.decisions_sql("sample_id, removed_by")).fetchall()
    eligible = sorted((hashlib.md5(f"42{sid}".encode()).hexdigest(), sid) for sid, why in rows if why != "checks")
    expected = sorted(sid for _, sid in eligible[: math.ceil(30 * len(eligible) / 100)])
    assert len(eligible) == 35
    assert sorted(sid for sid, why in rows if why is None) == expected


def window_projections(plan: list[dict]) -> list[str]:
    """The expressions of every WINDOW operator in a DuckDB `explain (format json)` plan."""
    found, todo = [], list(plan)
    while todo:
        node = todo.pop()
        if node.get("name") == "WINDOW":
            proj = node.get("extra_info", {}).get("Projections", [])
            found += [proj] if isinstance(proj, str) else proj
        todo += node.get("children", [])
    return found


@pytest.mark.parametrize("sampling", ["random:30%", "first:40%", "end:5"])
def test_sampling_plan_has_no_filtered_window_aggregate_that_is_quadratic_in_the_source(lake, sampling):
    """DuckDB evaluates `count(*) FILTER (WHERE …) OVER ()` row by row for every row (duckdb#25935):
    a 950k-sample source took ~190 s in the recipe decisions instead of ~1 s. The plan must rank and
    count with window expressions that read each source once."""
    con = connect(lake)
    compiled = compile_recipe(parse_recipe(f"name: m\nsources: [{{source: alpha, sampling: '{sampling}'}}]"),
                              lake_columns(con))
    plan = json.loads(con.execute("explain (format json) " + compiled.decisions_sql()).fetchall()[0][1])
    windows = window_projections(plan)
    assert any("row_number()" in w for w in windows) and any(w.startswith("count(") for w in windows), windows
    assert not [w for w in windows if "FILTER" in w.upper()], windows


def scan_projections(plan: list[dict]) -> list[list[str]]:
    """The projected columns of every scan of a table in a DuckDB `explain (format json)` plan (not
    the reads of a CTE that DuckDB materialised once)."""
    found, todo = [], list(plan)
    while todo:
        node = todo.pop()
        if "SCAN" in node.get("name", "") and "CTE" not in node.get("name", ""):
            proj = node.get("extra_info", {}).get("Projections", [])
            found.append(sorted([proj] if isinstance(proj, str) else proj))
        todo += node.get("children", [])
    return sorted(found)


def test_recipes_select_from_the_checked_samples_view_and_its_plan_reads_the_samples_once(lake):
    """The checks are a view (sql/checked_samples.sql), not text spliced into the recipe: DuckDB
    inlines it, so the recipe reads every samples column once (plus the image ids for the image
    checks), the images twice (missing, undecodable) and the errors once — as the splice did."""
    con = connect(lake)
    compiled = compile_recipe(parse_recipe("name: m\nsources: [alpha, {source: beta, sampling: 'first:3'}]"),
                              lake_columns(con))
    assert "from checked_samples s" in compiled.ctes and "problems" not in compiled.ctes.split("recipe_samples as")[0]
    plan = json.loads(con.execute("explain (format json) " + compiled.decisions_sql()).fetchall()[0][1])
    scans = scan_projections(plan)
    assert len(scans) == 5, scans
    assert [p for p in scans if "conversations" in p] == [sorted(lake_columns(con)["samples"])]
    assert ["image_ids", "sample_id", "source"] in scans and scans.count(["image_id"]) == 2 and ["error_id"] in scans


def test_a_recipe_that_checks_no_source_reads_the_samples_once_and_still_gets_the_fixes(lake, tmp_path):
    """With `checks: off` everywhere nothing reads `problems`: the recipe selects from unchecked_samples
    (problems NULL) and its plan is one samples scan, without the image references, images and errors
    that only the checks need; the fixes are those checked_samples reports. A `where` on `problems`
    still reads checked_samples."""
    lake = Lake.open(str(shutil.copytree(lake.root, tmp_path / "lake")))  # the shared lake stays as it is
    lake.append(S.SAMPLES, pa.Table.from_pylist([
        {"sample_id": "alpha/fix.json#0", "source": "alpha", "source_file": "fix.json", "source_row": 0,
         "image_ids": [],
         "conversations": [{"from": "human", "value": " Hi? "}, {"from": "gpt", "value": "Hello."}]}],
        schema=S.SAMPLES_SCHEMA))
    con = connect(lake)
    recipe = "name: m\nsources: [{source: alpha, checks: off}, {source: beta, checks: off}]"
    compiled = compile_recipe(parse_recipe(recipe), lake_columns(con))
    assert "from unchecked_samples s" in compiled.ctes
    plan = json.loads(con.execute("explain (format json) " + compiled.decisions_sql()).fetchall()[0][1])
    assert scan_projections(plan) == [sorted(lake_columns(con)["samples"])]
    unchecked = con.execute(compiled.decisions_sql("sample_id, fixes, problems") + " order by sample_id").fetchall()
    checked = con.execute("select sample_id, fixes from checked_samples where source in ('alpha', 'beta') "
                          "order by sample_id").fetchall()
    assert [(sid, fixes) for sid, fixes, _ in unchecked] == checked
    assert ("alpha/fix.json#0", ["surrounding_whitespace"]) in checked
    assert {problems for _, _, problems in unchecked} == {None}
    where_on_problems = parse_recipe(recipe.replace("checks: off}]", "checks: off, where: 'len(problems) = 0'}]"))
    assert "from checked_samples s" in compile_recipe(where_on_problems, lake_columns(con)).ctes


def text_only_lake(root, n: int) -> Lake:
    """A lake with one source `chat` of n two-turn text-only samples (appended directly: ingest is not timed)."""
    lake = Lake.open(str(root))
    lake.append(S.IMAGES, pa.table({"image_id": ["0" * 64], S.BLOB_COLUMN: lance.blob_array([b"x"]), "format": ["JPEG"]}))
    for start in range(0, n, 50_000):
        rows = [{"sample_id": f"chat/c.json#{i}", "source": "chat", "source_file": "c.json", "source_row": i,
                 "orig_id": f"{i:07d}", "image_ids": [], "meta": "{}",
                 "conversations": [{"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": f"Answer {i}."}]}
                for i in range(start, min(start + 50_000, n))]
        lake.append(S.SAMPLES, pa.Table.from_pylist(rows, schema=S.SAMPLES_SCHEMA))
    return lake


def seconds_to_decide(lake: Lake, text: str) -> float:
    """Best of two: wall time to materialise every sample's decision (what export stages first)."""
    con = connect(lake)
    sql = "create or replace temp table d as " + compile_recipe(parse_recipe(text), lake_columns(con)).decisions_sql()
    times = []
    for _ in range(2):
        start = time.perf_counter()
        con.execute(sql)
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.slow
def test_random_sampling_cost_grows_about_linearly_with_the_source(tmp_path):
    """10x the samples may cost at most 20x the time (a quadratic window made it ~40x at this size)."""
    recipe = "name: m\nseed: 7\nsources: [{source: chat, sampling: 'random:30%'}]"
    small = seconds_to_decide(text_only_lake(tmp_path / "small", 20_000), recipe)
    large = seconds_to_decide(text_only_lake(tmp_path / "large", 200_000), recipe)
    assert large < 20 * max(small, 0.02), (small, large)


# -- filters ---------------------------------------------------------------------------------------
def test_checks_pass_removes_blocking_problems_and_checks_off_keeps_them(lake):
    on = decisions(lake, "name: m\nsources: [alpha]")["alpha"]
    off = decisions(lake, "name: m\ndefaults: {checks: off}\nsources: [alpha]")["alpha"]
    assert on["broken_roles"] == on["tag_without_image"] == "checks"
    assert off["broken_roles"] is None and off["tag_without_image"] is None
    assert len(picked(on)) == 35


def test_where_on_loss_removes_rows_outside_the_range_and_rows_with_null_loss(lake):
    d = decisions(lake, "name: m\nsources: [{source: beta, where: 'loss between 0.25 and 0.65'}]")["beta"]
    assert picked(d) == ["00002", "00003", "00004", "00005"]
    assert d["00008"] == d["00009"] == "where"  # loss not computed: NULL is never a pass


def test_where_on_tags_sees_text_only_samples_as_having_no_tags(lake):
    d = decisions(lake, "name: m\nsources: [{source: gamma, where: \"not list_contains(tags, 'text')\"}]")["gamma"]
    assert len(picked(d)) == 5


def test_dedup_exact_decides_within_the_recipe_without_any_dedup_table(lake):
    """beta's ten questions are gamma's five plus five more: gamma listed first keeps its copies."""
    d = decisions(lake, "name: m\ndefaults: {dedup: exact}\nsources: [gamma, beta]")
    assert picked(d["gamma"]) == [f"{i:05d}" for i in range(5)]
    assert {k: v for k, v in d["beta"].items() if v} == {f"{i:05d}": "dedup_exact" for i in range(5)}
    preferred = decisions(lake, "name: m\ndedup_prefer: [beta]\ndefaults: {dedup: exact}\nsources: [gamma, beta]")
    assert picked(preferred["beta"]) == [f"{i:05d}" for i in range(10)] and picked(preferred["gamma"]) == []
    alone = decisions(lake, "name: m\ndefaults: {dedup: exact}\nsources: [beta]")  # nothing to dedup against
    assert picked(alone["beta"]) == [f"{i:05d}" for i in range(10)]


def test_near_dup_without_its_table_tells_the_user_to_run_dedup_near(lake):
    with pytest.raises(RecipeError, match=r"python -m etl dedup --near 2"):
        decisions(lake, "name: m\ndefaults: {near_dup_k: 2}\nsources: [alpha]")


def test_dry_run_prints_a_script_that_runs_in_duckdb_and_gives_the_mixture(lake, tmp_path):
    recipe = tmp_path / "mix.yaml"
    recipe.write_text("name: mix\nseed: 3\ndefaults: {max_text_chars: 5000}\nsources:\n"
                      "  - {source: alpha, sampling: 'random:4', repeat: 2}\n  - {source: beta, sampling: 'first:50%'}\n")
    script = run_cli("export", str(recipe), "--dry-run", lake=lake).stdout
    assert "set variable max_text_chars = 5000;" in script
    con = connect(lake)
    *setup, query = split_statements(script)
    for stmt in setup:
        con.execute(stmt)
    rows = con.execute(query).fetchall()
    assert len(rows) == 4 * 2 + 5
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)  # sources in recipe order


# -- dedup tables written by `python -m etl dedup` ------------------------------------------------------
@pytest.fixture(scope="module")
def deduped_lake(tmp_path_factory) -> Lake:
    """Text-only source `chat` where records 3 and 5 repeat record 1 word for word; dedup has run."""
    from etl.dedup import DedupOptions, run_dedup

    root = tmp_path_factory.mktemp("dedup")
    records = [qa(i) for i in range(6)]
    records[3] = records[5] = {**qa(1), "id": "copy"}
    records[5] = {**qa(1), "id": "copy2"}
    (root / "chat.json").write_text(json.dumps(records))
    lake = Lake.open(str(root / "lake"))
    ingest(lake, [str(root / "chat.json")], IngestOptions(source="chat", progress=False))
    run_dedup(lake, DedupOptions(near_k=2))
    return lake


def test_dedup_exact_removes_the_later_copies_with_reason_dedup_exact(deduped_lake):
    d = decisions(deduped_lake, "name: m\ndefaults: {dedup: exact}\nsources: [chat]")["chat"]
    assert d["copy"] == d["copy2"] == "dedup_exact"
    assert picked(d) == ["00000", "00001", "00002", "00004"]


def test_near_dup_k_other_than_the_computed_one_asks_for_a_dedup_rerun(deduped_lake):
    con = connect(deduped_lake)
    from etl.recipe import check_derived_inputs

    ok = parse_recipe("name: m\ndefaults: {near_dup_k: 2}\nsources: [chat]")
    assert check_derived_inputs(con, ok, deduped_lake)["near_dup"]["near_k"] == 2
    with pytest.raises(RecipeError, match=r"python -m etl dedup --near 3"):
        check_derived_inputs(con, parse_recipe("name: m\ndefaults: {near_dup_k: 3}\nsources: [chat]"), deduped_lake)
