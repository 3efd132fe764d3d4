"""`ingest --from-hub REPO_ID [--include GLOB]`: get a Hub dataset onto local disk, then ingest it.

`fetch_dataset` downloads a dataset repo with `huggingface_hub.snapshot_download(repo_type="dataset",
allow_patterns=..., local_dir=...)`. Downloading into a fixed `local_dir` is what makes it resume:
finished files are skipped, a half-downloaded file continues, so rerunning after a crash costs only
what is missing (and the ingest resumes from its own checkpoints). It works without the network when:

- `HF_HUB_OFFLINE=1`: no request is made; the existing `local_dir` is returned as it is;
- a local mirror folder holds the repo (`--hub-mirror DIR` or `ETL_HUB_MIRROR`, laid out
  `DIR/<owner>/<name>/...` like the Hub snapshot): it is used in place, nothing is copied;
- `HF_ENDPOINT` names an HTTP mirror of the Hub (read at call time).

`ingest_arguments` turns the folder and `--include` patterns into the arguments `etl.ingest` takes.
Image paths in a Hub dataset never leave the download and the `--image-root` folders:
`refuse_outside_roots` turns `--allow-outside-roots` down.
`REPO_ID` may also be an `hf://datasets/<owner>/<name>[/<folder>]` path (the folder becomes a pattern).
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass

HUB_DIR_ENV = "ETL_HUB_DIR"  # where downloads go (default ~/.cache/mmlake/hub)
MIRROR_ENV = "ETL_HUB_MIRROR"
HF_PREFIX = "hf://datasets/"
TRUE_VALUES = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    include: tuple[str, ...] = ()  # HF allow_patterns (fnmatch: `*` also matches `/`); empty = all


def parse_hub_ref(value: str, include: list[str] | None = None) -> HubRef:
    """`owner/name` or `hf://datasets/owner/name[/folder]` (+ `--include` patterns) → a HubRef."""
    patterns = list(include or [])
    if value.startswith(HF_PREFIX):
        parts = value[len(HF_PREFIX):].strip("/").split("/")
        if len(parts) < 2:
            raise ValueError(f"{value}: expected hf://datasets/<owner>/<name>[/<folder>]")
        value = "/".join(parts[:2])
        if len(parts) > 2:  # a folder of the repo: only what is under it (and matches --include)
            folder = "/".join(parts[2:])
            patterns = [f"{folder}/{p}" for p in patterns] if patterns else [f"{folder}/*"]
    if value.count("/") != 1 or not all(value.split("/")):
        raise ValueError(f"{value}: a Hub dataset id is <owner>/<name>")
    return HubRef(value, tuple(patterns))


def refuse_outside_roots(allow_outside_roots: bool) -> None:
    """A Hub dataset is not trusted to name files on this machine: its image paths stay inside the
    download (etl/imagerefs.py), so `--allow-outside-roots` is refused with `--from-hub`."""
    if allow_outside_roots:
        raise ValueError("--allow-outside-roots cannot be used with --from-hub: a downloaded dataset's image paths "
                         "are only followed inside the download and the --image-root folders")


def offline() -> bool:
    """HF_HUB_OFFLINE read now (huggingface_hub reads it once, at import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE_VALUES


def default_local_dir(repo_id: str) -> str:
    """`<hub dir>/<owner>/<name>`: the folder is named like the dataset, which names the source."""
    root = os.environ.get(HUB_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "mmlake", "hub")
    return os.path.join(root, *repo_id.split("/"))


def fetch_dataset(ref: HubRef, local_dir: str | None = None, mirror: str | None = None,
                  revision: str | None = None) -> str:
    """The local folder holding the dataset's files: a mirror's copy, or a (resumed) download."""
    mirror = mirror or os.environ.get(MIRROR_ENV)
    if mirror:
        folder = os.path.join(mirror, *ref.repo_id.split("/"))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{ref.repo_id} is not in the mirror {mirror} (looked for {folder})")
        return folder
    from huggingface_hub import snapshot_download  # only this path needs the Hub client

    return snapshot_download(
        ref.repo_id, repo_type="dataset", revision=revision, allow_patterns=list(ref.include) or None,
        local_dir=local_dir or default_local_dir(ref.repo_id), local_files_only=offline(),
        endpoint=os.environ.get("HF_ENDPOINT") or None,
    )


def ingest_arguments(folder: str, include: tuple[str, ...] | list[str] = ()) -> list[str]:
    """What to hand `etl.ingest`: the folder, or one recursive glob per `--include` pattern.

    HF patterns match across folders (`*.parquet` also matches `cfg/x.parquet`), so a pattern
    without a `/` is searched at any depth. The download's own `.cache/` is never ingested.
    """
    if not include:
        return [folder]
    base = glob.escape(os.path.abspath(folder))
    arguments = []
    for pattern in include:
        pattern = pattern.lstrip("/")
        arguments.append(os.path.join(base, pattern if "/" in pattern else os.path.join("**", pattern)))
    return arguments
