"""`python -m etl export RECIPE --out DIR`: a mixture recipe → LLaVA JSON (or messages) + images + yaml."""
from __future__ import annotations

import argparse
import sys
import re

from etl.commands.summary import print_counts

HELP = "Export a mixture recipe as training files: LLaVA JSON (or messages), images/, data yaml, manifest."
EXAMPLES = """\
  python -m etl export recipes/demo.yaml --out exports/demo
  python -m etl export mix.yaml --out /data/mix1 --images hardlink --split-by-source --version v1.0
  python -m etl export mix.yaml --out /data/mix1_qwen --format messages --images symlink
  python -m etl export mix.yaml --out /data/mix1_wds --format webdataset --shard-size 1GB
  python -m etl export mix.yaml --out /data/mix1_hf --format hf-parquet     # datasets.load_dataset("parquet", ...)
  python -m etl export mix.yaml --dry-run            # print the compiled DuckDB query, write nothing
Then train with the printed --data_path DIR/data.yaml --image_folder DIR/images.
The same recipe on the same lake version gives byte-identical files (see DIR/manifest.json).
A non-empty DIR is only replaced with --force (and only if it holds a previous export)."""


def configure(p: argparse.ArgumentParser) -> None:
    from etl.export import FORMATS, IMAGE_MODES, LAYOUTS  # duckdb, lance: only when exporting

    p.add_argument("recipe", help="recipe YAML (see recipes/README.md)")
    p.add_argument("--out", metavar="DIR", help="output directory (required unless --dry-run)")
    p.add_argument("--images", choices=IMAGE_MODES, default="copy",
                   help="copy bytes (default), hard/symbolic links from a content-addressed cache, or none")
    p.add_argument("--layout", choices=LAYOUTS, default="hashed",
                   help="image paths: hashed (ab/<sha256>.ext, default) or original (<source>/<path as written>)")
    p.add_argument("--format", choices=FORMATS, default="llava",
                   help="llava (id/image/conversations, default), messages (LLaMA-Factory / Qwen fine-tuning), "
                        "webdataset (tar shards) or hf-parquet (parquet shards with HF Image features + README.md)")
    p.add_argument("--shard-size", type=byte_size, default=512 << 20, metavar="SIZE",
                   help="webdataset / hf-parquet: bytes per shard, e.g. 512MB (default), 2GB")
    p.add_argument("--version", metavar="N|TAG|T=N,...",
                   help="lake version: samples version N, a tag, or table=N pairs as in a manifest (default: now)")
    p.add_argument("--split-by-source", action="store_true", help="one JSON file per source instead of one merged file")
    p.add_argument("--image-cache", metavar="DIR", help="cache for --images hardlink|symlink (default: DIR/../.mmlake-image-cache)")
    p.add_argument("--threads", type=int, default=8, help="image writer threads (default: 8)")
    p.add_argument("--force", action="store_true", help="replace a previous export in a non-empty DIR")
    p.add_argument("--dry-run", action="store_true", help="print the compiled DuckDB query and stop")
    p.add_argument("--strict", action="store_true",
                   help="stop (before writing) on any warning: a `where` over a column not computed yet, a `where` "
                        "removing everything, a source with 0 selected, `dedup: exact` over unhashed images")


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake
    from etl.export import ExportOptions, export, resolve_versions
    from etl.recipe import check_derived_inputs, compile_recipe, lake_columns, load_recipe
    from etl.sqlrun import connect

    lake = open_lake(args)
    if args.dry_run:
        recipe = load_recipe(args.recipe)
        pins = resolve_versions(lake, args.version)
        con = connect(lake, version=pins)
        compiled = compile_recipe(recipe, lake_columns(con))
        check_derived_inputs(con, recipe, lake, pins)
        print(compiled.script())
        return 0
    if not args.out:
        raise ValueError("--out DIR is required (or use --dry-run)")
    opts = ExportOptions(out=args.out, images=args.images, layout=args.layout, format=args.format,
                         version=args.version, split_by_source=args.split_by_source, force=args.force,
                         image_cache=args.image_cache, threads=args.threads, strict=args.strict,
                         shard_size=args.shard_size)
    result = export(lake, args.recipe, opts)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    counts = result.manifest["counts"]
    print_counts("export", {"samples_written": counts["samples"], "images_written": counts["images"]["written"],
                            **{f"removed.{k}": v for k, v in counts["removed_total"].items()}})
    for source, c in counts["sources"].items():
        print(f"  {source}: {c['considered']:,} considered, {c['selected']:,} selected, {c['written']:,} written")
    out = result.out.resolve()
    if opts.format == "llava":
        print(f"train with: --data_path {out / 'data.yaml'} --image_folder {out / 'images'}")
    elif opts.format == "messages":
        print(f"LLaMA-Factory: --dataset_dir {out} --media_dir {out / 'images'} (datasets in dataset_info.json)")
    else:
        print(f"{opts.format} shards: {out} (files and checksums in {out / 'manifest.json'})")
    return 0


def byte_size(text: str) -> int:
    """`512MB`, `2GB`, `1.5G`, `64KiB`, `100000` (bytes) → bytes (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:I?B)?\s*", text.upper())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 512MB or 2GB")
    return int(float(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2)])
