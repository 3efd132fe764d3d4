"""`python -m etl demo`: build the demo sources and run every stage on them, end to end."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

HELP = "Build a small demo lake from bundled photos (with duplicates and broken inputs) and run every stage."
EXAMPLES = """\
  python -m etl demo                       # sources in ./demo_data, lake in ./lake, export in ./demo_export
  python -m etl --lake /tmp/demo-lake demo --data /tmp/demo-data --out /tmp/demo-export
Safe to rerun: ingest and enrichment skip what is already done; the export is rewritten (--force)."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="demo_data", help="where to write the demo's raw sources (default: demo_data)")
    p.add_argument("--out", default="demo_export", help="where to export the demo mixture (default: demo_export)")


def stages(data: Path, out: Path) -> list[tuple[str, list[str]]]:
    """(module that must exist, argv) of every stage, in pipeline order."""
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"
    return [
        ("etl.commands.ingest", ["ingest", str(data / "demo_llava.json"), "--source", "demo_llava",
                    "--image-root", str(data / "images"), "--no-progress"]),
        ("etl.commands.ingest", ["ingest", str(data / "demo_chat.jsonl"), "--source", "demo_chat", "--no-progress"]),
        ("etl.enrich.phash", ["enrich", "phash", "--no-progress"]),
        ("etl.commands.dedup", ["dedup", "--near", "4"]),
        ("etl.commands.checks", ["checks", "--summary"]),
        ("etl.commands.export", ["export", str(recipe), "--out", str(out), "--force"]),
        ("etl.commands.report", ["report", "--out", str(out / "report.html")]),
        ("etl.commands.stats", ["stats"]),
    ]


def run(args: argparse.Namespace) -> int:
    from etl.cli import main
    from etl.demo import make_sources

    data, out = Path(args.data), Path(args.out)
    make_sources(data)
    print(f"demo sources written to {data}/")
    lake_args = ["--lake", args.lake] if args.lake else []
    for module, argv in stages(data, out):
        command = argv[0]
        if importlib.util.find_spec(module) is None:
            print(f"\n== {command}: not available in this build, skipped")
            continue
        print(f"\n== python -m etl {' '.join(argv)}")
        code = main(lake_args + argv)
        if code:
            print(f"stage {command} failed with exit code {code}")
            return code
    return 0
