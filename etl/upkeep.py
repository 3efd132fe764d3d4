"""Running a lake for years: sources (list, delete, rename, redo), tags and history, compaction, cleanup.

Every change here is a Lance commit made inside the lake's commit lock (`Lake.committing()`), so it
is atomic against any other command writing the lake at the same time; each command records itself
in `runs` (`recorded_run`), which is what `log` reads. Dedup tables see a delete or a rename through
the input fingerprints they record (etl/derived.py): they are stale afterwards, and say so.

Deleting samples never deletes their images at once: another source may use them, and an ingest
running at the same time may be about to reference them. Their ids are written to the
`released_images` table; `cleanup` deletes those that no sample references any more.
"""
from __future__ import annotations

import fnmatch
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from etl import schema as S
from etl import storage
from etl.lake import Lake, now_utc, sql_string_list
from etl.runlog import Run, recorded_run

INGEST_JOB = "ingest:"  # checkpoints of ingest are job "ingest:<source>" (etl/ingest/resume.py FileStart.job)
ORPHAN_MIN_AGE = timedelta(hours=1)  # a live writer commits the fragments it writes well within this


class UpkeepError(ValueError):
    """A maintenance request that cannot be done as asked (unknown source, tag exists, ...)."""


# -- sources ------------------------------------------------------------------------------------------
def source_files(lake: Lake, source: str) -> set[str]:
    """Every file name the lake knows for `source`: from its samples, errors and checkpoints."""
    names: set[str] = set()
    for table, col, cond in ((S.SAMPLES, "source_file", pc.field("source") == source),
                             (S.ERRORS, "file", pc.field("source") == source),
                             (S.CHECKPOINTS, "file", pc.field("job") == INGEST_JOB + source)):
        for batch in lake.scan(table, [col], filter=cond):
            names.update(v for v in batch.column(0).to_pylist() if v is not None)
    return names


@dataclass(frozen=True)
class FileRows:
    """The rows of some files of one source, in each table (the filters `delete` runs)."""

    source: str
    files: tuple[str, ...] | None  # None: every file of the source

    def filters(self) -> dict[str, str]:
        src = sql_string_list([self.source])
        job = sql_string_list([INGEST_JOB + self.source])
        only = "" if self.files is None else " AND {} IN (" + sql_string_list(self.files) + ")"
        return {S.SAMPLES: f"source = {src}" + only.format("source_file"),
                S.ERRORS: f"source = {src}" + only.format("file"),
                S.CHECKPOINTS: f"job = {job}" + only.format("file")}


def select_files(lake: Lake, source: str, file_glob: str | None) -> FileRows:
    known = source_files(lake, source)
    if not known:
        raise UpkeepError(f"no source named {source!r} in the lake (see `python -m etl sources`)")
    if file_glob is None:
        return FileRows(source, None)
    files = tuple(sorted(n for n in known if fnmatch.fnmatchcase(n, file_glob)
                         or fnmatch.fnmatchcase(n.rsplit("/", 1)[-1], file_glob)))
    if not files:
        raise UpkeepError(f"no file of source {source!r} matches {file_glob!r} (its files: {sorted(known)[:10]})")
    return FileRows(source, files)


def forget_rows(lake: Lake, rows: FileRows, counts: Counter, dry_run: bool = False) -> None:
    """Delete the samples, errors and checkpoints of `rows` (one Lance delete per table, inside the
    commit lock); the images the samples used are released for the next `cleanup`."""
    filters = rows.filters()
    with lake.committing():
        for table, cond in filters.items():
            counts[f"{table}_deleted"] += lake.count(table, cond)
        if dry_run:
            return
        release_images(lake, lake.scan(S.SAMPLES, ["image_ids"], filter=filters[S.SAMPLES]))
        for table, cond in filters.items():
            lake.delete_rows(table, cond)


def delete_source(lake: Lake, source: str, file_glob: str | None = None, dry_run: bool = False) -> Counter:
    """`delete --source NAME [--file GLOB]`: the source's (or those files') samples, errors and
    checkpoints leave the lake; a later ingest of the same files is a first ingest."""
    rows = select_files(lake, source, file_glob)
    params = {"source": source, "file": file_glob, "files": list(rows.files or []), "dry_run": dry_run}
    with nullcontext(Run("", "delete", params)) if dry_run else recorded_run(lake, "delete", params) as run:
        forget_rows(lake, rows, run.counts, dry_run)
    return run.counts


def rename_source(lake: Lake, old: str, new: str) -> Counter:
    """Rename a source: its samples (`source`, and `sample_id` = `source/file#row`), errors (and
    their `error_id`s) and checkpoints, by Lance updates inside the commit lock. The updates are
    several commits: a rename interrupted midway leaves both names, and a rerun refuses (NEW
    exists); `delete --source NEW` and the ingest again are the way back then."""
    if not new or "/" in new or new == old:
        raise UpkeepError(f"--rename {old} {new}: the new name must differ and contain no '/'")
    with recorded_run(lake, "rename-source", {"source": old, "new_name": new}) as run, lake.committing():
        if not source_files(lake, old):
            raise UpkeepError(f"no source named {old!r} in the lake (see `python -m etl sources`)")
        if source_files(lake, new):
            raise UpkeepError(f"a source named {new!r} exists already: delete it first or pick another name")
        q_old, q_new, n = sql_string_list([old]), sql_string_list([new]), len(old)
        run.counts["samples_renamed"] = lake.count(S.SAMPLES, f"source = {q_old}")
        lake.update_rows(S.SAMPLES, {"source": q_new, "sample_id": f"concat({q_new}, substr(sample_id, {n + 1}))"},
                         f"source = {q_old}")
        run.counts["errors_renamed"] = lake.count(S.ERRORS, f"source = {q_old}")
        stages = {r["stage"] for r in lake.dataset(S.ERRORS).to_table(columns=["stage"], filter=f"source = {q_old}").to_pylist()}
        for stage in sorted(s for s in stages if s):  # error_id = stage/key; an ingest key is the sample_id
            prefix = f"{stage}/{old}/"
            lake.update_rows(S.ERRORS, {"error_id": f"concat({sql_string_list([f'{stage}/{new}/'])}, "
                                                    f"substr(error_id, {len(prefix) + 1}))"},
                             f"source = {q_old} AND starts_with(error_id, {sql_string_list([prefix])})")
        lake.update_rows(S.ERRORS, {"source": q_new}, f"source = {q_old}")
        job_old = sql_string_list([INGEST_JOB + old])
        run.counts["checkpoints_renamed"] = lake.count(S.CHECKPOINTS, f"job = {job_old}")
        lake.update_rows(S.CHECKPOINTS, {"job": sql_string_list([INGEST_JOB + new])}, f"job = {job_old}")
    return run.counts


# -- images released by deletes -------------------------------------------------------------------
def release_images(lake: Lake, batches: Iterable[pa.RecordBatch]) -> None:
    """Remember the image ids of samples about to be deleted (`cleanup` decides their fate)."""
    ids = {i for b in batches for ids in b.column(0).to_pylist() if ids for i in ids}
    if ids:
        lake.append_table(S.RELEASED_IMAGES, pa.table({"image_id": sorted(ids), "released_at": [now_utc()] * len(ids)},
                                                      schema=S.RELEASED_IMAGES_SCHEMA))


def drop_unused_images(lake: Lake, counts: Counter, dry_run: bool = False) -> None:
    """Delete the released images that no sample references any more (inside the commit lock).

    An ingest that found such an image in the lake just before, and commits a sample using it just
    after, sees under the commit lock that it is gone and stores it again
    (`Ingestor.store_again_if_deleted`, `Committer.raced`)."""
    if not lake.exists(S.RELEASED_IMAGES):
        return
    with lake.committing():
        released = set(lake.dataset(S.RELEASED_IMAGES).to_table(columns=["image_id"])["image_id"].to_pylist())
        if not released:
            return
        for batch in lake.scan(S.SAMPLES, ["image_ids"]):
            for ids in batch.column(0).to_pylist():
                if ids:
                    released.difference_update(ids)
        counts["images_deleted"] += len(released)
        if dry_run:
            return
        for start in range(0, len(released), 2000):
            lake.delete_rows(S.IMAGES, f"image_id IN ({sql_string_list(sorted(released)[start:start + 2000])})")
        lake.delete_rows(S.RELEASED_IMAGES, "true")


# -- tags, versions, history ----------------------------------------------------------------------
def all_tables(lake: Lake) -> list[str]:
    from etl.sqlrun import lake_tables  # DuckDB is imported only by the commands that query

    return [t for t in lake_tables(lake) if t != S.RELEASED_IMAGES]


def resolve(lake: Lake, spec: str | None) -> dict[str, int]:
    """`--version N|TAG|TABLE=N,...` as every read command takes it → a version per table."""
    from etl.export import ExportError, resolve_versions

    try:
        pins = resolve_versions(lake, spec)
    except ExportError as exc:
        raise UpkeepError(str(exc)) from exc
    for table, version in pins.items():
        try:
            lake.dataset(table, version)
        except (ValueError, OSError) as exc:
            raise UpkeepError(f"--version {spec}: {table} has no version {version} (cleaned up, or never existed)") from exc
    return pins


def tag_versions(lake: Lake) -> dict[str, dict[str, int]]:
    """Every tag → {table: version}."""
    tags: dict[str, dict[str, int]] = {}
    for table in all_tables(lake):
        for name, info in lake.dataset(table).tags.list().items():
            tags.setdefault(name, {})[table] = int(info["version"] if isinstance(info, dict) else info.version)
    return tags


def create_tag(lake: Lake, name: str, spec: str | None = None) -> dict[str, int]:
    """Tag every table of the lake with `name` at the versions `spec` names (default: now)."""
    if not name or name.isdigit() or "=" in name or "," in name:
        raise UpkeepError(f"tag {name!r}: a tag needs a name that is not a number and has no '=' or ','")
    with lake.committing():
        if name in tag_versions(lake):
            raise UpkeepError(f"tag {name!r} exists already (`python -m etl tag --delete {name}` first)")
        pins = resolve(lake, spec)
        for table, version in pins.items():
            lake.dataset(table).tags.create(name, version)
    return pins


def delete_tag(lake: Lake, name: str) -> list[str]:
    with lake.committing():
        tables = sorted(tag_versions(lake).get(name, {}))
        if not tables:
            raise UpkeepError(f"no tag named {name!r} (see `python -m etl tags`)")
        for table in tables:
            lake.dataset(table).tags.delete(name)
    return tables


@dataclass
class RunInfo:
    run_id: str
    command: str
    params: str
    counts: str
    status: str
    user: str | None
    ended_at: datetime | None
    before: dict[str, int]
    after: dict[str, int]


def runs(lake: Lake) -> list[RunInfo]:
    cols = ["run_id", "command", "params", "counts", "status", "user", "ended_at", "versions_before", "versions_after"]
    cols = [c for c in cols if c in lake.dataset(S.RUNS).schema.names]
    rows = lake.dataset(S.RUNS).to_table(columns=cols).to_pylist()
    return [RunInfo(r["run_id"], r["command"], r["params"], r["counts"], r["status"], r.get("user"), r["ended_at"],
                    json.loads(r["versions_before"] or "{}"), json.loads(r["versions_after"] or "{}")) for r in rows]


def history(lake: Lake, tables: Iterable[str] | None = None) -> Iterator[dict]:
    """Each version of each table with the run that made it (the run whose versions_before <
    version <= versions_after; the narrowest such window when runs overlapped)."""
    known, tagged = runs(lake), tag_versions(lake)
    for table in tables or all_tables(lake):
        tags = {}
        for name, pins in tagged.items():
            if table in pins:
                tags.setdefault(pins[table], []).append(name)
        for v in lake.dataset(table).versions():
            version, ts = v["version"], v["timestamp"]
            made_by = [r for r in known if table in r.after and r.before.get(table, 0) < version <= r.after[table]]
            run = min(made_by, key=lambda r: r.after[table] - r.before.get(table, 0)) if made_by else None
            if run is None and table == S.RUNS:  # a run's own row is written after its versions_after
                ended = [r for r in known if r.ended_at is not None and _utc(r.ended_at) <= _utc(ts)]
                run = max(ended, key=lambda r: r.ended_at, default=None)
            command = run.command if run else ("create" if version == 1 else "")
            yield {"table": table, "version": version, "time": ts.replace(microsecond=0).isoformat(sep=" "),
                   "rows": int(v["metadata"].get("total_rows", 0)), "tags": ",".join(sorted(tags.get(version, []))),
                   "command": command, "run_id": run.run_id if run else "",
                   "user": (run.user or "") if run else "", "params": run.params if run else "",
                   "counts": run.counts if run else ""}


# -- compaction -----------------------------------------------------------------------------------
def fragment_counts(lake: Lake) -> dict[str, int]:
    return {t: len(lake.dataset(t).get_fragments()) for t in all_tables(lake)}


def compact_lake(lake: Lake, target_rows: int = 1 << 20) -> Counter:
    """Merge the small fragments of every table (blob columns included: Lance rewrites the blob
    files with them), then fold the new rows into the existing scalar indexes."""
    with recorded_run(lake, "compact", {"target_rows_per_fragment": target_rows}) as run:
        for table, before in fragment_counts(lake).items():
            if before <= 1:
                continue
            with lake.committing():
                lake.lock.check()
                ds = lake.dataset(table)
                ds.optimize.compact_files(target_rows_per_fragment=target_rows)
                lake.own.add(table, lake.latest_version(table))
                if lake.dataset(table).describe_indices():
                    lake.dataset(table).optimize.optimize_indices()
                    lake.own.add(table, lake.latest_version(table))
            run.counts[f"{table}_fragments_before"] = before
            run.counts[f"{table}_fragments_after"] = len(lake.dataset(table).get_fragments())
    return run.counts


# -- cleanup --------------------------------------------------------------------------------------
def parse_age(text: str) -> timedelta:
    """`7d`, `12h`, `30m`, `90s` (or a bare number of days)."""
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds", "w": "weeks"}
    text = text.strip().lower()
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "d")
    try:
        value = float(number)
    except ValueError:
        raise UpkeepError(f"--older-than {text!r}: give an age like 7d, 12h, 30m") from None
    if value < 0:
        raise UpkeepError(f"--older-than {text!r}: an age cannot be negative")
    return timedelta(**{units[unit]: value})


def keep_cutoff(versions: list[dict], older_than: timedelta, now: datetime) -> timedelta:
    """The age to hand Lance so that no version a job started within `older_than` may read goes:
    the version that was the latest `older_than` ago, and every one after it, stay."""
    horizon = now - older_than
    was_latest = [v for v in versions if _utc(v["timestamp"]) <= horizon]
    if not was_latest:
        return older_than
    return max(older_than, now - _utc(max(was_latest, key=lambda v: v["version"])["timestamp"]))


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts


def cleanup_lake(lake: Lake, older_than: timedelta, orphans: bool = True, dry_run: bool = False) -> Counter:
    """Released images no sample uses are deleted; versions superseded more than `older_than` ago
    are reclaimed (tagged versions never); data files no version references (left by killed
    writers) are deleted once older than max(`older_than`, 1 hour)."""
    now = datetime.now(timezone.utc)
    params = {"older_than_s": older_than.total_seconds()}
    with (nullcontext(Run("", "cleanup", params)) if dry_run else recorded_run(lake, "cleanup", params)) as run:
        drop_unused_images(lake, run.counts, dry_run)
        for table in all_tables(lake) + ([S.RELEASED_IMAGES] if lake.exists(S.RELEASED_IMAGES) else []):
            ds = lake.dataset(table)
            age = keep_cutoff(ds.versions(), older_than, now)
            if dry_run:
                tagged = {pins[table] for pins in tag_versions(lake).values() if table in pins}
                run.counts["versions_removed"] += sum(1 for v in ds.versions() if now - _utc(v["timestamp"]) > age
                                                      and v["version"] not in tagged | {ds.version})
            else:
                stats = ds.cleanup_old_versions(older_than=age, error_if_tagged_old_versions=False)
                run.counts["versions_removed"] += stats.old_versions
                run.counts["bytes_removed"] += stats.bytes_removed
            if orphans:
                for path, size in orphan_files(lake, table, max(older_than, ORPHAN_MIN_AGE), now):
                    run.counts["orphan_files"] += 1
                    run.counts["orphan_bytes"] += size
                    if not dry_run:
                        _fs_delete(path)
    return run.counts


def referenced_files(lake: Lake, table: str) -> set[str]:
    """Data file names every remaining version of `table` uses."""
    names: set[str] = set()
    for v in lake.dataset(table).versions():
        for fragment in lake.dataset(table, v["version"]).get_fragments():
            names.update(f.path for f in fragment.data_files())
    return names


def orphan_files(lake: Lake, table: str, min_age: timedelta, now: datetime) -> list[tuple[str, int]]:
    """(path, size) of the files in `table`'s data folder that no version references and that
    were last written more than `min_age` ago (younger ones may belong to a live writer)."""
    fs, path = storage.arrow_filesystem(lake.uri(table))
    try:
        entries = fs.get_file_info(pafs.FileSelector(f"{path}/data", recursive=False))
    except FileNotFoundError:
        return []
    used = referenced_files(lake, table)
    return [(f"{lake.uri(table)}/data/{e.base_name}", e.size) for e in entries
            if e.type == pafs.FileType.File and e.base_name not in used and e.mtime is not None
            and now - _utc(e.mtime) > min_age]


def _fs_delete(uri: str) -> None:
    fs, path = storage.arrow_filesystem(uri)
    fs.delete_file(path)


