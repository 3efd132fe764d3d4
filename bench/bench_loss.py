"""Per-sample Qwen2-VL answer loss on CPU: the seed-style loop users run today vs `enrich loss`.

Baseline (the Infinity-MM style loop): for each sample in turn, decode its images with
qwen-vl-utils, run the processor, then `model(**inputs, labels=labels).loss` — one sample per
forward, full B×T×vocab logits. Enricher: `AnswerLossScorer` — decode/encode threads ahead of
the model, length-sorted batches under a padded-token budget, `lm_head` at answer positions only.
Both see the same samples, the same image cap and the same labels; each runs in its own process
so its peak RSS is its own. The per-sample losses of both are compared (they must agree).

The model is random, in the real Hub folder layout, with Qwen's real 151,936-row vocabulary (the
logits memory wall is about the vocabulary) and a text width sized so the CPU run takes about a
minute. Samples are real (../shared/realdata): LLaVA-Instruct multi-turn conversations (their COCO
images are not shipped, so LLaVA-Pretrain photos stand in), LLaVA-Pretrain captions, VILA
multi-image questions and FastChat text-only chats.

Padding efficiency (real tokens / padded tokens) is measured separately on the whole mix at the
production image cap (1280 visual tokens per image) — token counts only, no forward.

    .venv/bin/python bench/bench_loss.py [--quick] [--samples N] [--batch-tokens T]

Writes bench/results/loss.json and .md (loss_quick.* with --quick).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REALDATA = ROOT.parent / "shared" / "realdata"
RESULTS = ROOT / "bench" / "results"
PRETRAIN = REALDATA / "llava_pretrain_pr1902" / "playground" / "data" / "LLaVA-Pretrain"
VILA = REALDATA / "vila_inference_test" / "inference_test"

BENCH_PIXELS = 28 * 28 * 64  # ≤64 visual tokens per image in the timed runs
PRODUCTION_PIXELS = 28 * 28 * 1280  # the enricher's default cap, for the padding-efficiency mix
SORT_WINDOW = 128  # = etl.models.qwen_vl.DEFAULT_SORT_WINDOW: the scorer sorts within windows this size
MODEL = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=151_936, max_position_embeddings=32768,
             rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [8, 12, 12]})
VISION = dict(depth=2, embed_dim=64, num_heads=4)


# -- samples ---------------------------------------------------------------------------------------
def realistic_mix() -> list[dict]:
    """Every usable realdata sample, in a shuffled but fixed order (the order a lake scan gives)."""
    import random

    if not REALDATA.exists():
        raise SystemExit(f"the benchmark needs ../shared/realdata ({REALDATA})")
    pretrain = json.loads((PRETRAIN / "blip_laion_cc_sbu_2k.subset200.json").read_text())
    photos = [(PRETRAIN / "images" / r["image"]).read_bytes() for r in pretrain]
    out = [{"conversations": r["conversations"], "images": [photos[i]], "kind": "caption"}
           for i, r in enumerate(pretrain)]
    instruct = json.loads((REALDATA / "llamafactory/llava_instruct_100/llava_instruct_100.json").read_text())
    out += [{"conversations": r["conversations"], "images": [photos[i % len(photos)]], "kind": "instruct"}
            for i, r in enumerate(instruct)]
    chats = json.loads((REALDATA / "fastchat/data/dummy_conversation.json").read_text())[:100]
    out += [{"conversations": r["conversations"], "images": [], "kind": "text"} for r in chats]
    for case in json.loads((VILA / "inference_test.json").read_text())["test_cases"]:
        paths = [VILA / "test_data" / p for p in case["image_paths"]]
        if all(p.exists() for p in paths):
            out += [{"conversations": [{"from": "human", "value": qa["question"]},
                                       {"from": "gpt", "value": qa["expected_answer"]}],
                     "images": [p.read_bytes() for p in paths], "kind": "multi-image"} for qa in case["QAs"]]
    random.Random(0).shuffle(out)
    return out


# -- one variant, in its own process --------------------------------------------------------------
def run_variant(variant: str, model_dir: str, count: int, batch_tokens: int) -> dict:
    import torch

    from etl.models.qwen_vl import AnswerLossScorer, load_qwen_vl, score_one_by_one_full_logits

    torch.set_num_threads(os.cpu_count() or 1)
    samples = realistic_mix()[:count]
    qwen = load_qwen_vl(model_dir, device="cpu", dtype="fp32")
    rss_loaded = _peak_rss_mb()
    started = time.perf_counter()
    if variant == "baseline":
        prep = AnswerLossScorer(qwen, batch_size=1, max_pixels=BENCH_PIXELS, decode_threads=1)
        losses, tokens = [], 0
        for s in samples:  # decode + encode + full-logits forward, one sample at a time
            encoded = prep._prepare(s["conversations"], s["images"])
            losses.append(score_one_by_one_full_logits(qwen, encoded))
            tokens += encoded.length
        prep.close()
    else:  # "batch1" isolates the answer-only logits + threads; "batched" adds length-sorted batching
        size = {"batch_size": 1} if variant == "batch1" else {"batch_tokens": batch_tokens}
        scorer = AnswerLossScorer(qwen, max_pixels=BENCH_PIXELS, decode_threads=2, **size)
        scores = scorer.score([s["conversations"] for s in samples], [s["images"] for s in samples])
        losses, tokens = [s.loss for s in scores], scorer.stats.tokens
        scorer.close()
    seconds = time.perf_counter() - started
    return {"variant": variant, "samples": len(samples), "tokens": tokens, "seconds": seconds,
            "samples_per_s": len(samples) / seconds, "tokens_per_s": tokens / seconds,
            "peak_rss_mb": _peak_rss_mb(), "rss_after_load_mb": rss_loaded, "losses": losses}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_subprocess(variant: str, model_dir: Path, count: int, batch_tokens: int) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--model-dir", str(model_dir),
           "--samples", str(count), "--batch-tokens", str(batch_tokens)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- padding efficiency ---------------------------------------------------------------------------------
def padding_efficiency(model_dir: Path, budgets: list[int], limit: int | None = None) -> dict:
    """Real/padded tokens of the batching over the whole mix at the production image cap."""
    from etl.models.qwen_vl import AnswerLossScorer, load_qwen_vl, padded_tokens, plan_batches

    qwen = load_qwen_vl(model_dir, device="cpu", dtype="fp32")
    prep = AnswerLossScorer(qwen, batch_size=1, max_pixels=PRODUCTION_PIXELS, decode_threads=2)
    samples = realistic_mix()[:limit]
    futures = [prep.pool.submit(prep._prepare, s["conversations"], s["images"]) for s in samples]
    prepared = [f.result() for f in futures]
    prep.close()
    lengths = [p.length for p in prepared if hasattr(p, "length")]
    skipped = len(prepared) - len(lengths)
    real = sum(lengths)
    result = {"samples": len(lengths), "skipped": skipped, "real_tokens": real, "min_len": min(lengths), "max_len": max(lengths),
              "mean_len": real / len(lengths), "kinds": _count(s["kind"] for s in samples), "sorted": {}}
    windows = [lengths[i : i + SORT_WINDOW] for i in range(0, len(lengths), SORT_WINDOW)]
    for budget in budgets:  # sorted within windows of SORT_WINDOW samples, as the scorer does
        plans = [(w, plan_batches(w, batch_tokens=budget)) for w in windows]
        padded = sum(padded_tokens(w, plan) for w, plan in plans)
        result["sorted"][str(budget)] = {"efficiency": real / padded, "forwards": sum(len(p) for _, p in plans)}
    naive = [list(range(i, min(i + 8, len(lengths)))) for i in range(0, len(lengths), 8)]
    result["unsorted_batch_8"] = {"efficiency": real / padded_tokens(lengths, naive), "forwards": len(naive)}
    return result


def _count(items) -> dict:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


# -- report ------------------------------------------------------------------------------------------
def report(runs: dict, padding: dict, args, model_mb: float) -> str:
    base = runs["baseline"]
    lines = [f"# Qwen2-VL answer loss on CPU ({base['samples']} real samples, random Qwen2-VL "
             f"h{MODEL['hidden_size']}×{MODEL['num_hidden_layers']} layers, vocab {MODEL['vocab_size']:,}, "
             f"{model_mb:.0f} MB, {os.cpu_count()} cores)", "",
             "| variant | samples/s | tokens/s | x baseline | peak RSS MB | RSS after load MB |", "|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{r['samples_per_s'] / base['samples_per_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['rss_after_load_mb']:.0f} |")
    lines += ["", f"baseline = one sample per forward, full logits (`model(**inputs, labels=...)`); "
              f"batch1 = `enrich loss` scorer at --batch-size 1 (answer-position logits, 2 decode threads); "
              f"batched = the scorer at --batch-tokens {args.batch_tokens} (the default on CPU). "
              f"Images capped at {BENCH_PIXELS} px (64 visual tokens). "
              f"Max |loss difference| vs baseline: {max(r['max_abs_diff_vs_baseline'] for r in runs.values()):.2e}.", "",
              f"## Padding efficiency (real / padded tokens), {padding['samples']} samples at the production cap "
              f"({PRODUCTION_PIXELS} px)", "",
              f"lengths: min {padding['min_len']}, mean {padding['mean_len']:.0f}, max {padding['max_len']} tokens; "
              f"mix: {padding['kinds']}", "", "| batching | efficiency | forwards |", "|---|---|---|"]
    for budget, r in padding["sorted"].items():
        lines.append(f"| length-sorted per {SORT_WINDOW}-sample window, --batch-tokens {budget} | {r['efficiency']:.3f} | {r['forwards']} |")
    naive = padding["unsorted_batch_8"]
    lines.append(f"| file order, 8 per batch (naive) | {naive['efficiency']:.3f} | {naive['forwards']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few samples, for CI smoke use (< 1 min)")
    p.add_argument("--samples", type=int, default=None, help="samples timed per variant (default 64, quick 12)")
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    count = args.samples or (12 if args.quick else 64)
    if args.variant:  # child process: one variant, JSON on the last stdout line
        print(json.dumps(run_variant(args.variant, args.model_dir, count, args.batch_tokens)))
        return
    from tests.qwen_fixtures import build_tiny_qwen_vl

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_qwen_vl(Path(tmp) / "bench-qwen2-vl", "qwen2_vl", text=MODEL, vision=VISION)
        model_mb = (model_dir / "model.safetensors").stat().st_size / 2**20
        variants = ("baseline", "batched") if args.quick else ("baseline", "batch1", "batched")
        runs = {v: in_subprocess(v, model_dir, count, args.batch_tokens) for v in variants}
        budgets = [4096, 16384] if args.quick else [4096, 16384, 65536]
        padding = padding_efficiency(model_dir, budgets, limit=160 if args.quick else None)
    for r in runs.values():
        r["max_abs_diff_vs_baseline"] = max(abs(a - b) for a, b in zip(runs["baseline"]["losses"], r["losses"]))
    for r in runs.values():
        r.pop("losses")
    speedup = runs["batched"]["samples_per_s"] / runs["baseline"]["samples_per_s"]
    text = report(runs, padding, args, model_mb)
    print(text)
    print(f"ratio batched/baseline: {speedup:.2f}x samples/s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "loss_quick" if args.quick else "loss"
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"runs": runs, "padding": padding, "speedup": speedup, "model": MODEL, "vision": VISION,
         "bench_pixels": BENCH_PIXELS, "batch_tokens": args.batch_tokens}, indent=2))
    (RESULTS / f"{name}.md").write_text(text)


if __name__ == "__main__":
    main()
