"""The mixture-analysis report: the key tables and plots of `notebooks/mixture_analysis.ipynb` as one HTML page.

The page is static and self-contained (plots are PNGs embedded as base64 `<img>`), so it can be
mailed or attached to a ticket. Every section has a stable id (`SECTION_IDS`) and is built from the
functions in `etl.analysis` that the notebook calls; a step that has not been computed yet
(tags, loss, dedup) shows a "not computed yet" note with the command that computes it.
"""
from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
from matplotlib.figure import Figure

from etl import analysis as an
from etl.lake import Lake

LONG_TEXT = 48  # characters of a text cell shown before it is cut (the whole value stays in data-value)
SECTION_IDS = ["status", "composition", "turns", "images-per-sample", "image-sizes", "errors", "duplicates",
               "tags", "loss", "loss-window", "recipes"]


@dataclass
class Section:
    id: str
    title: str
    intro: str
    parts: list[str] = field(default_factory=list)  # HTML fragments: tables, figures, notes

    def html(self) -> str:
        body = "\n".join(self.parts)
        return (f'<section id="{self.id}">\n<h2>{html.escape(self.title)}</h2>\n'
                f"<p class=\"intro\">{html.escape(self.intro)}</p>\n{body}\n</section>")


@dataclass
class ReportOptions:
    loss_window: tuple[float, float] | None = None  # None: the lake-wide 5th–95th percentile
    compare: tuple[str, str] | None = None  # two export manifests (files or export folders)
    top_tags: int = 20


# -- HTML pieces ----------------------------------------------------------------------------------
def figure_html(fig: Figure, name: str, alt: str) -> str:
    """The figure as an embedded PNG (`<img id="fig-NAME">`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<figure><img id="fig-{name}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def table_html(df: pl.DataFrame, name: str, percent: Sequence[str] = ()) -> str:
    """`df` as an HTML table (`<table id="table-NAME">`); each cell keeps its raw value in `data-value`."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    rows = []
    for row in df.iter_rows():
        cells = "".join(_cell(col, v, col in percent) for col, v in zip(df.columns, row))
        rows.append(f"<tr>{cells}</tr>")
    return (f'<div class="table-wrap"><table id="table-{name}"><thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(rows) + "\n</tbody></table></div>")


def _cell(col: str, value, percent: bool) -> str:
    raw = "" if value is None else html.escape(str(value), quote=True)
    return f'<td data-col="{html.escape(col)}" data-value="{raw}" class="{_kind(value)}">{_fmt(value, percent)}</td>'


def _kind(value) -> str:
    return "num" if isinstance(value, (int, float)) and not isinstance(value, bool) else "text"


def _fmt(value, percent: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<span class="null">—</span>'
    if percent and isinstance(value, (int, float)):
        return f"{value:.1%}"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    if isinstance(value, (list, dict)):
        return html.escape(", ".join(map(str, value)) if isinstance(value, list) else str(value))
    text = str(value)
    if len(text) > LONG_TEXT:  # e.g. a recipe's sha256 or where-clause: the full text is in the tooltip
        return f'<span title="{html.escape(text, quote=True)}">{html.escape(text[:LONG_TEXT - 1])}…</span>'
    return html.escape(text)


def not_computed_html(nc: an.NotComputed) -> str:
    return (f'<p class="not-computed"><b>{html.escape(nc.what)}</b>: {html.escape(nc.state)} — run '
            f"<code>{html.escape(nc.command)}</code></p>")


def note_html(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _percent_columns(df: pl.DataFrame) -> list[str]:
    return [c for c in df.columns if c.endswith("share")]


# -- sections -------------------------------------------------------------------------------------
def status_section(lake: Lake, opts: ReportOptions, ctx: dict) -> Section:
    s = Section("status", "What has been computed",
                "Enrichment columns and dedup tables this report uses; sections that need a missing one say so.")
    s.parts.append(table_html(an.enrichment_status(lake), "status"))
    return s


def composition_section(lake: Lake, opts: ReportOptions, ctx: dict) -> Section:
    s = Section("composition", "Composition by source",
                "Samples, distinct images, bytes, text and tokens per source, and each one's share of the lake. "
                "The counts are those of `python -m etl stats` (sql/stats.sql); tokens are the loss model's "
                "token counts and appear once the loss has been computed.")
    comp = an.composition(lake)
    counts = ["source", "samples", "text_only", "multi_image", "images", "image_bytes", "errors"]  # = etl stats
    shares = ["source", "samples_share", "images_share", "characters", "characters_share", "tokens", "tokens_share"]
    s.parts.append(table_html(comp.select(counts), "composition"))
    s.parts.append(table_html(comp.select(shares), "composition-shares", percent=_percent_columns(comp)))
    totals = an.lake_totals(lake)
    s.parts.append(note_html("Whole lake (an image shared by several sources counts once): "
                             + ", ".join(f"{k} {v:,}" for k, v in totals.items()) + "."))
    s.parts.append(figure_html(an.plot_composition(comp, ctx["colors"]), "composition",
                               "Share of each source by samples, images, characters and tokens"))
    return s


def turns_section(lake: Lake, opts: ReportOptions, ctx: dict) -> Section:
    s = Section("turns", "Turns per sample", "How many messages (human and assistant) the samples of each source have.")
    turns = an.turns_per_sample(lake)
    s.parts.append(figure_html(an.plot_turns(turns, ctx["colors"]), "turns", "Turns per sample per source"))
    summary = an.composition(lake).select("source", "samples", "turns_per_sample")
    s.parts.append(table_html(summary, "turns"))
    return s


def images_per_sample_section(lake: Lake, opts: ReportOptions, ctx: dict) -> Section:
    s = Section("images-per-sample", "Text-only and multi-image samples",
                "Share of each source's samples with no image, one image, two or three, and four or more.")
    ips = an.images_per_sample(lake)
    s.parts.append(figure_html(an.plot_images_per_sample(ips), "images-per-sample", "Images per sample per source"))
    s.parts.append(table_html(ips, "images-per-sample", percent=["share"]))
    return s


def image_sizes_section(lake: Lake, opts: ReportOptions, ctx: dict) -> Section:
    s = Section("image-sizes", "Image sizes and formats",
                "Distinct images each source refers to: width × height, formats, and size percentiles.")
    details = an.source_image_details(lake)
    if details.height == 0:
        s.parts.append(note_html("No images in the lake."))
        return s
    s.parts.append(figure_html(an.plot_image_sizes(details, ctx["colors"]), "image-sizes", "Image sizes and formats"))
    s.parts.append(table_html(an.image_sizes(lake), "image-sizes"))
    s.parts.append(table_html(an.image_formats(lake), "image-formats"))
    return s


def errors_section(lake: Lake, opts: ReportOptions, ctx: dict) -> Section:
    s = Section("errors", "Errors by kind and source",
                "Rows of the errors table: records and images that failed at ingest or enrichment (nothing is dropped "
                "silently). `python -m etl sql \"select * from errors where kind = '...'\"` shows the raw records.")
    errors = an.errors_by_kind(lake)
    if errors.height == 0:
        s.parts.append(note_html("No errors."))
        return s
    s.parts.append(figure_html(an.plot_errors(errors), "errors", "Errors per source by stage and kind"))
    s.parts.append(table_html(errors, "errors"))
    return s


def duplicates_section(lake: Lake, opts: ReportOptions, ctx: dict) -> Section:
    s = Section("duplicates", "Duplicates removed per source",
                "Samples the dedup policy (sql/dedup_exact.sql, sql/dedup_near.sql) removes, per source.")
    dups = an.duplicates_by_source(lake)
    if isinstance(dups, an.NotComputed):
        s.parts.append(not_computed_html(dups))
        return s
    for part in (an.exact_duplicates_removed(lake), an.near_duplicates_removed(lake)):
        if isinstance(part, an.NotComputed):
            s.parts.append(not_computed_html(part))
    s.parts.append(figure_html(an.plot_duplicates(dups), "duplicates", "Share of samples removed as duplicates"))
    s.parts.append(table_html(dups, "duplicates", percent=["kept_share"]))
    return s


def tags_section(lake: Lake, opts: ReportOptions, ctx: dict) -> Section:
    s = Section("tags", "Tag frequencies", "Image tags (RAM++) over all tagged images and within each source.")
    overall = an.tag_frequencies(lake, top=opts.top_tags)
    if isinstance(overall, an.NotComputed):
        s.parts.append(not_computed_html(overall))
        return s
    by_source = an.tag_frequencies_by_source(lake, top=None)
    s.parts.append(figure_html(an.plot_tags(overall, by_source), "tags", "Most frequent tags overall and per source"))
    s.parts.append(table_html(overall, "tags", percent=["share_of_tagged_images"]))
    s.parts.append(table_html(an.tag_frequencies_by_source(lake, top=5), "tags-by-source", percent=["share"]))
    return s


def loss_section(lake: Lake, opts: ReportOptions, ctx: dict) -> Section:
    s = Section("loss", "Loss per source",
                "Per-sample loss of the reference model: histograms and cumulative distributions per source. "
                "Samples whose loss failed or was not computed are counted in `samples` but not in `with_loss`.")
    summary = an.loss_summary(lake)
    if isinstance(summary, an.NotComputed):
        s.parts.append(not_computed_html(summary))
        return s
    s.parts.append(figure_html(an.plot_loss(an.sample_losses(lake), ctx["window"], ctx["colors"]), "loss",
                               "Loss histogram and ECDF per source"))
    s.parts.append(table_html(summary, "loss"))
    return s


def loss_window_section(lake: Lake, opts: ReportOptions, ctx: dict) -> Section:
    s = Section("loss-window", "Effect of a loss window",
                "What a recipe filter `where: loss between LOW and HIGH` keeps from each source "
                "(samples without a loss are dropped by such a filter too).")
    window = ctx["window"]
    effect = an.loss_window_effect(lake, *window) if window is not None \
        else an.NotComputed("sample loss", "python -m etl enrich loss")
    if isinstance(effect, an.NotComputed):  # also a --loss-window given before any loss was computed
        s.parts.append(not_computed_html(effect))
        return s
    how = "set with --loss-window" if opts.loss_window else "the lake-wide 5th-95th percentile; change with --loss-window"
    s.parts.append(note_html(f"Window [{window[0]:g}, {window[1]:g}] ({how})."))
    s.parts.append(figure_html(an.plot_loss_window(effect, *window), "loss-window", "Effect of the loss window per source"))
    s.parts.append(table_html(effect, "loss-window", percent=["kept_share"]))
    return s


def recipes_section(lake: Lake, opts: ReportOptions, ctx: dict) -> Section:
    s = Section("recipes", "Two recipes side by side",
                "What changes between two exports: recipe settings, samples per source, removals per reason.")
    if not opts.compare:
        s.parts.append(note_html("No exports compared: pass `--compare EXPORT_A EXPORT_B` "
                                 "(export folders or their manifest.json)."))
        return s
    a, b = (an.load_manifest(p) for p in opts.compare)
    name_a, name_b = an.manifest_name(a, "A"), an.manifest_name(b, "B")
    s.parts.append(note_html(f"A = {name_a} ({opts.compare[0]}), B = {name_b} ({opts.compare[1]})."))
    s.parts.append(table_html(an.recipe_changes(a, b), "recipe-changes"))
    cmp = an.compare_manifests(a, b)
    s.parts.append(figure_html(an.plot_recipe_comparison(cmp, name_a, name_b), "recipes", "Samples per source in A and B"))
    s.parts.append(table_html(cmp, "recipes", percent=["relative_change"]))
    s.parts.append(table_html(an.compare_removals(a, b), "removals"))
    return s


SECTIONS: list[Callable[[Lake, ReportOptions, dict], Section]] = [
    status_section, composition_section, turns_section, images_per_sample_section, image_sizes_section,
    errors_section, duplicates_section, tags_section, loss_section, loss_window_section, recipes_section,
]

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1150px;
       color: #222; padding: 0 1em; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
.meta, .intro, .note { color: #555; } nav a { margin-right: .8em; }
table { border-collapse: collapse; font-size: 12.5px; margin: .8em 0; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 3px 7px; white-space: nowrap; }
.table-wrap { overflow-x: auto; max-width: 100%; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.null { color: #aaa; } figure { margin: .6em 0; } img { max-width: 100%; }
.not-computed { padding: .6em; border-left: 4px solid #c90; background: #fff8e6; }
"""


def build_report(lake: Lake, opts: ReportOptions | None = None) -> str:
    """The whole report as one HTML string."""
    opts = opts or ReportOptions()
    ctx = {"colors": an.source_colors(an.lake_sources(lake)),
           "window": opts.loss_window or an.default_loss_window(lake)}
    sections = [make(lake, opts, ctx) for make in SECTIONS]
    nav = " ".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    versions = ", ".join(f"{t} v{v}" for t, v in lake.versions().items())
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>mmlake mixture report</title><style>{STYLE}</style></head><body>\n"
            f"<h1>Mixture report</h1>\n<p class=\"meta\">Lake <code>{html.escape(lake.root)}</code> "
            f"({html.escape(versions)}), generated {generated} by <code>python -m etl report</code>.</p>\n"
            f"<nav>{nav}</nav>\n" + "\n".join(s.html() for s in sections) + "\n</body></html>\n")


def write_report(lake: Lake, out: str | Path, opts: ReportOptions | None = None) -> Path:
    """Build the report and write it to `out` (parent folders are created)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_report(lake, opts), encoding="utf-8")
    return path
