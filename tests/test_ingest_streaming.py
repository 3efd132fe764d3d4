"""A big JSON array ingests in bounded memory: peak RSS does not grow with the file size."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import REPO

CHILD = textwrap.dedent("""
    import json, resource, sys
    from etl.lake import Lake
    from etl.ingest import IngestOptions, ingest
    counts = ingest(Lake.open(sys.argv[2]), [sys.argv[1]], IngestOptions(source="big", progress=False))
    print(json.dumps({"samples": counts["samples_added"], "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def write_array(path, n_records: int) -> None:
    turn = "x" * 300
    with open(path, "w") as f:
        f.write("[\n")
        for r in range(n_records):
            rec = {"id": f"{r:09d}", "conversations": [{"from": "human", "value": f"{r} {turn}"}, {"from": "gpt", "value": turn}]}
            f.write(("," if r else "") + json.dumps(rec, indent=2))
        f.write("]\n")


def peak_rss(path, lake_root) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(lake_root)], capture_output=True, text=True,
                         cwd=REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory_of_ingest_does_not_grow_with_the_json_size(tmp_path):
    small, big = tmp_path / "small.json", tmp_path / "big.json"
    write_array(small, 10_000)
    write_array(big, 120_000)  # ~90 MB: json.load alone would need several hundred MB for it
    assert big.stat().st_size > 80 * 2**20
    s = peak_rss(small, tmp_path / "lake_small")
    b = peak_rss(big, tmp_path / "lake_big")
    assert s["samples"] == 10_000 and b["samples"] == 120_000
    assert b["rss_mb"] - s["rss_mb"] < 60, (s, b)
