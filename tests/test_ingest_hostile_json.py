"""Hostile JSON/JSONL input: every good record goes in, every bad stretch is one `errors` row naming
its line or byte offset and reason, never a traceback, in bounded time and memory; a rerun after a
crash continues exactly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from etl.ingest import IngestOptions, ingest
from etl.lake import Lake
from etl.sources.jsonfiles import iter_json_records
from etl.sources.jsonstream import BadStretch
from etl.sqlrun import connect

from conftest import REPO, errors_of, run_cli, samples_of


def turn(text: str) -> list[dict]:
    return [{"from": "human", "value": f"q {text}"}, {"from": "gpt", "value": f"a {text}"}]


def good(i: int) -> bytes:
    return json.dumps({"id": f"g{i}", "conversations": turn(str(i))}).encode()


def array(*records: bytes, sep: bytes = b", ") -> bytes:
    return b"[" + sep.join(records) + b"]"


def lines(*records: bytes) -> bytes:
    return b"".join(r + b"\n" for r in records)


def ingest_bytes(lake: Lake, tmp_path, name: str, data: bytes, **reader_options) -> tuple[list[dict], list[dict]]:
    path = tmp_path / name
    path.write_bytes(data)
    source = name.replace(".", "_")
    ingest(lake, [str(path)], IngestOptions(source=source, progress=False, reader_options=reader_options))
    return samples_of(lake, source), errors_of(lake, source)


def ids(samples: list[dict]) -> list[str]:
    return [s["orig_id"] for s in samples]


# -- the cases of the issue, as users meet them ----------------------------------------------------------
def test_invalid_utf8_in_a_json_array_is_one_error_row_and_the_other_records_go_in(lake, tmp_path):
    bad = b'{"id": "latin1", "conversations": [{"from": "human", "value": "caf\xe9"}]}'
    data = array(good(0), bad, good(2))
    samples, errors = ingest_bytes(lake, tmp_path, "a.json", data)
    assert ids(samples) == ["g0", "g2"]
    [e] = errors
    assert (e["row"], e["kind"]) == (1, "invalid_utf8")
    record_at, byte_at = data.index(bad), data.index(bytes([0xE9]))
    assert e["message"] == f"record at byte {record_at} (line 1): byte 0xe9 is not UTF-8 (at byte {byte_at} (line 1))"
    assert e["raw"].endswith('"caf\\xe9"}]}')  # the bad byte kept, readable


@pytest.mark.parametrize("bad_line", [0, 1])
def test_invalid_utf8_on_a_jsonl_line_is_one_error_row_naming_the_line(lake, tmp_path, bad_line):
    records = [good(0), good(1), good(2)]
    records[bad_line] = b'{"id": "bad", "conversations": [{"from": "human", "value": "\xff\xfe"}]}'
    samples, errors = ingest_bytes(lake, tmp_path, "chat.jsonl", lines(*records))
    assert len(samples) == 2 and bad_line not in [s["source_row"] for s in samples]
    [e] = errors
    assert (e["row"], e["kind"]) == (bad_line, "invalid_utf8")
    assert e["message"].startswith(f"line {bad_line + 1} (byte ")


def test_the_cli_ingests_a_jsonl_with_a_bad_line_and_names_it_without_a_traceback(lake, tmp_path):
    path, data = tmp_path / "chat.jsonl", lines(good(0), b'{"id": "bad", "value": "\xff"}', good(2))
    path.write_bytes(data)
    proc = run_cli("ingest", str(path), "--source", "chat", "--no-progress", lake=lake)
    assert "Traceback" not in proc.stderr
    assert ids(samples_of(lake, "chat")) == ["g0", "g2"]
    [e] = errors_of(lake, "chat")
    line_at, byte_at = len(good(0)) + 1, data.index(bytes([0xFF]))
    assert (e["row"], e["kind"]) == (1, "invalid_utf8")
    assert e["message"] == f"line 2 (byte {line_at}): byte {byte_at} (0xff) is not UTF-8"


def test_nan_and_infinity_are_ingested_and_meta_stays_strict_json(lake, tmp_path):
    rec = b'{"id": "n", "score": NaN, "range": [-Infinity, Infinity, 1.5], "conversations": %s}'
    rec %= json.dumps(turn("n")).encode()
    samples, errors = ingest_bytes(lake, tmp_path, "nan.json", array(good(0), rec, good(2)))
    jsonl_samples, jsonl_errors = ingest_bytes(lake, tmp_path, "nan.jsonl", lines(rec))
    assert errors == jsonl_errors == [] and ids(samples) == ["g0", "n", "g2"]
    for meta in (samples[1]["meta"], jsonl_samples[0]["meta"]):
        strict = json.loads(meta, parse_constant=lambda c: pytest.fail(f"{c} in meta: not JSON"))
        assert strict == {"score": "NaN", "range": ["-Infinity", "Infinity", 1.5]}
    # the spelling DuckDB reads back as the same floats
    score, low = connect(lake).execute("select cast(meta->>'score' as double), cast(meta->'range'->>0 as double) "
                                       "from samples where orig_id = 'n' and source = 'nan_json'").fetchone()
    assert score != score and low == float("-inf")


def test_an_array_cut_inside_its_last_record_keeps_every_whole_record_and_names_the_cut(lake, tmp_path):
    data = array(*[good(i) for i in range(2500)])
    samples, errors = ingest_bytes(lake, tmp_path, "cut.json", data[:-25])
    assert len(samples) == 2499 and [s["source_row"] for s in samples] == list(range(2499))
    [e] = errors
    assert (e["row"], e["kind"]) == (2499, "truncated_json") and e["raw"].startswith('{"id": "g2499"')
    assert "the file ends inside the record that starts at byte" in e["message"]
    again = ingest(lake, [str(tmp_path / "cut.json")], IngestOptions(source="cut_json", progress=False))
    assert again["samples_added"] == 0 and again["files_already_done"] == 1
    assert len(samples_of(lake, "cut_json")) == 2499 and len(errors_of(lake, "cut_json")) == 1


def test_an_array_cut_between_records_says_the_file_may_be_cut(lake, tmp_path):
    samples, errors = ingest_bytes(lake, tmp_path, "open.json", array(good(0), good(1))[:-1] + b",\n")
    assert ids(samples) == ["g0", "g1"]
    assert [(e["row"], e["kind"]) for e in errors] == [(2, "truncated_json")]


@pytest.mark.parametrize("depth", [500, 10_000])
def test_deep_nesting_is_one_error_row_not_a_recursion_crash(lake, tmp_path, depth):
    deep = b'{"id": "deep", "conversations": [], "x": ' + b"[" * depth + b"]" * depth + b"}"
    samples, errors = ingest_bytes(lake, tmp_path, "deep.json", array(good(0), deep, good(2)))
    assert ids(samples) == ["g0", "g2"]
    assert [(e["row"], e["kind"]) for e in errors] == [(1, "too_deeply_nested")]
    # the first record is what auto-detection looks at; and JSONL
    samples, errors = ingest_bytes(lake, tmp_path, "deep.jsonl", lines(deep, good(1)))
    assert ids(samples) == ["g1"] and [(e["row"], e["kind"]) for e in errors] == [(0, "too_deeply_nested")]


def test_a_wrapped_object_on_one_line_is_read_as_its_records(lake, tmp_path):
    data = b'{"info": {"v": 1}, "annotations": ' + array(*[good(i) for i in range(5)], sep=b",") + b"}"
    assert b"\n" not in data
    samples, errors = ingest_bytes(lake, tmp_path, "recap.json", data)
    assert ids(samples) == [f"g{i}" for i in range(5)] and errors == []


def test_a_trailing_comma_as_in_llavas_own_docs_still_ingests_the_record(lake, tmp_path):
    doc = textwrap.dedent("""\
        [
          {
            "id": "997bb945-628d-4724-b370-b84de974a19f",
            "conversations": [
              {
                "from": "human",
                "value": "<image>\\nWrite a prompt for Stable Diffusion to generate this image."
              },
              {
                "from": "gpt",
                "value": "a beautiful painting of chernobyl by nekro"
              },
            ]
          },
          ...
        ]
        """).encode()
    samples, errors = ingest_bytes(lake, tmp_path, "docs.json", doc)
    assert ids(samples) == ["997bb945-628d-4724-b370-b84de974a19f"]
    assert [t["from"] for t in samples[0]["conversations"]] == ["human", "gpt"]
    [e] = errors  # the `...` placeholder
    assert (e["row"], e["kind"], e["raw"]) == (1, "bad_json_record", "...")
    assert "line 15" in e["message"]
    samples, errors = ingest_bytes(lake, tmp_path, "tc.json", array(good(0), good(1))[:-1] + b",]")
    assert ids(samples) == ["g0", "g1"] and errors == []


def test_a_stray_quote_in_a_one_line_array_costs_one_record(lake, tmp_path):
    bad = b'{"id": "q", "conversations": [{"from": "human", "value": "he said "hi" twice"}]}'
    samples, errors = ingest_bytes(lake, tmp_path, "stray.json", array(good(0), good(1), bad, *map(good, range(3, 9))))
    assert ids(samples) == ["g0", "g1", *[f"g{i}" for i in range(3, 9)]]
    assert [(e["row"], e["kind"]) for e in errors] == [(2, "bad_json_record")]
    assert "Expecting ',' delimiter" in errors[0]["message"]


def test_a_lone_surrogate_escape_is_an_error_row_and_an_emoji_pair_is_kept(lake, tmp_path):
    lone = b'{"id": "lone", "conversations": [{"from": "human", "value": "\\ud800"}]}'
    pair = b'{"id": "pair", "conversations": [{"from": "human", "value": "\\ud83d\\ude00"}]}'
    samples, errors = ingest_bytes(lake, tmp_path, "sur.json", array(lone, pair))
    assert ids(samples) == ["pair"] and samples[0]["conversations"][0]["value"] == "\U0001F600"
    assert [(e["row"], e["kind"]) for e in errors] == [(0, "lone_surrogate")]


def test_a_record_over_the_size_limit_is_one_error_row_with_a_cut_raw(lake, tmp_path):
    big = b'{"id": "big", "conversations": [{"from": "human", "value": "' + b"x" * (3 << 20) + b'"}]}'
    for name, data in (("big.json", array(good(0), big, good(2))), ("big.jsonl", lines(good(0), big, good(2)))):
        samples, errors = ingest_bytes(lake, tmp_path, name, data, max_record_mb=1)
        assert ids(samples) == ["g0", "g2"]
        [e] = errors
        assert (e["row"], e["kind"]) == (1, "record_too_large")
        assert f"{len(big)} bytes, over the limit of {1 << 20}" in e["message"]
        assert len(e["raw"]) < 70_000 and "cut: the first 65536 characters" in e["raw"]


CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from etl.lake import Lake
    from etl.ingest import IngestOptions, ingest
    lake = Lake.open(sys.argv[1])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {}
    for path in sys.argv[2:]:
        started = time.perf_counter()
        try:
            counts = ingest(lake, [path], IngestOptions(source=path.rsplit("/", 1)[-1], progress=False))
            report[path] = {"samples": counts["samples_added"], "seconds": time.perf_counter() - started}
        except BaseException as exc:  # what a user would see as a traceback
            report[path] = {"exception": f"{type(exc).__name__}: {exc}"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"report": report, "rss_before_mb": before, "rss_peak_mb": peak}))
""")


def ingest_in_child(lake_root, paths) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(lake_root), *map(str, paths)], capture_output=True,
                         text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_record_with_a_200_mb_string_is_skipped_in_bounded_time_and_memory(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.write(b"[" + good(0) + b', {"id": "huge", "conversations": [{"from": "human", "value": "')
        block = b"y" * (1 << 20)
        for _ in range(200):
            f.write(block)
        f.write(b'"}]}, ' + good(2) + b"]")
    result = ingest_in_child(tmp_path / "lake", [path])
    run = result["report"][str(path)]
    assert run.get("exception") is None and run["samples"] == 2
    assert run["seconds"] < 60, run  # ijson took 279 s (quadratic in the string's length)
    assert result["rss_peak_mb"] - result["rss_before_mb"] < 200, result  # the string alone is 200 MB
    [e] = errors_of(Lake.open(str(tmp_path / "lake"), create=False), "huge.json")
    assert (e["row"], e["kind"]) == (1, "record_too_large") and "209715" in e["message"]


# -- a corpus of hostile inputs ----------------------------------------------------------------------
G = [good(i) for i in range(4)]
TURNS = json.dumps(turn("x")).encode()
CORPUS: dict[str, tuple[bytes, int]] = {  # name: (bytes, error rows expected); good records g0..g3 go in
    "utf8_in_value.json": (array(G[0], G[1], b'{"id": "u", "conversations": [{"from": "human", "value": "\xc3"}]}', G[2], G[3]), 1),
    "utf8_between_records.json": (array(G[0], G[1], b"\xff\xfe", G[2], G[3]), 1),
    "utf8_in_key.json": (array(G[0], G[1], b'{"\xff": 1}', G[2], G[3]), 1),
    "nan_everywhere.json": (array(G[0], G[1], b'{"id": NaN, "conversations": %s, "x": [Infinity, -Infinity]}' % TURNS, G[2], G[3]), 0),
    "lone_surrogate_key.json": (array(G[0], G[1], b'{"\\udfff": 1}', G[2], G[3]), 1),
    "deep_arrays.json": (array(G[0], G[1], b"[" * 20000 + b"]" * 20000, G[2], G[3]), 1),
    "deep_objects.json": (array(G[0], G[1], b'{"a": ' * 3000 + b"1" + b"}" * 3000, G[2], G[3]), 1),
    "deep_unclosed_last.json": (array(G[0], G[1], G[2], G[3])[:-1] + b", " + b"[" * 50000, 1),
    "stray_closers.json": (array(G[0], G[1], b"}}]]", G[2], G[3])[:-1] + b"]", 1),
    "missing_brace.json": (array(G[0], G[1], good(9)[:-1], G[2], G[3]), 1),
    "missing_commas.json": (b"[" + G[0] + b" " + G[1] + b"\n" + G[2] + G[3] + b"]", 0),
    "double_commas.json": (array(G[0], G[1], G[2], G[3], sep=b",,\n,"), 0),
    "huge_int.json": (array(G[0], G[1], b'{"id": ' + b"9" * 6000 + b"}", G[2], G[3]), 1),
    "control_chars.json": (array(G[0], G[1], G[2], G[3]).replace(b"q 1", b"q\t\x01\x00 1"), 0),
    "not_objects.json": (array(G[0], G[1], b'"text", 42, null, true, []', G[2], G[3]), 5),
    "garbage_after.json": (array(G[0], G[1], G[2], G[3]) + b" trailing \xff garbage", 1),
    "bom_and_crlf.json": (b"\xef\xbb\xbf[\r\n" + b",\r\n".join(G) + b"\r\n]\r\n", 0),
    "cut_in_string.json": (array(G[0], G[1], G[2], G[3])[:-1] + b', {"id": "cut", "conversations": [{"value": "abc', 1),
    "cut_in_escape.json": (array(G[0], G[1], G[2], G[3])[:-1] + b', {"id": "cut\\u00', 1),
    "cut_after_comma.json": (array(G[0], G[1], G[2], G[3])[:-1] + b",", 1),
    "wrapped_pretty.json": (json.dumps({"meta": {"n": [1, {"a": 2}]}, "data": [json.loads(g) for g in G]}, indent=2).encode(), 0),
    "wrapped_bad_record.json": (b'{"annotations": ' + array(G[0], G[1], b'{"id": "x", "value": "\xff"}', G[2], G[3]) + b"}", 1),
    "wrapped_cut.json": (b'{"annotations": ' + array(G[0], G[1], G[2], G[3])[:-1] + b', {"id": "c', 1),
    "jsonl_mixed.jsonl": (G[0] + b"\n\xff\xfe garbage\n" + G[1] + b"\r\n\n\n" + b"[" * 9000 + b"\n" + G[2] + b"\n"
                          + b'{"id": "nan", "x": NaN, "conversations": %s}\n' % TURNS + G[3] + b'\n{"id": "cut', 3),
    "jsonl_first_line_bad.jsonl": (b'{"id": "\xff\n' + lines(*G), 1),
    "jsonl_pretty_records.jsonl": (lines(*G) + json.dumps(json.loads(G[0]), indent=2).encode(), 13),  # a row a line
    "utf16.json": ("\ufeff".encode("utf-16-le") + array(*G).decode().encode("utf-16-le"), 1),
    "binary.json": (bytes(range(256)) * 64, 1),
}
GOOD_IDS = {"g0", "g1", "g2", "g3"}
NO_GOOD_RECORDS = {"utf16.json", "binary.json"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    for name, (data, _) in CORPUS.items():
        (folder / name).write_bytes(data)
    # big ones: a 64 MB record (over the 32 MB default limit) and a 60 MB one-line wrapped object
    with open(folder / "big_record.json", "wb") as f:
        f.write(b"[" + G[0] + b', {"id": "big", "conversations": [{"value": "' + b"z" * (64 << 20) + b'"}]}, ')
        f.write(b", ".join(G[1:]) + b"]")
    with open(folder / "one_line_wrapper.json", "wb") as f:
        f.write(b'{"annotations": [' + b",".join(G))
        filler = json.dumps({"id": "f", "conversations": turn("f" * 2000)}).encode()
        for _ in range((60 << 20) // len(filler)):
            f.write(b"," + filler)
        f.write(b"]}")
    return folder


def test_every_hostile_input_ends_as_samples_or_error_rows_in_bounded_memory(corpus, tmp_path):
    paths = sorted(corpus.iterdir())
    result = ingest_in_child(tmp_path / "lake", paths)
    failures = {p: r["exception"] for p, r in result["report"].items() if "exception" in r}
    assert failures == {}
    lake = Lake.open(str(tmp_path / "lake"), create=False)
    for path in paths:
        samples, errors = samples_of(lake, path.name), errors_of(lake, path.name)
        if path.name not in NO_GOOD_RECORDS:
            assert GOOD_IDS <= set(ids(samples)), (path.name, ids(samples), errors)
        expected_errors = CORPUS.get(path.name, (b"", 1 if path.name == "big_record.json" else 0))[1]
        if path.name in NO_GOOD_RECORDS:
            assert errors and not samples, (path.name, samples)
        else:
            assert len(errors) == expected_errors, (path.name, [(e["row"], e["kind"], e["message"]) for e in errors])
        for e in errors:  # a stretch the splitter refused names where it is (`row` counts records)
            assert e["kind"] == "malformed_record" or "byte " in e["message"], e["message"]
        rows = [s["source_row"] for s in samples] + [e["row"] for e in errors]
        assert len(rows) == len(set(rows)), path.name  # one row each, no duplicates
    # the big record and the 60 MB line went through a bounded window
    assert result["rss_peak_mb"] - result["rss_before_mb"] < 150, result  # measured: +65 MB


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_record_numbers_do_not_depend_on_how_the_file_is_read(corpus, chunk):
    for name in CORPUS:
        path = str(corpus / name)
        whole = [(row, summary(item)) for row, item in iter_json_records(path)]
        assert [(row, summary(item)) for row, item in iter_json_records(path, chunk=chunk)] == whole, name
        for start in range(len(whole) + 1):  # a resumed read goes on exactly where it stopped
            resumed = [(row, summary(item)) for row, item in iter_json_records(path, start, chunk=chunk)]
            assert resumed == [(row, s) for row, s in whole if row >= start], (name, start)


def summary(item) -> str:
    return f"{item.kind}: {item.raw[:100]}" if isinstance(item, BadStretch) else json.dumps(item, default=str)


# -- resume --------------------------------------------------------------------------------------------
def test_a_crash_then_rerun_on_a_file_with_bad_stretches_matches_an_uninterrupted_run(tmp_path):
    records = []
    for i in range(300):
        records.append(good(i))
        if i % 37 == 5:
            records.append(b'{"id": "bad%d", "v": "\xff"}' % i)
        if i % 53 == 7:
            records.append(b"[" * 3000 + b"]" * 3000)
    path = tmp_path / "hostile.json"
    path.write_bytes(array(*records)[:-30])

    def run(root, fault=None):
        cmd = [sys.executable, "-m", "etl", "--lake", str(root), "ingest", str(path), "--source", "h",
               "--batch-size", "25", "--no-progress"]
        env = {**os.environ, **({"MMLAKE_FAULT": fault} if fault else {})}
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)

    def content(root):
        con = connect(Lake.open(str(root), create=False))
        return (con.execute("select sample_id, source_row from samples order by 1").fetchall(),
                con.execute("select error_id, row, kind from errors order by 1").fetchall())

    assert run(tmp_path / "ref").returncode == 0
    reference = content(tmp_path / "ref")
    assert len(reference[0]) == 299 and {k for *_, k in reference[1]} == {"invalid_utf8", "too_deeply_nested", "truncated_json"}
    for fault in ("after_errors:4", "after_samples:7"):
        root = tmp_path / fault.replace(":", "_")
        crashed = run(root, fault)
        assert crashed.returncode == 137, crashed.stderr[-2000:]
        rerun = run(root)
        assert rerun.returncode == 0 and "Traceback" not in rerun.stderr, rerun.stderr[-2000:]
        assert content(root) == reference
        assert run(root).returncode == 0 and content(root) == reference  # and once more: nothing added
