"""The bundled demo: make small raw sources from scikit-image's bundled photos, then run every stage.

The sources imitate what users download: a LLaVA JSON with single-image, multi-image and text-only
records, a JSONL chat file, near-duplicates (resized, cropped, re-encoded copies), an exact duplicate
under another name, GIF bytes under a `.jpg` name (the OCR-VQA trap), a truncated JPEG, a text file
posing as an image, a missing image, a malformed record and a broken JSONL line.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = {  # scikit-image loader -> caption
    "astronaut": "An astronaut in a white spacesuit poses in front of an American flag.",
    "coffee": "A cup of coffee with latte art on a saucer, seen from above.",
    "chelsea": "A tabby cat looks to the side with green eyes.",
    "camera": "A man with a camera on a tripod stands in a field, in black and white.",
    "rocket": "A rocket stands on the launch pad against a blue sky.",
    "horse": "The silhouette of a horse in black on white.",
    "coins": "Old coins arranged in rows on a dark background.",
    "moon": "The surface of the moon with craters, in grayscale.",
    "page": "A scanned page of printed text.",
    "text": "A photo of handwritten and printed text on a wall.",
    "hubble_deep_field": "A deep field image of distant galaxies in space.",
    "immunohistochemistry": "A microscope image of stained tissue.",
    "retina": "A photograph of the retina with blood vessels.",
    "colorwheel": "A color wheel with a smooth rainbow gradient.",
    "logo": "The scikit-image logo on a transparent background.",
}
QUESTIONS = ["What is shown in this image?", "Describe the image briefly.", "What is the main subject here?"]
TEXT_ONLY = [
    ("What is a data lake?", "A data lake stores raw data in open formats so many tools can query it."),
    ("Why deduplicate training data?", "Duplicates waste compute and can make a model memorise examples."),
    ("What does phash measure?", "A perceptual hash summarises an image so similar images get similar hashes."),
]


def photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(np.asarray(getattr(data, name)()))


def save(im: Image.Image, path: Path, fmt: str, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "JPEG" and im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    im.save(path, fmt, **kw)


def make_images(root: Path) -> dict[str, str]:
    """Write the demo images; return caption by relative path."""
    captions = {}
    for name, caption in PHOTOS.items():
        im = photo(name)
        rel = f"photos/{name}.png" if im.mode in ("RGBA", "LA") else f"photos/{name}.jpg"
        save(im, root / rel, "PNG" if rel.endswith(".png") else "JPEG", quality=92)
        captions[rel] = caption
    # near-duplicates: what mirrors, re-crawls and re-uploads produce
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        im = photo(name)
        save(im.resize((im.width // 2, im.height // 2), Image.LANCZOS), root / f"mirror/{name}_small.jpg", "JPEG", quality=80)
        w, h = im.size
        save(im.crop((w // 50, h // 50, w - w // 50, h - h // 50)), root / f"mirror/{name}_crop.jpg", "JPEG", quality=90)
        save(im, root / f"mirror/{name}.png", "PNG")
        captions[f"mirror/{name}_small.jpg"] = captions[f"mirror/{name}_crop.jpg"] = PHOTOS[name]
        captions[f"mirror/{name}.png"] = PHOTOS[name]
    # an exact duplicate under another name, and GIF bytes behind a .jpg name
    shutil.copyfile(root / "photos/camera.jpg", root / "mirror/camera_copy.jpg")
    captions["mirror/camera_copy.jpg"] = PHOTOS["camera"]
    save(photo("coins").convert("P"), root / "ocr/coins_scan.jpg", "GIF")
    captions["ocr/coins_scan.jpg"] = PHOTOS["coins"]
    # broken files: a truncated JPEG (stored; fails at decode) and a text file posing as an image
    data = (root / "photos/rocket.jpg").read_bytes()
    (root / "broken").mkdir(exist_ok=True)
    (root / "broken/truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "broken/not_an_image.jpg").write_text("<html>403 Forbidden</html>")
    captions["broken/truncated.jpg"] = PHOTOS["rocket"]
    captions["broken/not_an_image.jpg"] = "A photo that never downloaded."
    return captions


def llava_records(captions: dict[str, str]) -> list[dict]:
    records = []
    for i, (rel, caption) in enumerate(sorted(captions.items())):
        # copies of one photo share its conversation, as a re-crawled dataset does: dedup finds them
        k = sorted(set(captions.values())).index(caption)
        q = QUESTIONS[k % len(QUESTIONS)]
        human = f"<image>\n{q}" if k % 2 == 0 else f"{q}\n<image>"
        records.append({"id": f"{i:06d}", "image": rel,
                        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": caption}]})
    records.append({"id": 777, "image": ["photos/astronaut.jpg", "photos/rocket.jpg"],  # integer id, two images
                    "conversations": [{"from": "human", "value": "Image 1: <image>\nImage 2: <image>\nWhat do they share?"},
                                      {"from": "gpt", "value": "  Both are about space travel.  "}]})
    records.append({"id": "missing", "image": "photos/does_not_exist.jpg",
                    "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "?"}]})
    records.append({"id": "malformed", "image": "photos/moon.jpg", "conversation": "typo in the key"})
    for j, (q, a) in enumerate(TEXT_ONLY):
        records.append({"id": f"text_{j}", "model": "", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]})
    return records


def make_sources(root: Path) -> list[Path]:
    """Write the demo's raw sources under `root`; return the annotation files."""
    root.mkdir(parents=True, exist_ok=True)
    captions = make_images(root / "images")
    llava = root / "demo_llava.json"
    llava.write_text(json.dumps(llava_records(captions), indent=2))
    chat = root / "demo_chat.jsonl"
    lines = [json.dumps({"id": f"chat_{k}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]})
             for k, (q, a) in enumerate(TEXT_ONLY)]
    lines.insert(1, '{"id": "chat_broken", "conversations": [')  # a line cut mid-record
    chat.write_text("\n".join(lines) + "\n")
    return [llava, chat]
