"""Mixture analysis functions (etl/analysis.py) on a real ingested lake, before and after enrichment.

Every number is checked against an independent count (the lake read with pyarrow, `python -m etl
stats`, or the export manifests), so a wrong join or a NULL counted as 0 fails here.
"""
from __future__ import annotations

import json
from collections import Counter

import polars as pl
import pytest
from matplotlib.figure import Figure

from analysis_fixtures import bare_lake, enriched_lake, realdata_available, two_exports  # noqa: F401 (fixtures)
from conftest import run_cli
from etl import analysis as an
from etl import schema as S


def rows(lake, table, columns):
    return lake.dataset(table).to_table(columns=columns).to_pylist()


def etl_stats(lake) -> dict[str, dict]:
    out = run_cli("stats", "--format", "json", lake=lake).stdout
    return {r["source"]: r for r in json.loads(out)}


# -- composition ----------------------------------------------------------------------------------
def test_composition_counts_equal_etl_stats_for_every_source(enriched_lake):
    comp = {r["source"]: r for r in an.composition(enriched_lake).iter_rows(named=True)}
    stats = etl_stats(enriched_lake)
    assert set(comp) == set(stats)
    for source, expected in stats.items():
        for col in ("samples", "text_only", "multi_image", "images", "image_bytes", "errors"):
            assert comp[source][col] == expected[col], (source, col)


def test_composition_characters_tokens_and_shares_match_the_samples(enriched_lake):
    samples = rows(enriched_lake, S.SAMPLES, ["source", "conversations", "loss_tokens"])
    chars, tokens = Counter(), Counter()
    for s in samples:
        chars[s["source"]] += sum(len(t["value"]) for t in s["conversations"])
        tokens[s["source"]] += s["loss_tokens"] or 0
    comp = an.composition(enriched_lake)
    by_source = {r["source"]: r for r in comp.iter_rows(named=True)}
    for source in chars:
        assert by_source[source]["characters"] == chars[source]
        assert by_source[source]["tokens"] == tokens[source]
    for measure in ("samples", "images", "characters", "tokens"):
        assert comp[f"{measure}_share"].sum() == pytest.approx(1.0)
    assert by_source["generated"]["samples_share"] == pytest.approx(by_source["generated"]["samples"] / len(samples))


def test_tokens_stay_null_until_the_loss_has_been_computed(bare_lake):
    comp = an.composition(bare_lake)
    assert comp["tokens"].null_count() == comp.height
    assert comp["characters"].sum() > 0


def test_turns_and_images_per_sample_count_every_sample_once(enriched_lake):
    samples = rows(enriched_lake, S.SAMPLES, ["source", "conversations", "image_ids"])
    turns = an.turns_per_sample(enriched_lake)
    expected = Counter((s["source"], len(s["conversations"])) for s in samples)
    assert {(r["source"], r["turns"]): r["samples"] for r in turns.iter_rows(named=True)} == dict(expected)
    ips = an.images_per_sample(enriched_lake)
    generated = {r["images"]: r["samples"] for r in ips.filter(pl.col("source") == "generated").iter_rows(named=True)}
    # the generated source: 29 single-image (24 + 2 mirrors + 3 repeats), 3 two-image, 1 four-image, 6 text-only
    assert generated == {"text-only": 6, "1 image": 29, "2–3 images": 3, "4+ images": 1}
    assert ips.group_by("source").agg(pl.col("share").sum())["share"].to_list() == pytest.approx([1.0] * ips["source"].n_unique())


# -- images and errors ----------------------------------------------------------------------------
def test_image_formats_count_each_distinct_image_of_a_source_once(enriched_lake):
    formats = an.image_formats(enriched_lake).filter(pl.col("source") == "generated")
    # 24 generated images (every third a PNG) + 2 JPEG mirrors; records re-using them add no count
    assert dict(formats.select("format", "images").iter_rows()) == {"JPEG": 18, "PNG": 8}
    sizes = an.image_sizes(enriched_lake).filter(pl.col("source") == "generated").row(0, named=True)
    assert sizes["images"] == 26
    assert (sizes["width_p10"], sizes["width_p90"]) == (200, 1024)


def test_realdata_lcs558k_images_are_jpegs_with_shortest_side_336(enriched_lake):
    if not realdata_available():
        pytest.skip("realdata not present at ../shared/realdata: the lake was built from generated images only")
    details = an.source_image_details(enriched_lake).filter(pl.col("source") == "lcs558k")
    assert details.height == 200
    assert details["format"].unique().to_list() == ["JPEG"]
    assert details.select(pl.min_horizontal("width", "height")).to_series().unique().to_list() == [336]


def test_errors_by_kind_add_up_to_the_stats_errors(enriched_lake):
    errors = an.errors_by_kind(enriched_lake)
    stats = etl_stats(enriched_lake)
    per_source = dict(errors.group_by("source").agg(pl.col("errors").sum()).iter_rows())
    assert per_source == {s: r["errors"] for s, r in stats.items() if r["errors"]}
    ingest = errors.filter((pl.col("source") == "generated") & (pl.col("stage") == "ingest"))
    assert dict(ingest.select("kind", "errors").iter_rows()) == {"missing_image": 1, "not_an_image": 1}


# -- not computed yet vs computed -----------------------------------------------------------------
def test_bare_lake_says_not_computed_yet_for_tags_loss_and_duplicates(bare_lake):
    status = {r["where"]: r["state"] for r in an.enrichment_status(bare_lake).iter_rows(named=True)}
    assert set(status.values()) == {"not computed yet"}
    for result in (an.tag_frequencies(bare_lake), an.tag_frequencies_by_source(bare_lake), an.loss_summary(bare_lake),
                   an.loss_window_effect(bare_lake, 0, 1), an.duplicates_by_source(bare_lake),
                   an.cluster_sizes(bare_lake), an.highest_loss_samples(bare_lake, "generated")):
        assert isinstance(result, an.NotComputed)
        assert "not computed yet" in str(result) and "python -m etl" in result._repr_html_()
    assert an.default_loss_window(bare_lake) is None


def test_enrichment_status_counts_computed_and_failed_rows(enriched_lake):
    status = {r["where"]: r for r in an.enrichment_status(enriched_lake).iter_rows(named=True)}
    losses = [r["loss"] for r in rows(enriched_lake, S.SAMPLES, ["loss"])]
    # a few losses failed: NULL with an errors row each, so the column is done, not partial
    assert status["samples.loss"]["computed"] == sum(x is not None for x in losses)
    assert status["samples.loss"]["failed"] == sum(x is None for x in losses) > 0
    assert status["samples.loss"]["state"] == "computed"
    assert status["images.tags"]["state"] == "computed"
    assert status["table dup_exact"]["state"] == "computed"


def test_a_column_with_rows_left_to_do_is_partial(enriched_lake, tmp_path):
    import shutil

    import pyarrow as pa

    from etl.lake import Lake

    shutil.copytree(enriched_lake.root, tmp_path / "lake")
    lake = Lake.open(str(tmp_path / "lake"), create=False)
    first = lake.dataset(S.IMAGES).to_table(columns=["image_id"], limit=3)["image_id"]
    lake.fill_columns(S.IMAGES, pa.table({"image_id": first, "tags": pa.nulls(3, pa.list_(pa.string()))}))
    status = {r["where"]: r for r in an.enrichment_status(lake).iter_rows(named=True)}
    assert status["images.tags"]["state"] == "partial"
    assert status["images.tags"]["computed"] == status["images.tags"]["total"] - 3


def test_duplicates_removed_per_source_follow_the_dedup_job_tables(enriched_lake):
    source_of = {r["sample_id"]: r["source"] for r in rows(enriched_lake, S.SAMPLES, ["sample_id", "source"])}
    exact = {r["sample_id"] for r in rows(enriched_lake, S.DUP_EXACT, ["sample_id"])}
    near = {r["sample_id"] for r in rows(enriched_lake, S.DUP_NEAR, ["sample_id"])} - exact
    # the generated source repeats three records and holds two re-encoded half-size copies of its images
    assert Counter(source_of[i] for i in exact)["generated"] == 3
    assert Counter(source_of[i] for i in near)["generated"] >= 2
    dups = {r["source"]: r for r in an.duplicates_by_source(enriched_lake).iter_rows(named=True)}
    assert {s: r["exact_removed"] for s, r in dups.items() if r["exact_removed"]} == Counter(source_of[i] for i in exact)
    assert {s: r["near_removed"] for s, r in dups.items() if r["near_removed"]} == Counter(source_of[i] for i in near)
    for r in dups.values():
        assert r["kept_share"] == pytest.approx(1 - (r["exact_removed"] + r["near_removed"]) / r["samples"])


def test_a_dedup_table_without_a_decision_column_is_a_clear_error(enriched_lake, tmp_path):
    import shutil

    import lance
    import pyarrow as pa

    from etl.lake import Lake

    shutil.copytree(enriched_lake.root, tmp_path / "lake")
    lake = Lake.open(str(tmp_path / "lake"), create=False)
    lance.write_dataset(pa.table({"sample_id": ["x"], "whatever": [1]}), lake.uri("dup_exact"), mode="overwrite")
    with pytest.raises(ValueError, match="no kept_sample_id column"):
        an.duplicates_by_source(lake)


def test_tag_frequencies_count_images_carrying_each_tag(enriched_lake):
    images = rows(enriched_lake, S.IMAGES, ["image_id", "tags"])
    expected = Counter(t for im in images for t in set(im["tags"] or []))
    top = an.tag_frequencies(enriched_lake, top=5)
    assert top.height == 5
    for tag, n, share in top.iter_rows():
        assert n == expected[tag]
        assert share == pytest.approx(n / sum(1 for im in images if im["tags"] is not None))
    assert top["images"].to_list() == sorted(expected.values(), reverse=True)[:5]
    by_source = an.tag_frequencies_by_source(enriched_lake, top=None)
    gen_images = {i for s in rows(enriched_lake, S.SAMPLES, ["source", "image_ids"]) if s["source"] == "generated"
                  for i in s["image_ids"]}
    gen_expected = Counter(t for im in images if im["image_id"] in gen_images for t in set(im["tags"]))
    assert dict(by_source.filter(pl.col("source") == "generated").select("tag", "images").iter_rows()) == dict(gen_expected)


# -- loss -----------------------------------------------------------------------------------------
def test_loss_summary_leaves_failed_losses_out_instead_of_counting_them_as_zero(enriched_lake):
    samples = rows(enriched_lake, S.SAMPLES, ["source", "loss"])
    summary = {r["source"]: r for r in an.loss_summary(enriched_lake).iter_rows(named=True)}
    for source, r in summary.items():
        losses = [s["loss"] for s in samples if s["source"] == source and s["loss"] is not None]
        assert r["with_loss"] == len(losses)
        assert r["mean"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
        assert r["p10"] >= min(losses) > 0


def test_loss_window_splits_every_sample_into_below_kept_above_or_no_loss(enriched_lake):
    low, high = 0.8, 2.5
    samples = rows(enriched_lake, S.SAMPLES, ["source", "loss"])
    effect = {r["source"]: r for r in an.loss_window_effect(enriched_lake, low, high).iter_rows(named=True)}
    for source, r in effect.items():
        losses = [s["loss"] for s in samples if s["source"] == source]
        assert r["below"] + r["kept"] + r["above"] + r["no_loss"] == r["samples"] == len(losses)
        assert r["kept"] == sum(1 for x in losses if x is not None and low <= x <= high)
        assert r["no_loss"] == sum(1 for x in losses if x is None)


# -- two recipes ----------------------------------------------------------------------------------
def test_two_real_exports_compare_per_source_per_reason_and_per_setting(two_exports):
    a, b = (an.load_manifest(p) for p in two_exports)
    cmp = {r["source"]: r for r in an.compare_manifests(a, b).iter_rows(named=True)}
    for source, n in a["counts"]["per_source"].items():
        assert cmp[source]["a"] == n and cmp[source]["b"] == b["counts"]["per_source"][source]
        assert cmp[source]["change"] == cmp[source]["b"] - cmp[source]["a"]
    changes = {r["setting"]: (r["a"], r["b"]) for r in an.recipe_changes(a, b).iter_rows(named=True)}
    assert changes["name"] == ("mix-a", "mix-b")
    first = sorted(a["counts"]["per_source"])[0]
    assert changes[f"sources[{first}].sampling"] == ("all", "first:10")
    assert "text" not in changes  # the YAML text itself is not a setting
    removals = an.compare_removals(a, b)
    assert removals.filter((pl.col("source") == first) & (pl.col("reason") == "sampling"))["b"].item() == \
        b["counts"]["removed"][first]["sampling"]


# -- plots ----------------------------------------------------------------------------------------
def test_every_plot_renders_with_data_on_its_axes(enriched_lake, two_exports, tmp_path):
    lake = enriched_lake
    colors = an.source_colors(an.lake_sources(lake))
    window = an.default_loss_window(lake)
    a, b = (an.load_manifest(p) for p in two_exports)
    figures = {
        "composition": an.plot_composition(an.composition(lake), colors),
        "turns": an.plot_turns(an.turns_per_sample(lake), colors),
        "images_per_sample": an.plot_images_per_sample(an.images_per_sample(lake)),
        "image_sizes": an.plot_image_sizes(an.source_image_details(lake), colors),
        "errors": an.plot_errors(an.errors_by_kind(lake)),
        "duplicates": an.plot_duplicates(an.duplicates_by_source(lake)),
        "tags": an.plot_tags(an.tag_frequencies(lake), an.tag_frequencies_by_source(lake, top=None)),
        "loss": an.plot_loss(an.sample_losses(lake), window, colors),
        "loss_window": an.plot_loss_window(an.loss_window_effect(lake, *window), *window),
        "recipes": an.plot_recipe_comparison(an.compare_manifests(a, b), "mix-a", "mix-b"),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert ax.get_title(), name
        assert ax.patches or ax.lines or ax.collections or ax.images, f"{name} drew nothing"
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 5000


def test_a_source_keeps_its_colour_in_every_plot(enriched_lake):
    colors = an.source_colors(an.lake_sources(enriched_lake))
    fig = an.plot_image_sizes(an.source_image_details(enriched_lake), colors)
    scatter = {c.get_label().split(" ")[0]: tuple(c.get_facecolor()[0][:3]) for c in fig.axes[0].collections}
    assert scatter["generated"] == pytest.approx(colors["generated"][:3])


# -- looking at samples ---------------------------------------------------------------------------
def test_sql_and_polars_predicates_pick_the_same_multi_image_samples(enriched_lake):
    by_sql = an.samples_where(enriched_lake, "len(image_ids) > 1", "sample_id", limit=50)
    by_polars = an.samples_filter(enriched_lake, pl.col("image_ids").list.len() > 1, sort_by="sample_id", limit=50)
    assert by_sql["sample_id"].to_list() == by_polars["sample_id"].to_list()
    assert by_sql.height == 4


def test_highest_loss_samples_come_from_the_source_in_descending_loss(enriched_lake):
    top = an.highest_loss_samples(enriched_lake, "generated", 5)
    assert top["source"].unique().to_list() == ["generated"]
    assert top["loss"].to_list() == sorted(top["loss"].to_list(), reverse=True)
    losses = [r["loss"] for r in rows(enriched_lake, S.SAMPLES, ["source", "loss"]) if r["source"] == "generated"]
    assert top["loss"][0] == pytest.approx(max(x for x in losses if x is not None))


def test_sample_cards_show_every_image_with_its_tags_and_the_conversation(enriched_lake):
    picked = an.samples_where(enriched_lake, "orig_id = 'multi3'")
    cards = an.sample_cards(enriched_lake, picked)
    assert cards.count == 1
    assert cards.html.count("data:image/jpeg;base64,") == 4  # the four images of this record
    assert "What differs?" in cards.html and "loss " in cards.html
    tags = rows(enriched_lake, S.IMAGES, ["image_id", "tags"])
    first_tag = next(t["tags"][0] for t in tags if t["image_id"] == picked["image_ids"][0][0])
    assert first_tag in cards.html


def test_a_near_duplicate_cluster_shows_the_samples_using_its_images(enriched_lake):
    clusters = an.cluster_sizes(enriched_lake)
    biggest = clusters["cluster_id"][0]
    members = {r["image_id"] for r in enriched_lake.dataset("image_clusters").to_table().to_pylist()
               if r["cluster_id"] == biggest}
    picked = an.cluster_samples(enriched_lake, biggest, limit=100)
    expected = {s["sample_id"] for s in rows(enriched_lake, S.SAMPLES, ["sample_id", "image_ids"])
                if members & set(s["image_ids"])}
    assert set(picked["sample_id"]) == expected and expected
