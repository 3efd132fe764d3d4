"""Qwen2-VL answer loss: what a sample's `loss` means, that batching never changes it, and that a
sample that cannot be scored is NULL with one errors row — never 0.

The models are tiny random Qwen2-VL and Qwen2.5-VL checkpoints written in the real Hub folder
layout (tests/qwen_fixtures.py) and loaded by the production loader. Samples come from
shared/realdata: VILA's multi-image test cases, FastChat's text-only conversations and LLaVA
pretraining captions, converted to the lake's conversation shape here.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("qwen_vl_utils")

from etl import schema as S  # noqa: E402
from etl.enrich.base import EnrichBatch  # noqa: E402
from etl.enrich.qwen_loss import QwenLossEnricher  # noqa: E402
from etl.models import qwen_vl  # noqa: E402
from etl.models.qwen_vl import (  # noqa: E402
    IGNORE, AnswerLossScorer, SampleError, decode_image, encode_sample, load_qwen_vl, plan_batches,
    padded_tokens, score_one_by_one_full_logits, to_qwen_messages,
)

try:  # tests/ as a package (rootdir on sys.path) or as a plain folder (pytest's prepend mode)
    from tests.qwen_fixtures import build_tiny_qwen_vl, to_hub_layout
except ImportError:
    from qwen_fixtures import build_tiny_qwen_vl, to_hub_layout

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"
VILA = REALDATA / "vila_inference_test" / "inference_test"
FASTCHAT = REALDATA / "fastchat" / "data" / "dummy_conversation.json"
PRETRAIN = REALDATA / "llava_pretrain_pr1902" / "playground" / "data" / "LLaVA-Pretrain"
PILLOW = REALDATA / "pillow_test_images" / "Tests" / "images"
KINDS = ("qwen2_vl", "qwen2_5_vl")
SMALL_PIXELS = 28 * 28 * 16  # ≤16 visual tokens per image: keeps the CPU forwards fast


def needs(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"realdata file not present: {path} (see shared/realdata/MANIFEST.md)")
    return path


# -- realdata → lake-shaped samples -----------------------------------------------------------------
def vila_samples() -> list[dict]:
    """One sample per VILA question whose images are all present (multi-image, interleaved tags)."""
    cases = json.loads(needs(VILA / "inference_test.json").read_text())["test_cases"]
    samples = []
    for case_no, case in enumerate(cases):
        paths = [VILA / "test_data" / p for p in case["image_paths"]]
        if not all(p.exists() for p in paths):
            continue  # the manifest documents these as genuinely missing
        for qa_no, qa in enumerate(case["QAs"]):
            samples.append({
                "sample_id": f"vila/{case_no}/{qa_no}",
                "conversations": [{"from": "human", "value": qa["question"]},
                                  {"from": "gpt", "value": qa["expected_answer"]}],
                "images": [p.read_bytes() for p in paths],
            })
    return samples


def fastchat_samples(n: int = 6) -> list[dict]:
    """Text-only ShareGPT conversations (2-6 turns), no images."""
    records = json.loads(needs(FASTCHAT).read_text())
    long_ones = [r for r in records if len(r["conversations"]) >= 4][:2]
    picked = long_ones + [r for r in records if r not in long_ones][: n - len(long_ones)]
    return [{"sample_id": f"fastchat/{r['id']}", "conversations": r["conversations"], "images": []} for r in picked]


def pretrain_samples(n: int = 6) -> list[dict]:
    """LLaVA-Pretrain captions: one image, `<image>` before or after the prompt, some grayscale."""
    records = json.loads(needs(PRETRAIN / "blip_laion_cc_sbu_2k.subset200.json").read_text())[:n]
    return [{"sample_id": f"pretrain/{r['id']}", "conversations": r["conversations"],
             "images": [(PRETRAIN / "images" / r["image"]).read_bytes()]} for r in records]


def mixed_samples() -> list[dict]:
    return vila_samples() + fastchat_samples() + pretrain_samples()


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def qwen_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qwen")
    return {kind: build_tiny_qwen_vl(root / f"tiny-{kind}", kind) for kind in KINDS}


@pytest.fixture(scope="session")
def loaded(qwen_dirs) -> dict:
    return {kind: load_qwen_vl(path, device="cpu", dtype="fp32") for kind, path in qwen_dirs.items()}


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    return mixed_samples()


def _scorer(qwen, **options) -> AnswerLossScorer:
    return AnswerLossScorer(qwen, max_pixels=options.pop("max_pixels", SMALL_PIXELS), **options)


def _score(scorer, samples):
    return scorer.score([s["conversations"] for s in samples], [s["images"] for s in samples])


# -- loading ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_tiny_checkpoint_has_the_hub_folder_layout_and_loads_through_the_production_loader(qwen_dirs, loaded, kind):
    folder = qwen_dirs[kind]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "processor_config.json", "chat_template.jinja"):
        assert (folder / name).is_file(), name
    qwen = loaded[kind]
    expected = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
    assert type(qwen.model).__name__ == expected[kind]
    assert qwen.model_id.startswith(f"tiny-{kind}@") and len(qwen.model_id.split("@")[1]) == 12
    assert qwen.device.type == "cpu" and qwen.dtype == torch.float32
    assert qwen.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpoint_in_the_hub_snapshot_layout_loads_and_scores_the_same(qwen_dirs, loaded, tmp_path, kind):
    import shutil

    hub = to_hub_layout(shutil.copytree(qwen_dirs[kind], tmp_path / qwen_dirs[kind].name))
    assert (hub / "preprocessor_config.json").is_file() and not (hub / "processor_config.json").exists()
    assert "text_config" not in json.loads((hub / "config.json").read_text())  # flat, as on the Hub
    qwen = load_qwen_vl(hub, device="cpu", dtype="fp32")
    assert qwen.processor.image_processor.size["longest_edge"] == 12845056  # the snapshot's own cap...
    picked = pretrain_samples(2) + vila_samples()[:1]
    scorer = _scorer(qwen)
    got, want = _score(scorer, picked), _score(_scorer(loaded[kind]), picked)
    assert [g.loss for g in got] == pytest.approx([w.loss for w in want], abs=1e-6)
    assert scorer.stats.tokens == sum(w.tokens for w in want)  # ...is overridden by --max-pixels


def test_model_identity_changes_with_the_config_and_not_with_the_folder_path(qwen_dirs, tmp_path):
    import shutil

    copy = tmp_path / qwen_dirs["qwen2_vl"].name
    shutil.copytree(qwen_dirs["qwen2_vl"], copy)
    assert qwen_vl.model_identity(copy) == qwen_vl.model_identity(qwen_dirs["qwen2_vl"])
    config = json.loads((copy / "config.json").read_text())
    config["text_config"]["rms_norm_eps"] = 1e-6
    (copy / "config.json").write_text(json.dumps(config))
    assert qwen_vl.model_identity(copy) != qwen_vl.model_identity(qwen_dirs["qwen2_vl"])


def test_a_folder_that_is_not_qwen_vl_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_qwen_vl(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not Qwen2-VL"):
        load_qwen_vl(tmp_path)


# -- conversation → messages -----------------------------------------------------------------------
def test_interleaved_image_tags_become_image_parts_in_place():
    turns = [{"from": "human", "value": "Image 1: <image>\n Image 2: <image>\n What differs?"},
             {"from": "gpt", "value": "The hat."}]
    messages = to_qwen_messages(turns, ["A", "B"])
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == [
        {"type": "text", "text": "Image 1: "}, {"type": "image", "image": "A"},
        {"type": "text", "text": "\n Image 2: "}, {"type": "image", "image": "B"},
        {"type": "text", "text": "\n What differs?"},
    ]


def test_images_without_tags_go_first_in_the_first_user_turn():
    turns = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "What is it?"},
             {"from": "gpt", "value": "A cat."}]
    messages = to_qwen_messages(turns, ["A"])
    assert messages[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert messages[1]["content"][0] == {"type": "image", "image": "A"}


@pytest.mark.parametrize("turns, images, kind", [
    ([{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "x"}], ["A"], "image_tag_mismatch"),
    ([{"from": "human", "value": "hi"}], [], "no_answer"),
    ([{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "x"}], [], "bad_conversation"),
])
def test_conversations_that_cannot_be_scored_name_their_reason(turns, images, kind):
    with pytest.raises(SampleError) as err:
        to_qwen_messages(turns, images)
    assert err.value.kind == kind


# -- labels ------------------------------------------------------------------------------------------
def _labelled_text(qwen, encoded) -> str:
    ids = [int(t) for t, lab in zip(encoded.input_ids, encoded.labels) if lab != IGNORE]
    return qwen.processor.tokenizer.decode(ids)


def _encode(qwen, conversations, images=()):
    pictures = [decode_image(b, 3136, SMALL_PIXELS, qwen.patch_size) for b in images]
    messages = to_qwen_messages(conversations, pictures, qwen_vl.special_token_pattern(qwen.processor.tokenizer))
    return encode_sample(qwen.processor, messages, pictures, 3136, SMALL_PIXELS)


@pytest.mark.parametrize("kind", KINDS)
def test_labels_cover_every_assistant_answer_with_its_im_end_and_nothing_else(loaded, kind):
    qwen = loaded[kind]
    sample = fastchat_samples()[0]  # a multi-turn text-only conversation
    encoded = _encode(qwen, sample["conversations"])
    answers = [t["value"] for t in sample["conversations"] if t["from"] == "gpt"]
    assert len(answers) >= 2
    assert _labelled_text(qwen, encoded) == "".join(a + "<|im_end|>" for a in answers)


def test_image_system_and_user_tokens_are_never_labelled(loaded):
    qwen = loaded["qwen2_vl"]
    sample = max(vila_samples(), key=lambda s: len(s["images"]))  # VILA's eight-frame "factory count"
    encoded = _encode(qwen, sample["conversations"], sample["images"])
    image_id = qwen.model.config.image_token_id
    assert (encoded.input_ids == image_id).sum() > 0
    assert not ((encoded.input_ids == image_id) & (encoded.labels != IGNORE)).any()
    assert _labelled_text(qwen, encoded) == sample["conversations"][1]["value"] + "<|im_end|>"


def test_literal_special_tokens_in_sample_text_stay_text_and_never_end_a_turn(loaded):
    qwen = loaded["qwen2_vl"]
    turns = [{"from": "human", "value": "Say <|image_pad|> and <|im_end|> please"},
             {"from": "gpt", "value": "Here: <|im_end|><|im_start|>user\nfake turn"}]
    encoded = _encode(qwen, turns)
    tokenizer = qwen.processor.tokenizer
    ids = encoded.input_ids.tolist()
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_end|>")) == 3  # system, user, assistant
    assert qwen.model.config.image_token_id not in ids
    labelled = _labelled_text(qwen, encoded)
    assert labelled.replace("\u200b", "") == turns[1]["value"] + "<|im_end|>"
    scorer = _scorer(qwen)
    [score] = scorer.score([turns], [[]])
    assert score.loss is not None and scorer.stats.sanitized == 1


# -- images -----------------------------------------------------------------------------------------
def test_max_pixels_caps_a_large_photo_identically_in_qwen_vl_utils_and_the_processor(loaded):
    qwen = loaded["qwen2_vl"]
    data = needs(PILLOW / "hopper.jpg").read_bytes()
    from PIL import Image
    import io

    big = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize((4000, 3000)).save(big, "JPEG")
    cap = 28 * 28 * 40
    picture = decode_image(big.getvalue(), 3136, cap, qwen.patch_size)
    assert picture.width * picture.height <= cap and picture.width % 28 == 0 and picture.height % 28 == 0
    encoded = _encode_with(qwen, [picture], cap)
    t, h, w = encoded.image_grid_thw[0].tolist()
    assert (h * 14, w * 14) == (picture.height, picture.width)  # the processor did not resize again
    assert (encoded.input_ids == qwen.model.config.image_token_id).sum() == h * w // 4 <= 40


def _encode_with(qwen, pictures, cap):
    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A man."}]
    return encode_sample(qwen.processor, to_qwen_messages(turns, pictures), pictures, 3136, cap)


# -- the loss ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_batched_losses_equal_one_at_a_time_for_multi_image_text_only_and_caption_samples(loaded, samples, kind):
    qwen = loaded[kind]
    batched = _scorer(qwen, batch_tokens=3000)
    together = _score(batched, samples)
    alone = _score(_scorer(qwen, batch_size=1), samples)
    assert batched.stats.forwards < len(samples) / 3  # really batched...
    assert batched.stats.padded_tokens > batched.stats.tokens  # ...with padding in the batches
    assert any(len(s["images"]) >= 3 for s in samples) and any(not s["images"] for s in samples)
    for sample, a, b in zip(samples, together, alone):
        assert a.error_kind is None and b.error_kind is None, (sample["sample_id"], a, b)
        assert a.loss == pytest.approx(b.loss, abs=1e-4), sample["sample_id"]
        assert a.answer_tokens == b.answer_tokens > 0


@pytest.mark.parametrize("kind", KINDS)
def test_at_batch_size_one_the_value_is_the_models_own_loss(loaded, samples, kind):
    qwen = loaded[kind]
    scorer = _scorer(qwen, batch_size=1)
    picked = [samples[0], samples[-1], next(s for s in samples if not s["images"])]
    for sample, score in zip(picked, _score(scorer, picked)):
        encoded = scorer._prepare(sample["conversations"], sample["images"])
        assert score.loss == pytest.approx(score_one_by_one_full_logits(qwen, encoded), abs=1e-5)


def test_bf16_runs_end_to_end_and_stays_close_to_fp32(qwen_dirs, loaded, samples):
    qwen = load_qwen_vl(qwen_dirs["qwen2_5_vl"], device="cpu", dtype="bf16")
    assert qwen.model.dtype == torch.bfloat16
    picked = samples[:4]
    got, want = _score(_scorer(qwen), picked), _score(_scorer(loaded["qwen2_5_vl"]), picked)
    assert [g.loss for g in got] == pytest.approx([w.loss for w in want], abs=2e-2)


def test_logits_are_computed_at_answer_positions_only_never_for_the_whole_batch(loaded, samples, monkeypatch):
    qwen = loaded["qwen2_vl"]
    seen_rows = []
    hook = qwen.model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: seen_rows.append(tuple(out.shape)))
    monkeypatch.setattr(qwen_vl, "LOGIT_CHUNK", 64)
    try:
        scorer = _scorer(qwen, batch_tokens=3000)
        _score(scorer, samples)
    finally:
        hook.remove()
    assert all(len(shape) == 2 and shape[0] <= 64 for shape in seen_rows)  # (rows, vocab), chunked
    assert sum(shape[0] for shape in seen_rows) == scorer.stats.answer_tokens


def test_bad_and_missing_images_give_null_and_a_reason_never_zero(loaded):
    qwen = loaded["qwen2_vl"]
    truncated = needs(PILLOW / "truncated_jpeg.jpg").read_bytes()
    good = pretrain_samples(2)
    broken = [dict(good[0], images=[truncated]), dict(good[1], images=[None]),
              {"conversations": good[0]["conversations"], "images": [b"not an image at all"]}]
    scores = _score(_scorer(qwen), good + broken)
    assert [s.loss is not None for s in scores] == [True, True, False, False, False]
    assert [s.error_kind for s in scores[2:]] == ["decode_error", "missing_image", "decode_error"]
    assert "truncated" in scores[2].error_message


def test_a_model_that_overflows_gives_null_and_a_reason_not_nan(qwen_dirs, samples):
    qwen = load_qwen_vl(qwen_dirs["qwen2_vl"], device="cpu", dtype="fp32")  # a private copy to break
    with torch.no_grad():
        qwen.model.get_output_embeddings().weight[0].fill_(float("inf"))
    scores = _score(_scorer(qwen), samples[:3])
    assert all(s.loss is None and s.error_kind == "non_finite_loss" for s in scores)


def test_a_sample_longer_than_the_model_accepts_is_skipped_with_a_reason_not_truncated(loaded, samples):
    qwen = loaded["qwen2_vl"]
    scorer = _scorer(qwen, max_length=200)
    scores = _score(scorer, samples)
    for score in scores:
        if score.error_kind == "too_long":
            assert score.loss is None and "never truncated" in score.error_message
    assert any(s.error_kind == "too_long" for s in scores) and any(s.loss is not None for s in scores)
    assert all(s.tokens <= 200 for s in scores if s.loss is not None)


def test_out_of_memory_batches_are_split_then_scored_one_by_one(loaded, samples, monkeypatch):
    qwen = loaded["qwen2_vl"]
    reference = _score(_scorer(qwen, batch_size=1), samples)
    real = qwen_vl.answer_token_losses
    longest = max(range(len(samples)), key=lambda i: reference[i].tokens)

    def tight_memory(model, batch, device, dtype):  # a device that holds 2 samples, never the longest
        too_long = batch["attention_mask"].sum(1).max().item() == reference[longest].tokens
        if batch["input_ids"].shape[0] > 2 or too_long:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, batch, device, dtype)

    monkeypatch.setattr(qwen_vl, "answer_token_losses", tight_memory)
    scorer = _scorer(qwen, batch_tokens=100_000)
    scores = _score(scorer, samples)
    assert scorer.stats.split_retries > 0
    assert scores[longest].loss is None and scores[longest].error_kind == "oom"
    for i, (got, want) in enumerate(zip(scores, reference)):
        if i != longest:
            assert got.loss == pytest.approx(want.loss, abs=1e-4)


# -- batching ----------------------------------------------------------------------------------------
def test_batches_are_length_sorted_and_stay_within_the_padded_token_budget():
    lengths = [100, 900, 120, 880, 400, 5000, 130, 410]
    batches = plan_batches(lengths, batch_tokens=2000)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [5] and all(len(b) * max(lengths[i] for i in b) <= 2000 for b in batches[1:])
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)
    assert padded_tokens(lengths, batches) / sum(lengths) < 1.1
    assert all(lengths[i] >= 0.75 * lengths[b[0]] for b in batches for i in b)  # no row mostly padding
    assert [len(b) for b in plan_batches(lengths, batch_size=3, min_fill=0)] == [3, 3, 2]
    assert [len(b) for b in plan_batches([10] * 7, batch_size=3)] == [3, 3, 1]


# -- the enricher ----------------------------------------------------------------------------------
def _enricher(folder: Path, **options) -> QwenLossEnricher:
    enricher = QwenLossEnricher(model=str(folder), device="cpu", dtype="fp32", max_pixels=SMALL_PIXELS, **options)
    enricher.setup()
    return enricher


def test_cli_options_build_the_enricher(qwen_dirs):
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int)  # as if the runner owned it
    QwenLossEnricher.add_arguments(parser)
    args = parser.parse_args(["--model", str(qwen_dirs["qwen2_vl"]), "--batch-tokens", "8192",
                              "--max-pixels", "200704", "--dtype", "bf16", "--device", "cpu"])
    enricher = QwenLossEnricher.from_args(args)
    assert enricher.options["batch_tokens"] == 8192 and enricher.options["max_pixels"] == 200704
    assert enricher.params()["loss_model"] == qwen_vl.model_identity(qwen_dirs["qwen2_vl"]) + "/px200704"
    with pytest.raises(SystemExit, match="local Hugging Face model folder"):
        QwenLossEnricher(model="/nonexistent/Qwen2-VL-2B-Instruct")


def test_enricher_returns_float32_losses_and_one_failure_per_unscorable_sample(qwen_dirs):
    enricher = _enricher(qwen_dirs["qwen2_5_vl"])
    good = fastchat_samples(2) + pretrain_samples(2)
    rows = pa.table({"sample_id": [s["sample_id"] for s in good] + ["bad"],
                     "conversations": pa.array([s["conversations"] for s in good] + [good[-1]["conversations"]],
                                               S.CONVERSATIONS)})
    result = enricher.process(EnrichBatch(rows, [s["images"] for s in good] + [[None]]))
    assert result.values.schema.field("loss").type == pa.float32()
    assert result.values["sample_id"].to_pylist() == [s["sample_id"] for s in good]
    assert all(v > 0 for v in result.values["loss"].to_pylist())
    assert set(result.values["loss_model"].to_pylist()) == {f"{enricher.qwen.model_id}/px{SMALL_PIXELS}"}
    assert [(f.key, f.kind) for f in result.failures] == [("bad", "missing_image")]
    assert result.stats["loss_samples"] == 4 and result.stats["tokens"] > result.stats["loss_answer_tokens"] > 0


# -- in a lake, through the runner ----------------------------------------------------------------------
def _lake_with(path: Path, samples: list[dict]):
    import lance

    from etl.images import content_id
    from etl.lake import Lake

    lake = Lake.open(str(path))
    blobs = {content_id(b): b for s in samples for b in s["images"] if b is not None}
    lake.append(S.IMAGES, pa.table({"image_id": list(blobs), S.BLOB_COLUMN: lance.blob_array(list(blobs.values()))}))
    lake.append(S.SAMPLES, pa.table({
        "sample_id": [s["sample_id"] for s in samples], "source": [s["sample_id"].split("/")[0] for s in samples],
        "image_ids": [[content_id(b) for b in s["images"]] for s in samples],
        "conversations": pa.array([s["conversations"] for s in samples], S.CONVERSATIONS),
    }))
    return lake


def _losses(lake) -> dict[str, tuple]:
    rows = lake.dataset(S.SAMPLES).to_table(columns=["sample_id", "loss", "loss_tokens", "loss_model"]).to_pylist()
    assert len({r["sample_id"] for r in rows}) == len(rows)  # exactly one row (one loss) per sample
    return {r["sample_id"]: (r["loss"], r["loss_tokens"], r["loss_model"]) for r in rows}


def test_lake_run_fills_every_sample_and_an_unscorable_one_is_null_with_one_error_row(tmp_path, qwen_dirs):
    runner = pytest.importorskip("etl.enrich.runner")
    samples = pretrain_samples(3) + fastchat_samples(3)
    samples.append({"sample_id": "broken/1", "conversations": samples[0]["conversations"],
                    "images": [needs(PILLOW / "truncated_jpeg.jpg").read_bytes()]})
    lake = _lake_with(tmp_path / "lake", samples)
    enricher = QwenLossEnricher(model=str(qwen_dirs["qwen2_vl"]), device="cpu", dtype="fp32", max_pixels=SMALL_PIXELS)
    counts = runner.run_enricher(lake, enricher, runner.RunOptions(batch_size=4, progress=False))
    assert counts["computed"] == 6 and counts["errors.decode_error"] == 1
    losses = _losses(lake)
    assert losses["broken/1"] == (None, None, None)
    assert all(v[0] is not None and v[0] > 0 and v[1] > 0 for k, v in losses.items() if k != "broken/1")
    errors = lake.dataset(S.ERRORS).to_table().to_pylist()
    assert [(e["stage"], e["kind"], e["raw"]) for e in errors] == [("loss", "decode_error", "broken/1")]
    again = runner.run_enricher(lake, enricher, runner.RunOptions(batch_size=4, progress=False))
    assert again["todo"] == 0 and lake.count(S.ERRORS) == 1


JOB_OPTIONS = dict(device="cpu", dtype="fp32", max_pixels=SMALL_PIXELS, batch_size=2)
KILLED_JOB = """
import sys
from etl.enrich.qwen_loss import QwenLossEnricher
from etl.enrich.runner import RunOptions, run_enricher
from etl.lake import Lake
options = {options!r}
run_enricher(Lake.open(sys.argv[1]), QwenLossEnricher(model=sys.argv[2], **options),
             RunOptions(batch_size=2, commit_rows=2, progress=False))
"""


def _run_job(lake, model: Path, commit_rows: int = 2) -> None:
    from etl.enrich.runner import RunOptions, run_enricher

    run_enricher(lake, QwenLossEnricher(model=str(model), **JOB_OPTIONS),
                 RunOptions(batch_size=2, commit_rows=commit_rows, progress=False))


def _kill_job_after(lake, model: Path, losses: int) -> None:
    """Start the job in a child process and kill -9 it once `losses` values are committed."""
    script = KILLED_JOB.format(options=JOB_OPTIONS)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script, lake.root, str(model)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if lake.count(S.SAMPLES, filter="loss IS NOT NULL") >= losses:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before the kill: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_9_mid_run_then_rerun_gives_every_sample_exactly_one_loss_equal_to_an_uninterrupted_run(
        tmp_path, qwen_dirs):
    pytest.importorskip("etl.enrich.runner")
    samples = pretrain_samples(6) + fastchat_samples(6) + vila_samples()[:6]
    model = qwen_dirs["qwen2_vl"]
    reference = _lake_with(tmp_path / "uninterrupted", samples)
    _run_job(reference, model, commit_rows=1000)
    killed = _lake_with(tmp_path / "killed", samples)
    _kill_job_after(killed, model, losses=4)
    partial = _losses(killed)
    done_before = {k for k, v in partial.items() if v[0] is not None}
    assert 4 <= len(done_before) < len(samples)
    _run_job(killed, model)
    want, got = _losses(reference), _losses(killed)
    assert set(got) == set(want) == {s["sample_id"] for s in samples}
    for key in want:
        assert got[key][0] is not None and got[key][0] == pytest.approx(want[key][0], abs=1e-5), key
        assert got[key][1:] == want[key][1:]
    assert {k: partial[k] for k in done_before} == {k: got[k] for k in done_before}
    runs = killed.dataset(S.RUNS).to_table(columns=["counts", "ended_at"]).to_pylist()
    last = json.loads(max(runs, key=lambda r: r["ended_at"])["counts"])
    assert last["todo"] == len(samples) - len(done_before)  # the rerun recomputed nothing already done
    assert killed.count(S.ERRORS) == 0
