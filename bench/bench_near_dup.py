"""Near-duplicate search in SQL (sql/dedup_near.sql) against the pairwise baseline users run today.

Data: N random uint64 hashes plus planted near-duplicates (1% of N copies with 0..k+2 flipped bits,
so some planted pairs are just outside k). Recall = share of planted pairs within k bits that end up
in the same cluster (must be 1.0). Each configuration runs in its own process, so the peak memory
(ru_maxrss) is that run's alone.

Baseline: numpy pairwise popcount in blocks (exact, O(N^2)), the loop of the seed's dedup scripts;
it runs on the sizes it can finish in reasonable time, and the SQL runs on the same data there.

    .venv/bin/python bench/bench_near_dup.py            # 1M and 10M (SQL), 20k/100k (both)
    .venv/bin/python bench/bench_near_dup.py --quick    # 100k SQL, 20k both (CI smoke, < 1 min)

Writes bench/results/near_dup.json and .md (--quick: near_dup_quick.*).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"


def planted_hashes(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes, planted_a, planted_b): random hashes + 1% copies with 0..k+2 flipped bits."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    m = max(n // 100, 10)
    src = rng.choice(n, m, replace=False)
    copies = base[src].copy()
    flips = rng.integers(0, k + 3, m)
    for j in range(m):
        for bit in rng.choice(64, int(flips[j]), replace=False):
            copies[j] ^= np.uint64(1) << np.uint64(bit)
    hashes = np.concatenate([base, copies])
    return hashes, src, np.arange(n, n + m)


def run_sql(n: int, k: int, queue, memory_limit: str | None = None) -> None:
    """Child process: dedup_near.sql over N hashes; reports time, recall, peak RSS."""
    import duckdb
    import pyarrow as pa

    from etl.sqlrun import SQL_DIR, define_models, run_file

    hashes, a, b = planted_hashes(n, k)
    ids = pa.array(np.char.add("i", np.arange(len(hashes)).astype(str)).astype(object), pa.string())
    con = duckdb.connect()
    if memory_limit:  # DuckDB spills joins and aggregates to disk beyond this
        con.execute(f"set memory_limit = '{memory_limit}'")
    con.execute("set preserve_insertion_order = false")
    con.register("hashes", pa.table({"image_id": ids, "phash": pa.array(hashes, pa.uint64()),
                                     "width": pa.array(np.ones(len(hashes), np.int32)),
                                     "height": pa.array(np.ones(len(hashes), np.int32))}))
    con.execute("create table images as select *, 'jpeg' as format, 1::bigint as nbytes from hashes")
    con.unregister("hashes")  # the lake's images are a Lance scan, not a table held by Python
    del ids
    con.execute("create table samples (sample_id varchar, source varchar, source_file varchar, source_row bigint,"
                " image_ids varchar[], conversations struct(\"from\" varchar, \"value\" varchar)[])")
    define_models(con, [SQL_DIR / "sample_images.sql", SQL_DIR / "dedup_keys.sql"])  # views statement 2 reads
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, cpu = time.perf_counter(), time.process_time()
    run_file(con, "dedup_near", {"near_k": k}).fetchall()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    cluster = dict(con.execute("select image_id, cluster_id from near_image_clusters").fetchall())
    within = np.bitwise_count(hashes[a] ^ hashes[b]) <= k
    found = [cluster.get(f"i{x}") is not None and cluster.get(f"i{x}") == cluster.get(f"i{y}")
             for x, y in zip(a[within], b[within])]
    queue.put({"n": len(hashes), "k": k, "seconds": round(elapsed, 2), "cpu_seconds": round(cpu, 2),
               "planted_pairs_within_k": int(within.sum()),
               "recall": float(np.mean(found)) if found else 1.0, "clusters": len(set(cluster.values())),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "rss_before_query_mb": round(rss_before / 1024, 1)})


def run_numpy_blocks(n: int, k: int, queue, memory_limit: str | None = None, block: int = 2048) -> None:
    """Child process: every pair within k by blocked popcount (the pairwise baseline)."""
    hashes, a, b = planted_hashes(n, k)
    start = time.perf_counter()
    pairs = []
    for i in range(0, len(hashes), block):
        rows = hashes[i : i + block]
        dist = np.bitwise_count(rows[:, None] ^ hashes[None, i:])
        ii, jj = np.nonzero(dist <= k)
        keep = jj + i > ii + i
        pairs.append(np.stack([ii[keep] + i, jj[keep] + i], axis=1))
    found = {tuple(p) for p in np.concatenate(pairs)} if pairs else set()
    elapsed = time.perf_counter() - start
    within = np.bitwise_count(hashes[a] ^ hashes[b]) <= k
    hit = [(min(x, y), max(x, y)) in found for x, y in zip(a[within], b[within])]
    queue.put({"n": len(hashes), "k": k, "seconds": round(elapsed, 2), "pairs": len(found),
               "recall": float(np.mean(hit)) if hit else 1.0,
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})


def in_child(target, n: int, k: int, memory_limit: str | None = None) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(n, k, queue, memory_limit))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--memory-limit", default="4GB", help="DuckDB memory_limit for the SQL runs (default 4GB)")
    parser.add_argument("--sizes", help="comma-separated SQL sizes (overrides the defaults)")
    args = parser.parse_args()
    sql_sizes = [100_000] if args.quick else [100_000, 1_000_000, 10_000_000]
    if args.sizes:
        sql_sizes = [int(x) for x in args.sizes.split(",")]
    baseline_sizes = [20_000] if args.quick else [20_000, 100_000]
    if args.sizes:
        baseline_sizes = [n for n in baseline_sizes if n in sql_sizes]

    rows = []
    load_before = os.getloadavg()[0]
    for n in sorted(set(sql_sizes + baseline_sizes)):
        row = {"n_base": n}
        if n in sql_sizes or n in baseline_sizes:
            row["sql"] = in_child(run_sql, n, args.k, args.memory_limit)
            print(f"sql      n={row['sql']['n']:>11,} k={args.k}: {row['sql']['seconds']:8.2f} s "
                  f"({row['sql']['cpu_seconds']:.1f} CPU s), "
                  f"recall {row['sql']['recall']:.3f}, peak {row['sql']['peak_rss_mb']:,.0f} MB", flush=True)
        if n in baseline_sizes:
            row["numpy_blocks"] = in_child(run_numpy_blocks, n, args.k)
            nb = row["numpy_blocks"]
            print(f"baseline n={nb['n']:>11,} k={args.k}: {nb['seconds']:8.2f} s, recall {nb['recall']:.3f}, "
                  f"peak {nb['peak_rss_mb']:,.0f} MB -> SQL is {nb['seconds'] / max(row['sql']['seconds'], 1e-9):.1f}x faster",
                  flush=True)
        rows.append(row)

    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"k": args.k, "quick": args.quick, "bands": args.k + 2, "duckdb_memory_limit": args.memory_limit,
              "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)], "cpus": os.cpu_count(),
              "rows": rows,
              "note": "numpy baseline is O(N^2); it is run only where it finishes in minutes"}
    name = "near_dup_quick" if args.quick else "near_dup"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    lines = [f"# near-duplicate search, k = {args.k} (sql/dedup_near.sql, {args.k + 2} bands, "
             f"DuckDB memory_limit {args.memory_limit})", "",
             f"{result['cpus']} CPUs shared with other work, load average before/after {result['load_average_before_after']}: "
             "wall seconds move with the load, CPU seconds (DuckDB's threads included) far less.", "",
             "| hashes | SQL s | SQL CPU s | SQL recall | SQL peak MB | numpy blocks s | numpy recall | speed-up |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = ["", "Peak MB = ru_maxrss of the whole run's process (its own Python-side ids included)."]
    for r in rows:
        s, b = r.get("sql"), r.get("numpy_blocks")
        lines.append(f"| {s['n']:,} | {s['seconds']} | {s['cpu_seconds']} | {s['recall']:.3f} | {s['peak_rss_mb']:,.0f} | "
                     + (f"{b['seconds']} | {b['recall']:.3f} | {b['seconds'] / s['seconds']:.1f}x |" if b else "n/a | n/a | n/a |"))
    lines += notes
    measured = [r for r in rows if "numpy_blocks" in r]
    if measured and not args.quick:
        big = measured[-1]["numpy_blocks"]
        hours = {n: big["seconds"] * (n / big["n"]) ** 2 / 3600 for n in (1_010_000, 10_100_000)}
        result["numpy_blocks_extrapolated_hours"] = {str(n): round(h, 1) for n, h in hours.items()}
        lines += [f"numpy blocks is O(N^2): extrapolated from its {big['n']:,} run it would take "
                  f"~{hours[1_010_000]:.1f} h at 1M and ~{hours[10_100_000]:.0f} h at 10M, so it is not run there."]
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
