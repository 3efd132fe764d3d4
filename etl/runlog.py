"""The `runs` table: one row per command run, with parameters, counts and lake versions."""
from __future__ import annotations

import getpass
import os
import socket
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow as pa

from etl import schema as S
from etl.lake import Lake, dumps, now_utc


# What each counter of a run means, as job summaries say it (`runs.counts` keeps the keys).
# A `group.member` key (errors.missing_image, removed.exact_duplicate) is shown under its group's label.
COUNTER_LABELS = {
    # ingest
    "files": "files read",
    "files_already_done": "files already ingested (skipped)",
    "samples_added": "samples added",
    "records_already_in_lake": "records already in the lake",
    "images_added": "images added",
    "images_already_in_lake": "images already in the lake",
    "image_bytes_added": "image bytes added",
    "tasks_redone_for_shared_images": "tasks redone (they shared new images with another)",
    # enrich
    "todo": "rows to compute",
    "computed": "rows computed",
    "commits": "commits",
    "samples": "samples scored",
    "tokens": "tokens",
    "padded_tokens": "tokens with padding",
    "answer_tokens": "answer tokens",
    "forwards": "model forward passes",
    "split_retries": "batches retried in halves",
    "sanitized": "samples with special tokens neutralised",
    "tag_images": "images tagged",
    "tag_model_seconds": "seconds in the tagging model",
    "tag_decode_wait_seconds": "seconds waiting for decoded images",
    # export
    "samples_written": "samples written",
    "images_written": "images written",
    "removed": "samples removed",
    "errors": "errors",
}


def counter_label(key: str) -> str:
    """How a summary names counter `key`; a counter without a label is named by its key, spaced."""
    return COUNTER_LABELS.get(key, key.replace("_", " "))


@dataclass
class Run:
    run_id: str
    command: str
    params: dict[str, Any]
    counts: Counter = field(default_factory=Counter)


@contextmanager
def recorded_run(lake: Lake, command: str, params: dict[str, Any]) -> Iterator[Run]:
    """Yield a Run whose counts are written to `runs` when the block ends, however it ends.

    A kill -9 leaves no row (nothing can be written then); every job is resumable, so the rerun
    records itself.
    """
    run = Run(uuid.uuid4().hex[:16], command, params)
    started, before = now_utc(), lake.versions()
    status = "failed"
    try:
        yield run
        status = "ok"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        row = {
            "run_id": run.run_id, "command": command, "params": dumps(params),
            "counts": dumps(dict(run.counts)), "status": status, "started_at": started,
            "ended_at": now_utc(), "versions_before": dumps(before), "versions_after": dumps(lake.versions()),
            "user": run_user(),
        }
        lake.append(S.RUNS, pa.Table.from_pylist([row], schema=S.RUNS_SCHEMA))


def run_user() -> str:
    """login@host of whoever runs the command (recorded in `runs.user`)."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = str(os.getuid())
    return f"{login}@{socket.gethostname()}"
