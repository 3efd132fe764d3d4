"""Qwen2-VL / Qwen2.5-VL per-sample answer loss: loading, conversation conversion, labels, batching.

What one sample goes through (see specs/qwen2vl_loss.md):

    LLaVA conversation + image bytes
      --to_qwen_messages-->  Qwen messages (`<image>` tags become image parts, in place)
      --decode_image-->      RGB PIL images, resized once by qwen-vl-utils under --max-pixels
      --encode_sample-->     input_ids, mm_token_type_ids, pixel_values, image_grid_thw, labels
                             (labels = input ids on assistant answers, -100 everywhere else)
    many encoded samples --plan_batches--> length-sorted batches under a padded-token budget,
                                           every row at least MIN_FILL real tokens
      --collate--> one padded forward --answer_token_losses--> per-sample mean cross-entropy

The loss is computed from the decoder's hidden states at answer positions only: `lm_head` is
applied to those rows (in chunks), never to the full B×T sequence, because B×T×152k logits are
the memory wall of this job. Per-sample sums use `index_add_`, so a sample's value does not depend
on which batch it was in (equal to one-at-a-time within float rounding; tested to 1e-4 in fp32).

Documented choices:
- The answer span of an assistant turn is every token after `<|im_start|>assistant\\n` up to and
  *including* its `<|im_end|>` (the model is scored on knowing where the answer stops, as in SFT).
  A token that straddles the header/answer boundary (e.g. merged newlines) counts as answer.
- Text that spells a special token literally (`<|im_end|>`, `<|image_pad|>`...) is neutralised
  by a zero-width space after its first character: sample text must never end a turn or add an
  image slot; such samples are counted in the `sanitized` stat.
- Images get EXIF orientation applied (what a viewer shows), first frame of animations, RGB on
  white (qwen-vl-utils' `to_rgb`), then one resize by qwen-vl-utils' `smart_resize` within
  [min_pixels, max_pixels]; the processor is given the same bounds, so it never resizes again.
- Nothing is truncated: a sample longer than `max_length` fails with kind `too_long`.
"""
from __future__ import annotations

import copy
import hashlib
import io
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

IGNORE = -100  # the label value cross-entropy skips (HF convention)
ZERO_WIDTH_SPACE = "\u200b"
IMAGE_TAG = "<image>"
ROLE_OF = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
ASSISTANT_HEADER = "assistant\n"  # what the chat template writes after <|im_start|>
DEFAULT_MAX_PIXELS = 28 * 28 * 1280  # 1280 visual tokens per image (transformers' default cap)
DEFAULT_MIN_PIXELS = 56 * 56  # = qwen-vl-utils' IMAGE_MIN_TOKEN_NUM * 28², same as transformers'
# Samples sorted and batched together. Smaller than the runner's 256 rows per task so that the
# threads prepare the next window while the model runs this one.
DEFAULT_SORT_WINDOW = 128
MIN_FILL = 0.75  # a batch row is at least 75% real tokens (bench: 0.89 efficiency at 16k tokens vs 0.80)
LOGIT_CHUNK = 256  # answer positions per lm_head call: logits stay 256 × vocab floats (156 MB at 152k)


class SampleError(Exception):
    """One sample cannot be scored; `kind` becomes the errors-table kind."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


# -- loading ------------------------------------------------------------------------------------
@dataclass
class QwenVL:
    """A loaded checkpoint: the model (eval, on `device`), its processor and its identity."""

    model: Any
    processor: Any
    model_dir: str
    model_id: str  # "<folder name>@<hash of config + weights index>"
    device: torch.device
    dtype: torch.dtype
    max_length: int  # longest sequence the model accepts (its max_position_embeddings)

    @property
    def patch_size(self) -> int:
        return int(self.processor.image_processor.patch_size)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that supports it, fp32 otherwise (CPU bf16 is slow and less exact)."""
    if dtype == "auto":
        bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16_ok else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def attention_implementation(device: torch.device, dtype: torch.dtype) -> str:
    """flash-attention 2 when installed on a GPU in half precision, else PyTorch SDPA."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def model_identity(model_dir: str | Path) -> str:
    """`<folder>@<12 hex>`: sha256 of config.json and the weights index (or safetensors headers).

    Reading headers, not weights, keeps this instant for a 16 GB checkpoint while still changing
    when the architecture, the tensor layout or the shard list changes.
    """
    folder = Path(model_dir)
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    index = folder / "model.safetensors.index.json"
    if index.exists():
        digest.update(index.read_bytes())
    for shard in sorted(folder.glob("*.safetensors")):
        digest.update(_safetensors_header(shard))
    return f"{folder.resolve().name}@{digest.hexdigest()[:12]}"


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return f.read(size) + path.stat().st_size.to_bytes(8, "little")


def load_qwen_vl(model_dir: str | Path, device: str = "auto", dtype: str = "auto") -> QwenVL:
    """Load a Qwen2-VL or Qwen2.5-VL checkpoint from a local Hugging Face folder (never the Hub)."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a model folder (no config.json)")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if config.model_type not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"{folder}: model_type {config.model_type!r} is not Qwen2-VL or Qwen2.5-VL")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    model = AutoModelForImageTextToText.from_pretrained(
        folder, local_files_only=True, dtype=torch_dtype,
        attn_implementation=attention_implementation(torch_device, torch_dtype),
    )
    model.to(torch_device).eval()
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    text_config = getattr(config, "text_config", config)
    return QwenVL(model, processor, str(folder), model_identity(folder), torch_device, torch_dtype,
                  int(text_config.max_position_embeddings))


# -- conversation → Qwen messages -----------------------------------------------------------------
def neutralise_special_tokens(text: str, pattern: re.Pattern | None) -> str:
    """Break literal special-token strings (`<|im_end|>` → `<\\u200b|im_end|>`) so they stay text."""
    if pattern is None:
        return text
    return pattern.sub(lambda m: m.group(0)[0] + ZERO_WIDTH_SPACE + m.group(0)[1:], text)


def special_token_pattern(tokenizer) -> re.Pattern | None:
    """A regex matching every added/special token string of the tokenizer, longest first."""
    specials = sorted(set(tokenizer.get_added_vocab()), key=len, reverse=True)
    return re.compile("|".join(re.escape(s) for s in specials)) if specials else None


def to_qwen_messages(conversations: Sequence[dict], images: Sequence[Any],
                     special_pattern: re.Pattern | None = None) -> list[dict]:
    """LLaVA turns → Qwen chat messages with image parts where the `<image>` tags were.

    `human`→user, `gpt`→assistant, `system`→system. Images beyond the number of tags go at the
    start of the first user turn (LLaVA's convention for records without a tag); fewer images
    than tags is an error, as is a conversation without any assistant answer.
    """
    n_tags = sum((turn.get("value") or "").count(IMAGE_TAG) for turn in conversations)
    if n_tags > len(images):
        raise SampleError("image_tag_mismatch", f"{n_tags} <image> tags but {len(images)} images")
    untagged = [{"type": "image", "image": im} for im in images[n_tags:]]
    tagged = iter(images[:n_tags])
    messages: list[dict] = []
    for turn in conversations:
        role = ROLE_OF.get(turn.get("from") or "")
        if role is None:
            raise SampleError("bad_conversation", f"unknown speaker {turn.get('from')!r}")
        parts = _content_parts(turn.get("value") or "", tagged, special_pattern)
        if role == "user" and untagged:
            parts, untagged = untagged + parts, []
        messages.append({"role": role, "content": parts})
    if not any(m["role"] == "assistant" for m in messages):
        raise SampleError("no_answer", "the conversation has no gpt/assistant turn to score")
    if untagged:
        raise SampleError("image_tag_mismatch", "images given but the conversation has no user turn")
    return messages


def _content_parts(value: str, tagged_images, special_pattern) -> list[dict]:
    pieces = value.split(IMAGE_TAG)
    parts: list[dict] = []
    for i, piece in enumerate(pieces):
        if i > 0:
            parts.append({"type": "image", "image": next(tagged_images)})
        if piece:
            parts.append({"type": "text", "text": neutralise_special_tokens(piece, special_pattern)})
    return parts or [{"type": "text", "text": ""}]


# -- images ---------------------------------------------------------------------------------------
def decode_image(data: bytes | None, min_pixels: int, max_pixels: int, patch_size: int) -> Image.Image:
    """Bytes → RGB image resized by qwen-vl-utils within [min_pixels, max_pixels]."""
    from qwen_vl_utils import fetch_image

    if data is None:
        raise SampleError("missing_image", "image bytes are missing from the lake")
    try:
        image = Image.open(io.BytesIO(data))
        image = ImageOps.exif_transpose(image)  # also forces the decode: truncated files fail here
        image.load()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError)
        raise SampleError("decode_error", f"{type(exc).__name__}: {exc}") from None
    element = {"image": image, "min_pixels": min_pixels, "max_pixels": max_pixels}
    return fetch_image(element, image_patch_size=patch_size)


# -- one sample → tensors --------------------------------------------------------------------------
@dataclass
class EncodedSample:
    """One sample's model inputs (1-D, unpadded) and labels."""

    input_ids: torch.Tensor
    mm_token_type_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    sanitized: bool = False

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())

    @property
    def answer_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


def encode_sample(processor, messages: list[dict], images: list[Image.Image], min_pixels: int,
                  max_pixels: int) -> EncodedSample:
    """Chat template + processor for one sample; labels keep only assistant answer tokens."""
    text = processor.apply_chat_template(messages, tokenize=False)
    out = processor(
        text=[text], images=images or None, return_tensors="pt", return_offsets_mapping=True,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
    )
    input_ids = out["input_ids"][0]
    labels = answer_labels(input_ids, out["offset_mapping"][0], processor.tokenizer)
    return EncodedSample(
        input_ids=input_ids, mm_token_type_ids=out["mm_token_type_ids"][0], labels=labels,
        pixel_values=out.get("pixel_values"), image_grid_thw=out.get("image_grid_thw"),
    )


def answer_labels(input_ids: torch.Tensor, offsets: torch.Tensor, tokenizer) -> torch.Tensor:
    """-100 everywhere except assistant answers: after `<|im_start|>assistant\\n` up to `<|im_end|>`.

    Turns are found by the atomic `<|im_start|>`/`<|im_end|>` ids; the header is matched on the
    decoded text and its end located with character offsets, so it works whatever the BPE merges.
    """
    start_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = input_ids.tolist()
    labels = torch.full_like(input_ids, IGNORE)
    starts = [i for i, t in enumerate(ids) if t == start_id]
    for s in starts:
        e = next((j for j in range(s + 1, len(ids)) if ids[j] == end_id), None)
        if e is None or not tokenizer.decode(ids[s + 1 : e + 1]).startswith(ASSISTANT_HEADER):
            continue
        header_end = int(offsets[s][1]) + len(ASSISTANT_HEADER)
        answer = [k for k in range(s + 1, e) if int(offsets[k][1]) > header_end] + [e]
        labels[answer] = input_ids[answer]
    return labels


# -- batching ---------------------------------------------------------------------------------------
def plan_batches(lengths: Sequence[int], batch_tokens: int | None = None, batch_size: int | None = None,
                 min_fill: float = MIN_FILL) -> list[list[int]]:
    """Group sample indices into forwards, longest first, so neighbours have similar lengths.

    With `batch_tokens`, a batch grows while (its size × its longest length) — the padded token
    count the GPU actually computes — stays within the budget; a single over-budget sample still
    gets a batch of its own. With `batch_size`, batches have that many samples. Either way a
    sample shorter than `min_fill` × the batch's longest starts a new batch, which bounds the
    padding of every row (a big budget would otherwise pad short chats to a long multi-image one).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        if current is not None and _fits(len(current), lengths[i], lengths[current[0]], batch_tokens, batch_size,
                                         min_fill):
            current.append(i)
        else:
            batches.append([i])
    return batches


def _fits(size: int, length: int, longest: int, batch_tokens: int | None, batch_size: int | None,
          min_fill: float) -> bool:
    if length < min_fill * longest:
        return False
    if batch_size is not None and size >= batch_size:
        return False
    return batch_tokens is None or (size + 1) * longest <= batch_tokens


def padded_tokens(lengths: Sequence[int], batches: list[list[int]]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def collate(samples: Sequence[EncodedSample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; images are concatenated in sample order, as the processor would."""
    longest = max(s.length for s in samples)

    def pad(attr: str, value: int) -> torch.Tensor:
        out = torch.full((len(samples), longest), value, dtype=torch.long)
        for row, s in enumerate(samples):
            out[row, : s.length] = getattr(s, attr)
        return out

    attention = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, s in enumerate(samples):
        attention[row, : s.length] = 1
    batch = {"input_ids": pad("input_ids", pad_id), "attention_mask": attention,
             "mm_token_type_ids": pad("mm_token_type_ids", 0), "labels": pad("labels", IGNORE)}
    with_images = [s for s in samples if s.pixel_values is not None]
    if with_images:
        batch["pixel_values"] = torch.cat([s.pixel_values for s in with_images])
        batch["image_grid_thw"] = torch.cat([s.image_grid_thw for s in with_images])
    return batch


# -- the loss -----------------------------------------------------------------------------------------
@torch.inference_mode()
def answer_token_losses(model, batch: dict[str, torch.Tensor], device: torch.device,
                        dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token cross-entropies, answer-token count) per sample of a collated batch.

    Position t predicts token t+1. Only rows whose next token is an answer token go through
    `lm_head`, in chunks of LOGIT_CHUNK; logits are upcast to fp32 as HF's own loss does.
    """
    labels = batch["labels"].to(device)
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    hidden = model.model(**inputs, use_cache=False).last_hidden_state
    next_labels = labels[:, 1:]
    rows, cols = (next_labels != IGNORE).nonzero(as_tuple=True)
    targets = next_labels[rows, cols]
    lm_head = model.get_output_embeddings()
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=device)
    for chunk in torch.split(torch.arange(rows.numel(), device=device), LOGIT_CHUNK):
        logits = lm_head(hidden[rows[chunk], cols[chunk]]).float()
        losses = F.cross_entropy(logits, targets[chunk], reduction="none")
        sums.index_add_(0, rows[chunk], losses)
    counts = torch.bincount(rows, minlength=labels.shape[0])
    return sums.cpu(), counts.cpu()


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


# -- the job ---------------------------------------------------------------------------------------------
@dataclass
class SampleScore:
    """A sample's result: a loss, or an error kind + message (then loss is None, never 0)."""

    loss: float | None = None
    answer_tokens: int = 0
    tokens: int = 0
    error_kind: str | None = None
    error_message: str | None = None


@dataclass
class ScoreStats:
    samples: int = 0
    tokens: int = 0  # real (unpadded) input tokens of scored samples
    padded_tokens: int = 0  # what the forwards computed, padding included
    answer_tokens: int = 0
    forwards: int = 0
    split_retries: int = 0  # failed forwards retried as two halves (OOM, or to isolate a bad sample)
    sanitized: int = 0  # samples whose text spelled a special token (neutralised, see module doc)

    def as_dict(self) -> dict[str, float]:
        """Run counters: `tokens` (what a progress bar shows as tokens/s), the rest prefixed `loss_`."""
        return {("tokens" if k == "tokens" else f"loss_{k}"): float(v) for k, v in self.__dict__.items()}


class AnswerLossScorer:
    """Score many samples: decode/encode on worker threads, length-sorted batched forwards.

    Samples are handled in windows of `sort_window`: while the model runs window k, the threads
    already decode and encode window k+1, so host memory holds at most two windows of encoded
    samples (pixel values are the bulk: ≤ 24 MB fp32 per image at the default 1280-token cap).
    A forward that runs out of memory is retried on each half of its batch, down to one sample,
    which then fails with kind `oom`.
    """

    def __init__(self, qwen: QwenVL, batch_tokens: int | None = None, batch_size: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, min_pixels: int = DEFAULT_MIN_PIXELS,
                 max_length: int | None = None, decode_threads: int = 2,
                 sort_window: int = DEFAULT_SORT_WINDOW):
        if batch_tokens is None and batch_size is None:
            batch_tokens = 16384 if qwen.device.type == "cuda" else 4096
        self.qwen, self.batch_tokens, self.batch_size = qwen, batch_tokens, batch_size
        self.min_pixels, self.max_pixels = min(min_pixels, max_pixels), max_pixels
        self.max_length = max_length or qwen.max_length
        self.sort_window = sort_window
        self.special_pattern = special_token_pattern(qwen.processor.tokenizer)
        self.pad_id = qwen.processor.tokenizer.pad_token_id
        self._local = threading.local()
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="qwen-decode")
        self.stats = ScoreStats()

    def start(self, conversations: Sequence[Sequence[dict]], images: Sequence[Sequence[bytes | None]]) -> list:
        """Set the threads decoding and encoding the first window; give the result to `score`."""
        return self._submit(range(min(self.sort_window, len(conversations))), conversations, images)

    def score(self, conversations: Sequence[Sequence[dict]], images: Sequence[Sequence[bytes | None]],
              started: list | None = None) -> list[SampleScore]:
        """One SampleScore per sample, in input order (`started`: what `start` returned for them)."""
        n = len(conversations)
        windows = [range(i, min(i + self.sort_window, n)) for i in range(0, n, self.sort_window)]
        results: list[SampleScore] = [SampleScore() for _ in range(n)]
        pending = started if started is not None else self.start(conversations, images)
        for k, window in enumerate(windows):
            prepared = [f.result() for f in pending]
            if k + 1 < len(windows):  # overlap: the threads prepare the next window meanwhile
                pending = self._submit(windows[k + 1], conversations, images)
            self._score_window(list(window), prepared, results)
        return results

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    # -- preparation (worker threads) --
    def _submit(self, window, conversations, images):
        return [self.pool.submit(self._prepare, conversations[i], images[i]) for i in window]

    def _processor(self):
        """One processor per thread: the Rust tokenizer's settings are not safe to share."""
        if not hasattr(self._local, "processor"):
            self._local.processor = copy.deepcopy(self.qwen.processor)
        return self._local.processor

    def _prepare(self, conversation, image_bytes) -> EncodedSample | SampleError:
        try:
            pictures = [decode_image(b, self.min_pixels, self.max_pixels, self.qwen.patch_size)
                        for b in image_bytes or []]
            messages = to_qwen_messages(list(conversation or []), pictures, self.special_pattern)
            encoded = encode_sample(self._processor(), messages, pictures, self.min_pixels, self.max_pixels)
            encoded.sanitized = self._spells_special_tokens(conversation or [])
            if encoded.pixel_values is not None:  # the forward casts anyway; bf16 halves host memory
                encoded.pixel_values = encoded.pixel_values.to(self.qwen.dtype)
        except SampleError as err:
            return err
        except Exception as exc:  # a processor/tokenizer failure on one sample must not stop the batch
            return SampleError("encode_error", f"{type(exc).__name__}: {exc}")
        if encoded.length > self.max_length:
            return SampleError("too_long", f"{encoded.length} tokens > max_length {self.max_length}"
                               f" (never truncated: image tokens cannot be cut)")
        if encoded.answer_tokens == 0:
            return SampleError("no_answer", "no assistant answer tokens found after templating")
        return encoded

    def _spells_special_tokens(self, conversation) -> bool:
        pattern = self.special_pattern
        return pattern is not None and any(pattern.search(t.get("value") or "") for t in conversation)

    # -- forwards (main thread) --
    def _score_window(self, indices: list[int], prepared: list, results: list[SampleScore]) -> None:
        ok = [(i, p) for i, p in zip(indices, prepared) if isinstance(p, EncodedSample)]
        for i, p in zip(indices, prepared):
            if isinstance(p, SampleError):
                results[i] = SampleScore(error_kind=p.kind, error_message=p.message)
        lengths = [p.length for _, p in ok]
        for batch in plan_batches(lengths, self.batch_tokens, self.batch_size):
            self._forward([ok[j] for j in batch], results)

    def _forward(self, items: list[tuple[int, EncodedSample]], results: list[SampleScore]) -> None:
        samples = [p for _, p in items]
        try:
            sums, counts = answer_token_losses(self.qwen.model, collate(samples, self.pad_id),
                                               self.qwen.device, self.qwen.dtype)
            failure = None
        except Exception as exc:  # noqa: BLE001  (retried below, once the traceback has let go)
            failure = (is_out_of_memory(exc), f"{type(exc).__name__}: {exc}"[:2000])
        if failure is not None:  # outside `except`: the failed forward's tensors are freed by now
            self._retry_smaller(items, results, *failure)
            return
        self._record(items, sums, counts)
        for (i, p), s, c in zip(items, sums.tolist(), counts.tolist()):
            if math.isfinite(s):
                results[i] = SampleScore(loss=s / c, answer_tokens=int(c), tokens=p.length)
            else:  # e.g. fp16 overflow: a NaN/inf is no more a measurement than a 0 would be
                results[i] = SampleScore(error_kind="non_finite_loss", error_message=f"loss sum is {s} ({self.qwen.dtype})")

    def _retry_smaller(self, items, results, out_of_memory: bool, message: str) -> None:
        """OOM (or any batch failure): split in halves; a single sample gets its error recorded."""
        if self.qwen.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(items) == 1:
            results[items[0][0]] = SampleScore(error_kind="oom" if out_of_memory else "model_error",
                                               error_message=message)
            return
        self.stats.split_retries += 1
        half = len(items) // 2
        self._forward(items[:half], results)
        self._forward(items[half:], results)

    def _record(self, items, sums, counts) -> None:
        longest = max(p.length for _, p in items)
        self.stats.forwards += 1
        self.stats.samples += len(items)
        self.stats.tokens += sum(p.length for _, p in items)
        self.stats.padded_tokens += longest * len(items)
        self.stats.answer_tokens += int(counts.sum())
        self.stats.sanitized += sum(p.sanitized for _, p in items)


def score_one_by_one_full_logits(qwen: QwenVL, encoded: EncodedSample) -> float:
    """Reference value (the seed-style loop): one sample, full logits, HF's own `loss`."""
    batch = collate([encoded], qwen.processor.tokenizer.pad_token_id)
    batch = {k: v.to(qwen.device) for k, v in batch.items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(qwen.dtype)
    with torch.inference_mode():
        return float(qwen.model(**batch, use_cache=False).loss)


__all__: list[str] = [
    "AnswerLossScorer", "EncodedSample", "QwenVL", "SampleError", "SampleScore", "answer_labels",
    "answer_token_losses", "collate", "decode_image", "encode_sample", "load_qwen_vl", "model_identity",
    "plan_batches", "padded_tokens", "score_one_by_one_full_logits", "to_qwen_messages",
]
