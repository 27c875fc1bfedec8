"""Options resolved once: one typed object from the config (with its method) and the call's keywords, carried by the
model's output to post-processing, so that every path gives the same label map with each keyword given once."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from naclip_hf import NACLIPForSemanticSegmentation, NACLIPProcessor
from naclip_hf.cli import main
from naclip_hf.methods import combine_settings, method_names
from naclip_hf.models.naclip.options import CALL_OPTIONS, NACLIPInferenceOptions, resolve_options


@pytest.fixture(scope="module")
def image_path(golden, tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.fromarray(golden["img_b/raw"].numpy()).resize((160, 120)).save(path)
    return path


@pytest.fixture(scope="module")
def naclip_pipeline(tiny_checkpoint):
    from transformers import pipeline

    return pipeline("naclip-segmentation", model=str(tiny_checkpoint), text_cache_dir=None)


def processor_path(checkpoint, image_path, classes, **keywords) -> np.ndarray:
    """`model(**processor(images, text, ...))`, then the processor's post-processing with no keyword."""
    model = NACLIPForSemanticSegmentation.from_pretrained(checkpoint).eval()
    processor = NACLIPProcessor.from_pretrained(checkpoint)
    short_side = keywords.pop("short_side", None)
    method = keywords.pop("method", None)
    inputs = processor(images=str(image_path), text=classes, short_side=short_side, method=method)
    with torch.no_grad():
        outputs = model(**inputs, **keywords)
    return processor.post_process_semantic_segmentation(outputs, inputs)[0].numpy()


def cli_path(checkpoint, image_path, classes, tmp_path, *arguments: str) -> np.ndarray:
    scores = tmp_path / "scores.safetensors"
    labels = [", ".join(names) for names in classes]
    assert main(["segment", str(image_path), "--model", str(checkpoint), "--labels", *labels, "--save-scores",
                 str(scores), *arguments]) == 0  # fmt: skip
    return load_file(str(scores))["segmentation"].numpy()


@pytest.mark.parametrize("method", method_names())
def test_every_method_gives_one_label_map_on_every_path(tiny_checkpoint, manifest, image_path, naclip_pipeline,
                                                        tmp_path, method):  # fmt: skip
    classes = manifest["classes"]
    through_processor = processor_path(tiny_checkpoint, image_path, classes, method=method)
    through_pipeline = naclip_pipeline(str(image_path), candidate_labels=classes, method=method,
                                       return_label_map=True)["label_map"]  # fmt: skip
    through_cli = cli_path(tiny_checkpoint, image_path, classes, tmp_path, "--method", method)
    assert np.array_equal(through_processor, through_pipeline)
    assert np.array_equal(through_processor, through_cli)


def test_a_preset_gives_one_label_map_on_every_path(tiny_checkpoint, manifest, image_path, naclip_pipeline, tmp_path):
    classes = manifest["classes"]
    settings = {k: v for k, v in combine_settings("voc21").items() if k in CALL_OPTIONS}
    through_processor = processor_path(tiny_checkpoint, image_path, classes, **settings)
    through_pipeline = naclip_pipeline(str(image_path), candidate_labels=classes, return_label_map=True,
                                       **settings)["label_map"]  # fmt: skip
    preset_settings = [f"--set={k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                       for k, v in settings.items()]  # fmt: skip
    through_cli = cli_path(tiny_checkpoint, image_path, classes, tmp_path, *preset_settings)
    assert np.array_equal(through_processor, through_pipeline)
    assert np.array_equal(through_processor, through_cli)


def test_post_processing_follows_the_method_the_model_was_loaded_with(tiny_checkpoint, image_path, manifest):
    model = NACLIPForSemanticSegmentation.from_pretrained(tiny_checkpoint, method="clearclip").eval()
    processor = NACLIPProcessor.from_pretrained(tiny_checkpoint)
    assert model.config.method == "clearclip"
    inputs = processor(images=str(image_path), text=manifest["classes"])
    with torch.no_grad():
        outputs = model(**inputs)
    assert (outputs.options.pamr_steps, outputs.options.logit_scale, outputs.options.short_side) == (0, 50.0, 448)
    expected = processor.post_process_semantic_segmentation(outputs.logits, inputs, pamr_steps=0, logit_scale=50.0)
    assert torch.equal(processor.post_process_semantic_segmentation(outputs, inputs)[0], expected[0])


def test_options_are_frozen_complete_and_layered():
    options = resolve_options({"pamr_steps": 3, "method": "sclip"}, {"prob_thd": 0.2})
    assert isinstance(options, NACLIPInferenceOptions)
    assert (options.method, options.pamr_steps, options.prob_thd, options.short_side) == ("sclip", 3, 0.2, 336)
    assert set(options.to_dict()) == set(CALL_OPTIONS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.pamr_steps = 1
    called = resolve_options({"pamr_steps": 3}, {"method": "clearclip", "prob_thd": 0.2})
    assert (called.pamr_steps, called.slide_crop, called.short_side, called.prob_thd) == (0, 448, 448, 0.2)
    with pytest.raises(TypeError, match="the options of a call are: method, arch"):
        resolve_options({}, {"pamr_step": 2})
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        resolve_options({}, {"method": "nope"})


def test_unknown_keywords_are_refused_with_the_known_ones(tiny_checkpoint):
    processor = NACLIPProcessor.from_pretrained(tiny_checkpoint)
    with pytest.raises(TypeError, match="templates, short_side, method, return_tensors"):
        processor(text=["a", "b"], short_sides=3)
    model = NACLIPForSemanticSegmentation.from_pretrained(tiny_checkpoint)
    with pytest.raises(TypeError, match="the per-call options are method, arch"):
        model(pixel_values=torch.zeros(1, 3, 32, 32), text_embeds=torch.zeros(2, 64), pamr_step=1)


def test_return_dict_false_gives_a_tuple(tiny_checkpoint):
    model = NACLIPForSemanticSegmentation.from_pretrained(tiny_checkpoint, slide_crop=0).eval()
    pixels, text = torch.randn(1, 3, 48, 64), torch.nn.functional.normalize(torch.randn(2, 64), dim=-1)
    with torch.no_grad():
        as_tuple = model(pixel_values=pixels, text_embeds=text, return_dict=False)
        as_output = model(pixel_values=pixels, text_embeds=text)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], as_output.logits)


def test_a_command_resolves_its_checkpoint_once(tiny_checkpoint, image_path, tmp_path, monkeypatch):
    from naclip_hf import checkpoints

    calls = []
    check = checkpoints.check_checkpoint
    monkeypatch.setattr(checkpoints, "check_checkpoint", lambda *a, **k: calls.append(a) or check(*a, **k))
    assert main(["segment", str(image_path), "--model", str(tiny_checkpoint), "--labels", "cat", "dog", "--out",
                 str(tmp_path / "out"), "--set", "pamr_steps=0"]) == 0  # fmt: skip
    assert len(calls) == 1
