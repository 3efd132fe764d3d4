"""Where a whole command's CPU time goes: py-spy samples of the command (its worker processes and threads
included), summed into a few named stages.

    pip install py-spy   # into the venv; not a dependency of mmlake
    .venv/bin/python bench/profile_command.py -- .venv/bin/python -m etl --lake L ingest data.json ...
    .venv/bin/python bench/profile_command.py --raw samples.txt      # summarise an earlier recording

A sample counts for the first stage (in the order of STAGES) one of whose patterns occurs in its stack;
py-spy without --idle still records some threads blocked on a queue or a condition: they are shown
apart, and the shares are of the other samples. Prints one line per stage, then the hottest leaf
functions.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter

WAITING = ["Condition.wait", "thread.py:81)", "_monitor.py", "queue.py", "Event.wait"]  # blocked threads
STAGES = [  # (stage, patterns in the stack); the first stage that matches takes the sample
    ("numba set-up (import + cached kernels)", ["numba/", "llvmlite/", "_build_kernels"]),
    ("start-up imports", ["_find_and_load"]),
    ("JPEG decode (Pillow)", ["ImageFile.load", "Image.convert", "decode_gray"]),
    ("phash resample + DCT", ["_horizontal_pass", "_vertical_pass", "thumbnail32", "phash_batch", "imagehash"]),
    ("JSON parse", ["jsonfiles.py", "json/decoder.py", "ijson"]),
    ("file fingerprint (checkpoint)", ["file_fingerprint"]),
    ("sha256 + header sniff", ["content_id", "sniff"]),
    ("image file read", ["load_image", "Ingestor.load", "FileReader", "announce"]),
    ("image path lookup (roots containment)", ["ImageRoots.locate"]),
    ("Arrow tables of new images/samples", ["images_table", "blob_bytes", "from_pylist", "sample_row"]),
    ("Lance write + commit", ["write_fragments", "LanceDataset.commit", "commit_fragments", "lance/"]),
    ("parquet read", ["hf_parquet.py", "pyarrow/parquet"]),
    ("DuckDB", ["duckdb"]),
]


def stage_of(stack: str) -> str:
    leaf = stack.split(";")[-1]
    if any(p in leaf for p in WAITING):
        return "waiting (a blocked thread: not CPU)"
    if ";" not in stack:
        return "native threads, no Python frame (Lance/Arrow Rust and C++ threads)"
    for name, patterns in STAGES:
        if any(p in stack for p in patterns):
            return name
    return "other"


def summarise(raw: str, top: int) -> str:
    stages, leaves, total = Counter(), Counter(), 0
    for line in open(raw):
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        stages[stage_of(stack)] += n
        leaves[re.sub(r"\(.*/(site-packages|etl)/", "(", stack.split(";")[-1])] += n
    waiting = sum(n for name, n in stages.items() if name.startswith("waiting"))
    busy = total - waiting
    lines = [f"{total} samples, {waiting} of blocked threads", "", "| stage | share of CPU samples |", "|---|---:|"]
    lines += [f"| {name} | {100 * n / busy:.1f}% |" for name, n in stages.most_common() if not name.startswith("waiting")]
    lines += ["", "hottest functions (self, share of all samples):"]
    lines += [f"  {100 * n / total:5.1f}%  {f[:120]}" for f, n in leaves.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", help="a py-spy --format raw recording to summarise instead of running a command")
    ap.add_argument("--rate", type=int, default=200, help="samples per second (default 200)")
    ap.add_argument("--top", type=int, default=12, help="hottest leaf functions to list")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to profile")
    args = ap.parse_args()
    raw = args.raw
    if raw is None:
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            ap.error("give a command after --, or --raw FILE")
        raw = tempfile.mktemp(suffix=".txt", prefix="pyspy_")
        subprocess.run(["py-spy", "record", "--subprocesses", "--format", "raw", "-r", str(args.rate), "-o", raw,
                        "--", *command], check=True)
        print(f"samples: {raw}", file=sys.stderr)
    print(summarise(raw, args.top))


if __name__ == "__main__":
    main()
