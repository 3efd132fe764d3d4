"""Per-thread timeline of one `python -m etl ...` command run in this process: when each thread of the
serial ingest reads, hashes, writes and commits, and when the main thread waits for the writer.

    .venv/bin/python bench/timeline_command.py [--events out.json] -- --lake L ingest data.json --image-root R ...

Wraps the ingest's stage methods (Ingestor, Lake, the file reader), runs the command, then prints per
thread the wall and CPU seconds (`time.thread_time`) of each stage, the start of the first file read and
of the first image write, and the batch-level events in time order (`--events` keeps every event as
JSON: thread, stage, start, end, CPU). CPU of Lance's own Rust threads is not in any Python thread's
column: compare with `/usr/bin/time` of the whole command. Times are seconds since this script started
(the interpreter's own start, ~0.03 s, is before it).
"""
from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's etl

EVENTS: list[tuple[str, str, float, float, float]] = []  # (thread, stage, start, end, cpu)
STAGES = {  # module: {class or None: [functions]}
    "etl.lake": {"Lake": ["write_fragments", "commit_fragments", "commit_once", "latest_version", "existing_keys",
                          "keys_added_since", "set_checkpoint", "compact", "ensure_key_index", "ensure_tables"]},
    "etl.ingest.serial": {"Ingestor": ["prepare", "read_files", "write", "write_new_images", "commit_images",
                                       "commit_rows", "wait_for_writes"],
                          None: ["images_table", "sniff_files", "start_file"]},
    "etl.imagerefs": {"ImageRoots": ["locate"]},
    "etl.commands.ingest": {None: ["files_without_samples"]},
}
SHOWN = {"Ingestor.prepare", "Ingestor.write", "Ingestor.wait_for_writes", "start_file", "files_without_samples"}


def wrap(owner, name: str, label: str) -> None:
    inner = getattr(owner, name, None)
    if inner is None:
        return

    def timed(*args, **kwargs):
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            EVENTS.append((threading.current_thread().name, label, start - T0, time.perf_counter() - T0,
                           time.thread_time() - cpu))

    setattr(owner, name, timed)


def instrument() -> None:
    import importlib

    for module_name, owners in STAGES.items():
        module = importlib.import_module(module_name)
        for owner_name, names in owners.items():
            owner = getattr(module, owner_name) if owner_name else module
            for name in names:
                wrap(owner, name, f"{owner_name}.{name}" if owner_name else name)


def report() -> str:
    per_thread: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0, 0.0, 0.0]))
    for thread, label, start, end, cpu in EVENTS:
        entry = per_thread[thread][label]
        entry[0] += 1
        entry[1] += end - start
        entry[2] += cpu
    first = {label: min((s for _, l, s, _, _ in EVENTS if l == label), default=None)
             for label in ("Ingestor.read_files", "Lake.write_fragments")}
    lines = [f"first file read at {first['Ingestor.read_files']}, "
             f"first fragment write at {first['Lake.write_fragments']}"]
    for thread, stages in per_thread.items():
        lines.append(f"-- thread {thread}")
        lines += [f"   {label:36s} {n:6d} calls {wall:7.3f} s wall {cpu:7.3f} s CPU"
                  for label, (n, wall, cpu) in sorted(stages.items(), key=lambda kv: -kv[1][1])]
    lines.append("-- batch events (start, end, thread, stage)")
    lines += [f"{s:7.3f} {e:7.3f} {thread[:18]:18s} {label}"
              for thread, label, s, e, _ in sorted(EVENTS, key=lambda ev: ev[2]) if label in SHOWN]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=Path, help="write every event here (JSON)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- the arguments of python -m etl")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    from etl.cli import main as etl_main

    instrument()
    code = etl_main(command)
    print(f"command ended at {time.perf_counter() - T0:.3f} s (exit {code})", file=sys.stderr)
    print(report(), file=sys.stderr)
    if args.events:
        args.events.write_text(json.dumps(EVENTS))
    return code


if __name__ == "__main__":
    sys.exit(main())
