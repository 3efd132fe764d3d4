"""Downloading a URL list: `ingest --format urls` vs the thread-pool script users run today.

Data: `--images` distinct real-size JPEGs (the LCS-558K photos of ../shared/realdata made unique with
a trailer; pillow-made when absent) served from 127.0.0.1 by the stdlib's threading file server
(HTTP/1.1 keep-alive, a listen backlog of 256) in its own process, inside a private network namespace (`unshare -n`: nothing leaves the machine), and a
parquet list `url, caption` naming them.

Compared at the same concurrency (`--concurrency`, default 16), each in its own process:
- baseline = `ThreadPoolExecutor` + `urllib.request.urlopen(url).read()` per URL, each image written to
  `images/<n>.jpg` and the captions to a LLaVA JSON (what the seed download scripts do: no retries,
  no limits, no hashing, no dedup);
- mmlake   = `python -m etl ingest list.parquet --format urls` into a fresh lake (download, sha256,
  header sniff, content-addressed store, commits, checkpoints);
- img2dataset = `img2dataset.download(...)` on the same list: one process of `--concurrency` threads,
  bytes kept as they came (`resize_mode="no"`, `disable_all_reencoding`), sha256 computed, webdataset
  shards written (what LAION-style downloads use). It pulls opencv, albumentations and wandb, so it
  lives in its own venv, named by `--img2dataset-python` or $MMLAKE_IMG2DATASET_PYTHON; skipped (said
  so) when neither is given:
      python3 -m venv /work/venv-img2dataset && /work/venv-img2dataset/bin/pip install img2dataset

    .venv/bin/python bench/bench_download.py [--quick] [--images N] [--concurrency N] [--workdir DIR]
        [--img2dataset-python /work/venv-img2dataset/bin/python]

Writes bench/results/download.json and .md (download_quick.* with --quick).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
INSIDE = "MMLAKE_BENCH_NETNS"
PORT = 8765

from bench_export import peak_rss_mb, photo_pool, unique_jpeg  # noqa: E402  (same folder)


def build(workdir: Path, n_images: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    www = workdir / "www"
    shutil.rmtree(workdir, ignore_errors=True)
    www.mkdir(parents=True)
    pool, total = photo_pool(), 0
    for i in range(n_images):
        data = unique_jpeg(pool, i)
        (www / f"{i:07d}.jpg").write_bytes(data)
        total += len(data)
    urls = [f"http://127.0.0.1:{PORT}/{i:07d}.jpg" for i in range(n_images)]
    pq.write_table(pa.table({"url": urls, "caption": [f"photo {i}" for i in range(n_images)]}), workdir / "list.parquet")
    return {"www": str(www), "list": str(workdir / "list.parquet"), "image_bytes": total}


SERVER = """
import functools, http.server, sys
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 256  # the default 5 drops SYNs under 16 clients: 1 s retransmits, measuring TCP
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real image hosts do
    disable_nagle_algorithm = True  # as they do too: else headers and body wait on delayed ACKs (40 ms)
    def log_message(self, *args):
        pass
Server(("127.0.0.1", int(sys.argv[1])), functools.partial(Handler, directory=sys.argv[2])).serve_forever()
"""


def serve(www: str) -> subprocess.Popen:
    """The stdlib's threading file server (HTTP/1.1) on 127.0.0.1:PORT in its own process, once it accepts."""
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(PORT), www],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", PORT), timeout=0.1).close()
            return server
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise SystemExit("the loopback server did not start")


IMG2DATASET = """
import glob, json, os, resource, sys, time
from img2dataset import download  # imported before the clock, like the other cases
listing, out, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
download(url_list=listing, input_format="parquet", url_col="url", caption_col="caption", output_folder=out,
         output_format="webdataset", processes_count=1, thread_count=concurrency, number_sample_per_shard=10000,
         resize_mode="no", disable_all_reencoding=True, compute_hash="sha256", timeout=30, retries=2,
         enable_wandb=False, distributor="multiprocessing")
work = time.perf_counter() - start
stats = [json.load(open(p)) for p in glob.glob(os.path.join(out, "*_stats.json"))]
hwm = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")]
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # its download process
print(json.dumps({"images": sum(s["successes"] for s in stats), "errors": sum(s["count"] - s["successes"] for s in stats),
                  "work_seconds": round(work, 2), "peak_rss_mb": round(max(hwm + [children])),
                  "shard_seconds": round(sum(s["duration"] for s in stats), 2)}))
"""


IMG2DATASET_VERSION: list[str] = []  # set by img2dataset_python


def img2dataset_python(flag: str | None) -> str | None:
    """The python of a venv holding img2dataset (the flag, else $MMLAKE_IMG2DATASET_PYTHON), or None."""
    python = flag or os.environ.get("MMLAKE_IMG2DATASET_PYTHON")
    if not python:
        print("  img2dataset: skipped (give --img2dataset-python or $MMLAKE_IMG2DATASET_PYTHON: a venv's python "
              "with `pip install img2dataset`)", flush=True)
        return None
    probe = subprocess.run([python, "-c", "import img2dataset, importlib.metadata as m; print(m.version('img2dataset'))"],
                           capture_output=True, text=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    if probe.returncode != 0:
        print(f"  img2dataset: skipped ({python} cannot import it: {probe.stderr.strip().splitlines()[-1:]})", flush=True)
        return None
    IMG2DATASET_VERSION.append(probe.stdout.strip())
    return python


def run_baseline(listing: str, out: Path, concurrency: int) -> dict:
    """Seed style: a thread pool of urlopen().read(), one file per image, then one JSON."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    rows = pq.read_table(listing).to_pylist()
    (out / "images").mkdir(parents=True, exist_ok=True)

    def fetch(item):
        i, row = item
        try:
            with urllib.request.urlopen(row["url"], timeout=30) as response:
                data = response.read()
        except OSError:
            return None
        path = out / "images" / f"{i}.jpg"
        path.write_bytes(data)
        return {"id": str(i), "image": path.name, "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": row["caption"]}]}

    with ThreadPoolExecutor(concurrency) as pool:
        records = [r for r in pool.map(fetch, enumerate(rows)) if r]
    (out / "train.json").write_text(json.dumps(records))
    return {"images": len(records)}


def run_mmlake(listing: str, out: Path, concurrency: int) -> dict:
    from etl.ingest import IngestOptions, ingest
    from etl.lake import Lake

    counts = ingest(Lake.open(str(out / "lake")), [listing], IngestOptions(
        source="bench", format="urls", reader_options={"concurrency": concurrency}, progress=False))
    return {"images": counts["images_added"], "errors": sum(v for k, v in counts.items() if k.startswith("errors."))}


def one(name: str, listing: str, out: Path, concurrency: int) -> None:
    import etl.ingest  # noqa: F401  (imports before the clock, for both sides)

    start = time.perf_counter()
    result = (run_baseline if name == "baseline_threadpool_urllib" else run_mmlake)(listing, out, concurrency)
    result["work_seconds"] = round(time.perf_counter() - start, 2)
    result["peak_rss_mb"] = round(peak_rss_mb())
    print(json.dumps(result))


def measure(name: str, info: dict, out: Path, concurrency: int, python: str | None = None) -> dict:
    """One case in its own process (`python`: img2dataset's venv, running IMG2DATASET)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    if python:
        cmd = [python, "-c", IMG2DATASET, info["list"], str(out), str(concurrency)]
    else:
        cmd = [sys.executable, __file__, "--one", name, "--list", info["list"], "--out", str(out),
               "--concurrency", str(concurrency)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})  # no update check (offline)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(seconds=round(seconds, 2), images_per_s=round(result["images"] / result["work_seconds"], 1),
                  MB_per_s=round(info["image_bytes"] / 1e6 / result["work_seconds"], 1))
    print(f"  {name:<28} {seconds:7.2f} s  {result['images_per_s']:8.1f} images/s  "
          f"peak RSS {result['peak_rss_mb']:5d} MB", flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1,000 images (smoke run, < 1 min)")
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--workdir", default="/tmp/mmlake-bench-download")
    p.add_argument("--img2dataset-python", help="python of a venv with img2dataset (default: $MMLAKE_IMG2DATASET_PYTHON)")
    p.add_argument("--one"), p.add_argument("--list"), p.add_argument("--out")
    args = p.parse_args()
    if args.one:
        return one(args.one, args.list, Path(args.out), args.concurrency)
    if os.environ.get(INSIDE) != "1":  # rerun inside a private network namespace: loopback only
        cmd = " ".join(f"'{a}'" for a in [sys.executable, __file__, *sys.argv[1:]])
        os.execvpe("unshare", ["unshare", "-n", "bash", "-c", f"ip link set lo up && exec {cmd}"],
                   {**os.environ, INSIDE: "1"})
    if args.quick:
        args.images = 1_000
    workdir = Path(args.workdir)
    info = build(workdir, args.images)
    server = serve(info["www"])
    peer = img2dataset_python(args.img2dataset_python)
    try:
        results = {name: measure(name, info, workdir / "out" / name, args.concurrency)
                   for name in ("baseline_threadpool_urllib", "mmlake_ingest_urls")}
        if peer:
            results["img2dataset"] = measure("img2dataset", info, workdir / "out" / "img2dataset", args.concurrency, peer)
    finally:
        server.kill()  # the server this run started, by its pid
        server.wait()
    report(args, info, results)


def report(args, info: dict, results: dict) -> None:
    ratio = round(results["mmlake_ingest_urls"]["images_per_s"] / results["baseline_threadpool_urllib"]["images_per_s"], 2)
    doc = {"images": args.images, "image_bytes": info["image_bytes"], "concurrency": args.concurrency,
           "cores": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 1), "results": results,
           "ratio_mmlake_over_baseline": ratio}
    name = "download_quick" if args.quick else "download"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# Download benchmark ({args.images:,} images, {info['image_bytes'] / 1e6:.0f} MB, concurrency "
             f"{args.concurrency}, {os.cpu_count()} cores, loopback stdlib file server in its own process)", "",
             "`work s` is the time inside each process after imports; images/s and MB/s are over it.",
             "The server shares the cores with the client, so both sides are bounded by it alike.",
             f"Load average (1 min) at the end: {doc['load_average_1min']} (the machine runs other jobs too).", "",
             "| case | seconds | work s | images/s | MB/s | peak RSS MB |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['seconds']} | {v['work_seconds']} | {v['images_per_s']} | {v['MB_per_s']} | {v['peak_rss_mb']} |"
              for k, v in results.items()]
    lines += ["", f"mmlake / baseline images/s: **{ratio}×** (mmlake also hashes, sniffs, stores once and commits)"]
    if "img2dataset" in results:
        doc["ratio_mmlake_over_img2dataset"] = round(
            results["mmlake_ingest_urls"]["images_per_s"] / results["img2dataset"]["images_per_s"], 2)
        (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
        i2d = results["img2dataset"]
        lines += [f"mmlake / img2dataset {IMG2DATASET_VERSION[0]} images/s: **{doc['ratio_mmlake_over_img2dataset']}×** (img2dataset "
                  "1 process x concurrency threads, no resize or re-encode, sha256, webdataset shards)",
                  f"img2dataset's `work s` includes starting its download process and its shard/logger "
                  f"machinery; its shards' own download loop took {i2d['shard_seconds']} s "
                  f"({round(i2d['images'] / i2d['shard_seconds'], 1)} images/s)."]
    else:
        lines += ["img2dataset: not run (no --img2dataset-python / $MMLAKE_IMG2DATASET_PYTHON)"]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-3:]))


if __name__ == "__main__":
    main()
