"""A small lake for the analysis tests, notebooks and report: real files where present, generated otherwise.

`build_lake(root)` ingests (through the real ingest job) realdata's LCS-558K subset (200 real JPEGs),
the LLaVA-Instruct-100 file (100 missing-image errors) and FastChat's text-only conversations when
`../shared/realdata` exists, plus a generated LLaVA source with single-, multi-image and text-only
records, a re-used image, a missing image and a file that is not an image. `fill_enrichment(lake)`
then writes plausible tags and losses the way their enrichers write them (column fills; the RAM++ and
Qwen2-VL models are not run here) and runs the real `enrich phash` and `dedup --near 4` jobs, so
tests can see both the "not computed yet" and the computed states.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from etl import schema as S
from etl.errors import ErrorRow, errors_table
from etl.ingest import IngestOptions, ingest
from etl.lake import Lake

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
LCS = REALDATA / "llava_pretrain_pr1902/playground/data/LLaVA-Pretrain"
TAG_VOCABULARY = ["person", "dog", "cat", "car", "tree", "building", "sky", "text", "food", "table",
                  "water", "grass", "shirt", "phone", "flower"]


def realdata_available() -> bool:
    """realdata is beside the repo (MMLAKE_TEST_NO_REALDATA=1 builds the generated-only lake, as a fresh clone does)."""
    return (LCS / "blip_laion_cc_sbu_2k.subset200.json").exists() and not os.environ.get("MMLAKE_TEST_NO_REALDATA")


def build_lake(root: Path, use_realdata: bool = True) -> Lake:
    """Ingest the test sources into a new lake at `root`; returns the lake."""
    lake = Lake.open(str(root / "lake"))
    quiet = {"progress": False}
    if use_realdata and realdata_available():
        ingest(lake, [str(LCS / "blip_laion_cc_sbu_2k.subset200.json")],
               IngestOptions(source="lcs558k", image_roots=[str(LCS / "images")], **quiet))
        ingest(lake, [str(REALDATA / "llamafactory/llava_instruct_100/llava_instruct_100.json")],
               IngestOptions(source="llava_instruct", **quiet))
        ingest(lake, [str(REALDATA / "fastchat/data/dummy_conversation.json")], IngestOptions(source="fastchat", **quiet))
    generated = write_generated_source(root / "generated")
    # by glob: the file is named relative to its folder, so sample ids do not depend on the temp path
    ingest(lake, [str(generated.parent / "*.json")],
           IngestOptions(source="generated", image_roots=[str(generated.parent / "images")], **quiet))
    return lake


def write_generated_source(folder: Path, n_images: int = 24) -> Path:
    """A LLaVA JSON over generated JPEG/PNG images of several sizes, with every kind of record."""
    img_dir = folder / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    names = []
    for i in range(n_images):
        w, h = [(640, 480), (336, 336), (1024, 768), (200, 600)][i % 4]
        yy, xx = np.mgrid[0:h, 0:w]
        pixels = np.stack([(xx * (i + 1)) % 256, (yy * 3 + i * 20) % 256, ((xx + yy) // 4 + rng.integers(0, 16, (h, w))) % 256], -1)
        name = f"img_{i:02d}." + ("png" if i % 3 == 0 else "jpg")
        Image.fromarray(pixels.astype(np.uint8)).save(img_dir / name, "PNG" if name.endswith("png") else "JPEG")
        names.append(name)
    for i in (4, 8):  # near duplicates: what mirrors and re-uploads produce (half size, re-encoded)
        im = Image.open(img_dir / names[i]).convert("RGB")
        im.resize((im.width // 2, im.height // 2), Image.LANCZOS).save(img_dir / f"img_{i:02d}_small.jpg", quality=70)
    (img_dir / "not_an_image.jpg").write_text("<html>403 Forbidden</html>")
    records = []
    for i, name in enumerate(names):
        turns = 2 + 2 * (i % 3)
        conv = [{"from": "human" if t % 2 == 0 else "gpt",
                 "value": ("<image>\n" if t == 0 else "") + f"Turn {t} about picture {i}: " + "words " * (3 + i % 5)}
                for t in range(turns)]
        records.append({"id": f"g{i}", "image": name, "conversations": conv})
    for i in (4, 8):
        records.append({"id": f"g{i}_mirror", "image": f"img_{i:02d}_small.jpg", "conversations": records[i]["conversations"]})
    for i in (1, 2, 3):  # exact duplicates: the same record again under another id
        records.append({**records[i], "id": f"g{i}_again"})
    for k in range(4):  # multi-image records, one re-using an image of the single-image records
        pair = [names[k], names[k + 5]] if k < 3 else names[:4]
        prompt = "".join(f"Image {j + 1}: <image>\n" for j in range(len(pair))) + "What differs?"
        records.append({"id": f"multi{k}", "image": pair,
                        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": "The colours."}]})
    for k in range(6):
        records.append({"id": f"text{k}", "conversations": [{"from": "human", "value": f"Question {k}?"},
                                                              {"from": "gpt", "value": "An answer " * (k + 1)}]})
    records.append({"id": "missing", "image": "does_not_exist.jpg",
                    "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "?"}]})
    records.append({"id": "broken", "image": "not_an_image.jpg",
                    "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "?"}]})
    path = folder / "generated_llava.json"
    path.write_text(json.dumps(records))
    return path


def _unit(text: str) -> float:
    """A deterministic number in [0, 1) from a string (stable across runs, unlike hash())."""
    return int(hashlib.md5(text.encode()).hexdigest()[:8], 16) / 2**32


def fill_enrichment(lake: Lake) -> None:
    """Plausible tags and losses (column fills, a few failed losses left NULL), then real phash + dedup."""
    images = lake.dataset(S.IMAGES).to_table(columns=["image_id"])["image_id"].to_pylist()
    tags, scores = [], []
    for image_id in images:
        k = 1 + int(_unit(image_id + "k") * 4)
        start = int(_unit(image_id) * len(TAG_VOCABULARY))
        tags.append([TAG_VOCABULARY[(start + j * 3) % len(TAG_VOCABULARY)] for j in range(k)])
        scores.append([round(0.9 - 0.1 * j, 2) for j in range(k)])
    lake.fill_columns(S.IMAGES, pa.table({
        "image_id": images,
        "tags": tags, "tag_scores": pa.array(scores, pa.list_(pa.float32())), "tag_model": ["ram_plus"] * len(images),
    }))
    samples = lake.dataset(S.SAMPLES).to_table(columns=["sample_id", "source"]).to_pylist()
    center = {"lcs558k": 2.2, "fastchat": 0.6, "generated": 1.4}
    losses, tokens = [], []
    for row in samples:
        u = _unit(row["sample_id"])
        failed = u < 0.02  # a few samples whose loss failed stay NULL, never 0
        losses.append(None if failed else float(np.exp(np.log(center.get(row["source"], 1.0)) + 0.5 * (u - 0.5) * 2)))
        tokens.append(None if failed else 20 + int(200 * _unit(row["sample_id"] + "t")))
    failures = [ErrorRow(stage="loss", key=r["sample_id"], kind="too_long", source=r["source"],
                         message="the sample is longer than the model's context") for r, x in zip(samples, losses) if x is None]
    lake.append(S.ERRORS, errors_table(failures))  # a failed loss is NULL plus an errors row, never 0
    lake.fill_columns(S.SAMPLES, pa.table({
        "sample_id": [r["sample_id"] for r in samples],
        "loss": pa.array(losses, pa.float32()), "loss_tokens": pa.array(tokens, pa.int32()),
        "loss_model": ["qwen2-vl-test"] * len(samples),
    }))
    run_phash_and_dedup(lake)


def run_phash_and_dedup(lake: Lake, near_k: int = 4) -> None:
    """The real `enrich phash` (exact mode) and `dedup --near K` jobs, as a user runs them."""
    from etl.cli import main

    ids = lake.dataset(S.IMAGES).to_table(columns=["image_id"])["image_id"]
    lake.fill_columns(S.IMAGES, pa.table({"image_id": ids, "phash": pa.nulls(len(ids), pa.uint64())}))
    assert main(["--lake", lake.root, "enrich", "phash", "--no-progress", "--workers", "1"]) == 0
    assert main(["--lake", lake.root, "dedup", "--near", str(near_k)]) == 0


# -- pytest fixtures (import them into a test module); each lake is built once per session ------------
import shutil  # noqa: E402

import pytest  # noqa: E402

def two_recipes(sources: list[str]) -> tuple[str, str]:
    """Recipe A takes every source whole; B samples the first, filters the others by loss, repeats `generated`."""
    a = ["name: mix-a", "seed: 1", "sources:"] + [f"  - source: {s}" for s in sources]
    b = ["name: mix-b", "seed: 1", "sources:"]
    for i, source in enumerate(sources):
        b.append(f"  - source: {source}")
        b.append("    sampling: first:10" if i == 0 else '    where: "loss between 0.5 and 3"')
        if source == "generated":
            b.append("    repeat: 2")
    return "\n".join(a) + "\n", "\n".join(b) + "\n"


def _once(tmp_path_factory, name: str, build) -> Path:
    """A folder under the session's base temp built by `build(folder)` the first time it is asked for."""
    folder = tmp_path_factory.getbasetemp() / name
    if not (folder / ".built").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        build(folder)
        (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def bare_lake(tmp_path_factory) -> Lake:
    """The test lake as ingest leaves it: no enrichment, no dedup tables."""
    folder = _once(tmp_path_factory, "analysis-bare", lambda f: build_lake(f, use_realdata=realdata_available()))
    return Lake.open(str(folder / "lake"), create=False)


@pytest.fixture(scope="session")
def enriched_lake(tmp_path_factory, bare_lake) -> Lake:
    """A copy of the bare lake with phash, tags, loss and dedup tables filled in."""
    def build(folder: Path) -> None:
        shutil.copytree(bare_lake.root, folder / "lake")
        fill_enrichment(Lake.open(str(folder / "lake"), create=False))
    folder = _once(tmp_path_factory, "analysis-enriched", build)
    return Lake.open(str(folder / "lake"), create=False)


@pytest.fixture(scope="session")
def two_exports(tmp_path_factory, enriched_lake) -> tuple[Path, Path]:
    """Two real exports (JSON only) of the enriched lake with different recipes: (A, B) folders."""
    from etl.export import ExportOptions, export

    def build(folder: Path) -> None:
        sources = sorted(set(enriched_lake.dataset(S.SAMPLES).to_table(columns=["source"])["source"].to_pylist()))
        for name, text in zip("ab", two_recipes(sources)):
            recipe = folder / f"{name}.yaml"
            recipe.write_text(text)
            export(enriched_lake, str(recipe), ExportOptions(out=str(folder / f"export_{name}"), images="none"))
    folder = _once(tmp_path_factory, "analysis-exports", build)
    return folder / "export_a", folder / "export_b"
