"""An object store can answer a commit with "Commit result for version N is unknown" (a timeout after
the request was sent): the commit may or may not have been applied. Every kind of commit the lake makes
looks at the table and then either takes the version it finds or commits again, exactly once."""
from __future__ import annotations

import sys

import lance
import pyarrow as pa
import pytest

from etl import schema as S

LANCE_DATASET = sys.modules["lance.dataset"]  # `lance.dataset` the attribute is the opening function


def unknown_once(monkeypatch, owner, method: str, applied: bool) -> list[int]:
    """The first call of `owner.method` ends with "result unknown", after doing its work when `applied`."""
    real, calls = getattr(owner, method), []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            if applied:
                real(*args, **kwargs)
            raise OSError("Commit result for version 7 is unknown: the commit may or may not have been applied")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, method, staticmethod(flaky) if isinstance(owner.__dict__[method], staticmethod) else flaky)
    return calls


def samples(n: int) -> pa.Table:
    return pa.Table.from_pylist([{"sample_id": f"s{i}", "source": "demo", "source_row": i} for i in range(n)],
                                schema=S.SAMPLES_SCHEMA)


APPLIED = pytest.mark.parametrize("applied", [True, False], ids=["applied", "not applied"])


@APPLIED
def test_an_overwrite_whose_result_is_unknown_replaces_the_table_once(lake, monkeypatch, applied):
    lake.overwrite("dup_exact", pa.table({"sample_id": ["old"]}).to_reader(), pa.schema([("sample_id", pa.string())]))
    before = lake.latest_version("dup_exact")
    calls = unknown_once(monkeypatch, lance.LanceDataset, "commit", applied)

    ds = lake.overwrite("dup_exact", pa.table({"sample_id": ["a", "b"]}).to_reader(),
                        pa.schema([("sample_id", pa.string())]))

    assert sorted(ds.to_table()["sample_id"].to_pylist()) == ["a", "b"]
    assert ds.version == lake.latest_version("dup_exact") == before + 1
    assert len(calls) == (1 if applied else 2)
    assert not lake.foreign_commits_since("dup_exact", before)


@APPLIED
def test_a_column_fill_whose_result_is_unknown_sets_the_values_once(lake, monkeypatch, applied):
    lake.append(S.SAMPLES, samples(3))
    before = lake.latest_version(S.SAMPLES)
    calls = unknown_once(monkeypatch, LANCE_DATASET.MergeInsertBuilder, "execute", applied)

    lake.fill_columns(S.SAMPLES, pa.table({"sample_id": ["s0", "s2"], "loss": [1.5, 2.5]}))

    rows = lake.dataset(S.SAMPLES).to_table(columns=["sample_id", "loss"]).to_pylist()
    assert sorted((r["sample_id"], r["loss"]) for r in rows) == [("s0", 1.5), ("s1", None), ("s2", 2.5)]
    assert lake.latest_version(S.SAMPLES) == before + 1
    assert len(calls) == (1 if applied else 2)
    assert not lake.foreign_commits_since(S.SAMPLES, before)


@APPLIED
def test_a_delete_whose_result_is_unknown_deletes_once_and_keeps_the_rest(lake, monkeypatch, applied):
    lake.append(S.SAMPLES, samples(4))
    calls = unknown_once(monkeypatch, lance.LanceDataset, "delete", applied)

    lake.delete_rows(S.SAMPLES, "sample_id IN ('s1', 's3')")

    assert sorted(lake.dataset(S.SAMPLES).to_table(columns=["sample_id"])["sample_id"].to_pylist()) == ["s0", "s2"]
    assert len(calls) == (1 if applied else 2)


def test_a_commit_that_stays_unknown_raises_after_its_retries(lake, monkeypatch):
    def never_known(*args, **kwargs):
        raise OSError("Commit result for version 2 is unknown: the commit may or may not have been applied")

    fragments = lake.write_fragments(S.SAMPLES, samples(2))
    monkeypatch.setattr(lance.LanceDataset, "commit", staticmethod(never_known))
    with pytest.raises(OSError, match="is unknown"):
        lake.commit_fragments(S.SAMPLES, fragments)
    assert lake.count(S.SAMPLES) == 0


def test_any_other_commit_error_is_raised_at_once(lake, monkeypatch):
    calls = []

    def conflict(*args, **kwargs):
        calls.append(1)
        raise OSError("Commit conflict for version 2: a concurrent writer")

    fragments = lake.write_fragments(S.SAMPLES, samples(2))
    monkeypatch.setattr(lance.LanceDataset, "commit", staticmethod(conflict))
    with pytest.raises(OSError, match="conflict"):
        lake.commit_fragments(S.SAMPLES, fragments)
    assert len(calls) == 1
