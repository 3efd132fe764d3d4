"""RAM++ (Recognize Anything Plus) image tagging, in plain torch, loading the official checkpoint.

The official `recognize-anything` package is not on PyPI and breaks on transformers 5, so this
module re-implements its *inference* path (see specs/ram_plus.md) with the official parameter
names, so `torch.load("ram_plus_swin_large_14m.pth")["model"]` loads unchanged:

    image --preprocess--> [B,3,S,S] --Swin (visual_encoder)--> [B,1+N,C] (mean token first)
          --image_proj--> E [B,1+N,512]
    label_embed [T*D,512] --reweight by softmax_d(exp(reweight_scale) * <E0/|E0|, d>)--> [B,T,512]
          --wordvec_proj + relu--> queries [B,T,768]
          --tagging_head (2 cross-attention-only BERT layers over E)--> fc --> one logit per tag

The architecture (Swin width/depths/heads/window, head width/layers) is read from the tensors'
shapes, so the same loader serves the real Swin-L checkpoint and the tiny test checkpoints.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_IMAGE_SIZE = 384
OFFICIAL_DESCRIPTIONS_PER_TAG = 51
SWIN_LN_EPS = 1e-5
BERT_LN_EPS = 1e-12
# The tagging head's head count is in no tensor shape; the official q2l_config.json says 4.
TAGGING_HEAD_HEADS = 4
SHIFT_MASK_VALUE = -100.0  # what the official Swin adds across shifted-window regions (not -inf)

# Buffers the official checkpoint carries but that follow from the architecture; we recompute
# them, check them against the file when present, and never load them.
RECOMPUTED_BUFFERS = ("relative_position_index", "attn_mask")
# RAM++ was released with Swin-L (and trained with Swin-B): both 2-2-18-2. A checkpoint with the
# official label_embed (4585 tags x 51) but another depth has lost whole blocks.
OFFICIAL_LABEL_ROWS = 4585 * OFFICIAL_DESCRIPTIONS_PER_TAG
OFFICIAL_SWIN_DEPTHS = (2, 2, 18, 2)
LEGACY_HEAD_PREFIX = "vision_multi."  # older checkpoints' name for tagging_head
HEAD_PREFIX = "tagging_head."


class CheckpointError(ValueError):
    """The file is not a RAM++ checkpoint this implementation can load exactly."""


@dataclass(frozen=True)
class RamPlusConfig:
    """The architecture, as read from a checkpoint's tensor shapes (plus the input size)."""

    image_size: int = OFFICIAL_IMAGE_SIZE
    patch_size: int = 4
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_hidden: tuple[int, ...] = (768, 1536, 3072, 6144)  # mlp_ratio 4
    embed_width: int = 512  # image_proj output = label_embed width = cross-attention k/v input
    hidden_size: int = 768
    head_layers: int = 2
    head_heads: int = 4
    intermediate_size: int = 3072
    num_tags: int = 4585
    descriptions_per_tag: int = OFFICIAL_DESCRIPTIONS_PER_TAG

    @property
    def vision_width(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def stage_resolution(self, stage: int) -> int:
        return self.image_size // self.patch_size // 2**stage

    def summary(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# Swin encoder (Microsoft naming: visual_encoder.*)
# ------------------------------------------------------------------------------------------------
def relative_position_index(window: int) -> torch.Tensor:
    """[w*w, w*w] index into the (2w-1)^2 bias table for each (query, key) pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B,H,W,C] -> [B*nW, w*w, C], windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of window_partition: [B*nW, w*w, C] -> [B,H,W,C]."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(resolution: int, window: int, shift: int) -> torch.Tensor:
    """[nW, w*w, w*w] additive mask: -100 between tokens that the cyclic shift brought together
    from different image regions (exactly the official Swin `attn_mask`)."""
    labels = torch.zeros(1, resolution, resolution, 1)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, (hs, ws) in enumerate((hs, ws) for hs in bounds for ws in bounds):
        labels[:, hs, ws, :] = i
    windows = window_partition(labels, window).squeeze(-1)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return torch.where(diff != 0, SHIFT_MASK_VALUE, 0.0)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.window, self.heads = window, heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self) -> torch.Tensor:
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.heads).permute(2, 0, 1)  # [heads, n, n]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B*nW, n, C]; mask [nW, n, n] or None. Returns [B*nW, n, C]."""
        bw, n, c = x.shape
        windows = mask.shape[0] if mask is not None else 1
        # [3, B, nW, heads, n, d]: the image axis B stays separate so the [nW, heads, n, n] bias
        # broadcasts over it instead of being copied per image.
        qkv = self.qkv(x).view(bw // windows, windows, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5)
        bias = self.position_bias().to(x.dtype)  # [heads, n, n]
        if mask is not None:
            bias = bias + mask.to(x.dtype).unsqueeze(1)  # [nW, heads, n, n]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, nW, heads, n, d]
        return self.proj(out.transpose(2, 3).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-LN window attention + MLP; odd blocks shift the windows by half a window.

    As in the official code, a stage whose resolution is not larger than the window uses one
    window covering the whole map and never shifts.
    """

    def __init__(self, dim: int, resolution: int, heads: int, window: int, shift: int, mlp_hidden: int):
        super().__init__()
        if resolution <= window:
            window, shift = resolution, 0
        self.resolution, self.window, self.shift = resolution, window, shift
        self.norm1 = nn.LayerNorm(dim, eps=SWIN_LN_EPS)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim, eps=SWIN_LN_EPS)
        self.mlp = Mlp(dim, mlp_hidden)
        mask = shifted_window_mask(resolution, window, shift) if shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        r, w, s = self.resolution, self.window, self.shift
        y = self.norm1(x).view(b, r, r, c)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = window_reverse(self.attn(window_partition(y, w), self.attn_mask), w, r, r)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + y.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token: concat (in the official x0,x1,x2,x3 order), LN, Linear."""

    def __init__(self, dim: int, resolution: int):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim, eps=SWIN_LN_EPS)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, self.resolution, self.resolution, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    def __init__(self, cfg: RamPlusConfig, stage: int):
        super().__init__()
        dim, res = cfg.embed_dim * 2**stage, cfg.stage_resolution(stage)
        self.blocks = nn.ModuleList(
            SwinBlock(dim, res, cfg.num_heads[stage], cfg.window_size, (i % 2) * (cfg.window_size // 2),
                      cfg.mlp_hidden[stage])
            for i in range(cfg.depths[stage])
        )
        self.downsample = PatchMerging(dim, res) if stage < len(cfg.depths) - 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, cfg: RamPlusConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=SWIN_LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinEncoder(nn.Module):
    """Image [B,3,S,S] -> [B, 1+N, C]: the mean of the final tokens, then the tokens."""

    def __init__(self, cfg: RamPlusConfig):
        super().__init__()
        self.patch_embed = PatchEmbed(cfg)
        self.layers = nn.ModuleList(SwinStage(cfg, i) for i in range(len(cfg.depths)))
        self.norm = nn.LayerNorm(cfg.vision_width, eps=SWIN_LN_EPS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)


# ------------------------------------------------------------------------------------------------
# Tagging head (BERT naming: tagging_head.encoder.layer.{i}.*), cross-attention only, post-LN
# ------------------------------------------------------------------------------------------------
class CrossAttentionProjections(nn.Module):  # official name: crossattention.self
    def __init__(self, hidden: int, kv_width: int):
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)


class ResidualOutput(nn.Module):  # official names: crossattention.output, output
    def __init__(self, inner: int, hidden: int):
        super().__init__()
        self.dense = nn.Linear(inner, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=BERT_LN_EPS)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class CrossAttention(nn.Module):
    def __init__(self, hidden: int, kv_width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.self = CrossAttentionProjections(hidden, kv_width)
        self.output = ResidualOutput(hidden, hidden)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, -1, self.heads, h // self.heads).transpose(1, 2)

        q, k, v = split(self.self.query(x)), split(self.self.key(context)), split(self.self.value(context))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, h)
        return self.output(attended, x)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.dense = nn.Linear(hidden, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # BERT "gelu" = exact erf GELU


class TaggingLayer(nn.Module):
    def __init__(self, cfg: RamPlusConfig):
        super().__init__()
        self.crossattention = CrossAttention(cfg.hidden_size, cfg.embed_width, cfg.head_heads)
        self.intermediate = Intermediate(cfg.hidden_size, cfg.intermediate_size)
        self.output = ResidualOutput(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.crossattention(x, context)
        return self.output(self.intermediate(x), x)


class TaggingEncoder(nn.Module):
    def __init__(self, cfg: RamPlusConfig):
        super().__init__()
        self.layer = nn.ModuleList(TaggingLayer(cfg) for _ in range(cfg.head_layers))


class TaggingHead(nn.Module):
    def __init__(self, cfg: RamPlusConfig):
        super().__init__()
        self.encoder = TaggingEncoder(cfg)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder.layer:
            queries = layer(queries, context)
        return queries


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------
class RamPlus(nn.Module):
    """RAM++ inference: `forward(images)` returns one logit per tag, [B, num_tags]."""

    def __init__(self, cfg: RamPlusConfig):
        super().__init__()
        self.config = cfg
        self.visual_encoder = SwinEncoder(cfg)
        self.image_proj = nn.Linear(cfg.vision_width, cfg.embed_width)
        self.label_embed = nn.Parameter(torch.zeros(cfg.num_tags * cfg.descriptions_per_tag, cfg.embed_width))
        self.reweight_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.wordvec_proj = nn.Linear(cfg.embed_width, cfg.hidden_size)
        self.tagging_head = TaggingHead(cfg)
        self.fc = nn.Linear(cfg.hidden_size, 1)

    def label_queries(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Per image, each tag's query: its description embeddings averaged with weights
        softmax(exp(reweight_scale) * cos(image, description)), then wordvec_proj + ReLU."""
        cfg = self.config
        cls = F.normalize(image_embeds[:, 0, :], dim=-1)
        descriptions = self.label_embed.view(cfg.num_tags, cfg.descriptions_per_tag, cfg.embed_width)
        logits = self.reweight_scale.exp() * (cls @ self.label_embed.t())
        weights = logits.view(-1, cfg.num_tags, cfg.descriptions_per_tag).softmax(dim=-1)
        label_vectors = torch.einsum("btd,tdc->btc", weights, descriptions)
        return F.relu(self.wordvec_proj(label_vectors))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image_embeds = self.image_proj(self.visual_encoder(images))
        tagged = self.tagging_head(self.label_queries(image_embeds), image_embeds)
        return self.fc(tagged).squeeze(-1)

    @torch.inference_mode()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Sigmoid scores [B, num_tags] in float32 (whatever dtype the model runs in)."""
        return torch.sigmoid(self(images).float())


# ------------------------------------------------------------------------------------------------
# Loading the official checkpoint
# ------------------------------------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """`torch.load(path)["model"]` (or a bare state dict), memory-mapped, tensors only."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = _torch_load(path)
    except Exception as exc:  # torch raises many types for a non-checkpoint file
        raise CheckpointError(
            f"{path}: not a loadable torch checkpoint ({type(exc).__name__}: {exc}). Only tensors are "
            "loaded (weights_only); a file holding other objects must be re-saved as {'model': state_dict}"
        ) from exc
    sd = ckpt.get("model", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{path}: expected {{'model': state_dict}}, found {type(ckpt).__name__}")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _torch_load(path: str | Path):
    """Memory-mapped when the file is a zip checkpoint (no 1.3 GB copy), plain load otherwise."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def normalise_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the older `vision_multi.` prefix to `tagging_head.` (as the official loader does)."""
    out = {}
    for key, value in sd.items():
        new = HEAD_PREFIX + key[len(LEGACY_HEAD_PREFIX):] if key.startswith(LEGACY_HEAD_PREFIX) else key
        if new in out:
            raise CheckpointError(f"both {key!r} and its new name {new!r} are in the checkpoint")
        out[new] = value
    return out


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"missing key {key!r}: not a RAM++ checkpoint (or an incomplete one)")
    return tuple(sd[key].shape)


def _count_indices(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many consecutive indices `{i}` the keys matching `pattern` use (0..n-1)."""
    regex = re.compile(pattern)
    found = {int(m.group(1)) for key in sd if (m := regex.match(key))}
    n = max(found) + 1 if found else 0
    if found != set(range(n)):
        raise CheckpointError(f"keys {pattern!r} skip indices: found {sorted(found)}")
    return n


def infer_config(sd: Mapping[str, torch.Tensor], num_tags: int | None = None,
                 image_size: int = OFFICIAL_IMAGE_SIZE) -> RamPlusConfig:
    """Read the architecture from tensor shapes; every tensor is then checked by `check_keys`."""
    embed_dim, _, patch, _ = _shape(sd, "visual_encoder.patch_embed.proj.weight")
    stages = _count_indices(sd, r"visual_encoder\.layers\.(\d+)\.blocks\.0\.norm1\.weight$")
    if stages == 0:
        raise CheckpointError("no visual_encoder.layers.*: not a Swin RAM++ checkpoint")
    depths = tuple(_count_indices(sd, rf"visual_encoder\.layers\.{i}\.blocks\.(\d+)\.norm1\.weight$")
                   for i in range(stages))
    tables = [_shape(sd, f"visual_encoder.layers.{i}.blocks.0.attn.relative_position_bias_table")
              for i in range(stages)]
    window = (math.isqrt(tables[0][0]) + 1) // 2
    rows, embed_width = _shape(sd, "label_embed")
    hidden, _ = _shape(sd, "wordvec_proj.weight")
    if num_tags is None:
        num_tags = rows // OFFICIAL_DESCRIPTIONS_PER_TAG
    if num_tags <= 0 or rows % num_tags:
        raise CheckpointError(f"label_embed has {rows} rows, not a multiple of the {num_tags} tags of the tag list")
    if hidden % TAGGING_HEAD_HEADS:
        raise CheckpointError(f"tagging head width {hidden} is not divisible by its {TAGGING_HEAD_HEADS} heads")
    return RamPlusConfig(
        image_size=image_size, patch_size=patch, embed_dim=embed_dim, depths=depths,
        num_heads=tuple(t[1] for t in tables), window_size=window,
        mlp_hidden=tuple(_shape(sd, f"visual_encoder.layers.{i}.blocks.0.mlp.fc1.weight")[0] for i in range(stages)),
        embed_width=embed_width, hidden_size=hidden,
        head_layers=_count_indices(sd, r"tagging_head\.encoder\.layer\.(\d+)\.intermediate\.dense\.weight$"),
        head_heads=TAGGING_HEAD_HEADS,
        intermediate_size=_shape(sd, "tagging_head.encoder.layer.0.intermediate.dense.weight")[0],
        num_tags=num_tags, descriptions_per_tag=rows // num_tags,
    )


def check_architecture(cfg: RamPlusConfig) -> None:
    """Catch what key-by-key checks cannot: blocks deleted whole (their keys simply absent)."""
    odd = [i for i, depth in enumerate(cfg.depths) if depth % 2]
    if odd:
        raise CheckpointError(f"Swin stages {odd} have an odd block count (depths {cfg.depths}); blocks come "
                              "in (window, shifted-window) pairs, so some are missing")
    if cfg.num_tags * cfg.descriptions_per_tag == OFFICIAL_LABEL_ROWS and cfg.depths != OFFICIAL_SWIN_DEPTHS:
        raise CheckpointError(f"official RAM++ label embeddings with Swin depths {cfg.depths}, "
                              f"not {OFFICIAL_SWIN_DEPTHS}: blocks are missing")


def check_keys(model: RamPlus, sd: Mapping[str, torch.Tensor]) -> None:
    """Fail unless the checkpoint's parameters are exactly the model's, with the same shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in sd.items()}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    misshaped = sorted(f"{k}: file {given[k]} vs model {expected[k]}" for k in expected.keys() & given.keys()
                       if given[k] != expected[k])
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                if keys]
    if problems:
        raise CheckpointError("checkpoint does not match RAM++ exactly; " + "; ".join(problems))


def split_recomputed_buffers(sd: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """(parameters, buffers): the buffers the model recomputes are set aside for checking."""
    params, buffers = {}, {}
    for key, value in sd.items():
        (buffers if key.rsplit(".", 1)[-1] in RECOMPUTED_BUFFERS else params)[key] = value
    return params, buffers


def check_buffers(model: RamPlus, buffers: Mapping[str, torch.Tensor]) -> None:
    """The file's position index and shift masks must equal ours: a mismatch means a different
    window size or input resolution than the one we run, which would silently change results."""
    ours = dict(model.named_buffers())
    for key, theirs in buffers.items():
        mine = ours.get(key)
        if mine is None or mine.shape != theirs.shape or not torch.equal(mine.to(theirs.dtype), theirs):
            raise CheckpointError(
                f"buffer {key!r} differs from the one recomputed for image size {model.config.image_size} "
                f"and window {model.config.window_size}: wrong --image-size or a different Swin variant"
            )


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that supports it, else fp16 on GPU; fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, float32, bfloat16 or float16")
    return names[dtype]


def load_ram_plus(path: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype | None = "auto",
                  *, num_tags: int | None = None, image_size: int = OFFICIAL_IMAGE_SIZE) -> RamPlus:
    """Load an official RAM++ checkpoint (`{"model": state_dict}`) into `RamPlus`, strictly.

    Keys are taken as named in the file (`vision_multi.` renamed to `tagging_head.`); the
    recomputable buffers are checked and dropped; anything missing, unexpected or mis-shaped
    raises `CheckpointError` naming the keys. `num_tags` is the tag list's length (the file
    only knows tags x descriptions).
    """
    sd = normalise_keys(read_state_dict(path))
    params, buffers = split_recomputed_buffers(sd)
    cfg = infer_config(params, num_tags=num_tags, image_size=image_size)
    check_architecture(cfg)
    if cfg.stage_resolution(len(cfg.depths) - 1) < 1 or image_size % (cfg.patch_size * 2 ** (len(cfg.depths) - 1)):
        raise CheckpointError(
            f"image size {image_size} does not fit patch {cfg.patch_size} and {len(cfg.depths)} stages")
    with torch.device("meta"):
        model = RamPlus(cfg)
    check_keys(model, params)
    # assign=True: the parameters *are* the memory-mapped tensors (no 1.3 GB copy; on CPU in
    # float32, worker processes on one machine share the file's page cache).
    model.load_state_dict(params, strict=True, assign=True)
    _rebuild_buffers(model)
    check_buffers(model, buffers)
    target = resolve_device(device) if not isinstance(device, torch.device) else device
    return model.to(device=target, dtype=resolve_dtype(dtype, target)).eval()


def _rebuild_buffers(model: RamPlus) -> None:
    """Buffers built on the meta device have no values: compute them on CPU."""
    for module in model.modules():
        if isinstance(module, WindowAttention):
            module.relative_position_index = relative_position_index(module.window)
        elif isinstance(module, SwinBlock) and module.shift:
            module.attn_mask = shifted_window_mask(module.resolution, module.window, module.shift)


# ------------------------------------------------------------------------------------------------
# Preprocessing
# ------------------------------------------------------------------------------------------------
def resized_pixels(image: Image.Image, size: int = OFFICIAL_IMAGE_SIZE) -> torch.Tensor:
    """PIL image -> [3,size,size] uint8: RGB, bilinear resize (torchvision `Resize` on a PIL image,
    as the official transform). Kept as uint8 so decode threads hand over 4x fewer bytes and the
    normalisation runs on the model's device."""
    rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.ascontiguousarray(np.asarray(rgb).transpose(2, 0, 1)))


def normalise(pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [...,3,H,W] -> /255, ImageNet mean/std (computed in float32, then cast to `dtype`)."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(3, 1, 1)
    return ((pixels.float() / 255.0 - mean) / std).to(dtype)


def preprocess(image: Image.Image, size: int = OFFICIAL_IMAGE_SIZE) -> torch.Tensor:
    """PIL image -> the model's [3,size,size] float32 input (specs/ram_plus.md step 1)."""
    return normalise(resized_pixels(image, size))
