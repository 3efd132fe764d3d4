"""`python -m etl ingest`: raw source files → the lake."""
from __future__ import annotations

import argparse
import os

from etl.commands.failure import FAILED, say
from etl.commands.engine_args import add_engine_arguments, engine_spec
from etl.commands.summary import print_counts

HELP = "Ingest source files (LLaVA JSON/JSONL, HF parquet, webdataset tars, messages JSON, URL lists) into the lake."
EXAMPLES = """\
  python -m etl ingest llava_v1_5_mix665k.json --source llava_665k --image-root /data/llava
  python -m etl ingest 'LLaVA-Pretrain/*.json' --source lcs558k --image-root LLaVA-Pretrain/images
  python -m etl --lake s3://bucket/lake ingest sharegpt4v/ --source sharegpt4v
  python -m etl ingest lmms-lab/LLaVA-OneVision-Data/ --workers 2       # one source per config folder
  python -m etl ingest --from-hub lmms-lab/LLaVA-OneVision-Data --include 'CLEVR-Math*/*.parquet'
  python -m etl ingest shards/ --format webdataset --prompt '<image>\\nDescribe the image.'
  python -m etl ingest train.json --source mine --format llava --redo   # wrong flags the first time
  python -m etl ingest cc3m.parquet --format urls --source cc3m --concurrency 32 --per-host-rate 5
  python -m etl ingest s3://bucket/llava/mix665k.json --image-root s3://bucket/llava/images   # read in place
  python -m etl ingest 'hf://datasets/lmms-lab/LLaVA-ReCap-558K/data/*.parquet'             # streamed, no download
Rerunning the same command adds nothing; after a crash it continues where it stopped. A rerun of a URL list
fetches again the downloads that failed for a while (timeouts, 5xx, 429); --retry-failed: every failed one.
Records whose images are missing or not images go to the `errors` table with the raw record."""

READER_OPTIONS = ("prompt", "concurrency", "timeout", "retries", "max_bytes", "per_host_rate", "url_column",
                  "caption_column")


# numpy (imported by pyarrow) starts a BLAS thread per core that spins for a while (0.06 CPU-s per
# process here); ingest never calls BLAS. Set before the first import of numpy, unless the user set it.
INGEST_ENVIRONMENT = {"OPENBLAS_NUM_THREADS": "1"}


def configure(p: argparse.ArgumentParser) -> None:
    for name, value in INGEST_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    from etl.sources import readers  # pyarrow: only when ingesting

    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="files, directories or globs; local, or URLs read in place (s3://bucket/prefix/, "
                        "hf://datasets/OWNER/NAME/...; see docs/cluster.md)")
    p.add_argument("--source", help="dataset name stored with every sample (default: from the file/folder name)")
    p.add_argument("--format", default="auto", choices=["auto", *readers()], help="source format (default: auto)")
    p.add_argument("--image-root", action="append", default=[], metavar="DIR",
                   help="folder relative image paths are resolved against, or a URL (repeatable; "
                        "the annotation file's own folder is tried last)")
    p.add_argument("--allow-outside-roots", action="store_true",
                   help="follow image paths (absolute, ../, symlinks) to files outside the image roots, the "
                        "annotation file's folder and the folder given; only for sources you trust (refused "
                        "with --from-hub)")
    p.add_argument("--prompt", help="human turn for caption-only sources (webdataset), e.g. '<image>\\nDescribe the image.'")
    p.add_argument("--batch-size", type=int, default=1000, help="records per commit (default: 1000)")
    add_engine_arguments(p, "workers that read, hash and write in parallel, or 'auto' (default): locally, parallel "
                            "only where it was measured faster than serial (HF parquet from 2 GB on), up to one per "
                            "core (each holds about 0.5 GB); on Ray, as many as fit. One process commits",
                         workers_type=workers_argument, workers_default="auto")
    hub = p.add_argument_group("Hugging Face Hub (download resumes; the ingest resumes too)")
    hub.add_argument("--from-hub", metavar="REPO_ID", help="dataset id or hf://datasets/OWNER/NAME[/FOLDER]")
    hub.add_argument("--include", action="append", default=[], metavar="GLOB", help="only these files (repeatable)")
    hub.add_argument("--revision", help="branch, tag or commit of the dataset repo")
    hub.add_argument("--hub-dir", help="download folder (default: ~/.cache/mmlake/hub/OWNER/NAME)")
    hub.add_argument("--hub-mirror", help="a local folder laid out like the Hub (OWNER/NAME/...) to read instead")
    urls = p.add_argument_group("URL lists (--format urls: parquet/CSV/TSV/JSONL/txt of image URLs, downloaded)")
    urls.add_argument("--concurrency", type=int, help="downloads in flight (default: 16)")
    urls.add_argument("--timeout", type=float, help="seconds per attempt, whole body included (default: 30)")
    urls.add_argument("--retries", type=int, help="retries of 5xx/429/timeouts/resets, backoff doubling (default: 2)")
    urls.add_argument("--max-image-bytes", type=int, dest="max_bytes", help="larger images are refused (default: 32 MiB)")
    urls.add_argument("--per-host-rate", type=float, help="requests per second to one host (default: no limit)")
    urls.add_argument("--url-column", help="the column holding the URL(s) (default: url, image_url, image, ...)")
    urls.add_argument("--caption-column", help="the caption column (default: caption, txt, text)")
    urls.add_argument("--retry-failed", action="store_true",
                      help="also fetch again the records whose download failed for good (404, not an image, too "
                           "large...); a rerun always fetches again those that failed for a while (timeouts, 5xx, 429)")
    p.add_argument("--redo", action="store_true",
                   help="re-ingest the named files from scratch: their samples, errors and checkpoints are "
                        "deleted first (e.g. after a wrong --format or --image-root); same result as a first ingest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def input_paths(args: argparse.Namespace) -> list[str]:
    """The PATH arguments, plus the local copy of a Hub dataset when --from-hub is given."""
    from etl.hub import fetch_dataset, ingest_arguments, parse_hub_ref, refuse_outside_roots

    paths = list(args.paths)
    if args.allow_outside_roots and any(p.startswith("hf://") for p in paths):  # no more trusted than --from-hub
        raise ValueError("--allow-outside-roots cannot be used with hf:// sources: a Hub dataset's image paths are "
                         "only followed inside the dataset and the --image-root folders")
    if args.from_hub:
        refuse_outside_roots(args.allow_outside_roots)
        ref = parse_hub_ref(args.from_hub, args.include)
        folder = fetch_dataset(ref, args.hub_dir, args.hub_mirror, args.revision)
        paths += ingest_arguments(folder, ref.include)
    if not paths:
        raise ValueError("nothing to ingest: give PATH arguments or --from-hub REPO_ID")
    return paths


def run(args: argparse.Namespace) -> int:
    from etl.commands.lakes import open_lake
    from etl.ingest import IngestOptions, ingest

    engine = engine_spec(args)  # refused (bad options, Ray missing) before the lake is touched
    paths = input_paths(args)
    if args.workers == "auto":  # on Ray: as many as fit (0)
        args.workers = 0 if engine.kind == "ray" else auto_workers(paths, IngestOptions(source=args.source,
                                                                                        format=args.format))
    lake = open_lake(args, create=True)
    reader_options = {k: getattr(args, k) for k in READER_OPTIONS if getattr(args, k) is not None}
    opts = IngestOptions(source=args.source, format=args.format, image_roots=args.image_root,
                         allow_outside_roots=args.allow_outside_roots,
                         batch_records=args.batch_size, reader_options=reader_options, workers=args.workers,
                         engine=engine,
                         progress=False if args.no_progress else None, redo=args.redo,
                         retry_failed=args.retry_failed)
    counts = ingest(lake, paths, opts)
    print_counts("ingest", counts)
    empty = files_without_samples(lake, paths, opts, counts)
    if empty:
        say(f"{len(empty)} file(s) gave no sample: " + "; ".join(empty[:5]) + (" ..." if len(empty) > 5 else ""))
        return FAILED
    return 0


def files_without_samples(lake, paths: list[str], opts, counts=None) -> list[str]:
    """What went wrong with each input file that has no sample in the lake (from this run or before):
    its errors, and the format its content looks like when that is not the one it was read as.
    A single file that this run's `counts` show adding samples needs no look at the lake; files
    that each have a sample need no DuckDB (its import and views cost more than the look)."""
    from etl.ingest import expand_inputs, known_as
    from etl.sources.base import file_fingerprint

    named = expand_inputs(paths, opts)
    if len(named) == 1 and counts and counts["samples_added"]:
        return []
    inputs = {(f.source, f.name) for f in named}  # a file reached by another path keeps its earlier name
    files = [known_as(lake, f, file_fingerprint(f.path), inputs)[0] for f in named]
    if all_have_samples(lake, files):
        return []
    from etl.sqlrun import connect, run_file  # DuckDB: only when some file has no sample

    con = connect(lake)
    rows = run_file(con, "ingest_files", {"ingest_sources": [f.source for f in files],
                                          "ingest_files": [f.name for f in files]}).fetchall()
    by_key = {(f.source, f.name): f for f in files}
    return [why_empty(by_key[(source, name)], errors or {}) for source, name, samples, errors in rows if samples == 0]


def all_have_samples(lake, files) -> bool:
    """Whether the lake holds a sample of each of `files` (per file, a scan that stops at the first)."""
    import pyarrow.compute as pc

    from etl import schema as S

    samples = lake.dataset(S.SAMPLES)  # opened once: each opening reads the table's manifest
    for file in files:
        mine = (pc.field("source") == file.source) & (pc.field("source_file") == file.name)
        if samples.scanner(columns=[S.KEYS[S.SAMPLES]], filter=mine, limit=1).to_table().num_rows == 0:
            return False
    return True


def why_empty(file, errors: dict[str, int]) -> str:
    from etl.sources import detect_format

    found = ", ".join(f"{kind} {n:,}" for kind, n in errors.items()) if errors else "no records"
    try:
        detected = detect_format(file.path)
    except ValueError:
        detected = None
    if detected and detected != file.format:
        hint = f"its content looks like {detected}: try --format auto (or --format {detected})"
    elif errors:
        hint = f"see `python -m etl sql \"select * from errors where file = '{file.name}'\"`"
    else:
        hint = "is it the right file and --format?"
    return f"{file.name} (read as {file.format}: {found}; {hint})"


# -- `--workers auto` ---------------------------------------------------------------------------------
# Measured on 2 cores (issue 19; `bench/bench_commands.py crossover` measures it again, results in
# bench/results/commands_crossover*.md): each worker process pays its own start-up (imports, a Lance
# session) and the committing process runs beside them, so workers win only on inputs they read
# themselves (HF parquet row groups, `row_ranges`), and only on large ones: 2 workers took 0.55x, 0.61x,
# 0.76x serial's speed on 0.12, 0.47, 0.93 GB of parquet (the ratio climbing about 0.3 per GB; 5.4 GB:
# 1.5x faster in issue 19), so parallel starts at 2 GB. JSON, tars and messages are parsed by the
# committing process and shipped to the workers: since the serial ingest reads image files with the
# kernel's read-ahead, 2 workers were slower on a 20k-record LLaVA JSON too (0.94x, 1.2 GB of images;
# 1.42x against the old serial reader with 8 blocking threads), so they stay serial.
PARALLEL_FROM_BYTES = 2 << 30  # one more worker per 2 GB of worker-readable input, up to one per core


def workers_argument(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of processes >= 1, got {value!r}")
    return int(value)


def auto_workers(paths: list[str], opts, from_bytes: int = PARALLEL_FROM_BYTES) -> int:
    """Serial (1) unless the inputs the workers read themselves hold at least `from_bytes`; then one
    more worker per `from_bytes` of them, at most one per core this process may use."""
    from etl.engine.base import available_cores
    from etl.ingest import expand_inputs
    from etl.sources import readers
    from etl.storage import stamp

    cores = available_cores()
    seekable = sum(stamp(f.path)[0] for f in expand_inputs(paths, opts)
                   if readers()[f.format].splittable)
    return max(1, min(cores, 1 + seekable // from_bytes))
