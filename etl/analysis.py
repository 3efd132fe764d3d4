"""Mixture analysis: Polars tables and matplotlib figures over the lake, for notebooks and the report.

Every table function takes a `Lake` and returns a `pl.DataFrame` (or `NotComputed` when the
enrichment or dedup step it needs has not run yet); every `plot_*` function takes such a table and
returns a matplotlib `Figure` (Agg, no pyplot state). The notebooks and `python -m etl report` call
the same functions, so what a notebook shows and what the report shows cannot drift apart.

Reads select only the columns they need (never the blob column `image`); per-source counts come
from `sql/stats.sql` so they equal `python -m etl stats`.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are rendered to PNG, never to a window

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from etl import schema as S
from etl.images import open_image
from etl.lake import Lake
from etl.derived import StaleDerivedTable, check_fresh, committed_versions, table_info
from etl.sqlrun import connect, lake_tables, run_file

# Tables written by `python -m etl dedup` (etl/dedup.py); absent until it has run.
DUP_EXACT = S.DUP_EXACT  # one row per sample removed as an exact duplicate (kept_sample_id: the one kept)
DUP_NEAR = S.DUP_NEAR  # one row per sample removed as a near duplicate, per near_k
IMAGE_CLUSTERS = S.IMAGE_CLUSTERS  # near-duplicate image clusters: image_id, cluster_id, is_representative


@dataclass(frozen=True)
class NotComputed:
    """Stands in for a table whose enrichment/dedup step has not run; says which command computes it."""

    what: str
    command: str
    state: str = "not computed yet"  # or why a computed table cannot be used ("stale: …")

    def __str__(self) -> str:
        return f"{self.what}: {self.state} — run `{self.command}`"

    def _repr_html_(self) -> str:  # how a notebook shows it
        return (f'<div class="not-computed" style="padding:.6em;border-left:4px solid #c90;background:#fff8e6">'
                f"<b>{html.escape(self.what)}</b>: {html.escape(self.state)} — run <code>{html.escape(self.command)}</code></div>")


# -- reading ------------------------------------------------------------------------------------------
def scan(lake: Lake, table: str, columns: Sequence[str]) -> pl.LazyFrame:
    """A lazy Polars scan of `table` projected to `columns` (the blob column is refused)."""
    if S.BLOB_COLUMN in columns and table == S.IMAGES:
        raise ValueError("the blob column cannot be scanned; use Lake.image_bytes_by_id()")
    return pl.scan_lance(lake.uri(table)).select(list(columns))


def computed_rows(lake: Lake, table: str, column: str) -> int:
    """How many rows of `table` have a non-NULL `column` (0 when the column does not exist)."""
    ds = lake.dataset(table)
    if column not in ds.schema.names:
        return 0
    return ds.count_rows(filter=f"{column} IS NOT NULL")


def has_table(lake: Lake, table: str) -> bool:
    return table in lake_tables(lake)


def source_images(lake: Lake) -> pl.DataFrame:
    """Distinct (source, image_id) pairs: the images each source refers to (shared images count per source)."""
    return (scan(lake, S.SAMPLES, ["source", "image_ids"])
            .explode("image_ids").drop_nulls("image_ids").rename({"image_ids": "image_id"}).unique()
            # explode on a Lance scan panics in the streaming engine (specs/lance_duckdb.md)
            .collect(engine="in-memory"))


# -- what has been computed -----------------------------------------------------------------------
ENRICHMENTS = [  # (table, column, errors stage, what, command)
    (S.IMAGES, "phash", "phash", "perceptual hash", "python -m etl enrich phash"),
    (S.IMAGES, "tags", "tags", "image tags", "python -m etl enrich tags"),
    (S.SAMPLES, "loss", "loss", "sample loss", "python -m etl enrich loss"),
]
DEDUP_TABLES = [
    (DUP_EXACT, "exact duplicates", "python -m etl dedup"),
    (DUP_NEAR, "near duplicates", "python -m etl dedup --near 2"),
    (IMAGE_CLUSTERS, "near-duplicate image clusters", "python -m etl dedup --near 2"),
]


def enrichment_status(lake: Lake) -> pl.DataFrame:
    """One row per enrichment column / dedup table: rows computed, failed (errors rows), total, a state word.

    A column is `computed` when every row has a value or a recorded failure (those stay NULL), `partial`
    while rows remain to do (rerun the command: it continues where it stopped).
    """
    failures = dict(scan(lake, S.ERRORS, ["stage"]).group_by("stage").agg(pl.len()).collect().iter_rows())
    rows = []
    for table, column, stage, what, command in ENRICHMENTS:
        total, done, failed = lake.count(table), computed_rows(lake, table, column), failures.get(stage, 0)
        state = "not computed yet" if done + failed == 0 else ("computed" if done + failed >= total else "partial")
        rows.append({"step": what, "where": f"{table}.{column}", "computed": done, "failed": failed,
                     "total": total, "state": state, "command": command})
    for table, what, command in DEDUP_TABLES:
        version = dedup_table_version(lake, table, what, command)
        rows.append({"step": what, "where": f"table {table}",
                     "computed": lake.dataset(table, version).count_rows() if isinstance(version, int) else 0,
                     "failed": None, "total": None,
                     "state": "computed" if isinstance(version, int) else version.state, "command": command})
    return pl.DataFrame(rows, schema_overrides={"failed": pl.Int64, "total": pl.Int64})


# -- composition ----------------------------------------------------------------------------------
def source_stats(lake: Lake) -> pl.DataFrame:
    """`sql/stats.sql` as a Polars frame: the per-source numbers of `python -m etl stats`."""
    con = connect(lake)
    try:
        return run_file(con, "stats").pl()
    finally:
        con.close()


def lake_totals(lake: Lake) -> dict[str, int]:
    """Whole-lake totals as `python -m etl stats` prints them (a shared image counts once)."""
    nbytes = scan(lake, S.IMAGES, ["nbytes"]).select(pl.col("nbytes").sum()).collect().item()
    return {"samples": lake.count(S.SAMPLES), "images": lake.count(S.IMAGES), "image_bytes": int(nbytes or 0),
            "errors": lake.count(S.ERRORS)}


def text_stats(lake: Lake) -> pl.DataFrame:
    """Per source: characters of all turns, turns, and tokens (sum of `loss_tokens` where computed)."""
    value_chars = pl.element().struct.field("value").str.len_chars()
    per_sample = scan(lake, S.SAMPLES, ["source", "conversations", "loss_tokens"]).select(
        "source",
        pl.col("conversations").list.eval(value_chars).list.sum().cast(pl.Int64).alias("characters"),
        pl.col("conversations").list.len().alias("turns"),
        pl.col("loss_tokens").cast(pl.Int64),
    )
    return per_sample.group_by("source").agg(
        pl.col("characters").sum(),
        pl.col("turns").sum().cast(pl.Int64),
        pl.col("loss_tokens").sum().alias("tokens"),
        pl.col("loss_tokens").is_not_null().sum().cast(pl.Int64).alias("samples_with_tokens"),
    ).collect()


def composition(lake: Lake) -> pl.DataFrame:
    """Per source: samples, images, bytes, characters, tokens and each one's share of the whole lake.

    Counts come from `sql/stats.sql`; `tokens` is NULL for a source until its loss has been computed
    (tokens are the loss model's token counts), and partial while some samples lack it.
    """
    stats = source_stats(lake).drop("errors_by_kind")
    text = text_stats(lake)
    df = stats.join(text, on="source", how="left").with_columns(
        pl.col("characters", "turns").fill_null(0),
        pl.when(pl.col("samples_with_tokens") > 0).then(pl.col("tokens")).alias("tokens"),
        pl.col("samples_with_tokens").fill_null(0),
    )
    shares = [(pl.col(c) / pl.col(c).sum()).alias(f"{c}_share") for c in ("samples", "images", "characters", "tokens")]
    return df.with_columns(shares).with_columns(
        (pl.col("text_only") / pl.col("samples")).alias("text_only_share"),
        (pl.col("multi_image") / pl.col("samples")).alias("multi_image_share"),
        (pl.col("turns") / pl.col("samples")).alias("turns_per_sample"),
    ).with_columns(pl.selectors.float().fill_nan(None)).sort("source")  # a source with only errors has no shares


def source_colors(sources: Sequence[str]) -> dict[str, tuple]:
    """A fixed colour per source (sorted names → tab10/tab20), so a source looks the same in every plot."""
    names = sorted(set(sources))
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def lake_sources(lake: Lake) -> list[str]:
    """Every source of the lake (with samples or only errors), sorted: the key of `source_colors`."""
    return source_stats(lake)["source"].to_list()


def bar_chart_height(bars: int, per_bar: float = 0.45) -> float:
    """Inches for a horizontal bar chart: room per bar, and never too short for its title and legend."""
    return max(2.4, 1.2 + per_bar * bars)


def _figure(width: float = 8.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def plot_composition(comp: pl.DataFrame, colors: Mapping[str, tuple] | None = None) -> Figure:
    """Share of the mixture per source, measured in samples, images, characters and tokens."""
    measures = [m for m in ("samples", "images", "characters", "tokens") if comp[f"{m}_share"].drop_nulls().len()]
    colors = colors or source_colors(comp["source"].to_list())
    fig = _figure(9, bar_chart_height(len(measures), 0.55))
    ax = fig.add_subplot()
    for row, measure in enumerate(measures):
        left = 0.0
        for source, share in zip(comp["source"], comp[f"{measure}_share"].fill_null(0)):
            ax.barh(row, share, left=left, color=colors[source], label=source if row == 0 else None)
            if share >= 0.06:
                ax.text(left + share / 2, row, f"{share:.0%}", ha="center", va="center", fontsize=8, color="white")
            left += share
    return finish_share_bars(fig, ax, [f"by {m}" for m in measures], "Mixture composition: share of each source")


# -- turns and images per sample ------------------------------------------------------------------
def turns_per_sample(lake: Lake) -> pl.DataFrame:
    """Per source and number of turns: how many samples have that many turns."""
    return (scan(lake, S.SAMPLES, ["source", "conversations"])
            .select("source", pl.col("conversations").list.len().cast(pl.Int64).alias("turns"))
            .group_by("source", "turns").agg(pl.len().cast(pl.Int64).alias("samples"))
            .sort("source", "turns").collect())


IMAGE_COUNT_BUCKETS = ["text-only", "1 image", "2–3 images", "4+ images"]


def images_per_sample(lake: Lake) -> pl.DataFrame:
    """Per source: samples with 0, 1, 2–3 and 4+ images, and each bucket's share of the source."""
    n = pl.col("image_ids").list.len()
    bucket = (pl.when(n == 0).then(pl.lit(IMAGE_COUNT_BUCKETS[0])).when(n == 1).then(pl.lit(IMAGE_COUNT_BUCKETS[1]))
              .when(n <= 3).then(pl.lit(IMAGE_COUNT_BUCKETS[2])).otherwise(pl.lit(IMAGE_COUNT_BUCKETS[3])))
    counts = (scan(lake, S.SAMPLES, ["source", "image_ids"]).select("source", bucket.alias("images"))
              .group_by("source", "images").agg(pl.len().cast(pl.Int64).alias("samples")).collect())
    return counts.with_columns((pl.col("samples") / pl.col("samples").sum().over("source")).alias("share")).sort(
        "source", pl.col("images").replace_strict(IMAGE_COUNT_BUCKETS, range(4), return_dtype=pl.Int8))


def plot_turns(turns: pl.DataFrame, colors: Mapping[str, tuple] | None = None) -> Figure:
    """Distribution of turns per sample, one bar group per source (share of that source's samples)."""
    colors = colors or source_colors(turns["source"].to_list())
    shares = turns.with_columns((pl.col("samples") / pl.col("samples").sum().over("source")).alias("share"))
    values = sorted(shares["turns"].unique().to_list())
    sources = sorted(shares["source"].unique().to_list())
    fig = _figure(9, 3.6)
    ax = fig.add_subplot()
    width = 0.8 / max(len(sources), 1)
    for k, source in enumerate(sources):
        part = shares.filter(pl.col("source") == source)
        xs = [values.index(t) + (k - (len(sources) - 1) / 2) * width for t in part["turns"]]
        ax.bar(xs, part["share"], width=width, color=colors[source], label=source)
    ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlabel("turns per sample (human + assistant messages)")
    ax.set_ylabel("share of the source's samples")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title("Turns per sample")
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return fig


def plot_images_per_sample(ips: pl.DataFrame) -> Figure:
    """Stacked bars: per source, the share of text-only, single-image and multi-image samples."""
    sources = sorted(ips["source"].unique().to_list())
    bucket_colors = dict(zip(IMAGE_COUNT_BUCKETS, ["#bbbbbb", "#4c72b0", "#dd8452", "#c44e52"]))
    fig = _figure(9, bar_chart_height(len(sources)))
    ax = fig.add_subplot()
    left = np.zeros(len(sources))
    for bucket in IMAGE_COUNT_BUCKETS:
        part = dict(ips.filter(pl.col("images") == bucket).select("source", "share").iter_rows())
        shares = np.array([part.get(s, 0.0) for s in sources])
        ax.barh(range(len(sources)), shares, left=left, color=bucket_colors[bucket], label=bucket)
        left += shares
    return finish_share_bars(fig, ax, sources, "Images per sample: text-only / single-image / multi-image share")


def finish_share_bars(fig, ax, labels: list[str], title: str):
    """Common layout of the 100%-stacked horizontal bar charts: one labelled row each, percent axis."""
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title(title)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return fig


# -- images ---------------------------------------------------------------------------------------
def image_table(lake: Lake, columns: Sequence[str] = ("image_id", "format", "width", "height", "nbytes")) -> pl.LazyFrame:
    return scan(lake, S.IMAGES, columns)


def source_image_details(lake: Lake) -> pl.DataFrame:
    """The distinct images of each source with format, size and bytes (an image shared by two sources is in both)."""
    return source_images(lake).join(image_table(lake).collect(), on="image_id", how="inner")


def image_formats(lake: Lake) -> pl.DataFrame:
    """Per source and image format: distinct images and their bytes."""
    return (source_image_details(lake).group_by("source", "format")
            .agg(pl.len().cast(pl.Int64).alias("images"), pl.col("nbytes").sum().alias("bytes"))
            .sort("source", "images", descending=[False, True]))


def image_sizes(lake: Lake) -> pl.DataFrame:
    """Per source: distinct images and the 10/50/90th percentile of width, height, pixels and bytes."""
    details = source_image_details(lake).with_columns(
        (pl.col("width").cast(pl.Int64) * pl.col("height")).alias("pixels"))
    aggs = [pl.len().cast(pl.Int64).alias("images")]
    for col in ("width", "height", "nbytes"):
        aggs += [pl.col(col).quantile(q, "nearest").alias(f"{col}_p{int(q * 100)}") for q in (0.1, 0.5, 0.9)]
    aggs.append(pl.col("pixels").median().alias("megapixels_median") / 1e6)
    return details.group_by("source").agg(aggs).sort("source")


def plot_image_sizes(details: pl.DataFrame, colors: Mapping[str, tuple] | None = None) -> Figure:
    """Width × height of every distinct image (log axes), one colour per source; formats on the right."""
    colors = colors or source_colors(details["source"].to_list())
    fig = _figure(10, 4.2)
    ax, ax_fmt = fig.subplots(1, 2, width_ratios=[3, 2])
    for source in sorted(details["source"].unique().to_list()):
        part = details.filter(pl.col("source") == source)
        ax.scatter(part["width"], part["height"], s=10, alpha=0.6, color=colors[source], label=f"{source} ({part.height})")
    if details.height:
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # plain pixel numbers (64, 128, 256 …), not 2×10²
            axis.set_major_locator(matplotlib.ticker.LogLocator(base=2, subs=(1.0, 1.5)))
            axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.set_title("Image sizes (distinct images per source)")
    ax.legend(fontsize=7, frameon=False, markerscale=1.5)
    _plot_formats(ax_fmt, details, colors)
    return fig


def _plot_formats(ax, details: pl.DataFrame, colors: Mapping[str, tuple]) -> None:
    counts = details.group_by("source", "format").agg(pl.len().alias("n"))
    formats = counts.group_by("format").agg(pl.col("n").sum()).sort("n", descending=True)["format"].to_list()
    left = np.zeros(len(formats))
    for source in sorted(counts["source"].unique().to_list()):
        part = dict(counts.filter(pl.col("source") == source).select("format", "n").iter_rows())
        n = np.array([part.get(f, 0) for f in formats])
        ax.barh(range(len(formats)), n, left=left, color=colors[source])
        left += n
    for i, total in enumerate(left):
        ax.text(total, i, f" {int(total):,}", va="center", fontsize=8)
    ax.set_xlim(0, max(left.max(initial=0), 1) * 1.15)
    ax.set_yticks(range(len(formats)), [str(f) for f in formats])
    ax.invert_yaxis()
    ax.set_xlabel("distinct images")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title("Image formats")


# -- errors ---------------------------------------------------------------------------------------
def errors_by_kind(lake: Lake) -> pl.DataFrame:
    """Per stage, source and kind: how many errors (rows without a source are listed as '(none)')."""
    return (scan(lake, S.ERRORS, ["stage", "source", "kind"])
            .group_by("stage", "source", "kind").agg(pl.len().cast(pl.Int64).alias("errors")).collect()
            .with_columns(pl.col("source").fill_null("(none)"))
            .sort("errors", "source", "stage", "kind", descending=[True, False, False, False]))


def plot_errors(errors: pl.DataFrame) -> Figure:
    """Stacked horizontal bars: errors per source, split by `stage: kind`."""
    sources = sorted(errors["source"].unique().to_list())
    labeled = errors.with_columns(pl.concat_str("stage", pl.lit(": "), "kind").alias("label"))
    labels = (labeled.group_by("label").agg(pl.col("errors").sum())
              .sort("errors", "label", descending=[True, False])["label"].to_list())  # ties: the same order every run
    cmap = matplotlib.colormaps["tab20"]
    fig = _figure(9, bar_chart_height(len(sources)))
    ax = fig.add_subplot()
    left = np.zeros(len(sources))
    for i, label in enumerate(labels):
        part = dict(labeled.filter(pl.col("label") == label).group_by("source").agg(pl.col("errors").sum()).iter_rows())
        n = np.array([part.get(s, 0) for s in sources])
        ax.barh(range(len(sources)), n, left=left, color=cmap(i % cmap.N), label=label)
        left += n
    for i, total in enumerate(left):
        ax.text(total, i, f" {int(total):,}", va="center", fontsize=8)
    ax.set_xlim(0, max(left.max(initial=0), 1) * 1.12)
    ax.set_yticks(range(len(sources)), sources)
    ax.invert_yaxis()
    ax.set_xlabel("error rows")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title("Errors by source and kind (stage: kind)")
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return fig


# -- duplicates -----------------------------------------------------------------------------------
def duplicates_by_source(lake: Lake) -> pl.DataFrame | NotComputed:
    """Per source: samples, exact duplicates removed, near duplicates removed, and the share kept.

    Reads the per-sample decision tables written by `python -m etl dedup` (`dup_exact`, `dup_near`);
    a kind that has not been computed shows as NULL.
    """
    exact, near = exact_duplicates_removed(lake), near_duplicates_removed(lake)
    if isinstance(exact, NotComputed) and isinstance(near, NotComputed):
        return NotComputed("duplicates (exact and near)", "python -m etl dedup --near 2")
    df = source_stats(lake).select("source", "samples").filter(pl.col("samples") > 0)
    for part, col in ((exact, "exact_removed"), (near, "near_removed")):
        if isinstance(part, pl.DataFrame):
            df = df.join(part, on="source", how="left").with_columns(pl.col(col).fill_null(0))
        else:
            df = df.with_columns(pl.lit(None, pl.Int64).alias(col))
    # a sample removed by both decisions is counted once, under exact (the recipe's decision order)
    removed = pl.col("exact_removed").fill_null(0) + pl.col("near_removed").fill_null(0)
    return df.with_columns((1 - removed / pl.col("samples")).alias("kept_share")).sort("source")


def dedup_table_version(lake: Lake, table: str, what: str, command: str) -> int | NotComputed:
    """The version of a dedup table to read: the one its last finished `dedup` run committed, when
    it was computed from the lake as it is now (etl/derived.py); else NotComputed saying why."""
    version = committed_versions(lake).get(table)
    if version is None:
        return NotComputed(what, command)
    near_k = table_info(lake, table, version)["params"].get("near_k")
    if near_k is not None and table != DUP_EXACT:
        command = f"python -m etl dedup --near {near_k}"
    try:
        check_fresh(connect(lake), table_info(lake, table, version), table, command)
    except StaleDerivedTable as exc:
        return NotComputed(what, command, f"stale ({exc.reason})")
    return version


def exact_duplicates_removed(lake: Lake) -> pl.DataFrame | NotComputed:
    """Per source: samples the exact-dedup decision (`dup_exact`) removes."""
    version = dedup_table_version(lake, DUP_EXACT, "exact duplicates", "python -m etl dedup")
    if isinstance(version, NotComputed):
        return version
    return _removed_per_source(lake, removed_sample_ids(lake, DUP_EXACT, version=version), "exact_removed")


def near_duplicates_removed(lake: Lake, near_k: int | None = None) -> pl.DataFrame | NotComputed:
    """Per source: samples the near-duplicate policy (`dup_near`) removes and exact dedup did not."""
    version = dedup_table_version(lake, DUP_NEAR, "near duplicates", "python -m etl dedup --near 2")
    if isinstance(version, NotComputed):
        return version
    near = removed_sample_ids(lake, DUP_NEAR, near_k, version=version)
    exact = committed_versions(lake).get(DUP_EXACT)
    if exact is not None:
        near = near.join(removed_sample_ids(lake, DUP_EXACT, version=exact), on="sample_id", how="anti")
    return _removed_per_source(lake, near, "near_removed")


def removed_sample_ids(lake: Lake, table: str, near_k: int | None = None, version: int | None = None) -> pl.DataFrame:
    """sample_id of every removal in a dedup decision table (`dup_exact` / `dup_near` of etl/dedup.py).

    Their rows are the removed samples, each with the `kept_sample_id` it repeats; with several
    `near_k` values in `dup_near`, the smallest k is used unless `near_k` is given.
    """
    lf = pl.scan_lance(lake.uri(table), version=version)
    names = lf.collect_schema().names()
    if "kept_sample_id" not in names:
        raise ValueError(f"`{table}` has no kept_sample_id column ({names}): "
                         "rerun `python -m etl dedup` with this version of mmlake")
    if "near_k" in names:
        k = near_k if near_k is not None else lf.select(pl.col("near_k").min()).collect().item()
        lf = lf.filter(pl.col("near_k") == k)
    removed = pl.col("kept_sample_id").is_not_null() & (pl.col("kept_sample_id") != pl.col("sample_id"))
    return lf.filter(removed).select("sample_id").unique().collect()


def _removed_per_source(lake: Lake, removed: pl.DataFrame, name: str) -> pl.DataFrame:
    sources = scan(lake, S.SAMPLES, ["sample_id", "source"]).join(removed.lazy(), on="sample_id", how="semi")
    return sources.group_by("source").agg(pl.len().cast(pl.Int64).alias(name)).collect()


def plot_duplicates(dups: pl.DataFrame) -> Figure:
    """Per source: share of samples removed as exact and as near duplicates."""
    sources = dups["source"].to_list()
    fig = _figure(9, bar_chart_height(len(sources)))
    ax = fig.add_subplot()
    exact = (dups["exact_removed"].fill_null(0) / dups["samples"]).to_numpy()
    near = (dups["near_removed"].fill_null(0) / dups["samples"]).to_numpy()
    ax.barh(range(len(sources)), exact, color="#c44e52", label="exact duplicates")
    ax.barh(range(len(sources)), near, left=exact, color="#dd8452", label="near duplicates")
    for i, (e, n, total) in enumerate(zip(dups["exact_removed"].fill_null(0), dups["near_removed"].fill_null(0), dups["samples"])):
        ax.text(exact[i] + near[i], i, f"  {e + n:,} of {total:,}", va="center", fontsize=8)
    ax.set_yticks(range(len(sources)), sources)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1e-9, float((exact + near).max(initial=0))) * 1.35 or 1)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("share of the source's samples removed")
    ax.set_title("Duplicates removed per source")
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return fig


# -- tags -----------------------------------------------------------------------------------------
def _tagged_images(lake: Lake) -> pl.DataFrame:
    return (image_table(lake, ["image_id", "tags"]).filter(pl.col("tags").is_not_null())
            .explode("tags").drop_nulls("tags").rename({"tags": "tag"}).unique().collect(engine="in-memory"))


def tag_frequencies(lake: Lake, top: int = 20) -> pl.DataFrame | NotComputed:
    """The `top` most frequent tags over all tagged images: images with the tag and their share."""
    if computed_rows(lake, S.IMAGES, "tags") == 0:
        return NotComputed("image tags", "python -m etl enrich tags")
    tagged = computed_rows(lake, S.IMAGES, "tags")
    return (_tagged_images(lake).group_by("tag").agg(pl.len().cast(pl.Int64).alias("images"))
            .with_columns((pl.col("images") / tagged).alias("share_of_tagged_images"))
            .sort(["images", "tag"], descending=[True, False]).head(top))


def tag_frequencies_by_source(lake: Lake, top: int | None = 10) -> pl.DataFrame | NotComputed:
    """Per source, its `top` tags (all with None): distinct images of the source with the tag, share of its tagged images."""
    if computed_rows(lake, S.IMAGES, "tags") == 0:
        return NotComputed("image tags", "python -m etl enrich tags")
    per_source = source_images(lake).join(_tagged_images(lake), on="image_id", how="inner")
    tagged = per_source.group_by("source").agg(pl.col("image_id").n_unique().alias("tagged_images"))
    return (per_source.group_by("source", "tag").agg(pl.len().cast(pl.Int64).alias("images"))
            .join(tagged, on="source")
            .with_columns((pl.col("images") / pl.col("tagged_images")).alias("share"))
            .sort(["source", "images", "tag"], descending=[False, True, False])
            .group_by("source", maintain_order=True).head(top if top is not None else 1 << 62))


def plot_tags(overall: pl.DataFrame, by_source: pl.DataFrame) -> Figure:
    """Left: the most frequent tags overall. Right: heatmap of those tags' share in each source.

    `by_source` should hold every tag of each source (`tag_frequencies_by_source(lake, top=None)`);
    a blank cell means no image of the source carries the tag.
    """
    fig = _figure(11, 1.5 + 0.28 * max(overall.height, 4))
    ax, ax_heat = fig.subplots(1, 2, width_ratios=[2, 3])
    tags = overall["tag"].to_list()
    ax.barh(range(len(tags)), overall["images"], color="#4c72b0")
    ax.set_yticks(range(len(tags)), tags, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("tagged images")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title("Most frequent tags")
    sources = sorted(by_source["source"].unique().to_list())
    shares = {(s, t): v for s, t, v in by_source.select("source", "tag", "share").iter_rows()}
    grid = np.array([[shares.get((s, t), np.nan) for s in sources] for t in tags])
    vmax = float(np.nanmax(grid)) if np.isfinite(grid).any() else 1.0
    im = ax_heat.imshow(grid, aspect="auto", cmap="Blues", vmin=0, vmax=vmax)
    for (r, c), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax_heat.text(c, r, f"{v:.0%}", ha="center", va="center", fontsize=7,
                         color="white" if v > 0.6 * vmax else "black")
    ax_heat.set_xticks(range(len(sources)), sources, rotation=30, ha="right", fontsize=8)
    ax_heat.set_yticks(range(len(tags)), tags, fontsize=8)
    ax_heat.set_title("Share of each source's tagged images with the tag")
    fig.colorbar(im, ax=ax_heat, format=matplotlib.ticker.PercentFormatter(1.0))
    return fig


# -- loss -----------------------------------------------------------------------------------------
def sample_losses(lake: Lake) -> pl.DataFrame:
    """source, loss for every sample whose loss has been computed."""
    return scan(lake, S.SAMPLES, ["source", "loss"]).filter(pl.col("loss").is_not_null()).collect()


def loss_summary(lake: Lake) -> pl.DataFrame | NotComputed:
    """Per source: samples, samples with a loss, and the mean and 10/25/50/75/90th percentiles of loss."""
    if computed_rows(lake, S.SAMPLES, "loss") == 0:
        return NotComputed("sample loss", "python -m etl enrich loss")
    lf = scan(lake, S.SAMPLES, ["source", "loss"])
    aggs = [pl.len().cast(pl.Int64).alias("samples"), pl.col("loss").count().cast(pl.Int64).alias("with_loss"),
            pl.col("loss").mean().alias("mean")]
    aggs += [pl.col("loss").quantile(q, "linear").alias(f"p{int(q * 100)}") for q in (0.1, 0.25, 0.5, 0.75, 0.9)]
    return lf.group_by("source").agg(aggs).sort("source").collect()


def plot_loss(losses: pl.DataFrame, window: tuple[float, float] | None = None,
              colors: Mapping[str, tuple] | None = None) -> Figure:
    """Left: loss histogram per source (density, shared bins). Right: ECDF per source; the window shaded."""
    colors = colors or source_colors(losses["source"].to_list())
    fig = _figure(11, 4.2)
    ax_hist, ax_ecdf = fig.subplots(1, 2)
    values = losses["loss"].to_numpy()
    bins = np.histogram_bin_edges(values, bins=min(40, max(10, int(math.sqrt(len(values))))))
    for source in sorted(losses["source"].unique().to_list()):
        x = losses.filter(pl.col("source") == source)["loss"].to_numpy()
        ax_hist.hist(x, bins=bins, density=True, histtype="step", linewidth=1.6, color=colors[source], label=f"{source} ({len(x):,})")
        xs = np.sort(x)
        ax_ecdf.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", color=colors[source], label=source)
    for ax in (ax_hist, ax_ecdf):
        ax.set_xlabel("loss (mean token cross-entropy of the assistant turns)")
        if window:
            ax.axvspan(*window, color="#999999", alpha=0.15, label=f"window [{window[0]:g}, {window[1]:g}]" if ax is ax_ecdf else None)
    ax_hist.set_ylabel("density")
    ax_hist.set_title("Loss distribution per source")
    ax_hist.legend(fontsize=7, frameon=False)
    ax_ecdf.set_ylabel("share of the source's samples ≤ loss")
    ax_ecdf.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax_ecdf.set_title("Loss ECDF per source")
    ax_ecdf.legend(fontsize=7, frameon=False, loc="lower right")
    return fig


def loss_window_effect(lake: Lake, low: float, high: float) -> pl.DataFrame | NotComputed:
    """Per source: what a recipe filter `loss between low and high` keeps and drops.

    Samples without a loss (not computed or failed) are counted apart, since such a filter drops them too.
    """
    if computed_rows(lake, S.SAMPLES, "loss") == 0:
        return NotComputed("sample loss", "python -m etl enrich loss")
    loss = pl.col("loss")
    counts = scan(lake, S.SAMPLES, ["source", "loss"]).group_by("source").agg(
        pl.len().cast(pl.Int64).alias("samples"),
        (loss < low).sum().cast(pl.Int64).alias("below"),
        loss.is_between(low, high).sum().cast(pl.Int64).alias("kept"),
        (loss > high).sum().cast(pl.Int64).alias("above"),
        loss.is_null().sum().cast(pl.Int64).alias("no_loss"),
    ).collect()
    return counts.with_columns((pl.col("kept") / pl.col("samples")).alias("kept_share")).sort("source")


def plot_loss_window(effect: pl.DataFrame, low: float, high: float) -> Figure:
    """Stacked bars per source: below the window / kept / above / no loss, as shares of the source."""
    parts = [("below", "#4c72b0", f"loss < {low:g}"), ("kept", "#55a868", f"kept ({low:g} ≤ loss ≤ {high:g})"),
             ("above", "#c44e52", f"loss > {high:g}"), ("no_loss", "#bbbbbb", "no loss (failed or not computed)")]
    sources = effect["source"].to_list()
    fig = _figure(9, bar_chart_height(len(sources)))
    ax = fig.add_subplot()
    left = np.zeros(len(sources))
    for col, color, label in parts:
        share = (effect[col] / effect["samples"]).to_numpy()
        ax.barh(range(len(sources)), share, left=left, color=color, label=label)
        left += share
    for i, (kept, total) in enumerate(zip(effect["kept"], effect["samples"])):
        ax.text(1.01, i, f"{kept:,}/{total:,} kept", va="center", fontsize=8)
    ax.set_yticks(range(len(sources)), sources)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.22)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title(f"Effect of the loss window [{low:g}, {high:g}] on each source")
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return fig


def default_loss_window(lake: Lake) -> tuple[float, float] | None:
    """A window to illustrate with: the lake-wide 5th–95th percentile of loss (None when not computed)."""
    losses = sample_losses(lake)["loss"]
    if losses.len() == 0:
        return None
    return round(float(losses.quantile(0.05)), 2), round(float(losses.quantile(0.95)), 2)


# -- two recipes side by side ---------------------------------------------------------------------
def load_manifest(path: str | Path) -> dict:
    """An export's `manifest.json` (a directory is taken to contain one)."""
    p = Path(path)
    return json.loads((p / "manifest.json" if p.is_dir() else p).read_text())


def manifest_name(manifest: Mapping, default: str) -> str:
    recipe = manifest.get("recipe") or {}
    return str(recipe.get("name") or default) if isinstance(recipe, Mapping) else default


def compare_manifests(a: Mapping, b: Mapping) -> pl.DataFrame:
    """Per source: samples exported by recipe A and B, the difference and the relative change."""
    rows = {}
    for side, manifest in (("a", a), ("b", b)):
        for source, n in per_source_counts(manifest).items():
            rows.setdefault(source, {"source": source, "a": None, "b": None})[side] = n
    df = pl.DataFrame(list(rows.values()), schema={"source": pl.String, "a": pl.Int64, "b": pl.Int64})
    return df.with_columns(
        (pl.col("b").fill_null(0) - pl.col("a").fill_null(0)).alias("change"),
        ((pl.col("b").fill_null(0) - pl.col("a")) / pl.col("a")).alias("relative_change"),
    ).sort("source")


def per_source_counts(manifest: Mapping) -> dict[str, int]:
    counts = manifest.get("counts", {}).get("per_source", {})
    return {s: (v.get("samples") if isinstance(v, Mapping) else v) for s, v in counts.items()}


def compare_removals(a: Mapping, b: Mapping) -> pl.DataFrame:
    """Per source and removal reason (checks, dedup, loss window ...): samples removed by A and by B."""
    rows = {}
    for side, manifest in (("a", a), ("b", b)):
        for source, reasons in (manifest.get("counts", {}).get("removed") or {}).items():
            for reason, n in reasons.items():
                rows.setdefault((source, reason), {"source": source, "reason": reason, "a": 0, "b": 0})[side] = n
    df = pl.DataFrame(list(rows.values()), schema={"source": pl.String, "reason": pl.String, "a": pl.Int64, "b": pl.Int64})
    return df.with_columns((pl.col("b") - pl.col("a")).alias("change")).sort("source", "reason")


IGNORED_RECIPE_KEYS = {"text"}  # the recipe's YAML text: its parsed settings are compared instead


def recipe_changes(a: Mapping, b: Mapping) -> pl.DataFrame:
    """Every recipe setting that differs between A and B, as flattened key paths with both values."""
    def settings(manifest: Mapping) -> dict:
        recipe = manifest.get("recipe") or {}
        return _flatten({k: v for k, v in recipe.items() if k not in IGNORED_RECIPE_KEYS})

    flat_a, flat_b = settings(a), settings(b)
    rows = [{"setting": k, "a": _show(flat_a.get(k)), "b": _show(flat_b.get(k))}
            for k in sorted(set(flat_a) | set(flat_b)) if flat_a.get(k) != flat_b.get(k)]
    return pl.DataFrame(rows, schema={"setting": pl.String, "a": pl.String, "b": pl.String})


def _flatten(obj, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj and all(isinstance(x, Mapping) and "source" in x for x in obj):
        out = {}  # recipe source entries are keyed by their source name, so reordering is no change
        for x in obj:
            out.update(_flatten({k: v for k, v in x.items() if k != "source"}, f"{prefix}[{x['source']}]"))
        return out
    return {prefix: obj}


def _show(value) -> str | None:
    return None if value is None else (value if isinstance(value, str) else json.dumps(value))


def plot_recipe_comparison(cmp: pl.DataFrame, name_a: str, name_b: str) -> Figure:
    """Samples per source exported by recipe A and B, side by side."""
    sources = cmp["source"].to_list()
    fig = _figure(9, bar_chart_height(len(sources)))
    ax = fig.add_subplot()
    y = np.arange(len(sources))
    ax.barh(y - 0.2, cmp["a"].fill_null(0), height=0.4, color="#8172b3", label=f"A: {name_a}")
    ax.barh(y + 0.2, cmp["b"].fill_null(0), height=0.4, color="#55a868", label=f"B: {name_b}")
    ax.set_yticks(y, sources)
    ax.invert_yaxis()
    ax.set_xlabel("exported samples")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title("Two recipes side by side: samples per source")
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return fig


# -- looking at samples ---------------------------------------------------------------------------
SAMPLE_COLUMNS = ["sample_id", "source", "orig_id", "image_ids", "conversations", "loss"]


def samples_where(lake: Lake, where: str = "true", order_by: str | None = None, limit: int = 12,
                  params: Sequence | None = None) -> pl.DataFrame:
    """Samples matching a DuckDB SQL predicate over the `samples` view (`?` placeholders bind `params`).

    e.g. `samples_where(lake, "source = ? and loss > 3", "loss desc", 8, ["lcs558k"])`.
    """
    order = f" order by {order_by}" if order_by else ""
    sql = f"select {', '.join(SAMPLE_COLUMNS)} from samples where {where}{order} limit {int(limit)}"
    con = connect(lake)
    try:
        return con.sql(sql, params=list(params or [])).pl()
    finally:
        con.close()


def samples_filter(lake: Lake, predicate: pl.Expr, sort_by: str | pl.Expr | None = None, descending: bool = False,
                   limit: int = 12) -> pl.DataFrame:
    """Samples matching a Polars predicate, e.g. `pl.col("conversations").list.len() > 6`."""
    lf = scan(lake, S.SAMPLES, SAMPLE_COLUMNS).filter(predicate)
    if sort_by is not None:
        lf = lf.sort(sort_by, descending=descending, nulls_last=True)
    return lf.head(limit).collect(engine="in-memory")


def highest_loss_samples(lake: Lake, source: str, n: int = 8) -> pl.DataFrame | NotComputed:
    """The `n` samples of `source` with the highest loss (what a loss ceiling would cut)."""
    if computed_rows(lake, S.SAMPLES, "loss") == 0:
        return NotComputed("sample loss", "python -m etl enrich loss")
    return samples_where(lake, "source = ? and loss is not null", "loss desc, sample_id", n, [source])


def cluster_sizes(lake: Lake) -> pl.DataFrame | NotComputed:
    """Near-duplicate image clusters, largest first: cluster_id, images."""
    version = dedup_table_version(lake, IMAGE_CLUSTERS, "near-duplicate image clusters", "python -m etl dedup --near 2")
    if isinstance(version, NotComputed):
        return version
    return (pl.scan_lance(lake.uri(IMAGE_CLUSTERS), version=version).group_by("cluster_id").agg(pl.len().alias("images"))
            .sort(["images", "cluster_id"], descending=[True, False]).collect())


def cluster_samples(lake: Lake, cluster_id, limit: int = 12) -> pl.DataFrame:
    """Samples that use any image of a near-duplicate cluster."""
    members = (pl.scan_lance(lake.uri(IMAGE_CLUSTERS), version=committed_versions(lake).get(IMAGE_CLUSTERS))
               .filter(pl.col("cluster_id") == cluster_id)
               .select("image_id").collect()["image_id"])
    uses_member = pl.col("image_ids").list.eval(pl.element().is_in(members.implode())).list.any()
    return samples_filter(lake, uses_member, sort_by="sample_id", limit=limit)


def image_info(lake: Lake, image_ids: Sequence[str]) -> dict[str, dict]:
    """format, size, tags (with scores) and phash of the given images, keyed by image_id."""
    ids = list(dict.fromkeys(image_ids))
    if not ids:
        return {}
    columns = ["image_id", "format", "width", "height", "phash", "tags", "tag_scores"]
    rows = scan(lake, S.IMAGES, columns).filter(pl.col("image_id").is_in(ids)).collect()
    return {r["image_id"]: r for r in rows.iter_rows(named=True)}


@dataclass(frozen=True)
class SampleCards:
    """A grid of sample cards (HTML): images, conversation, tags, loss. Shows itself in a notebook."""

    html: str
    count: int

    def _repr_html_(self) -> str:
        return self.html


def sample_cards(lake: Lake, samples: pl.DataFrame, thumb_px: int = 224, max_chars: int = 600) -> SampleCards:
    """Cards for `samples` (from `samples_where`/`samples_filter`): thumbnails of their images
    (decoded from the lake's blobs), the conversation (each turn cut at `max_chars`), tags and loss."""
    if isinstance(samples, NotComputed):
        return SampleCards(samples._repr_html_(), 0)
    all_ids = [i for ids in samples["image_ids"].to_list() for i in (ids or [])]
    info = image_info(lake, all_ids)
    payloads = lake.image_bytes_by_id(list(dict.fromkeys(all_ids)))
    thumbs = {i: _thumbnail_uri(b, thumb_px) for i, b in payloads.items()}
    cards = [_card_html(row, info, thumbs, max_chars) for row in samples.iter_rows(named=True)]
    body = "\n".join(cards) or "<p>No samples match.</p>"
    return SampleCards(f'<div class="mmlake-cards" style="display:grid;grid-template-columns:repeat(auto-fill,'
                       f'minmax(330px,1fr));gap:12px">{body}</div>', len(cards))


def _thumbnail_uri(data: bytes, px: int) -> str | None:
    """A small JPEG data URI of the image's first frame; None when the bytes do not decode."""
    try:
        im = open_image(data)
        im.seek(0)
        im = im.convert("RGB")
        im.thumbnail((px, px))
    except Exception:  # noqa: BLE001 - a broken image is shown as such, never stops the grid
        return None
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _card_html(row: Mapping, info: Mapping[str, dict], thumbs: Mapping[str, str | None], max_chars: int) -> str:
    images, ids = [], row["image_ids"] or []
    width = "100%" if len(ids) == 1 else "48%"  # several images of one sample sit side by side
    for image_id in ids:
        meta = info.get(image_id, {})
        caption = f"{meta.get('format')} {meta.get('width')}×{meta.get('height')}" if meta else "not in the lake"
        uri = thumbs.get(image_id)
        img = (f'<img src="{uri}" style="max-width:100%;max-height:224px">' if uri
               else '<div style="color:#a00">image does not decode</div>')
        tags = ", ".join(f"{t} {s:.2f}" for t, s in zip(meta.get("tags") or [], meta.get("tag_scores") or []))
        tags = tags or ("tags not computed yet" if meta.get("tags") is None else "no tags")
        images.append(f'<div style="width:{width}">{img}<div style="font-size:11px;color:#555">'
                      f'{html.escape(caption)} · {html.escape(tags)}</div></div>')
    turns = "".join(
        f'<div style="margin:2px 0"><b>{html.escape(str(t["from"]))}:</b> '
        f'{html.escape(_cut(t["value"] or "", max_chars))}</div>' for t in row["conversations"] or [])
    loss = "loss not computed" if row["loss"] is None else f"loss {row['loss']:.3f}"
    head = f'{html.escape(row["source"])} · {html.escape(str(row["orig_id"]))} · {loss}'
    return (f'<div style="border:1px solid #ddd;border-radius:6px;padding:8px;font-size:12px">'
            f'<div style="font-weight:600;margin-bottom:4px">{head}</div>'
            f'<div style="display:flex;flex-wrap:wrap;gap:4px">'
            f'{"".join(images) or "<div style=color:#777>text-only</div>"}</div>'
            f'<div style="white-space:pre-wrap;margin-top:6px">{turns}</div>'
            f'<div style="font-size:10px;color:#999">{html.escape(row["sample_id"])}</div></div>')


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
