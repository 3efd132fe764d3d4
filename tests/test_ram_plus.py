"""RAM++ tagging: the official checkpoint format loads strictly, computes what the spec says, and
the `tags` enricher fills images (NULL + one errors row for an image that cannot be decoded).

The model under test is a tiny checkpoint in the official format (tests/ram_fixtures.py); its
output is compared with `reference_logits`, a slow re-computation of specs/ram_plus.md written
out in float64 with per-token loops, sharing no code with etl.models.ram_plus.
"""
from __future__ import annotations

import math
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

from etl import schema as S  # noqa: E402
from etl.enrich import runner  # noqa: E402
from etl.enrich.base import EnrichBatch  # noqa: E402
from etl.enrich.ram_plus import (  # noqa: E402
    ALL_SCORES_COLUMN, RamPlusEnricher, all_scores_field, checkpoint_id, load_tag_list, load_thresholds, select_tags,
)
from etl.images import sniff  # noqa: E402
from etl.models.ram_plus import CheckpointError, load_ram_plus, preprocess  # noqa: E402
try:  # tests/ as a package (rootdir on sys.path) or as a plain folder (pytest's prepend mode)
    from tests.ram_fixtures import TinyRam, official_state_dict, write_tiny_ram
except ImportError:
    from ram_fixtures import TinyRam, official_state_dict, write_tiny_ram

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
RAM_DATA = REALDATA / "recognize_anything" / "ram" / "data"
PILLOW = REALDATA / "pillow_test_images" / "Tests" / "images"
CFG = TinyRam()


def needs(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"realdata file not present: {path} (see shared/realdata/MANIFEST.md)")
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return write_tiny_ram(tmp_path_factory.mktemp("ram"))


@pytest.fixture(scope="module")
def tiny_model(tiny_ckpt):
    return load_ram_plus(tiny_ckpt, "cpu", "float32", num_tags=len(CFG.tags), image_size=CFG.image_size)


def save(sd: dict, folder: Path, name: str = "ckpt.pth") -> Path:
    path = folder / name
    torch.save({"model": sd}, path)
    return path


# --------------------------------------------------------------------------------------------
# The spec, written out slowly (float64, loops over tokens), straight from the state dict
# --------------------------------------------------------------------------------------------
def _ln(x, sd, name, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _lin(x, sd, name):
    y = x @ sd[f"{name}.weight"].T
    return y + sd[f"{name}.bias"] if f"{name}.bias" in sd else y


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _window_attention(x, sd, name, res, window, shift, heads):
    """Every token attends to the tokens of its window in the cyclically shifted frame, with the
    relative-position bias, and -100 between tokens from different bands of that frame."""
    n, dim = x.shape
    head_dim = dim // heads
    qkv = _lin(x, sd, f"{name}.qkv")
    q, k, v = qkv[:, :dim], qkv[:, dim:2 * dim], qkv[:, 2 * dim:]
    table = sd[f"{name}.relative_position_bias_table"]

    def frame(token):  # position in the rolled frame (token at (y,x) moves to (y-s, x-s))
        return ((token // res - shift) % res, (token % res - shift) % res)

    def band(c):
        return 0 if c < res - window else (1 if c < res - shift else 2)

    pos = [frame(t) for t in range(n)]
    windows: dict[tuple[int, int], list[int]] = {}
    for t in range(n):
        windows.setdefault((pos[t][0] // window, pos[t][1] // window), []).append(t)
    out = torch.zeros_like(x)
    for members in windows.values():  # all queries of one window attend to its members
        m = len(members)
        side = 2 * window - 1
        rows = torch.tensor([[(pos[p][0] - pos[t][0] + window - 1) * side + (pos[p][1] - pos[t][1] + window - 1)
                              for t in members] for p in members])
        labels = [(band(pos[t][0]), band(pos[t][1])) for t in members]
        mask = torch.tensor([[0.0 if shift == 0 or a == b else -100.0 for b in labels] for a in labels], dtype=x.dtype)
        qh, kh, vh = (y[members].view(m, heads, head_dim) for y in (q, k, v))
        logits = torch.einsum("phd,thd->hpt", qh, kh) / math.sqrt(head_dim) + table[rows].permute(2, 0, 1) + mask
        out[members] = torch.einsum("hpt,thd->phd", torch.softmax(logits, dim=-1), vh).reshape(m, dim)
    return _lin(out, sd, f"{name}.proj")


def _swin(image, sd, cfg: TinyRam):
    v = "visual_encoder"
    x = torch.nn.functional.conv2d(image[None], sd[f"{v}.patch_embed.proj.weight"],
                                   sd[f"{v}.patch_embed.proj.bias"], stride=cfg.patch)[0]
    x = _ln(x.flatten(1).T, sd, f"{v}.patch_embed.norm", 1e-5)  # tokens in row-major order
    for i in range(cfg.stages):
        res = cfg.resolution(i)
        window = min(cfg.window, res)
        for j in range(cfg.depths[i]):
            b = f"{v}.layers.{i}.blocks.{j}"
            shift = cfg.window // 2 if (j % 2 and res > cfg.window) else 0
            x = x + _window_attention(_ln(x, sd, f"{b}.norm1", 1e-5), sd, f"{b}.attn", res, window, shift, cfg.heads[i])
            x = x + _lin(_gelu(_lin(_ln(x, sd, f"{b}.norm2", 1e-5), sd, f"{b}.mlp.fc1")), sd, f"{b}.mlp.fc2")
        if i < cfg.stages - 1:
            grid = x.view(res, res, -1)
            merged = [torch.cat([grid[2 * r, 2 * c], grid[2 * r + 1, 2 * c],
                                 grid[2 * r, 2 * c + 1], grid[2 * r + 1, 2 * c + 1]])
                      for r in range(res // 2) for c in range(res // 2)]
            x = _lin(_ln(torch.stack(merged), sd, f"{v}.layers.{i}.downsample.norm", 1e-5), sd,
                     f"{v}.layers.{i}.downsample.reduction")
    x = _ln(x, sd, f"{v}.norm", 1e-5)
    return torch.cat([x.mean(0, keepdim=True), x])


def _cross_layer(x, image_embeds, sd, name, heads=4):
    hidden = x.shape[1]
    d = hidden // heads
    q = _lin(x, sd, f"{name}.crossattention.self.query")
    k = _lin(image_embeds, sd, f"{name}.crossattention.self.key")
    v = _lin(image_embeds, sd, f"{name}.crossattention.self.value")
    ctx = torch.cat([torch.softmax(q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / math.sqrt(d), -1)
                     @ v[:, h * d:(h + 1) * d] for h in range(heads)], dim=1)
    attended = _lin(ctx, sd, f"{name}.crossattention.output.dense")
    x = _ln(x + attended, sd, f"{name}.crossattention.output.LayerNorm", 1e-12)
    ffn = _lin(_gelu(_lin(x, sd, f"{name}.intermediate.dense")), sd, f"{name}.output.dense")
    return _ln(x + ffn, sd, f"{name}.output.LayerNorm", 1e-12)


def reference_logits(image: torch.Tensor, sd: dict, cfg: TinyRam) -> torch.Tensor:
    """specs/ram_plus.md steps 2-5 for one preprocessed image, in float64."""
    sd = {k: t.double() for k, t in sd.items()}
    e = _lin(_swin(image.double(), sd, cfg), sd, "image_proj")  # [1+N, width]
    c = e[0] / e[0].norm()
    queries = []
    for t in range(len(cfg.tags)):
        d = sd["label_embed"][t * cfg.descriptions:(t + 1) * cfg.descriptions]
        w = torch.softmax(torch.exp(sd["reweight_scale"]) * (d @ c), 0)
        queries.append(torch.relu(_lin((w[:, None] * d).sum(0), sd, "wordvec_proj")))
    x = torch.stack(queries)
    for k in range(cfg.head_layers):
        x = _cross_layer(x, e, sd, f"tagging_head.encoder.layer.{k}")
    return _lin(x, sd, "fc")[:, 0]


# --------------------------------------------------------------------------------------------
# The computation
# --------------------------------------------------------------------------------------------
def test_tiny_official_checkpoint_computes_what_the_spec_says(tiny_model):
    sd = official_state_dict(CFG)
    images = torch.randn(2, 3, CFG.image_size, CFG.image_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits = tiny_model(images)
    for i in range(2):
        expected = reference_logits(images[i], sd, CFG)
        assert torch.allclose(logits[i].double(), expected, atol=1e-5, rtol=0), (logits[i], expected)
    # The scores are not all alike: the test would notice a model that ignores its input.
    assert (logits[0] - logits[1]).abs().max() > 1e-2


def test_one_image_at_a_time_and_batched_give_the_same_scores(tiny_model):
    images = torch.randn(3, 3, CFG.image_size, CFG.image_size, generator=torch.Generator().manual_seed(2))
    batched = tiny_model.scores(images)
    single = torch.cat([tiny_model.scores(images[i:i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_gpu_dtypes_run_and_stay_close_to_float32(tiny_ckpt, tiny_model, dtype):
    half = load_ram_plus(tiny_ckpt, "cpu", dtype, num_tags=len(CFG.tags), image_size=CFG.image_size)
    images = torch.randn(2, 3, CFG.image_size, CFG.image_size, generator=torch.Generator().manual_seed(3))
    scores = half.scores(images.to(getattr(torch, dtype)))
    assert scores.dtype == torch.float32
    assert torch.allclose(scores, tiny_model.scores(images), atol=2e-2)


def test_preprocessing_matches_the_official_torchvision_transform():
    tv = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    official = tv.Compose([lambda im: im.convert("RGB"), tv.Resize((384, 384)), tv.ToTensor(),
                           tv.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    for name in ("hopper.jpg", "pil_sample_cmyk.jpg", "transparent.png"):
        with Image.open(needs(PILLOW / name)) as im:
            assert torch.allclose(preprocess(im, 384), official(im), atol=1e-6), name


# --------------------------------------------------------------------------------------------
# The loader's strictness
# --------------------------------------------------------------------------------------------
def test_older_vision_multi_checkpoints_load_to_the_same_model(tmp_path, tiny_model):
    sd = {k.replace("tagging_head.", "vision_multi."): v for k, v in official_state_dict(CFG).items()}
    legacy = load_ram_plus(save(sd, tmp_path), "cpu", "float32", num_tags=len(CFG.tags), image_size=CFG.image_size)
    images = torch.randn(1, 3, CFG.image_size, CFG.image_size)
    assert torch.equal(legacy.scores(images), tiny_model.scores(images))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda sd: sd.pop("visual_encoder.layers.1.blocks.1.mlp.fc2.weight"), "missing"),
        (lambda sd: sd.pop("tagging_head.encoder.layer.1.output.LayerNorm.bias"), "missing"),
        (lambda sd: sd.update({"text_decoder.bert.embeddings.word_embeddings.weight": torch.zeros(4, 4)}),
         "unexpected"),
        (lambda sd: sd.update({"visual_encoder.layers.2.blocks.2.norm1.weight": torch.ones(64)}), "odd block count"),
        (lambda sd: sd.update({"visual_encoder.layers.2.blocks.2.norm1.weight": torch.ones(64),
                               "visual_encoder.layers.2.blocks.3.norm1.weight": torch.ones(64)}), "missing \\(24\\)"),
        (lambda sd: sd.update({"image_proj.weight": torch.zeros(24, 63)}), "mis-shaped"),
        (lambda sd: sd.update({"visual_encoder.layers.0.blocks.1.attn.relative_position_bias_table":
                               torch.zeros(48, 2)}), "mis-shaped"),
    ],
    ids=["swin-weight-missing", "head-norm-missing", "foreign-key", "partial-block", "partial-block-pair",
         "wrong-shape", "wrong-table"],
)
def test_a_corrupted_checkpoint_is_refused_with_the_offending_key(tmp_path, corrupt, message):
    sd = official_state_dict(CFG)
    corrupt(sd)
    with pytest.raises(CheckpointError, match=message):
        load_ram_plus(save(sd, tmp_path), "cpu", "float32", num_tags=len(CFG.tags), image_size=CFG.image_size)


def _drop_block(sd: dict, stage: int, block: int) -> None:
    for key in [k for k in sd if k.startswith(f"visual_encoder.layers.{stage}.blocks.{block}.")]:
        del sd[key]


def test_a_checkpoint_missing_whole_trailing_blocks_is_refused(tmp_path):
    sd = official_state_dict(CFG)
    _drop_block(sd, 2, 1)  # the stage's key set is still consistent, just one block short
    with pytest.raises(CheckpointError, match="odd block count"):
        load_ram_plus(save(sd, tmp_path), "cpu", num_tags=len(CFG.tags), image_size=CFG.image_size)


def test_official_label_embeddings_demand_the_official_swin_depths(tmp_path):
    sd = official_state_dict(CFG)
    sd["label_embed"] = torch.zeros(4585 * 51, CFG.embed_width)  # official tags, tiny (2-2-2) Swin
    with pytest.raises(CheckpointError, match="not \\(2, 2, 18, 2\\)"):
        load_ram_plus(save(sd, tmp_path), "cpu", num_tags=4585, image_size=CFG.image_size)


def test_a_checkpoint_for_another_input_size_is_refused_by_its_shift_masks(tiny_ckpt):
    with pytest.raises(CheckpointError, match="attn_mask"):
        load_ram_plus(tiny_ckpt, "cpu", "float32", num_tags=len(CFG.tags), image_size=2 * CFG.image_size)


def test_a_tag_list_that_does_not_fit_label_embed_is_refused(tiny_ckpt):
    with pytest.raises(CheckpointError, match="not a multiple"):
        load_ram_plus(tiny_ckpt, "cpu", "float32", num_tags=len(CFG.tags) - 1, image_size=CFG.image_size)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    bogus = tmp_path / "ram_plus_swin_large_14m.pth"
    bogus.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(CheckpointError, match="not a loadable torch checkpoint"):
        load_ram_plus(bogus, "cpu")
    with pytest.raises(CheckpointError, match="no such"):
        load_ram_plus(tmp_path / "absent.pth", "cpu")


def test_model_id_is_file_name_plus_a_fingerprint_that_follows_the_weights(tmp_path):
    a = write_tiny_ram(tmp_path / "a", seed=0)
    b = write_tiny_ram(tmp_path / "b", seed=0)
    c = write_tiny_ram(tmp_path / "c", seed=1)
    assert checkpoint_id(a) == checkpoint_id(b)
    assert checkpoint_id(a).startswith("ram_plus_tiny.pth:") and len(checkpoint_id(a).split(":")[1]) == 12
    assert checkpoint_id(a) != checkpoint_id(c)


# --------------------------------------------------------------------------------------------
# Tag files and thresholds (the real ones)
# --------------------------------------------------------------------------------------------
def test_the_real_tag_list_and_thresholds_line_up():
    names = load_tag_list(needs(RAM_DATA / "ram_tag_list.txt"))
    thresholds = load_thresholds(needs(RAM_DATA / "ram_tag_list_threshold.txt"), len(names))
    assert len(names) == 4585  # the file lacks a final newline: the last tag is not lost
    assert len(set(names)) == len(names)
    assert len(np.unique(thresholds)) == 44
    assert np.median(thresholds) == np.float32(0.65)
    with pytest.raises(ValueError, match="4585 thresholds for 4584 tags"):
        load_thresholds(RAM_DATA / "ram_tag_list_threshold.txt", 4584)


def test_tags_are_those_strictly_over_their_own_threshold_highest_score_first():
    names = load_tag_list(needs(RAM_DATA / "ram_tag_list.txt"))
    thresholds = load_thresholds(needs(RAM_DATA / "ram_tag_list_threshold.txt"), len(names))
    high = int(np.argmax(thresholds))  # a tag with a stricter threshold than 0.65
    assert thresholds[high] > 0.65
    scores = np.zeros(len(names), np.float32)
    scores[10] = thresholds[10]  # exactly at threshold: off, as in the official `>`
    scores[11] = np.nextafter(thresholds[11], np.float32(1))  # just over: on
    scores[12] = 0.99
    scores[high] = 0.7  # over 0.65 but under its own threshold: off
    tags, tag_scores = select_tags(scores, thresholds, names)
    assert tags == [names[12], names[11]]
    assert tag_scores == pytest.approx([0.99, float(scores[11])])


# --------------------------------------------------------------------------------------------
# The enricher
# --------------------------------------------------------------------------------------------
GOOD = ("hopper.jpg", "pil_sample_cmyk.jpg", "transparent.png", "hopper.gif")


def _enricher(ckpt: Path, **options) -> RamPlusEnricher:
    enricher = RamPlusEnricher(model=str(ckpt), batch_size=2, image_size=CFG.image_size, **options)
    enricher.setup()
    return enricher


def _batch(names: list[str], payloads: list) -> EnrichBatch:
    return EnrichBatch(pa.table({"image_id": names}), payloads)


def test_enricher_tags_good_images_and_reports_undecodable_ones(tiny_ckpt, tiny_model):
    enricher = _enricher(tiny_ckpt)
    truncated = needs(PILLOW / "truncated_jpeg.jpg").read_bytes()
    payloads = [needs(PILLOW / n).read_bytes() for n in GOOD] + [truncated, None]
    names = [*GOOD, "truncated", "unreadable"]
    result = enricher.process(_batch(names, payloads))
    assert result.values["image_id"].to_pylist() == list(GOOD)
    assert {(f.key, f.kind) for f in result.failures} == {
        ("truncated", "decode_error"), ("unreadable", "missing_bytes")}
    assert "truncated" in next(f.message for f in result.failures if f.key == "truncated")
    assert set(result.values["tag_model"].to_pylist()) == {checkpoint_id(tiny_ckpt)}
    assert result.stats["tag_images"] == len(GOOD)
    # Each row's tags are exactly the model's scores over threshold, best first.
    from PIL import Image

    tag_counts = [len(row["tags"]) for row in result.values.to_pylist()]
    assert 0 < sum(tag_counts) < len(GOOD) * len(CFG.tags), "the tiny model should tag some, not all"
    for row in result.values.to_pylist():
        with Image.open(PILLOW / row["image_id"]) as im:
            scores = tiny_model.scores(preprocess(im, CFG.image_size)[None])[0].numpy()
        on = [i for i in np.argsort(-scores, kind="stable") if scores[i] > CFG.thresholds[i]]
        assert row["tags"] == [CFG.tags[i] for i in on]
        assert row["tag_scores"] == pytest.approx([float(scores[i]) for i in on], abs=1e-6)
    assert pa.types.is_float32(result.values.schema.field("tag_scores").type.value_type)


def test_a_batch_that_runs_out_of_memory_is_retried_image_by_image(tiny_ckpt):
    enricher = _enricher(tiny_ckpt)  # batch_size 2
    real_scores = enricher.model.scores
    data = needs(PILLOW / "hopper.jpg").read_bytes()
    memory = {"fits_one_image": True}

    def scores_or_oom(images):  # fault injection: batches of 2 never fit; single images fit or not
        if images.shape[0] > 1 or not memory["fits_one_image"]:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_scores(images)

    enricher.model.scores = scores_or_oom
    result = enricher.process(_batch(["a", "b", "c"], [data, data, data]))
    assert result.values["image_id"].to_pylist() == ["a", "b", "c"] and not result.failures
    memory["fits_one_image"] = False
    result = enricher.process(_batch(["c"], [data]))
    assert [(f.key, f.kind) for f in result.failures] == [("c", "inference_error")]
    assert "out of memory" in result.failures[0].message and result.values.num_rows == 0


def test_all_scores_keeps_every_tag_score_as_a_fixed_size_float32_list_duckdb_can_read(tiny_ckpt):
    import duckdb

    enricher = _enricher(tiny_ckpt, all_scores=True)
    assert enricher.columns[-1] == ALL_SCORES_COLUMN
    assert enricher.extra_fields == (all_scores_field(len(CFG.tags)),)
    result = enricher.process(_batch(["a"], [needs(PILLOW / "hopper.jpg").read_bytes()]))
    column = result.values.schema.field(ALL_SCORES_COLUMN)
    assert column.type == pa.list_(pa.float32(), len(CFG.tags))
    row = result.values.to_pylist()[0]
    assert row["tags"]
    for tag, score in zip(row["tags"], row["tag_scores"]):
        assert row[ALL_SCORES_COLUMN][CFG.tags.index(tag)] == score
    # Re-thresholding in SQL: DuckDB sees FLOAT[12] and indexes it (1-based).
    values = result.values
    first = CFG.tags.index(row["tags"][0]) + 1
    assert duckdb.sql(f"select {ALL_SCORES_COLUMN}[{first}] from values").fetchall()[0][0] == row["tag_scores"][0]


def test_missing_tag_files_next_to_the_checkpoint_are_named(tmp_path):
    ckpt = write_tiny_ram(tmp_path)
    (tmp_path / "ram_tag_list_threshold.txt").unlink()
    with pytest.raises(SystemExit, match="thresholds file not found"):
        RamPlusEnricher(model=str(ckpt))


def test_cli_options_build_the_enricher(tiny_ckpt):
    import argparse
    import pickle

    parser = argparse.ArgumentParser()
    RamPlusEnricher.add_arguments(parser)
    args = parser.parse_args(["--model", str(tiny_ckpt), "--batch-size", "3", "--device", "cpu", "--all-scores"])
    enricher = RamPlusEnricher.from_args(args)
    pickle.loads(pickle.dumps(enricher))  # crosses to spawn workers before setup()
    assert enricher.options["batch_size"] == 3 and enricher.options["all_scores"]
    assert enricher.options["tag_list"] == str(tiny_ckpt.with_name("ram_tag_list.txt"))
    assert enricher.params()["tag_model"] == checkpoint_id(tiny_ckpt)


def test_lake_run_fills_tags_and_a_corrupt_image_gets_null_tags_and_one_error_row(lake, tiny_ckpt):
    infos, payloads = [], []
    for name in (*GOOD, "truncated_jpeg.jpg"):
        payloads.append(needs(PILLOW / name).read_bytes())
        infos.append(sniff(payloads[-1]))
    lake.append(S.IMAGES, pa.table({
        "image_id": [i.image_id for i in infos], S.BLOB_COLUMN: lance.blob_array(payloads),
        "format": [i.format for i in infos], "width": pa.array([i.width for i in infos], pa.int32()),
        "height": pa.array([i.height for i in infos], pa.int32()), "nbytes": [i.nbytes for i in infos],
    }))
    truncated_id = infos[-1].image_id

    enricher = RamPlusEnricher(model=str(tiny_ckpt), batch_size=2, image_size=CFG.image_size)
    counts = runner.run_enricher(lake, enricher, runner.RunOptions(batch_size=3, progress=False))
    assert counts["computed"] == len(GOOD) and counts["errors.decode_error"] == 1

    table = lake.dataset(S.IMAGES).to_table(columns=["image_id", "tags", "tag_scores", "tag_model"])
    by_id = {r["image_id"]: r for r in table.to_pylist()}
    assert by_id[truncated_id]["tags"] is None and by_id[truncated_id]["tag_scores"] is None
    good = [r for i, r in by_id.items() if i != truncated_id]
    assert all(r["tags"] is not None and len(r["tags"]) == len(r["tag_scores"]) for r in good)
    assert any(r["tags"] for r in good)
    assert {r["tag_model"] for r in good} == {checkpoint_id(tiny_ckpt)}
    errors = lake.dataset(S.ERRORS).to_table().to_pylist()
    assert [(e["stage"], e["kind"], e["raw"]) for e in errors] == [("tags", "decode_error", truncated_id)]

    again = runner.run_enricher(lake, enricher, runner.RunOptions(batch_size=3, progress=False))
    assert again["todo"] == 0 and lake.count(S.ERRORS) == 1  # resumable: nothing left, nothing duplicated
