"""Shared fixtures: a fresh lake per test, the realdata folder (skipped when absent), slow marker."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from etl import schema as S
from etl.lake import Lake

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run @pytest.mark.slow tests (also MMLAKE_SLOW=1)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("MMLAKE_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or MMLAKE_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def realdata() -> Path:
    """../shared/realdata (public files with real quirks); tests needing it skip when it is absent."""
    if not REALDATA.is_dir():
        pytest.skip(f"realdata not present at {REALDATA} (it ships beside the repo, not in it)")
    return REALDATA


def needs_realdata(path: Path) -> None:
    """Skip the calling test, saying which file is missing, when a realdata file is absent."""
    if not path.exists():
        pytest.skip(f"realdata not present: {path} (see ../shared/realdata/MANIFEST.md)")


def samples_of(lake: Lake, source: str) -> list[dict]:
    """The samples of one source, in file-row order (no enrichment columns)."""
    cols = ["source_row", "orig_id", "image_ids", "image_paths", "conversations", "meta"]
    rows = lake.dataset(S.SAMPLES).to_table(columns=cols, filter=f"source = '{source}'").to_pylist()
    return sorted(rows, key=lambda r: r["source_row"])


def errors_of(lake: Lake, source: str) -> list[dict]:
    """The error rows of one source, in file-row order."""
    cols = ["row", "kind", "message", "orig_id", "raw"]
    rows = lake.dataset(S.ERRORS).to_table(columns=cols, filter=f"source = '{source}'").to_pylist()
    return sorted(rows, key=lambda r: r["row"])


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake.open(str(tmp_path / "lake"))


def run_cli(*args: str, lake: Lake | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run `python -m etl ...` as a user would, in a real subprocess (from the repo, or `cwd`)."""
    cmd = [sys.executable, "-m", "etl", *(["--lake", lake.root] if lake else []), *args]
    if "cwd" in kw:  # this checkout's etl, whatever is installed
        kw["env"] = {**kw.get("env", os.environ), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, **{"cwd": REPO, **kw})
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
