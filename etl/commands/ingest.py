"""`python -m etl ingest`: raw source files → the lake."""
from __future__ import annotations

import argparse

from etl.commands.summary import print_counts
from etl.hub import fetch_dataset, ingest_arguments, parse_hub_ref, refuse_outside_roots
from etl.ingest import IngestOptions, ingest
from etl.lake import Lake
from etl.sources import readers

HELP = "Ingest source files (LLaVA JSON/JSONL, HF parquet, webdataset tars, messages JSON) into the lake."
EXAMPLES = """\
  python -m etl ingest llava_v1_5_mix665k.json --source llava_665k --image-root /data/llava
  python -m etl ingest 'LLaVA-Pretrain/*.json' --source lcs558k --image-root LLaVA-Pretrain/images
  python -m etl --lake s3://bucket/lake ingest sharegpt4v/ --source sharegpt4v
  python -m etl ingest lmms-lab/LLaVA-OneVision-Data/ --workers 2       # one source per config folder
  python -m etl ingest --from-hub lmms-lab/LLaVA-OneVision-Data --include 'CLEVR-Math*/*.parquet'
  python -m etl ingest shards/ --format webdataset --prompt '<image>\\nDescribe the image.'
  python -m etl ingest train.json --source mine --format llava --redo   # wrong flags the first time
Rerunning the same command adds nothing; after a crash it continues where it stopped.
Records whose images are missing or not images go to the `errors` table with the raw record."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH", help="files, directories or globs")
    p.add_argument("--source", help="dataset name stored with every sample (default: from the file/folder name)")
    p.add_argument("--format", default="auto", choices=["auto", *readers()], help="source format (default: auto)")
    p.add_argument("--image-root", action="append", default=[], metavar="DIR",
                   help="folder relative image paths are resolved against (repeatable; "
                        "the annotation file's own folder is tried last)")
    p.add_argument("--allow-outside-roots", action="store_true",
                   help="follow image paths (absolute, ../, symlinks) to files outside the image roots, the "
                        "annotation file's folder and the folder given; only for sources you trust (refused "
                        "with --from-hub)")
    p.add_argument("--prompt", help="human turn for caption-only sources (webdataset), e.g. '<image>\\nDescribe the image.'")
    p.add_argument("--batch-size", type=int, default=1000, help="records per commit (default: 1000)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes that read, hash and write in parallel (default: 1); one process commits. "
                        "Use up to one per core: each holds about 0.5 GB")
    hub = p.add_argument_group("Hugging Face Hub (download resumes; the ingest resumes too)")
    hub.add_argument("--from-hub", metavar="REPO_ID", help="dataset id or hf://datasets/OWNER/NAME[/FOLDER]")
    hub.add_argument("--include", action="append", default=[], metavar="GLOB", help="only these files (repeatable)")
    hub.add_argument("--revision", help="branch, tag or commit of the dataset repo")
    hub.add_argument("--hub-dir", help="download folder (default: ~/.cache/mmlake/hub/OWNER/NAME)")
    hub.add_argument("--hub-mirror", help="a local folder laid out like the Hub (OWNER/NAME/...) to read instead")
    p.add_argument("--redo", action="store_true",
                   help="re-ingest the named files from scratch: their samples, errors and checkpoints are "
                        "deleted first (e.g. after a wrong --format or --image-root); same result as a first ingest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def input_paths(args: argparse.Namespace) -> list[str]:
    """The PATH arguments, plus the local copy of a Hub dataset when --from-hub is given."""
    paths = list(args.paths)
    if args.from_hub:
        refuse_outside_roots(args.allow_outside_roots)
        ref = parse_hub_ref(args.from_hub, args.include)
        folder = fetch_dataset(ref, args.hub_dir, args.hub_mirror, args.revision)
        paths += ingest_arguments(folder, ref.include)
    if not paths:
        raise ValueError("nothing to ingest: give PATH arguments or --from-hub REPO_ID")
    return paths


def run(args: argparse.Namespace) -> int:
    paths = input_paths(args)
    lake = Lake.open(args.lake)
    reader_options = {"prompt": args.prompt} if args.prompt else {}
    opts = IngestOptions(source=args.source, format=args.format, image_roots=args.image_root,
                         allow_outside_roots=args.allow_outside_roots,
                         batch_records=args.batch_size, reader_options=reader_options, workers=args.workers,
                         progress=False if args.no_progress else None, redo=args.redo)
    counts = ingest(lake, paths, opts)
    print_counts("ingest", counts)
    return 0
