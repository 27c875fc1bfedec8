"""The fast execution paths give what the baseline paths of `scripts/benchmark.py` give, on tiny models.

Baseline = the official code's execution choices: one sliding window at a time with eager attention, the
reference PAMR, and the text classifier run name by name with prompts padded to 77 tokens. Speed itself is
measured by `scripts/benchmark.py`, never asserted here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from naclip_hf import NACLIPForSemanticSegmentation, modeling_naclip
from naclip_hf.inference import encode_classes, load_processor
from naclip_hf.pamr import pamr, pamr_reference
from test_golden_parity import CASE_IDS, case_settings

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "scripts" / "benchmark.py"
STRATEGIES = [
    ("reduced", "naclip"),
    ("reduced", "nonly"),
    ("reduced", "kk"),
    ("reduced", "vanilla"),
    ("vanilla", "vanilla"),
    ("vanilla", "csa"),
    ("vanilla", "naclip"),
]
BF16_MIN_CASE_AGREEMENT = 0.93
BF16_MIN_MEAN_AGREEMENT = 0.975


@pytest.fixture(scope="module")
def benchmark():
    """scripts/benchmark.py as a module."""
    spec = importlib.util.spec_from_file_location("naclip_benchmark_script", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def quick_model(benchmark) -> NACLIPForSemanticSegmentation:
    return benchmark.build_model(benchmark.QUICK)


@pytest.fixture(scope="module")
def quick_image(benchmark):
    return benchmark.benchmark_image(benchmark.QUICK.image_size)


@pytest.mark.parametrize("arch,strategy", STRATEGIES)
def test_batched_sdpa_windows_equal_one_eager_window_at_a_time(benchmark, quick_model, arch, strategy):
    model = quick_model
    model.config.arch, model.config.attn_strategy = arch, strategy
    batch_size = model.config.slide_batch_size
    assert batch_size > 1
    try:
        torch.manual_seed(1)
        pixels = torch.randn(2, 3, 112, 149)
        text = F.normalize(torch.randn(5, model.config.projection_dim), dim=-1)
        assert len(modeling_naclip.sliding_windows(112, 149, 64, 32)) == 12
        with torch.no_grad():
            fast = model(pixels, text_embeds=text).logits
            with benchmark.baseline_mode(model):
                assert model.config.slide_batch_size == 1
                assert model.vision_model.config._attn_implementation == "eager"
                slow = model(pixels, text_embeds=text).logits
        assert model.config.slide_batch_size == batch_size
        assert model.vision_model.config._attn_implementation == "sdpa"
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
    finally:
        model.config.arch, model.config.attn_strategy = "reduced", "naclip"


def test_sdpa_with_the_gaussian_bias_as_float_mask_is_the_default(tiny_checkpoint, monkeypatch):
    model = NACLIPForSemanticSegmentation.from_pretrained(tiny_checkpoint, slide_crop=0).eval()
    assert model.config._attn_implementation == "sdpa"
    masks = []
    original = F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        masks.append(kwargs.get("attn_mask"))
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 80), text_embeds=F.normalize(torch.randn(3, 64), dim=-1))
    float_masks = [mask for mask in masks if mask is not None and mask.is_floating_point()]
    assert len(float_masks) == 1  # the last layer's Ω, shape [1 + 4·5, 1 + 4·5]
    assert float_masks[0].shape == (21, 21)


def realistic_pamr_inputs(benchmark, size, channels, batch=1) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised natural-looking guide image (the benchmark's test image) and smooth logit maps around 0.2,
    as upsampled patch logits are."""
    processor = benchmark.load_processor(0)
    image = processor.image_processor(benchmark.benchmark_image(size), short_side=0)["pixel_values"]
    torch.manual_seed(0)
    coarse = torch.randn(batch, channels, max(size[0] // 16, 1), max(size[1] // 16, 1)) * 0.05 + 0.2
    scores = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return image.repeat(batch, 1, 1, 1), scores


def test_pamr_matches_the_reference_with_a_quarter_of_its_memory(benchmark):
    """At the benchmark's size (375x500, 12 names, 10 steps, dilations 8 and 16). Memory is the peak of live tensor
    bytes from the allocator's events, which is deterministic."""
    image, scores = realistic_pamr_inputs(benchmark, (375, 500), 12)
    fast_peak, fast = benchmark.peak_tensor_bytes(lambda: pamr(image, scores, 10, [8, 16]))
    reference_peak, reference = benchmark.peak_tensor_bytes(lambda: pamr_reference(image, scores, 10, [8, 16]))
    assert (fast - reference).abs().max().item() <= 1e-5
    if fast_peak is None:
        pytest.skip("this PyTorch does not expose the profiler's memory events")
    assert fast_peak <= reference_peak / 4


@pytest.mark.parametrize("size,channels,batch,dilations", [((61, 47), 5, 2, [1, 2, 4]), ((7, 9), 3, 1, [8, 16])])
def test_pamr_matches_the_reference_on_other_shapes(benchmark, size, channels, batch, dilations):
    image, scores = realistic_pamr_inputs(benchmark, size, channels, batch)
    fast = pamr(image, scores, 10, dilations)
    reference = pamr_reference(image, scores, 10, dilations)
    assert (fast - reference).abs().max().item() <= 1e-5


def test_pamr_in_post_processing_can_be_swapped_for_the_reference(benchmark, quick_model, quick_image):
    processor = benchmark.load_processor(benchmark.QUICK.short_side)
    classes = encode_classes(quick_model, processor, ["sky", "cat", "dog, puppy"])
    fast = benchmark.segment_image(quick_model, processor, quick_image, classes)
    with benchmark.baseline_mode(quick_model):
        assert modeling_naclip.pamr is pamr_reference
        slow = benchmark.segment_image(quick_model, processor, quick_image, classes)
    assert modeling_naclip.pamr is pamr
    torch.testing.assert_close(fast.logits, slow.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast.probabilities, slow.probabilities, rtol=0, atol=1e-5)


@pytest.mark.parametrize("text_batch_size", [1024, 100])
def test_sorted_trimmed_text_batches_equal_name_by_name_prompts_padded_to_77(
    benchmark, tiny_checkpoint, manifest, text_batch_size
):
    model = NACLIPForSemanticSegmentation.from_pretrained(tiny_checkpoint, text_batch_size=text_batch_size).eval()
    processor = load_processor(tiny_checkpoint)
    fast = encode_classes(model, processor, manifest["classes"])
    names = [name for entry in manifest["classes"] for name in entry]
    with benchmark.baseline_mode(model):
        slow = benchmark.embed_names_one_by_one(model, processor.tokenizer, names)
    assert fast.text_embeds.shape == slow.shape == (12, 64)
    assert (fast.text_embeds - slow).abs().max().item() <= 1e-6


def test_sorting_prompts_by_length_keeps_their_order_in_the_result(quick_model):
    """Prompts of different lengths, interleaved across names: each name still gets its own prompts' mean."""
    model = quick_model
    torch.manual_seed(2)
    lengths = [9, 3, 6, 4, 12, 5, 7, 3, 10]  # 3 names x 3 templates
    ids = torch.full((9, 14), 49407)
    mask = torch.zeros(9, 14, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, 0] = 49406
        ids[row, 1 : length - 1] = torch.randint(1, 49000, (length - 2,))
        mask[row, :length] = 1
    model.config.text_batch_size = 2
    try:
        with torch.no_grad():
            batched = model.get_name_embeddings(ids, mask, num_templates=3)
            one_by_one = [
                F.normalize(model.get_text_features(ids[row : row + 1, : lengths[row]]), dim=-1) for row in range(9)
            ]
    finally:
        model.config.text_batch_size = 1024
    expected = F.normalize(torch.cat(one_by_one).view(3, 3, -1).mean(dim=1), dim=-1)
    torch.testing.assert_close(batched, expected, rtol=0, atol=1e-6)


def test_bfloat16_label_agreement(tiny_checkpoint, golden, manifest):
    """The tiny golden checkpoint loaded with `dtype=torch.bfloat16` runs on CPU; post-processing stays fp32.

    Measured label agreement with fp32 (which matches the official outputs) on the 14 golden cases: 98.7 % on
    average, 94.9 % for the worst case (c_slide_reduced_vanilla); the thresholds leave a little room for other
    CPUs' bf16 kernels. Random weights make the class margins small; a trained CLIP agrees more.
    """
    processor = load_processor(tiny_checkpoint)
    model = NACLIPForSemanticSegmentation.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    classes = encode_classes(model, processor, manifest["classes"])
    assert classes.text_embeds.dtype == torch.bfloat16
    agreements = {}
    for case_id in CASE_IDS:
        case, overrides = case_settings(manifest, case_id)
        for key, value in overrides.items():  # the NACLIP settings are read at run time
            setattr(model.config, key, value)
        raw = golden[f"{case['image']}/raw"]
        fed = raw if case["short_side"] == 0 else golden[f"{case['image']}/resized_{case['short_side']}"]
        pixel_values = processor.image_processor(fed.numpy(), short_side=0)["pixel_values"].to(torch.bfloat16)
        with torch.no_grad():
            logits = model(pixel_values=pixel_values, text_embeds=classes.text_embeds).logits
        probabilities, segmentation = model.post_process_logits(
            logits, pixel_values, raw.shape[:2], classes.name_to_class
        )
        assert probabilities.dtype == torch.float32
        torch.testing.assert_close(probabilities.sum(dim=1), torch.ones_like(probabilities[:, 0]))
        expected = golden[f"{case_id}/pred"].long()  # = our fp32 labels (see test_golden_parity)
        agreements[case_id] = (segmentation[0] == expected).float().mean().item()
    mean = sum(agreements.values()) / len(agreements)
    worst = min(agreements, key=agreements.get)
    print(f"bf16 label agreement with fp32: mean {mean:.2%}, worst {agreements[worst]:.2%} ({worst})")
    assert agreements[worst] >= BF16_MIN_CASE_AGREEMENT, agreements
    assert mean >= BF16_MIN_MEAN_AGREEMENT, agreements


def test_pamr_runs_in_fp32_for_a_bf16_model(monkeypatch, quick_model):
    model = NACLIPForSemanticSegmentation(quick_model.config).eval().to(torch.bfloat16)
    seen = []

    def recording(image, scores, num_iter, dilations):
        seen.append((image.dtype, scores.dtype))
        return pamr(image, scores, num_iter, dilations)

    monkeypatch.setattr(modeling_naclip, "pamr", recording)
    logits = torch.randn(1, 3, 40, 50, dtype=torch.bfloat16)
    pixels = torch.randn(1, 3, 40, 50, dtype=torch.bfloat16)
    probabilities, _ = model.post_process_logits(logits, pixels, (45, 60), [0, 1, 1])
    assert seen == [(torch.float32, torch.float32)]
    assert probabilities.dtype == torch.float32


def test_benchmark_quick_runs(tmp_path):
    out = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--repeats", "1", "--markdown", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert "| Stage |" in completed.stdout and "end to end" in completed.stdout
    results = json.loads(out.read_text())
    keys = {row["key"] for row in results["rows"]}
    assert keys >= {"text", "text_cached", "whole", "sliding", "pamr", "end_to_end", "bf16"}
    assert all(row["ours_s"] > 0 for row in results["rows"])
    assert {entry["target"] for entry in results["targets"]} >= {"end to end vs baseline", "PAMR time vs baseline"}
