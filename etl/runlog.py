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
