"""`python -m etl ingest`: raw source files → the lake."""
from __future__ import annotations

import argparse

from etl.commands.summary import print_counts
from etl.ingest import IngestOptions, ingest
from etl.lake import Lake
from etl.sources import readers

HELP = "Ingest source files (LLaVA JSON/JSONL, HF parquet, webdataset tars, messages JSON) into the lake."
EXAMPLES = """\
  python -m etl ingest llava_v1_5_mix665k.json --source llava_665k --image-root /data/llava
  python -m etl ingest 'LLaVA-Pretrain/*.json' --source lcs558k --image-root LLaVA-Pretrain/images
  python -m etl --lake s3://bucket/lake ingest sharegpt4v/ --source sharegpt4v
Rerunning the same command adds nothing; after a crash it continues where it stopped.
Records whose images are missing or not images go to the `errors` table with the raw record."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, directories or globs")
    p.add_argument("--source", help="dataset name stored with every sample (default: from the file/folder name)")
    p.add_argument("--format", default="auto", choices=["auto", *readers()], help="source format (default: auto)")
    p.add_argument("--image-root", action="append", default=[], metavar="DIR",
                   help="folder relative image paths are resolved against (repeatable; "
                        "the annotation file's own folder is tried last)")
    p.add_argument("--prompt", help="human turn for caption-only sources (webdataset), e.g. '<image>\\nDescribe the image.'")
    p.add_argument("--batch-size", type=int, default=1000, help="records per commit (default: 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    lake = Lake.open(args.lake)
    reader_options = {"prompt": args.prompt} if args.prompt else {}
    opts = IngestOptions(source=args.source, format=args.format, image_roots=args.image_root,
                         batch_records=args.batch_size, reader_options=reader_options,
                         progress=False if args.no_progress else None)
    counts = ingest(lake, args.paths, opts)
    print_counts("ingest", counts)
    return 0
