"""Open, create and write the lake's Lance tables; versions, blobs, column fills, checkpoints.

This module knows the storage layer only: it never parses sources, runs models or decides policy.
Every write is a Lance commit, so a reader (or a crash) only ever sees whole batches.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import lance
import pyarrow as pa
import pyarrow.compute as pc

from etl import schema as S
from etl import storage
from etl.commitlock import CommitLock, commit_lock
from etl.lakeformat import check_root, read_format, write_format

DEFAULT_LAKE = "lake"
UNKNOWN_COMMIT_RETRIES = 3  # "commit result unknown" from the object store: look, then commit again
ENV_LAKE = "ETL_LAKE"


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def resolve_lake_uri(uri: str | None) -> str:
    """`--lake` wins, then $ETL_LAKE, then ./lake."""
    return uri or os.environ.get(ENV_LAKE) or DEFAULT_LAKE


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return `table` with exactly `schema`'s columns: missing (enrichment) columns become NULL."""
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            arrays.append(table[field.name].cast(field.type) if field.name != S.BLOB_COLUMN else table[field.name])
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def sql_string_list(values: Iterable[str]) -> str:
    """A Lance filter literal list; values are hex ids or file paths we produced, quotes escaped."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


class OwnCommits:
    """The versions this process committed, per table, with the keys each added (images only).

    Between two of its own commits a writer asks whether anybody else committed (`foreign`): only
    then must it look at the lake again before trusting what it checked earlier.
    """

    remembered = 10_000

    def __init__(self):
        self.versions: dict[str, dict[int, frozenset[str]]] = {}

    def add(self, table: str, version: int, keys: frozenset[str] = frozenset()) -> None:
        mine = self.versions.setdefault(table, {})
        mine[version] = keys
        while len(mine) > self.remembered:
            del mine[next(iter(mine))]

    def get(self, table: str, version: int) -> frozenset[str] | None:
        return self.versions.get(table, {}).get(version)


_OWN_COMMITS: dict[str, OwnCommits] = {}


@dataclass
class Lake:
    """A lake root (local folder or object-store URI) holding one Lance dataset per table.

    Every commit goes through `committing()`, the lake-wide commit lock (see etl/commitlock.py):
    key checks made inside it and the commits that follow are atomic against other writers.
    """

    root: str
    lock: CommitLock = field(init=False, repr=False, compare=False)
    own: OwnCommits = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.lock = commit_lock(self.root)
        self.own = _OWN_COMMITS.setdefault(self.root, OwnCommits())

    @classmethod
    def open(cls, uri: str | None = None, create: bool = True) -> "Lake":
        """The lake at `uri` (see `resolve_lake_uri`); `create`: make a missing one. A file, a folder
        that is not a lake, or a lake of another format version is a LakeFormatError (one line)."""
        root = resolve_lake_uri(uri).rstrip("/")
        check_root(root, S.TABLES, create)
        lake = cls(root)
        if create:
            lake.ensure_tables()
        return lake

    # -- tables -----------------------------------------------------------------------------------
    def uri(self, name: str) -> str:
        return f"{self.root}/{name}.lance"

    def exists(self, name: str) -> bool:
        return self.dataset_or_none(name) is not None

    def dataset_or_none(self, name: str) -> lance.LanceDataset | None:
        try:
            return lance.dataset(self.uri(name))
        except (ValueError, FileNotFoundError, OSError):
            return None

    def latest_version_or_none(self, name: str) -> int | None:
        ds = self.dataset_or_none(name)
        return None if ds is None else ds.version

    def ensure_tables(self) -> None:
        """Create missing tables and add contract columns that an older lake lacks (metadata-only).
        Two commands opening a new lake at once create each table once (under the commit lock)."""
        if not storage.is_remote(self.root):
            os.makedirs(self.root, exist_ok=True)
        if all(self.exists(name) and not self.missing_columns(name) for name in S.SCHEMAS):
            return
        with self.committing():
            if read_format(self.root) is None and not any(self.exists(name) for name in S.SCHEMAS):
                write_format(self.root)  # first: another command opening it meanwhile sees a lake
            for name, schema in S.SCHEMAS.items():
                if not self.exists(name):
                    lance.write_dataset(
                        schema.empty_table(), self.uri(name), schema=schema, enable_stable_row_ids=True,
                        data_storage_version="2.2",
                    )
                elif missing := self.missing_columns(name):
                    self.dataset(name).add_columns(missing)

    def missing_columns(self, name: str) -> list[pa.Field]:
        names = self.dataset(name).schema.names
        return [f for f in S.SCHEMAS[name] if f.name not in names]

    def dataset(self, name: str, version: int | str | None = None) -> lance.LanceDataset:
        return lance.dataset(self.uri(name), version=version)

    def versions(self) -> dict[str, int]:
        return {name: self.dataset(name).version for name in S.TABLES if self.exists(name)}

    def count(self, name: str, filter: str | None = None) -> int:
        return self.dataset(name).count_rows(filter=filter)

    # -- writes -----------------------------------------------------------------------------------
    def committing(self):
        """The lake-wide commit lock (re-entrant): check keys and commit inside it."""
        return self.lock.held()

    def append(self, name: str, table: pa.Table, keys: Iterable[str] = ()) -> list:
        """Commit `table` as new rows of `name` (one Lance version); empty tables are skipped.
        Returns the fragments written (FragmentMetadata)."""
        if table.num_rows == 0:
            return []
        fragments = self.write_fragments(name, table)
        if name == S.IMAGES and not keys:  # remembered, so that this process's race checks see them
            keys = table[S.KEYS[name]].to_pylist()
        self.commit_fragments(name, fragments, keys)
        return fragments

    def commit_fragments(self, name: str, fragments: list, keys: Iterable[str] = ()) -> int:
        """Commit fragments written by `write_fragments` as new rows of `name`; the new version.
        `keys`: the keys they add, remembered so that this process's later checks need not ask."""
        files = files_of(fragments)

        def append(read_version: int | None) -> int:
            return lance.LanceDataset.commit(self.uri(name), lance.LanceOperation.Append(fragments),
                                             read_version=read_version).version

        return self.commit_once(name, append, keys, holds=lambda ds: files <= fragment_files(ds))

    def commit_once(self, name: str, commit: Callable[[int | None], object], keys: Iterable[str] = (),
                    holds: Callable[[lance.LanceDataset], bool] = lambda ds: True) -> int:
        """Make one commit to table `name` inside the commit lock: `commit(read_version)` commits
        (returning the new version as an int, or anything else to have it read); the new version.

        An object store can leave the outcome of a commit unknown (a timeout after the request was
        sent): Lance then says "Commit result for version N is unknown". Inside the commit lock
        nobody else commits, so the table itself tells: a version after the one read (that `holds`
        what was committed) is this commit; without one, the commit is made again."""
        with self.committing():
            for attempt in range(UNKNOWN_COMMIT_RETRIES + 1):
                self.lock.check()
                read_version = self.latest_version_or_none(name)
                try:
                    version = commit(read_version)
                except (OSError, RuntimeError, ValueError) as exc:
                    if "is unknown" not in str(exc) or attempt == UNKNOWN_COMMIT_RETRIES:
                        raise
                    version = self.committed_since(name, read_version, holds)
                    if version is None:
                        continue
                version = version if isinstance(version, int) else self.latest_version(name)
                if version != read_version:  # an update that matched no row commits nothing
                    self.own.add(name, version, frozenset(keys))
                return version
            raise AssertionError("unreachable: the last attempt raises")

    def committed_since(self, name: str, read_version: int | None,
                        holds: Callable[[lance.LanceDataset], bool]) -> int | None:
        """The version after `read_version` if there is one and it `holds` the commit (else None)."""
        latest = self.dataset_or_none(name)
        if latest is None or latest.version == read_version:
            return None
        return latest.version if holds(latest) else None

    def write_fragments(self, name: str, table: pa.Table) -> list:
        """Write `table` as fragments of `name` without committing them (FragmentMetadata)."""
        return lance.fragment.write_fragments(conform(table, S.SCHEMAS[name]), self.uri(name),
                                              schema=S.SCHEMAS[name], data_storage_version="2.2")

    def local_files(self, name: str, fragments: list) -> list[str]:
        """Paths of the fragments' data files, for a lake on the local filesystem (else none)."""
        if storage.is_remote(self.root):
            return []
        return [os.path.join(self.uri(name), "data", f.path) for fragment in fragments for f in fragment.files]

    def append_new(self, name: str, table: pa.Table) -> None:
        """Append only the rows whose key is not in the table yet (idempotent, also across writers)."""
        if table.num_rows == 0:
            return
        key = S.KEYS[name]
        with self.committing():
            present = self.existing_keys(name, table[key].to_pylist())
            if present:
                table = table.filter(pa.array([k not in present for k in table[key].to_pylist()]))
            self.append(name, table)

    def overwrite(self, name: str, reader: pa.RecordBatchReader, schema: pa.Schema) -> lance.LanceDataset:
        """Replace table `name` (created if absent) with the rows of `reader`: written as fragments
        first, then committed as one `Overwrite` inside the commit lock (older versions stay readable)."""
        fragments = lance.fragment.write_fragments(reader, self.uri(name), schema=schema, data_storage_version="2.2")
        files = files_of(fragments)

        def replace(read_version: int | None) -> int:
            return lance.LanceDataset.commit(self.uri(name), lance.LanceOperation.Overwrite(schema, fragments),
                                             read_version=read_version).version

        return self.dataset(name, self.commit_once(name, replace, holds=lambda ds: fragment_files(ds) == files))

    def fill_columns(self, name: str, table: pa.Table) -> None:
        """Set the columns in `table` for the rows whose key matches, rewriting only those columns.

        Uses `merge_insert(...).write_mode("rewrite_columns")`: blobs are never rewritten
        (plain `merge_insert`/`update` would rewrite whole rows, blobs included).
        """
        if table.num_rows == 0:
            return
        key = S.KEYS[name]
        target = S.SCHEMAS[name]
        arrays = [table[c].cast(target.field(c).type) if c in target.names else table[c] for c in table.column_names]
        table = pa.Table.from_arrays(arrays, names=table.column_names)

        def add_new_columns(_) -> None:
            self.dataset(name).add_columns(added)

        def rewrite_columns(_) -> None:
            self.dataset(name).merge_insert(key).when_matched_update_all().write_mode("rewrite_columns").execute(table)

        with self.committing():
            added = [pa.field(c, table.schema.field(c).type) for c in table.column_names
                     if c not in self.dataset(name).schema.names]
            if added:  # optional columns (e.g. tag_all_scores) appear on first use, metadata-only
                self.commit_once(name, add_new_columns, holds=lambda ds: all(f.name in ds.schema.names for f in added))
            self.commit_once(name, rewrite_columns)

    # -- other writers ----------------------------------------------------------------------------
    def latest_version(self, name: str) -> int:
        return self.dataset(name).version

    def foreign_commits_since(self, name: str, version: int) -> bool:
        """Whether anybody but this process committed to `name` after `version`."""
        return self.foreign_among(name, range(version + 1, self.latest_version(name) + 1))

    def foreign_among(self, name: str, versions: range) -> bool:
        return any(self.own.get(name, v) is None for v in versions)

    def keys_added_since(self, name: str, version: int, keys: Sequence[str]) -> set[str]:
        """Which of `keys` were added to `name` after `version` (by this process or another one):
        from memory when every version since is this process's own, else by asking the lake."""
        if not keys:
            return set()
        since = range(version + 1, self.latest_version(name) + 1)
        if self.foreign_among(name, since):
            key = S.KEYS[name]
            return {k for b in self.scan_since(name, version, [key], pc.field(key).isin(list(keys)))
                    for k in b.column(0).to_pylist()}
        return {k for v in since for k in self.own.get(name, v) & set(keys)}

    def scan_since(self, name: str, version: int, columns: Sequence[str], filter=None) -> Iterator[pa.RecordBatch]:
        """Batches of the rows in fragments that `name` did not have at `version` (what was added
        since, plus rows a compaction moved: a superset, never less)."""
        ds = self.dataset(name)
        before = {f.fragment_id for f in self.dataset(name, version).get_fragments()} if version > 0 else set()
        added = [f for f in ds.get_fragments() if f.fragment_id not in before]
        if added:
            yield from ds.scanner(columns=list(columns), filter=filter, fragments=added).to_batches()

    # -- reads ------------------------------------------------------------------------------------
    def existing_keys(self, name: str, values: Sequence[str]) -> set[str]:
        """The subset of `values` already present as keys of `name` (a filtered key-column scan)."""
        if not values:
            return set()
        key = S.KEYS[name]
        found: set[str] = set()
        for start in range(0, len(values), 2000):
            chunk = values[start : start + 2000]
            tbl = self.dataset(name).to_table(columns=[key], filter=pc.field(key).isin(chunk))  # no SQL to parse
            found.update(tbl[key].to_pylist())
        return found

    def scan(
        self, name: str, columns: Sequence[str], filter: str | None = None, batch_size: int = 4096,
        with_row_id: bool = False, version: int | str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream record batches of the given columns (never the blob column)."""
        if S.BLOB_COLUMN in columns and name == S.IMAGES:
            raise ValueError("scan the blob column with read_image_bytes(), not scan()")
        scanner = self.dataset(name, version).scanner(
            columns=list(columns), filter=filter, batch_size=batch_size, with_row_id=with_row_id
        )
        yield from scanner.to_batches()

    def read_image_bytes(self, row_ids: Sequence[int], version: int | str | None = None) -> list[bytes | None]:
        """Bytes of the images at these stable row ids, in the same order."""
        if len(row_ids) == 0:
            return []
        blobs = self.dataset(S.IMAGES, version).read_blobs(
            S.BLOB_COLUMN, ids=pa.array(row_ids, pa.uint64()), preserve_order=True
        )
        return [payload for _, payload in blobs]

    def image_bytes_by_id(self, image_ids: Sequence[str], version: int | str | None = None) -> dict[str, bytes]:
        """Bytes of the given images keyed by image_id (missing ids are absent from the result)."""
        out: dict[str, bytes] = {}
        for start in range(0, len(image_ids), 1000):
            chunk = list(image_ids[start : start + 1000])
            tbl = self.dataset(S.IMAGES, version).to_table(
                columns=["image_id"], filter=f"image_id IN ({sql_string_list(chunk)})", with_row_id=True
            )
            payloads = self.read_image_bytes(tbl["_rowid"].to_pylist(), version)
            out.update(zip(tbl["image_id"].to_pylist(), payloads))
        return out

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint(self, job: str, file: str) -> dict | None:
        """The latest resume marker for (job, file), or None when the file was never started."""
        return self.checkpoints(job, file).get(file)

    def checkpoints(self, job: str, file: str | None = None) -> dict[str, dict]:
        """The latest resume marker of each file of `job` (or of the one `file`), by file name."""
        cond = pc.field("job") == job
        if file is not None:
            cond = cond & (pc.field("file") == file)
        latest: dict[str, dict] = {}
        for row in sorted(self.dataset(S.CHECKPOINTS).to_table(filter=cond).to_pylist(),
                          key=lambda r: (r["done"], r["upto_row"])):
            latest[row["file"]] = row
        return latest

    def set_checkpoint(self, job: str, file: str, fingerprint: str, upto_row: int, done: bool) -> None:
        row = {"job": job, "file": file, "fingerprint": fingerprint, "upto_row": upto_row,
               "done": done, "updated_at": now_utc()}
        self.append(S.CHECKPOINTS, pa.Table.from_pylist([row], schema=S.CHECKPOINTS_SCHEMA))

    # -- maintenance ------------------------------------------------------------------------------
    def compact(self, name: str) -> None:
        """Merge small fragments left by many small commits (checkpoints, errors, runs)."""
        if len(self.dataset(name).get_fragments()) <= 8:
            return
        with self.committing(), skipped_on_conflict():
            self.lock.check()
            self.dataset(name).optimize.compact_files()
            self.own.add(name, self.latest_version(name))

    def ensure_key_index(self, name: str) -> None:
        """(Re)build the BTREE index on the key so existence checks stay fast as the table grows."""
        key = S.KEYS[name]
        with self.committing(), skipped_on_conflict():
            self.lock.check()
            ds = self.dataset(name)
            if ds.count_rows() == 0:
                return
            if any(key in idx.get("fields", []) for idx in _describe_indices(ds)):
                ds.optimize.optimize_indices()
            else:
                ds.create_scalar_index(key, "BTREE")
            self.own.add(name, self.latest_version(name))

    def delete_rows(self, name: str, where: str) -> None:
        """Delete the rows matching `where` (a Lance deletion file per fragment: no data rewritten)."""
        self.commit_once(name, lambda _: self.dataset(name).delete(where))

    def update_rows(self, name: str, values: dict[str, str], where: str) -> None:
        """Set columns to SQL expressions for the rows matching `where` (rewrites those rows)."""
        self.commit_once(name, lambda _: self.dataset(name).update(values, where=where))

    def upsert_rows(self, name: str, table: pa.Table) -> None:
        """Replace the rows whose key is in `table` by its rows, add the others: one commit
        (`merge_insert(key)`, whole rows rewritten: for the small tables, never `images`)."""
        if table.num_rows == 0:
            return
        rows = conform(table, S.SCHEMAS[name])
        self.commit_once(name, lambda _: self.dataset(name).merge_insert(S.KEYS[name]).when_matched_update_all()
                         .when_not_matched_insert_all().execute(rows))

    def append_table(self, name: str, table: pa.Table) -> None:
        """Append to a table outside the contract (e.g. `released_images`), creating it on first use."""
        def write(read_version: int | None) -> int:
            mode = "append" if read_version is not None else "create"
            return lance.write_dataset(table, self.uri(name), mode=mode, data_storage_version="2.2").version

        self.commit_once(name, write)

    def tag(self, name: str, tag: str, version: int | None = None) -> None:
        ds = self.dataset(name)
        ds.tags.create(tag, version or ds.version)


@contextmanager
def skipped_on_conflict() -> Iterator[None]:
    """Upkeep (compaction, index refresh) that lost a commit race to a writer outside mmlake's lock
    is skipped: the table stays correct, and the next run does it."""
    from lance.commit import CommitConflictError

    try:
        yield
    except CommitConflictError:
        pass


def files_of(fragments: Iterable) -> set[str]:
    """The data files of fragments (FragmentMetadata)."""
    return {f.path for fragment in fragments for f in fragment.files}


def fragment_files(ds: lance.LanceDataset) -> set[str]:
    """The data files of a version of a table."""
    return files_of(fragment.metadata for fragment in ds.get_fragments())


def _describe_indices(ds: lance.LanceDataset) -> list[dict]:
    try:
        return [{"fields": list(getattr(i, "fields", []) or getattr(i, "field_names", []))} for i in ds.describe_indices()]
    except AttributeError:
        return [{"fields": i.get("fields", [])} for i in ds.list_indices()]


def dumps(obj) -> str:
    """Canonical strict JSON: sorted keys, no whitespace, UTF-8 kept (stable across runs for hashing).

    NaN and ±Infinity, which JSON cannot hold, are written as the strings "NaN", "Infinity" and
    "-Infinity" (the protobuf JSON mapping's spelling): DuckDB's `CAST(... AS DOUBLE)` reads them
    back as the same floats, and every JSON parser reads the text.
    """
    try:
        return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str,
                          allow_nan=False)
    except ValueError:  # a non-finite float somewhere (rare): spell them out, then encode
        return json.dumps(finite_floats(obj), sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                          default=str, allow_nan=False)


def finite_floats(obj):
    """`obj` with each NaN/±Infinity float replaced by its name ("NaN", "Infinity", "-Infinity")."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if obj != obj else "Infinity" if obj > 0 else "-Infinity"
    if isinstance(obj, dict):
        return {k: finite_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_floats(v) for v in obj]
    return obj
