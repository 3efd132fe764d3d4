"""`python -m etl enrich tags`: RAM++ image tags and their scores for every image without tags.

For each image: decode (worker threads, ahead of the model) -> RAM++ -> sigmoid score per tag ->
`tags` = the tags over their per-class threshold, highest score first, `tag_scores` = their
scores (float32), `tag_model` = which checkpoint produced them. An image with no tag over its
threshold gets an empty list (computed, nothing found), never NULL. An image that cannot be
decoded gets no value (NULL stays) and one `errors` row. With `--all-scores`, `tag_all_scores`
keeps every tag's score (fixed-size list<float32>, DuckDB `FLOAT[n]`) so any threshold can be
applied later in SQL. (float16 would halve it, but DuckDB cannot read Arrow half floats: one such
column makes the whole images table unreadable from SQL.)

torch is imported lazily: this module imports (and `--help` works) without the `models` extra.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from etl import schema as S
from etl.enrich.base import EnrichBatch, Enricher, EnrichFailure, EnrichResult
from etl.images import exception_text, open_image

DEFAULT_TAG_LIST = "ram_tag_list.txt"
DEFAULT_THRESHOLDS = "ram_tag_list_threshold.txt"
ALL_SCORES_COLUMN = "tag_all_scores"
FINGERPRINT_BYTES = 1 << 20
# Measured on CPU (bench/results/ram_plus_swinl.md): Swin-L runs ~2.2 s/image whatever the batch,
# and batch 8 costs +1.1 GB RSS, so CPU defaults to 1. On GPU batching is what keeps it busy.
DEFAULT_BATCH = {"cpu": 1, "cuda": 16}
KEY = S.KEYS[S.IMAGES]


def all_scores_field(num_tags: int) -> pa.Field:
    """The optional images column `--all-scores` fills: every tag's score, in tag-list order."""
    return pa.field(ALL_SCORES_COLUMN, pa.list_(pa.float32(), num_tags))


def checkpoint_id(path: str | Path) -> str:
    """`<file name>:<12 hex>` where the hex is sha256 of (size, first MiB, last MiB).

    Reading 2 MiB instead of 1.3 GB keeps this instant; the last MiB of a torch zip checkpoint
    holds the zip central directory, i.e. a CRC-32 of every tensor, so a change to any weight
    changes the id.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(f.read())
    return f"{path.name}:{digest.hexdigest()[:12]}"


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_tag_list(path: str | Path) -> list[str]:
    """One tag per line (the official file has no final newline); blank lines are an error."""
    names = Path(path).read_text(encoding="utf-8").splitlines()
    blank = [i for i, name in enumerate(names) if not name.strip()]
    if blank:
        raise ValueError(f"{path}: blank tag names at lines {[i + 1 for i in blank[:5]]}")
    return names


def load_thresholds(path: str | Path, num_tags: int) -> np.ndarray:
    """Per-tag score thresholds, one float per line, in tag-list order."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) != num_tags:
        raise ValueError(f"{path}: {len(lines)} thresholds for {num_tags} tags")
    return np.asarray([float(line) for line in lines], dtype=np.float32)


def select_tags(scores: np.ndarray, thresholds: np.ndarray, names: list[str]) -> tuple[list[str], list[float]]:
    """The tags whose score is above their threshold (strictly, as the official `generate_tag`),
    highest score first (ties in tag-list order), with their scores."""
    on = np.flatnonzero(scores > thresholds)
    order = on[np.argsort(-scores[on], kind="stable")]
    return [names[i] for i in order], [float(scores[i]) for i in order]


class DecodeFailure(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def decode_for_model(data: bytes | None, size: int):
    """Bytes -> resized [3,size,size] uint8 tensor; any decoder problem becomes DecodeFailure."""
    from etl.models.ram_plus import resized_pixels

    if data is None:
        raise DecodeFailure("missing_bytes", "the image's bytes could not be read from the lake")
    try:
        with open_image(data) as image:
            return resized_pixels(image, size)
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise DecodeFailure("decode_error", exception_text(exc)) from exc


@dataclass
class DecodedChunk:
    keys: list[str]
    pixels: list[Any]  # tensors, aligned with keys
    failures: list[EnrichFailure]
    wait_seconds: float


class RamPlusEnricher(Enricher):
    """Fill `tags`, `tag_scores`, `tag_model` of images with RAM++ (the official checkpoint)."""

    name = "tags"
    table = S.IMAGES
    columns = ("tags", "tag_scores", "tag_model")
    requires = ("torch",)
    extra = "models"

    def __init__(self, model: str, tag_list: str | None = None, thresholds: str | None = None,
                 batch_size: int | None = None, device: str = "auto", dtype: str = "auto", all_scores: bool = False,
                 decode_threads: int | None = None, image_size: int = 384):
        checkpoint = Path(model)
        super().__init__(
            model=str(checkpoint), tag_list=str(tag_list or checkpoint.with_name(DEFAULT_TAG_LIST)),
            thresholds=str(thresholds or checkpoint.with_name(DEFAULT_THRESHOLDS)),
            batch_size=int(batch_size) if batch_size else None,  # None: by device, set in setup()
            device=device, dtype=dtype, all_scores=bool(all_scores),
            decode_threads=decode_threads or min(4, os.cpu_count() or 1), image_size=int(image_size),
        )
        for option in ("model", "tag_list", "thresholds"):
            if not Path(self.options[option]).is_file():
                raise SystemExit(f"enrich tags: {option.replace('_', '-')} file not found: {self.options[option]}")
        if batch_size is not None and batch_size < 1:
            raise SystemExit("enrich tags: --batch-size must be at least 1")
        self.extra_fields: tuple[pa.Field, ...] = ()
        if all_scores:
            self.columns = (*type(self).columns, ALL_SCORES_COLUMN)
            self.extra_fields = (all_scores_field(len(self._tag_names())),)

    # -- CLI --------------------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", required=True, help="official RAM++ checkpoint (ram_plus_swin_large_14m.pth)")
        parser.add_argument("--tag-list", help=f"tag names, one a line (default: {DEFAULT_TAG_LIST} next to --model)")
        parser.add_argument("--thresholds", help=f"per-tag thresholds (default: {DEFAULT_THRESHOLDS} next to --model)")
        size_help = "images per model forward pass (default: 1 on CPU, 16 on GPU)"
        try:
            parser.add_argument("--batch-size", dest="model_batch_size", type=int, default=None, help=size_help)
        except argparse.ArgumentError:  # the runner owns --batch-size (rows per task)
            parser.add_argument("--model-batch-size", dest="model_batch_size", type=int, default=None, help=size_help)
        parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
        parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                            help="auto = bf16 (or fp16) on GPU, float32 on CPU")
        parser.add_argument("--all-scores", action="store_true",
                            help=f"also keep every tag's score in images.{ALL_SCORES_COLUMN} (FLOAT[n_tags])")
        parser.add_argument("--decode-threads", type=int, default=None,
                            help="image decode threads (default min(4, cores))")
        parser.add_argument("--image-size", type=int, default=384,
                            help="model input size (384 for the official checkpoint; checked against its shift masks)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RamPlusEnricher":
        return cls(model=args.model, tag_list=args.tag_list, thresholds=args.thresholds,
                   batch_size=args.model_batch_size, device=args.device, dtype=args.dtype,
                   all_scores=args.all_scores, decode_threads=args.decode_threads, image_size=args.image_size)

    def params(self) -> dict[str, Any]:
        batch = self.options["batch_size"] or f"auto {DEFAULT_BATCH}"
        return {**self.options, "batch_size": batch, "tag_model": checkpoint_id(self.options["model"]),
                "thresholds_sha256": file_sha256(self.options["thresholds"]),
                "tag_list_sha256": file_sha256(self.options["tag_list"])}

    # -- work -------------------------------------------------------------------------------------
    def _tag_names(self) -> list[str]:
        return load_tag_list(self.options["tag_list"])

    def setup(self) -> None:
        """Load tag names, thresholds and the model once per worker; start the decode threads."""
        from etl.models.ram_plus import load_ram_plus

        self.tag_names = self._tag_names()
        self.thresholds = load_thresholds(self.options["thresholds"], len(self.tag_names))
        self.model = load_ram_plus(self.options["model"], self.options["device"], self.options["dtype"],
                                   num_tags=len(self.tag_names), image_size=self.options["image_size"])
        self.device = next(self.model.parameters()).device
        self.dtype = next(self.model.parameters()).dtype
        if self.options["batch_size"] is None:
            self.options["batch_size"] = DEFAULT_BATCH.get(self.device.type, 1)
        self.tag_model = checkpoint_id(self.options["model"])
        self.pool = ThreadPoolExecutor(self.options["decode_threads"], thread_name_prefix="ram-decode")

    def prepare(self, batch: EnrichBatch) -> EnrichBatch:
        """Start decoding the batch's first two model-sized chunks (on the decode threads)."""
        batch.started = self._start_decoding(batch.rows[KEY].to_pylist(), batch.image_bytes)
        return batch

    def process(self, batch: EnrichBatch) -> EnrichResult:
        """Tags for every decodable image of the batch; one failure per image that is not."""
        keys = batch.rows[KEY].to_pylist()
        done_keys, score_rows, failures = [], [], []
        stats = {"tag_images": 0.0, "tag_model_seconds": 0.0, "tag_decode_wait_seconds": 0.0}
        started = batch.started or self._start_decoding(keys, batch.image_bytes)
        for chunk in self._decoded_chunks(*started):
            failures += chunk.failures
            stats["tag_decode_wait_seconds"] += chunk.wait_seconds
            began = time.perf_counter()
            ok_keys, scores, infer_failures = self._infer(chunk.keys, chunk.pixels)
            stats["tag_model_seconds"] += time.perf_counter() - began
            done_keys += ok_keys
            score_rows += scores
            failures += infer_failures
        stats["tag_images"] = float(len(done_keys))
        return EnrichResult(self._values(done_keys, score_rows), failures, stats)

    def _start_decoding(self, keys: Sequence[str], payloads: Sequence[bytes | None]) -> tuple:
        """The chunks' decode submitter, the chunk starts still to submit and the first two
        chunks' decodes, submitted."""
        size, step = self.options["image_size"], self.options["batch_size"]
        starts = iter(range(0, len(keys), step))

        def submit(start: int) -> list[tuple[str, Future]]:
            return [(keys[i], self.pool.submit(decode_for_model, payloads[i], size))
                    for i in range(start, min(start + step, len(keys)))]

        return submit, starts, deque(submit(s) for s in islice(starts, 2))

    def _decoded_chunks(self, submit, starts: Iterator[int], pending: deque) -> Iterator[DecodedChunk]:
        """Model-sized chunks of decoded images; the next two chunks decode while one is tagged."""
        while pending:
            futures = pending.popleft()
            nxt = next(starts, None)
            if nxt is not None:
                pending.append(submit(nxt))
            yield self._collect(futures)

    @staticmethod
    def _collect(futures: list[tuple[str, Future]]) -> DecodedChunk:
        chunk = DecodedChunk([], [], [], 0.0)
        started = time.perf_counter()
        for key, future in futures:
            try:
                chunk.pixels.append(future.result())
                chunk.keys.append(key)
            except DecodeFailure as exc:
                chunk.failures.append(EnrichFailure(key, exc.kind, str(exc)))
        chunk.wait_seconds = time.perf_counter() - started
        return chunk

    def _infer(self, keys: list[str], pixels: list) -> tuple[list[str], list[np.ndarray], list[EnrichFailure]]:
        """Scores for a chunk; if the chunk fails (e.g. out of memory) retry image by image so
        one bad input cannot fail its neighbours."""
        import torch

        from etl.models.ram_plus import normalise

        if not keys:
            return [], [], []
        try:
            images = normalise(torch.stack(pixels).to(self.device, non_blocking=True), self.dtype)
            return keys, list(self.model.scores(images).cpu().numpy()), []
        except RuntimeError as exc:
            if len(keys) == 1:
                return [], [], [EnrichFailure(keys[0], "inference_error", f"{type(exc).__name__}: {exc}")]
        done, scores, failures = [], [], []
        for key, pixel in zip(keys, pixels):
            k, s, f = self._infer([key], [pixel])
            done, scores, failures = done + k, scores + s, failures + f
        return done, scores, failures

    def _values(self, keys: list[str], scores: list[np.ndarray]) -> pa.Table:
        """The output table: key, tags over threshold (by score), their scores, model id."""
        selected = [select_tags(s, self.thresholds, self.tag_names) for s in scores]
        columns = {
            KEY: pa.array(keys, pa.string()),
            "tags": pa.array([names for names, _ in selected], pa.list_(pa.string())),
            "tag_scores": pa.array([values for _, values in selected], pa.list_(pa.float32())),
            "tag_model": pa.array([self.tag_model] * len(keys), pa.string()),
        }
        if self.options["all_scores"]:
            flat = np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)
            columns[ALL_SCORES_COLUMN] = pa.FixedSizeListArray.from_arrays(pa.array(flat), len(self.tag_names))
        return pa.table(columns)
