"""`python -m etl report`: one static HTML page with every section, plots embedded, numbers = `etl stats`."""
from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from analysis_fixtures import bare_lake, enriched_lake, two_exports  # noqa: F401 (fixtures)
from conftest import REPO, run_cli
from etl.report import SECTION_IDS

FIGURES_WITH_EVERYTHING_COMPUTED = ["composition", "turns", "images-per-sample", "image-sizes", "errors",
                                    "duplicates", "tags", "loss", "loss-window", "recipes"]


class Page(HTMLParser):
    """Sections, images and table cells of the report, as a reader's browser would see them."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: dict[str, str] = {}
        self.images: dict[str, str] = {}
        self.tables: dict[str, list[dict[str, str]]] = {}
        self._table = None
        self._row = None
        self.feed(text)
        for sid in re.findall(r'<section id="([^"]+)">', text):
            self.sections[sid] = text.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images[a["id"]] = a["src"]
        elif tag == "table":
            self._table = self.tables.setdefault(a["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = {}
        elif tag == "td" and self._row is not None:
            self._row[a["data-col"]] = a["data-value"]

    def handle_endtag(self, tag):
        if tag == "tr" and self._row:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None


@pytest.fixture(scope="module")
def report(enriched_lake, two_exports, tmp_path_factory) -> Path:
    """The report of the enriched lake with two exports compared, written by the real CLI."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    run_cli("report", "--out", str(out), "--compare", *map(str, two_exports), "--loss-window", "0.5", "3",
            lake=enriched_lake)
    return out


def test_report_has_every_section_and_every_plot_as_an_embedded_png(report):
    page = Page(report.read_text())
    assert list(page.sections) == SECTION_IDS
    assert sorted(page.images) == sorted(f"fig-{name}" for name in FIGURES_WITH_EVERYTHING_COMPUTED)
    for name, src in page.images.items():
        assert src.startswith("data:image/png;base64,"), name
        png = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert png.format == "PNG" and png.width >= 600 and png.height >= 150, name
    assert "not computed yet" not in report.read_text()


def test_report_per_source_numbers_equal_etl_stats(report, enriched_lake):
    stats = {r["source"]: r for r in json.loads(run_cli("stats", "--format", "json", lake=enriched_lake).stdout)}
    table = {r["source"]: r for r in Page(report.read_text()).tables["table-composition"]}
    assert set(table) == set(stats)
    for source, expected in stats.items():
        for col in ("samples", "text_only", "multi_image", "images", "image_bytes", "errors"):
            assert int(table[source][col]) == expected[col], (source, col)


def test_report_shows_the_requested_loss_window_and_both_recipes(report, two_exports):
    page = Page(report.read_text())
    assert "[0.5, 3]" in page.sections["loss-window"]
    a = json.loads((two_exports[0] / "manifest.json").read_text())
    rows = {r["source"]: r for r in page.tables["table-recipes"]}
    assert {s: int(r["a"]) for s, r in rows.items()} == a["counts"]["per_source"]
    assert "mix-a" in page.sections["recipes"] and "mix-b" in page.sections["recipes"]


def test_report_of_a_lake_without_enrichment_says_not_computed_yet(bare_lake, tmp_path):
    out = tmp_path / "bare.html"
    run_cli("report", "--out", str(out), lake=bare_lake)
    page = Page(out.read_text())
    assert list(page.sections) == SECTION_IDS
    for sid in ("duplicates", "tags", "loss", "loss-window"):
        assert "not computed yet" in page.sections[sid], sid
    assert "fig-tags" not in page.images and "fig-composition" in page.images
    assert "--compare" in page.sections["recipes"]


def test_report_refuses_a_reversed_loss_window(enriched_lake, tmp_path):
    proc = run_cli("report", "--out", str(tmp_path / "r.html"), "--loss-window", "3", "1", lake=enriched_lake, check=False)
    assert proc.returncode == 2 and "LOW <= HIGH" in proc.stderr
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_to_a_full_page_png_in_headless_chromium(report, tmp_path):
    png = tmp_path / "report.png"
    subprocess.run([sys.executable, str(REPO / "scripts" / "render_report_png.py"), str(report), "--out", str(png)],
                   check=True, capture_output=True, timeout=180)
    im = Image.open(png).convert("L")
    assert im.width == 1280 and im.height > 4000  # the whole page, not the first screen
    band = im.crop((0, im.height // 2, im.width, im.height // 2 + 400))
    assert band.getextrema()[0] < 100  # plots and text are drawn, not a blank page
