"""A tiny RAM++ checkpoint in the official format, plus its tag-list and threshold files.

The state dict is written key by key from the official naming (Microsoft Swin under
`visual_encoder.`, BERT cross-attention layers under `tagging_head.encoder.layer.N.`), not from
mmlake's model class, so the loader is tested against the official structure rather than
against itself. Like a state dict saved by the official code, it also carries the buffers
`relative_position_index` and `attn_mask` (built here with plain loops). Weights are random but
seeded; the architecture is Swin-L's with fewer/smaller layers and fewer tags and descriptions:
image 64, patch 4, window 4, three stages at 16/8/4 tokens a side, so stage 0 and 1 use shifted
windows and stage 2 is a single unshifted window, exactly like Swin-L's last stage at 384.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class TinyRam:
    image_size: int = 64
    patch: int = 4
    embed_dim: int = 16
    depths: tuple[int, ...] = (2, 2, 2)
    heads: tuple[int, ...] = (2, 4, 4)
    window: int = 4
    embed_width: int = 24  # the official 512
    hidden: int = 32  # the official 768 (4 heads)
    intermediate: int = 64  # the official 3072
    head_layers: int = 2
    tags: tuple[str, ...] = ("cat", "dog", "tree", "sky", "car", "person", "grass", "water", "building",
                             "road", "flower", "cloud")
    descriptions: int = 3  # the official 51
    thresholds: tuple[float, ...] = (0.65,) * 8 + (0.8, 0.9, 0.5, 0.65)

    @property
    def stages(self) -> int:
        return len(self.depths)

    def resolution(self, stage: int) -> int:
        return self.image_size // self.patch // 2**stage

    def dim(self, stage: int) -> int:
        return self.embed_dim * 2**stage


def _relative_position_index(window: int) -> torch.Tensor:
    n = window * window
    index = torch.zeros(n, n, dtype=torch.long)
    for p in range(n):
        for q in range(n):
            dy, dx = p // window - q // window, p % window - q % window
            index[p, q] = (dy + window - 1) * (2 * window - 1) + (dx + window - 1)
    return index


def _region(coordinate: int, size: int, window: int, shift: int) -> int:
    """Which of the three bands (in the rolled frame) a coordinate falls in."""
    return 0 if coordinate < size - window else (1 if coordinate < size - shift else 2)


def _attn_mask(resolution: int, window: int, shift: int) -> torch.Tensor:
    per_side = resolution // window
    n = window * window
    mask = torch.zeros(per_side * per_side, n, n)
    for w in range(per_side * per_side):
        wy, wx = divmod(w, per_side)
        labels = []
        for p in range(n):
            y, x = wy * window + p // window, wx * window + p % window
            labels.append((_region(y, resolution, window, shift), _region(x, resolution, window, shift)))
        for p in range(n):
            for q in range(n):
                mask[w, p, q] = 0.0 if labels[p] == labels[q] else -100.0
    return mask


def official_state_dict(cfg: TinyRam = TinyRam(), seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the official RAM++ key names, with the official buffers."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def rand(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    def linear(name: str, n_in: int, n_out: int, bias: bool = True) -> None:
        sd[f"{name}.weight"] = rand(n_out, n_in, scale=1.0 / math.sqrt(n_in))
        if bias:
            sd[f"{name}.bias"] = rand(n_out, scale=0.1)

    def norm(name: str, dim: int) -> None:
        sd[f"{name}.weight"] = 1.0 + rand(dim, scale=0.1)
        sd[f"{name}.bias"] = rand(dim, scale=0.1)

    v = "visual_encoder"
    sd[f"{v}.patch_embed.proj.weight"] = rand(cfg.embed_dim, 3, cfg.patch, cfg.patch, scale=0.2)
    sd[f"{v}.patch_embed.proj.bias"] = rand(cfg.embed_dim, scale=0.1)
    norm(f"{v}.patch_embed.norm", cfg.embed_dim)
    for i in range(cfg.stages):
        dim, res = cfg.dim(i), cfg.resolution(i)
        window = min(cfg.window, res)
        for j in range(cfg.depths[i]):
            b = f"{v}.layers.{i}.blocks.{j}"
            norm(f"{b}.norm1", dim)
            sd[f"{b}.attn.relative_position_bias_table"] = rand((2 * window - 1) ** 2, cfg.heads[i], scale=0.5)
            sd[f"{b}.attn.relative_position_index"] = _relative_position_index(window)
            linear(f"{b}.attn.qkv", dim, 3 * dim)
            linear(f"{b}.attn.proj", dim, dim)
            norm(f"{b}.norm2", dim)
            linear(f"{b}.mlp.fc1", dim, 4 * dim)
            linear(f"{b}.mlp.fc2", 4 * dim, dim)
            if j % 2 == 1 and res > cfg.window:
                sd[f"{b}.attn_mask"] = _attn_mask(res, cfg.window, cfg.window // 2)
        if i < cfg.stages - 1:
            linear(f"{v}.layers.{i}.downsample.reduction", 4 * dim, 2 * dim, bias=False)
            norm(f"{v}.layers.{i}.downsample.norm", 4 * dim)
    norm(f"{v}.norm", cfg.dim(cfg.stages - 1))

    linear("image_proj", cfg.dim(cfg.stages - 1), cfg.embed_width)
    sd["label_embed"] = rand(len(cfg.tags) * cfg.descriptions, cfg.embed_width, scale=1.0)
    sd["reweight_scale"] = torch.tensor(math.log(1 / 0.07))
    linear("wordvec_proj", cfg.embed_width, cfg.hidden)
    for k in range(cfg.head_layers):
        layer = f"tagging_head.encoder.layer.{k}"
        linear(f"{layer}.crossattention.self.query", cfg.hidden, cfg.hidden)
        linear(f"{layer}.crossattention.self.key", cfg.embed_width, cfg.hidden)
        linear(f"{layer}.crossattention.self.value", cfg.embed_width, cfg.hidden)
        linear(f"{layer}.crossattention.output.dense", cfg.hidden, cfg.hidden)
        norm(f"{layer}.crossattention.output.LayerNorm", cfg.hidden)
        linear(f"{layer}.intermediate.dense", cfg.hidden, cfg.intermediate)
        linear(f"{layer}.output.dense", cfg.intermediate, cfg.hidden)
        norm(f"{layer}.output.LayerNorm", cfg.hidden)
    sd["fc.weight"] = rand(1, cfg.hidden, scale=2.0 / math.sqrt(cfg.hidden))
    sd["fc.bias"] = torch.tensor([4.0])  # centres the logits so real photos get some tags, not all
    return sd


def write_tiny_ram(folder: Path, cfg: TinyRam = TinyRam(), seed: int = 0,
                   name: str = "ram_plus_tiny.pth") -> Path:
    """Write `{name}` as `{"model": state_dict}` plus `ram_tag_list.txt` (no final newline, like
    the official file) and `ram_tag_list_threshold.txt` next to it; return the checkpoint path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    torch.save({"model": official_state_dict(cfg, seed)}, path)
    (folder / "ram_tag_list.txt").write_text("\n".join(cfg.tags), encoding="utf-8")
    (folder / "ram_tag_list_threshold.txt").write_text("\n".join(str(t) for t in cfg.thresholds) + "\n")
    return path
