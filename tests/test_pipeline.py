"""The `naclip-segmentation` pipeline on the tiny checkpoint: inputs, output format, labels, caching, errors."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY

import naclip_hf
from naclip_hf import NACLIPForSemanticSegmentation, NACLIPImageProcessor, NACLIPProcessor, NACLIPSegmentationPipeline
from naclip_hf.inference import encode_classes, load_processor, segment_image

LABELS = ["sky, wall, tree, grass", "cat", "dog", "person, person in shirt", "car"]
SHORT_SIDE = 112  # keeps every call fast on the tiny model


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    # PAMR (at the original size) dominates the run time; tests that need it turn it back on.
    return pipeline("naclip-segmentation", model=str(tiny_checkpoint), pamr_steps=0)


@pytest.fixture(scope="module")
def image(golden) -> np.ndarray:
    return np.array(Image.fromarray(golden["img_b/raw"].numpy()).resize((200, 150)))  # 150 x 200 RGB


@pytest.fixture(scope="module")
def image_path(image, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "image.png"
    Image.fromarray(image).save(path)
    return path


def test_task_is_registered_on_import(pipe):
    assert naclip_hf.registration.TASK == "naclip-segmentation"
    assert "naclip-segmentation" in PIPELINE_REGISTRY.get_supported_tasks()
    assert isinstance(pipe, NACLIPSegmentationPipeline)
    assert isinstance(pipe.model, NACLIPForSemanticSegmentation)
    assert isinstance(pipe.processor, NACLIPProcessor)
    assert isinstance(pipe.image_processor, NACLIPImageProcessor)
    assert not pipe.model.training


def test_output_follows_image_segmentation_format(pipe, image):
    full = pipe(image, candidate_labels=LABELS, short_side=SHORT_SIDE, return_label_map=True,
                return_probabilities=True)  # fmt: skip
    segments = pipe(image, candidate_labels=LABELS, short_side=SHORT_SIDE)
    assert isinstance(segments, list) and len(segments) >= 2, "the test image should show several classes"
    assert set(full) == {"segments", "labels", "label_map", "probabilities"}
    assert full["labels"] == ["sky", "cat", "dog", "person", "car"]
    label_map, probabilities = full["label_map"], full["probabilities"]
    assert label_map.shape == image.shape[:2] and label_map.dtype == np.int64
    assert probabilities.shape == (len(LABELS), *image.shape[:2]) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)
    present = np.unique(label_map).tolist()
    assert [s["label"] for s in segments] == [full["labels"][c] for c in present]  # class order
    covered = np.zeros(image.shape[:2], dtype=int)
    for segment, class_id in zip(segments, present):
        assert set(segment) == {"label", "score", "mask"}
        mask = segment["mask"]
        assert isinstance(mask, Image.Image) and mask.mode == "L" and mask.size == (image.shape[1], image.shape[0])
        pixels = np.asarray(mask)
        assert set(np.unique(pixels).tolist()) <= {0, 255}
        assert np.array_equal(pixels == 255, label_map == class_id)
        covered += pixels == 255
        expected_score = probabilities[class_id][label_map == class_id].mean()
        assert segment["score"] == pytest.approx(float(expected_score), rel=1e-5)
    assert (covered == 1).all(), "the masks partition the image"
    for one, other in zip(segments, full["segments"]):
        assert one["label"] == other["label"] and one["score"] == other["score"]


def test_only_requested_extras_are_returned(pipe, image):
    with_map = pipe(image, candidate_labels=LABELS, short_side=SHORT_SIDE, return_label_map=True)
    assert set(with_map) == {"segments", "labels", "label_map"}
    with_probs = pipe(image, candidate_labels=LABELS, short_side=SHORT_SIDE, return_probabilities=True)
    assert set(with_probs) == {"segments", "labels", "probabilities"}


def test_matches_segment_image(pipe, tiny_checkpoint, image):
    model, processor = pipe.model, load_processor(tiny_checkpoint)
    classes = encode_classes(model=model, processor=processor, classes=LABELS)
    assert model.config.pamr_steps == 10
    expected = segment_image(model, processor, image, classes, short_side=SHORT_SIDE)
    result = pipe(image, candidate_labels=LABELS, short_side=SHORT_SIDE, return_label_map=True,
                  return_probabilities=True, pamr_steps=10)  # fmt: skip
    assert np.array_equal(result["label_map"], expected.segmentation.numpy())
    np.testing.assert_allclose(result["probabilities"], expected.probabilities.numpy(), atol=1e-6)


def test_image_input_types(pipe, image, image_path, http_folder):
    expected = pipe(image, candidate_labels=LABELS, short_side=SHORT_SIDE, return_label_map=True)["label_map"]
    folder, base_url = http_folder
    (folder / "image.png").write_bytes(image_path.read_bytes())
    inputs = {
        "path": str(image_path),
        "pathlib": image_path,
        "url": f"{base_url}/image.png",
        "pil": Image.fromarray(image),
        "pil_rgba": Image.fromarray(image).convert("RGBA"),
        "tensor_chw": torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous(),
    }
    for name, item in inputs.items():
        result = pipe(item, candidate_labels=LABELS, short_side=SHORT_SIDE, return_label_map=True)
        assert np.array_equal(result["label_map"], expected), name
    grey = pipe(image[..., 0], candidate_labels=LABELS, short_side=SHORT_SIDE, return_label_map=True)
    assert grey["label_map"].shape == image.shape[:2]


def test_list_of_images_returns_one_result_per_image(pipe, image, image_path):
    small = np.ascontiguousarray(image[:100, :120])
    results = pipe([image_path, small, Image.fromarray(image)], candidate_labels=LABELS, short_side=SHORT_SIDE,
                   return_label_map=True)  # fmt: skip
    assert isinstance(results, list) and len(results) == 3
    alone = pipe(small, candidate_labels=LABELS, short_side=SHORT_SIDE, return_label_map=True)
    assert np.array_equal(results[1]["label_map"], alone["label_map"])
    assert np.array_equal(results[0]["label_map"], results[2]["label_map"])
    assert results[1]["label_map"].shape == (100, 120)
    plain = pipe((image, small), candidate_labels=LABELS, short_side=SHORT_SIDE, batch_size=4)
    assert len(plain) == 2 and all(isinstance(segments, list) for segments in plain)
    assert pipe([], candidate_labels=LABELS) == []
    lazy = pipe((item for item in [small, small]), candidate_labels=LABELS, short_side=SHORT_SIDE)
    assert [len(segments) for segments in lazy] == [len(plain[1])] * 2


def test_synonyms_as_string_or_list(pipe, image):
    as_strings = pipe(image, candidate_labels=["sky, wall", "person, person in shirt"], short_side=SHORT_SIDE,
                      return_probabilities=True)  # fmt: skip
    as_lists = pipe(image, candidate_labels=[["sky", "wall"], ("person", "person in shirt")], short_side=SHORT_SIDE,
                    return_probabilities=True)  # fmt: skip
    assert as_lists["labels"] == as_strings["labels"] == ["sky", "person"]
    np.testing.assert_array_equal(as_lists["probabilities"], as_strings["probabilities"])


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (None, "candidate_labels is required"),
        ([], "No class names given"),
        (["cat", "  "], "empty or blank"),
        (["cat", "dog, "], "empty or blank"),
        ([["cat", ""]], "empty or blank"),
        (["cat", "dog", "cat"], "given twice"),
        ("cat, dog", "must be a list of classes"),
        ([1, 2], "neither a string nor a list of strings"),
        (42, "must be a list of classes"),
    ],
)
def test_invalid_labels_raise(pipe, image, labels, message):
    kwargs = {} if labels is None else {"candidate_labels": labels}
    with pytest.raises(ValueError, match=message):
        pipe(image, short_side=SHORT_SIDE, **kwargs)


def test_labels_given_when_building_the_pipeline(tiny_checkpoint, image):
    segmenter = pipeline("naclip-segmentation", model=str(tiny_checkpoint), candidate_labels=["cat", "dog"],
                         short_side=SHORT_SIDE, pamr_steps=0)  # fmt: skip
    assert {s["label"] for s in segmenter(image)} <= {"cat", "dog"}
    assert {s["label"] for s in segmenter(image, candidate_labels=["car", "sky"])} <= {"car", "sky"}


def test_text_embeddings_are_computed_once_per_label_set(tiny_checkpoint, image):
    segmenter = pipeline("naclip-segmentation", model=str(tiny_checkpoint), pamr_steps=0)
    calls = []
    handle = segmenter.model.text_projection.register_forward_hook(lambda *args: calls.append(1))
    try:
        first = segmenter(image, candidate_labels=LABELS, short_side=SHORT_SIDE, return_probabilities=True)
        after_first = len(calls)
        assert after_first > 0
        again = segmenter([image, image], candidate_labels=list(LABELS), short_side=SHORT_SIDE,
                          return_probabilities=True)  # fmt: skip
        assert len(calls) == after_first, "the same labels must reuse their text embeddings"
        np.testing.assert_array_equal(again[1]["probabilities"], first["probabilities"])
        segmenter(image, candidate_labels=["cat", "dog"], short_side=SHORT_SIDE)
        assert len(calls) > after_first, "new labels need the text tower"
        after_second = len(calls)
        segmenter(image, candidate_labels=LABELS, short_side=SHORT_SIDE)
        assert len(calls) == after_second, "an earlier label set is still cached"
        segmenter.model.config.prompt_templates = ["a photo of a {}."]
        segmenter(image, candidate_labels=LABELS, short_side=SHORT_SIDE)
        assert len(calls) > after_second, "other prompt templates give other embeddings"
    finally:
        handle.remove()


def test_unreadable_image_raises_naming_it(pipe, image, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="broken.png") as caught:
        pipe([image, str(broken)], candidate_labels=LABELS, short_side=SHORT_SIDE)
    assert "skip_errors=True" in str(caught.value)
    with pytest.raises(ValueError, match="missing.png"):
        pipe(str(tmp_path / "missing.png"), candidate_labels=LABELS, short_side=SHORT_SIDE)


def test_skip_errors_keeps_the_other_images(pipe, image, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    results = pipe([image, str(broken), image], candidate_labels=LABELS, short_side=SHORT_SIDE, skip_errors=True,
                   return_label_map=True)  # fmt: skip
    assert len(results) == 3
    assert set(results[1]) == {"error"} and "broken.jpg" in results[1]["error"]
    assert np.array_equal(results[0]["label_map"], results[2]["label_map"])
    single = pipe(str(broken), candidate_labels=LABELS, skip_errors=True)
    assert "broken.jpg" in single["error"]


def test_settings_for_one_call(pipe, image):
    config = pipe.model.config
    before = (config.pamr_steps, config.gaussian_std)
    assert before == (10, 5.0), "settings given to pipeline() apply to its calls, not to the config"
    kwargs = {"candidate_labels": LABELS, "short_side": SHORT_SIDE, "return_probabilities": True}
    default = pipe(image, **kwargs)
    changed = pipe(image, **kwargs, gaussian_std=1.0)
    assert (config.pamr_steps, config.gaussian_std) == before, "call settings must not stick"
    assert not np.allclose(default["probabilities"], changed["probabilities"])
    explicit = pipe(image, **kwargs, gaussian_std=1.0, pamr_steps=0)
    np.testing.assert_array_equal(explicit["probabilities"], changed["probabilities"])  # settings add up
    with_pamr = pipe(image, **kwargs, gaussian_std=1.0, pamr_steps=2)
    assert not np.allclose(with_pamr["probabilities"], changed["probabilities"])
    again = pipe(image, **kwargs)
    np.testing.assert_array_equal(again["probabilities"], default["probabilities"])
    with pytest.raises(ValueError, match="attn_strategy"):
        pipe(image, candidate_labels=LABELS, attn_strategy="bogus")
    assert config.attn_strategy == "naclip"
    with pytest.raises(TypeError, match="Unknown option"):
        pipe(image, candidate_labels=LABELS, text_batch_size=4)
    with pytest.raises(ValueError, match="slide_stride=56.5 is invalid: it must be an integer"):
        pipe(image, candidate_labels=LABELS, slide_stride=56.5)
    with pytest.raises(ValueError, match="pamr_steps='3' is invalid"):
        pipe(image, candidate_labels=LABELS, pamr_steps="3")
    with pytest.raises(ValueError, match="short_side"):
        pipe(image, candidate_labels=LABELS, short_side=-1)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["cup, table"], "one class given ('cup, table': commas join synonyms of one class); name at least two "
                         "classes, each its own list entry: candidate_labels=['cup', 'table']"),
        ([["cup", "mug"]], "one class given ('cup, mug': commas join synonyms of one class)"),
        (["cup"], "one class given ('cup', which every pixel would get); name at least two classes, each its own list "
                  "entry: candidate_labels=['cup', 'background']"),
    ],
)  # fmt: skip
def test_one_class_is_refused_with_the_fix(pipe, image, labels, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        pipe(image, candidate_labels=labels, short_side=SHORT_SIDE)
    with pytest.raises(ValueError, match=re.escape(message)):
        pipe.preprocess(image, candidate_labels=labels)


def test_short_side_changes_the_model_input(pipe, image):
    small = pipe.preprocess(image, candidate_labels=[["cat"], ["dog"]], short_side=64)
    assert tuple(small["pixel_values"].shape) == (1, 3, 64, 85) and small["original_size"] == (150, 200)
    default = pipe.preprocess(image, candidate_labels=[["cat"], ["dog"]])
    assert tuple(default["pixel_values"].shape[-2:]) == (336, 448)


def test_direct_construction(tiny_checkpoint, image):
    model = NACLIPForSemanticSegmentation.from_pretrained(tiny_checkpoint).eval()
    segmenter = NACLIPSegmentationPipeline(model=model, processor=load_processor(tiny_checkpoint), pamr_steps=0)
    from_path = NACLIPSegmentationPipeline(model=str(tiny_checkpoint), pamr_steps=0)
    one = segmenter(image, candidate_labels=LABELS, short_side=SHORT_SIDE, return_label_map=True)
    two = from_path(image, candidate_labels=LABELS, short_side=SHORT_SIDE, return_label_map=True)
    assert np.array_equal(one["label_map"], two["label_map"])
    with pytest.raises(TypeError, match="NACLIPForSemanticSegmentation"):
        NACLIPSegmentationPipeline(model=torch.nn.Linear(2, 2), processor=load_processor(tiny_checkpoint))


def test_plain_clip_checkpoint_gets_naclip_preprocessing(tiny_checkpoint, tmp_path, image):
    """A transformers CLIP folder (CLIPModel, CLIPImageProcessor) works and is preprocessed as NACLIP does."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    naclip = NACLIPForSemanticSegmentation.from_pretrained(tiny_checkpoint)
    config = CLIPConfig(text_config=naclip.config.text_config.to_dict(),
                        vision_config=naclip.config.vision_config.to_dict(),
                        projection_dim=naclip.config.projection_dim)  # fmt: skip
    clip = CLIPModel(config)
    missing, unexpected = clip.load_state_dict(naclip.state_dict(), strict=False)
    assert not unexpected and all("position_ids" in key for key in missing)
    folder = tmp_path / "plain-clip"
    clip.save_pretrained(folder)
    CLIPProcessor(CLIPImageProcessor(), CLIPTokenizer.from_pretrained(tiny_checkpoint)).save_pretrained(folder)
    assert '"model_type": "clip"' in (folder / "config.json").read_text()

    segmenter = pipeline("naclip-segmentation", model=str(folder), pamr_steps=0)
    assert isinstance(segmenter.image_processor, NACLIPImageProcessor)
    assert segmenter.image_processor.short_side == 336
    reference = pipeline("naclip-segmentation", model=str(tiny_checkpoint), pamr_steps=0)
    kwargs = {"candidate_labels": LABELS, "short_side": SHORT_SIDE, "return_label_map": True}
    assert np.array_equal(segmenter(image, **kwargs)["label_map"], reference(image, **kwargs)["label_map"])


def test_default_checkpoint_offline_says_how_to_get_one(tmp_path):
    """With no network and no cached copy, `pipeline("naclip-segmentation")` explains how to get a checkpoint."""
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_CACHE", "TRANSFORMERS_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), HF_MODULES_CACHE=str(tmp_path / "modules"))
    code = (
        "from transformers import pipeline\n"
        "import naclip_hf\n"
        "try:\n"
        "    pipeline('naclip-segmentation')\n"
        "except OSError as error:\n"
        "    print('ERROR:', error)\n"
        "else:\n"
        "    print('LOADED')\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                               timeout=120)  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "ERROR:" in completed.stdout, completed.stdout + completed.stderr
    assert "openai/clip-vit-base-patch16" in completed.stdout
    assert "naclip convert" in completed.stdout and "local folder" in completed.stdout


def test_url_fetch_failure_is_reported(pipe, closed_port_url):
    with pytest.raises(ValueError, match=f"Could not read image {closed_port_url}.*network connection"):
        pipe(closed_port_url, candidate_labels=LABELS, timeout=5)


def test_mask_png_round_trip(pipe, image):
    segment = pipe(image, candidate_labels=LABELS, short_side=SHORT_SIDE)[0]
    buffer = io.BytesIO()
    segment["mask"].save(buffer, format="PNG")
    assert Image.open(buffer).mode == "L"


def test_a_new_pipeline_reads_label_embeddings_from_the_disk_cache(tiny_checkpoint, image, isolated_text_cache):
    first = pipeline("naclip-segmentation", model=str(tiny_checkpoint), pamr_steps=0)
    expected = first(image, candidate_labels=LABELS, short_side=SHORT_SIDE, return_probabilities=True)
    assert any(isolated_text_cache.rglob("*.safetensors")), "the label embeddings were written to the cache"
    second = pipeline("naclip-segmentation", model=str(tiny_checkpoint), pamr_steps=0)
    calls = []
    handle = second.model.text_projection.register_forward_hook(lambda *args: calls.append(1))
    try:
        again = second(image, candidate_labels=LABELS, short_side=SHORT_SIDE, return_probabilities=True)
    finally:
        handle.remove()
    assert not calls, "a label set embedded before is read from disk"
    np.testing.assert_array_equal(again["probabilities"], expected["probabilities"])
    uncached = pipeline("naclip-segmentation", model=str(tiny_checkpoint), pamr_steps=0, text_cache_dir=None)
    handle = uncached.model.text_projection.register_forward_hook(lambda *args: calls.append(1))
    try:
        uncached(image, candidate_labels=LABELS, short_side=SHORT_SIDE)
    finally:
        handle.remove()
    assert calls, "text_cache_dir=None turns the disk cache off"


def test_model_called_with_the_processors_output_equals_the_explicit_call(tiny_checkpoint, image):
    model = NACLIPForSemanticSegmentation.from_pretrained(tiny_checkpoint).eval()
    processor = load_processor(tiny_checkpoint)
    inputs = processor(images=image, text=["cat", "dog, puppy", "car"], short_side=64)
    assert set(inputs) == {"pixel_values", "input_ids", "attention_mask", "num_templates"}
    with torch.no_grad():
        direct = model(**inputs, slide_crop=0)
        explicit = model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                         attention_mask=inputs["attention_mask"], num_templates=inputs["num_templates"], slide_crop=0)
    torch.testing.assert_close(direct.logits, explicit.logits, rtol=0, atol=0)
    (labels,) = processor.post_process_semantic_segmentation(direct, inputs, pamr_steps=0)
    assert tuple(labels.shape) == tuple(inputs.original_sizes[0].tolist())
    assert int(labels.max()) <= 2 and inputs.name_to_class.tolist() == [0, 1, 1, 2]
