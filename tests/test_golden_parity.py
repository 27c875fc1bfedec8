"""Parity with the official NACLIP code on the golden fixture (tiny random CLIP, 14 cases).

Everything goes through the converter and `from_pretrained`, as a user would."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import CASE_IDS, case_settings
from naclip_hf import NACLIPForSemanticSegmentation
from naclip_hf.cli import main
from naclip_hf.inference import encode_classes, load_processor

LOGITS_TOL = 1e-4
PROBS_TOL = 1e-3
MIN_EQUAL_LABELS = 0.999

def assert_matches_golden(golden: dict, case_id: str, logits, probabilities, segmentation) -> None:
    expected_logits = golden[f"{case_id}/logits_processed"]
    assert logits[:, ::4, ::4].shape == expected_logits.shape
    logits_diff = (logits[:, ::4, ::4] - expected_logits).abs().max().item()
    assert logits_diff <= LOGITS_TOL, f"{case_id}: logits differ by {logits_diff:.3g}"
    expected_probs = golden[f"{case_id}/probs_sub4"]
    probs_diff = (probabilities[:, ::4, ::4] - expected_probs).abs().max().item()
    assert probs_diff <= PROBS_TOL, f"{case_id}: probabilities differ by {probs_diff:.3g}"
    expected_pred = golden[f"{case_id}/pred"].long()
    equal = (segmentation.long() == expected_pred).float().mean().item()
    assert equal >= MIN_EQUAL_LABELS, f"{case_id}: only {equal:.4%} of labels equal"


def test_tokenizer_matches_openai(tiny_checkpoint, golden):
    processor = load_processor(tiny_checkpoint)
    texts = ["a photo of a cat.", "the embroidered television monitor.", "a tattoo of a person in shirt."]
    encoded = processor.tokenizer(texts, padding=True, return_tensors="pt")
    expected = golden["text/token_ids"]
    for row, mask, want in zip(encoded["input_ids"], encoded["attention_mask"], expected):
        length = int(mask.sum())
        assert row[:length].tolist() == want[:length].tolist()
        assert want[length:].eq(0).all()  # the rest of the official row is padding


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_text_features(tiny_checkpoint, golden, manifest, attn_implementation):
    model = NACLIPForSemanticSegmentation.from_pretrained(
        tiny_checkpoint, attn_implementation=attn_implementation
    )
    embeddings = encode_classes(model, load_processor(tiny_checkpoint), manifest["classes"])
    diff = (embeddings.text_embeds - golden["text/query_features"]).abs().max().item()
    assert diff <= 1e-5
    assert embeddings.name_to_class.tolist() == golden["text/query_class"].tolist()


@pytest.mark.parametrize(
    "attn_implementation,settings_in", [("sdpa", "config"), ("eager", "config"), ("sdpa", "call")]
)
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_case_through_from_pretrained(tiny_checkpoint, golden, manifest, case_id, attn_implementation, settings_in):
    """The case's settings given to `from_pretrained` (saved in the config), or given to each call of an unchanged
    default model: `forward` takes them all, and its output carries them on to the post-processing."""
    case, overrides = case_settings(manifest, case_id)
    at_load = overrides if settings_in == "config" else {}
    model = NACLIPForSemanticSegmentation.from_pretrained(
        tiny_checkpoint, attn_implementation=attn_implementation, **at_load
    ).eval()
    for key, value in at_load.items():
        assert getattr(model.config, key) == value
    config_before = model.config.to_dict()
    call = overrides if settings_in == "call" else {}
    processor = load_processor(tiny_checkpoint)
    raw = golden[f"{case['image']}/raw"]
    fed = raw if case["short_side"] == 0 else golden[f"{case['image']}/resized_{case['short_side']}"]
    pixel_values = processor.image_processor(fed.numpy(), short_side=0)["pixel_values"]
    embeddings = encode_classes(model, processor, manifest["classes"])
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, text_embeds=embeddings.text_embeds, **call)
    (result,) = processor.image_processor.post_process_semantic_segmentation(
        outputs,
        target_sizes=[raw.shape[:2]],
        pixel_values=pixel_values,
        name_to_class=embeddings.name_to_class,
        return_probabilities=True,
    )
    assert_matches_golden(golden, case_id, outputs.logits[0], result["probabilities"], result["segmentation"])
    assert model.config.to_dict() == config_before


# Cases run as a separate `naclip` process, as a user runs it; the others call the same `main` in this process.
SUBPROCESS_CASES = ("a_whole_naclip", "c_slide_naclip_pamr")


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_case_through_cli(tiny_checkpoint, golden, manifest, golden_labels_file, tmp_path, case_id):
    """`naclip segment` on the raw image, resizing with our own image processor."""
    case, overrides = case_settings(manifest, case_id)
    raw = golden[f"{case['image']}/raw"]
    image_path = tmp_path / "image.png"
    Image.fromarray(raw.numpy()).save(image_path)
    scores = tmp_path / "scores.safetensors"
    settings = [
        f"{key}={','.join(map(str, v)) if isinstance(v, list) else v}" for key, v in overrides.items()
    ]
    settings.append(f"short_side={case['short_side']}")
    command = [
        sys.executable,
        "-m",
        "naclip_hf.cli",
        "segment",
        str(image_path),
        "--model",
        str(tiny_checkpoint),
        "--labels-file",
        str(golden_labels_file),
        "--save-scores",
        str(scores),
    ]
    for setting in settings:
        command += ["--set", setting]
    if case_id in SUBPROCESS_CASES:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, completed.stderr
    else:
        assert main(command[3:]) == 0
    from safetensors.torch import load_file

    saved = load_file(str(scores))
    assert saved["segmentation"].shape == raw.shape[:2]
    assert saved["probabilities"].shape[0] == len(manifest["classes"])
    assert_matches_golden(golden, case_id, saved["logits"], saved["probabilities"], saved["segmentation"])
    assert np.isfinite(saved["probabilities"].numpy()).all()
