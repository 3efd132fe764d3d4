"""Tiny random Qwen2-VL / Qwen2.5-VL checkpoints in the real Hugging Face folder layout.

The folder holds what a Hub snapshot holds — `config.json`, `model.safetensors`, `tokenizer.json`,
`tokenizer_config.json`, `preprocessor_config.json`, `video_preprocessor_config.json`, the chat
template — all written with `save_pretrained`, so the enricher loads it through exactly the code
that loads `Qwen/Qwen2-VL-7B-Instruct`. The tokenizer is a byte-level BPE trained here (Qwen's
pre-tokenizer, the Qwen special tokens, the official chat template); weights are random but seeded.
"""
from __future__ import annotations

import json
from pathlib import Path

# The official Qwen2-VL / Qwen2.5-VL Instruct chat template (chat_template.json on the Hub).
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's added tokens, in the order (and relative ids) of the real tokenizer (151643...).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# What the BPE learns merges from: enough English to give realistic token counts.
_CORPUS = """\
The image shows a man ironing clothes on the back of a yellow taxi in a busy street.
What is unusual about this image? Describe the picture in detail. Answer the question briefly.
A large passenger jet flying through a blue sky. Two dogs play with a frisbee on the grass.
Image 1 shows a factory floor with workers; the second image shows the same room later.
How many people are in the photo? There are three people, sitting at a wooden table.
Write a short caption for the image. Please explain the chart and the numbers in the table.
""" * 4

# Small enough that building + saving both models takes a couple of seconds on 2 CPU cores.
TEXT_HIDDEN = 64
VOCAB_TARGET = 640


def train_tokenizer():
    """A Qwen2Tokenizer (byte-level BPE, Qwen's regex pre-tokenizer) with the Qwen special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
    from tokenizers import Regex

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    vocab = bpe.get_vocab()
    # Merges as (left, right) pairs, read back from the serialised model (stable across versions).
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        errors="replace",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:]})
    tokenizer.add_tokens(["<|endoftext|>"], special_tokens=True)
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    return tokenizer


def _token_ids(tokenizer) -> dict[str, int]:
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in QWEN_SPECIAL_TOKENS}
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _text_config(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )


def qwen2_vl_config(tokenizer, text: dict | None = None, vision: dict | None = None):
    from transformers import Qwen2VLConfig

    text_config = {**_text_config(tokenizer), **(text or {})}
    vision_config = {**dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=2), **(vision or {})}
    vision_config["hidden_size"] = text_config["hidden_size"]  # Qwen2-VL: the merger outputs text width
    return Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **_token_ids(tokenizer))


def qwen2_5_vl_config(tokenizer, text: dict | None = None, vision: dict | None = None):
    from transformers import Qwen2_5_VLConfig

    text_config = {**_text_config(tokenizer), **(text or {})}
    vision_config = {**dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, window_size=56,
                              fullatt_block_indexes=[1]), **(vision or {})}
    vision_config["out_hidden_size"] = text_config["hidden_size"]
    return Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **_token_ids(tokenizer))


def build_processor(kind: str, tokenizer):
    """The processor a Hub snapshot ships: image + video processor, tokenizer, chat template."""
    from transformers import (
        Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor,
    )

    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    processor_cls = Qwen2VLProcessor if kind == "qwen2_vl" else Qwen2_5_VLProcessor
    return processor_cls(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )


def build_tiny_qwen_vl(out_dir: Path, kind: str = "qwen2_vl", seed: int = 0, text: dict | None = None,
                       vision: dict | None = None) -> Path:
    """Write a tiny random checkpoint of `kind` ("qwen2_vl" | "qwen2_5_vl") to `out_dir`.

    `text` / `vision` override config fields (the benchmark uses a wider model and the real
    152k vocabulary: Qwen configs, like this one then, have more rows than the tokenizer has ids).
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    out_dir = Path(out_dir)
    tokenizer = train_tokenizer()
    if kind == "qwen2_vl":
        config, model_cls = qwen2_vl_config(tokenizer, text, vision), Qwen2VLForConditionalGeneration
    elif kind == "qwen2_5_vl":
        config, model_cls = qwen2_5_vl_config(tokenizer, text, vision), Qwen2_5_VLForConditionalGeneration
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.save_pretrained(out_dir)
    build_processor(kind, tokenizer).save_pretrained(out_dir)
    return out_dir


def to_hub_layout(folder: Path) -> Path:
    """Rewrite a transformers-5 save into the layout of the Hub snapshots users download.

    `Qwen/Qwen2-VL-7B-Instruct` and `Qwen2.5-VL-*` were saved by transformers 4.x: a flat
    config.json (text fields at the top, `rope_scaling: {type: mrope}`, vision `in_chans`),
    `preprocessor_config.json` with `min_pixels`/`max_pixels`, `chat_template.json`, and a
    tokenizer_config.json naming Qwen2Tokenizer — no `processor_config.json`. The weights file
    already uses the Hub's tensor names (`model.layers.*`, `visual.*`, `lm_head`).
    """
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    text = config.pop("text_config")
    rope = text.pop("rope_parameters")
    for key in ("model_type", "layer_types", "dtype"):
        text.pop(key, None)
    vision = config.pop("vision_config")
    vision.pop("rope_parameters", None)
    vision["in_chans"] = vision.pop("in_channels")
    vision["spatial_patch_size"] = vision["patch_size"]
    flat = {
        **config, **text, "vision_config": vision, "rope_theta": rope["rope_theta"],
        "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]},
        "vision_token_id": config["image_token_id"] - 1, "torch_dtype": config.pop("dtype", "float32"),
        "transformers_version": "4.45.0.dev0",
    }
    flat.pop("dtype", None)
    vision.pop("model_type", None)
    (folder / "config.json").write_text(json.dumps(flat, indent=2))

    processor = json.loads((folder / "processor_config.json").read_text())
    image = processor["image_processor"]
    size = image.pop("size")
    # The real snapshots ship max_pixels 12845056 (16384 visual tokens): the enricher must override it.
    preprocessor = {"min_pixels": size["shortest_edge"], "max_pixels": 12845056, **image,
                    "processor_class": processor["processor_class"]}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.pop("backend", None)
    tokenizer_config["additional_special_tokens"] = tokenizer_config.pop("extra_special_tokens", [])
    tokenizer_config.update(chat_template=template, model_max_length=32768, split_special_tokens=False)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    for name in ("processor_config.json", "chat_template.jinja"):
        (folder / name).unlink()
    return folder
