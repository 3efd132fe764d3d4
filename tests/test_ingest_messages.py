"""Messages (LLaMA-Factory / OpenAI) and VILA ingest: uniform turns, images in order, nothing lost."""
from __future__ import annotations

import base64
import io
import json
import os

from PIL import Image

from etl.images import content_id
from etl.ingest import IngestOptions, ingest
from etl.lake import Lake
from etl.sources import detect_format

from conftest import REALDATA, errors_of, needs_realdata, samples_of

MLLM_DEMO = REALDATA / "llamafactory/mllm_demo"
CHATML = REALDATA / "data_juicer/demos/data/demo-dataset-chatml.jsonl"
VILA = REALDATA / "vila_inference_test/inference_test/inference_test.json"



def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24 + seed), (seed * 50 % 256, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()




def test_mllm_demo_keeps_a_duplicated_image_twice_in_image_ids_order(tmp_path):
    needs_realdata(MLLM_DEMO / "mllm_demo.json")
    assert detect_format(str(MLLM_DEMO / "mllm_demo.json")) == "messages"
    lake = Lake.open(str(tmp_path / "lake"))

    counts = ingest(lake, [str(MLLM_DEMO / "mllm_demo.json")], IngestOptions(source="demo", progress=False))

    samples = samples_of(lake, "demo")
    one = content_id((MLLM_DEMO / "mllm_demo_data" / "1.jpg").read_bytes())
    assert len(samples) == 6 and counts["images_added"] == 3
    assert samples[0]["image_ids"] == [one, one]
    assert samples[0]["conversations"] == [
        {"from": "human", "value": "<image>Who are they?"},
        {"from": "gpt", "value": "They're Kane and Gretzka from Bayern Munich."},
        {"from": "human", "value": "What are they doing?<image>"},
        {"from": "gpt", "value": "They are celebrating on the soccer field."},
    ]
    assert all(s["conversations"][0]["from"] == "human" for s in samples)


def test_content_part_lists_with_repo_root_paths_resolve_through_an_image_root(tmp_path):
    jsonl = MLLM_DEMO / "v1_multimodal_demo.jsonl"
    needs_realdata(jsonl)
    assert detect_format(str(jsonl)) == "messages"
    (tmp_path / "llamafactory_root").mkdir()  # paths are `data/mllm_demo_data/1.jpg`, relative to the repo root
    os.symlink(MLLM_DEMO, tmp_path / "llamafactory_root" / "data")
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(jsonl)], IngestOptions(source="v1", progress=False, image_roots=[str(tmp_path / "llamafactory_root")]))

    samples = samples_of(lake, "v1")
    one = content_id((MLLM_DEMO / "mllm_demo_data" / "1.jpg").read_bytes())
    assert len(samples) == 24 and errors_of(lake, "v1") == []  # the trailing blank line is not a record
    assert samples[0]["image_ids"] == [one, one]
    assert [t["value"] for t in samples[0]["conversations"]] == [
        "<image>Who are they?", "They're Kane and Gretzka from Bayern Munich.",
        "What are they doing?<image>", "They are celebrating on the soccer field."]


def test_system_turns_are_kept_in_meta_not_in_the_conversation(tmp_path):
    needs_realdata(CHATML)
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(CHATML)], IngestOptions(source="chatml", progress=False))

    samples = samples_of(lake, "chatml")
    assert len(samples) == 4 and all(s["image_ids"] == [] for s in samples)
    assert all(json.loads(s["meta"])["system"] == "You are a helpful assistant" for s in samples)
    assert samples[0]["conversations"][0] == {"from": "human", "value": "谁在文艺复兴时期绘制人体?"}
    assert {t["from"] for s in samples for t in s["conversations"]} == {"human", "gpt"}


def test_openai_style_records_with_data_urls_and_a_bad_line_keep_every_good_record(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(jpeg(1))
    data_url = "data:image/jpeg;base64," + base64.b64encode(jpeg(2)).decode()
    records = [
        {"id": 7, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Compare"},
                                         {"type": "image_url", "image_url": {"url": "imgs/a.jpg"}},
                                         {"type": "image_url", "image_url": {"url": data_url}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Same colour."}]}], "split": "train"},
        "{not json",
        {"messages": [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"}]}]},
        {"messages": [{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "Hello"}],
         "images": ["imgs/missing.jpg"]},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    lake = Lake.open(str(tmp_path / "lake"))

    ingest(lake, [str(path)], IngestOptions(source="oai", progress=False))

    [sample] = samples_of(lake, "oai")
    assert sample["orig_id"] == "7" and sample["image_ids"] == [content_id(jpeg(1)), content_id(jpeg(2))]
    assert sample["conversations"] == [{"from": "human", "value": "Compare<image><image>"},
                                       {"from": "gpt", "value": "Same colour."}]
    assert json.loads(sample["meta"]) == {"system": "Be brief.", "split": "train"}
    assert [(e["row"], e["kind"]) for e in errors_of(lake, "oai")] == [
        (1, "bad_json_line"), (2, "malformed_record"), (3, "missing_image")]


def test_vila_inference_test_gives_one_sample_per_qa_with_up_to_eight_images(tmp_path):
    needs_realdata(VILA)
    assert detect_format(str(VILA)) == "vila"
    lake = Lake.open(str(tmp_path / "lake"))

    counts = ingest(lake, [str(VILA)], IngestOptions(source="vila", progress=False))

    samples, errors = samples_of(lake, "vila"), errors_of(lake, "vila")
    assert len(samples) + len(errors) == 50  # 50 QAs in 38 cases
    assert len(samples) == 14 and {e["kind"] for e in errors} == {"missing_image"}  # 7 cases have their images here
    assert counts["images_added"] == 19
    factory_count = next(s for s in samples if s["orig_id"] == "factory count")
    assert len(factory_count["image_ids"]) == 8 and factory_count["conversations"][0]["value"].count("<image>") == 8
    car_safety = [s for s in samples if s["orig_id"] == "car safety"]
    assert [json.loads(s["meta"])["qa"] for s in car_safety] == [0, 1, 2, 3, 4]  # independent QAs, one sample each
