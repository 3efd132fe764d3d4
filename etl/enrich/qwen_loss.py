"""`enrich loss`: each sample's mean cross-entropy under Qwen2-VL / Qwen2.5-VL on its answers only.

Fills `samples.loss` (float32, mean over assistant answer tokens, images in the input),
`samples.loss_tokens` (how many answer tokens that mean is over) and `samples.loss_model`
(`<model folder>@<config/weights-index hash>/px<max_pixels>`: two runs agree on a value only if
they used the same checkpoint and the same image cap). A sample that cannot be scored (bad or
missing image, too long for the model, no answer, out of memory even alone) stays NULL and gets an
`errors` row (stage `loss`) — never 0, which would read as "the easiest sample of the lake".

One worker = one model on one device scoring the rows it is given; the runner (or Ray, later)
decides which rows. torch/transformers are imported in `setup`, so this module imports without
the `models` extra. The model code lives in `etl.models.qwen_vl`.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from etl import schema as S
from etl.enrich.base import EnrichBatch, Enricher, EnrichFailure, EnrichResult

KEY = S.KEYS[S.SAMPLES]
DEFAULT_MAX_PIXELS = 28 * 28 * 1280  # same as etl.models.qwen_vl (not imported: it needs torch)
DEFAULT_MIN_PIXELS = 56 * 56


class QwenLossEnricher(Enricher):
    """Per-sample answer loss of a local Qwen2-VL / Qwen2.5-VL checkpoint."""

    name = "loss"
    table = S.SAMPLES
    columns = ("loss", "loss_tokens", "loss_model")
    input_columns = ("conversations", "image_ids")
    # qwen-vl-utils and the Qwen2-VL video processor import torchvision (specs/qwen2vl_loss.md).
    requires = ("torch", "transformers", "torchvision", "qwen_vl_utils")
    extra = "models"

    def __init__(self, model: str, batch_tokens: int | None = None, batch_size: int | None = None,
                 device: str = "auto", dtype: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_pixels: int = DEFAULT_MIN_PIXELS, max_length: int | None = None,
                 decode_threads: int | None = None):
        if not (Path(model) / "config.json").is_file():
            raise SystemExit(f"enrich loss: --model must be a local Hugging Face model folder: {model}")
        if batch_tokens is not None and batch_size is not None:
            raise SystemExit("enrich loss: give --batch-tokens or --batch-size, not both")
        for option, value in (("batch-tokens", batch_tokens), ("batch-size", batch_size), ("max-pixels", max_pixels)):
            if value is not None and value < 1:
                raise SystemExit(f"enrich loss: --{option} must be positive")
        super().__init__(
            model=str(model), batch_tokens=batch_tokens, batch_size=batch_size, device=device, dtype=dtype,
            max_pixels=int(max_pixels), min_pixels=int(min_pixels), max_length=max_length,
            decode_threads=decode_threads or min(4, os.cpu_count() or 1),
        )

    # -- CLI ----------------------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", required=True,
                            help="local Qwen2-VL / Qwen2.5-VL folder (Hugging Face layout, e.g. Qwen2-VL-2B-Instruct)")
        size = parser.add_mutually_exclusive_group()
        size.add_argument("--batch-tokens", type=int, default=None,
                          help="padded tokens per forward, samples sorted by length (default 16384 GPU, 4096 CPU)")
        try:
            size.add_argument("--batch-size", dest="loss_batch_size", type=int, default=None,
                              help="samples per forward instead of a token budget (still length-sorted)")
        except argparse.ArgumentError:  # the runner owns --batch-size
            size.add_argument("--loss-batch-size", dest="loss_batch_size", type=int, default=None,
                              help="samples per forward instead of a token budget (still length-sorted)")
        parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
        parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                            help="auto = bf16 on a GPU that supports it, fp32 otherwise")
        parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                            help=f"cap per image, applied by qwen-vl-utils and the processor alike "
                                 f"(default {DEFAULT_MAX_PIXELS} = 1280 visual tokens)")
        parser.add_argument("--min-pixels", type=int, default=DEFAULT_MIN_PIXELS, help=argparse.SUPPRESS)
        parser.add_argument("--max-length", type=int, default=None,
                            help="longer samples are skipped with an error, never truncated "
                                 "(default: the model's max_position_embeddings)")
        parser.add_argument("--decode-threads", type=int, default=None,
                            help="threads decoding and encoding samples ahead of the model (default min(4, cores))")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "QwenLossEnricher":
        return cls(model=args.model, batch_tokens=args.batch_tokens, batch_size=args.loss_batch_size,
                   device=args.device, dtype=args.dtype, max_pixels=args.max_pixels, min_pixels=args.min_pixels,
                   max_length=args.max_length, decode_threads=args.decode_threads)

    def params(self) -> dict[str, Any]:
        from etl.models.qwen_vl import model_identity  # noqa: PLC0415  (torch only when used)

        return {**self.options, "loss_model": self._loss_model(model_identity(self.options["model"]))}

    def _loss_model(self, model_id: str) -> str:
        return f"{model_id}/px{self.options['max_pixels']}"

    # -- work ---------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load the checkpoint and processor once per worker; start the decode threads."""
        from etl.models.qwen_vl import AnswerLossScorer, load_qwen_vl

        o = self.options
        self.qwen = load_qwen_vl(o["model"], device=o["device"], dtype=o["dtype"])
        self.loss_model = self._loss_model(self.qwen.model_id)
        self.scorer = AnswerLossScorer(
            self.qwen, batch_tokens=o["batch_tokens"], batch_size=o["batch_size"], max_pixels=o["max_pixels"],
            min_pixels=o["min_pixels"], max_length=o["max_length"], decode_threads=o["decode_threads"],
        )

    def prepare(self, batch: EnrichBatch) -> EnrichBatch:
        """Start decoding and encoding the batch's first window of samples (on the decode threads)."""
        if not hasattr(self, "scorer"):
            self.setup()
        batch.started = self.scorer.start(*self._inputs(batch))
        return batch

    def process(self, batch: EnrichBatch) -> EnrichResult:
        """Loss for every scorable sample of the batch; one failure (and NULL) per other sample."""
        if not hasattr(self, "scorer"):
            self.setup()
        keys = batch.rows[KEY].to_pylist()
        before = self.scorer.stats.as_dict()
        scores = self.scorer.score(*self._inputs(batch), started=batch.started)
        stats = {k: v - before[k] for k, v in self.scorer.stats.as_dict().items()}
        done = [(k, s) for k, s in zip(keys, scores) if s.loss is not None]
        failures = [EnrichFailure(k, s.error_kind or "loss_error", s.error_message or "")
                    for k, s in zip(keys, scores) if s.loss is None]
        return EnrichResult(self._values(done), failures, stats)

    @staticmethod
    def _inputs(batch: EnrichBatch) -> tuple[list, list]:
        """The batch's conversations and, per sample, its images' bytes."""
        conversations = batch.rows["conversations"].to_pylist()
        return conversations, batch.image_bytes or [[] for _ in conversations]

    def _values(self, done: list) -> pa.Table:
        fields = {f.name: f for f in S.SAMPLES_SCHEMA}
        schema = pa.schema([fields[KEY], *(fields[c] for c in self.columns)])
        return pa.table({
            KEY: [k for k, _ in done],
            "loss": pa.array([s.loss for _, s in done], pa.float32()),
            "loss_tokens": pa.array([s.answer_tokens for _, s in done], pa.int32()),
            "loss_model": [self.loss_model] * len(done),
        }, schema=schema)
