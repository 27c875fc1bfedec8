"""Methods (named bundles of settings), the `qq` and `identity` attentions, and SCLIP's area threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import GRID, apply_area_threshold, last_attention, last_layer_projections, tiles_of, tiny_model
from naclip_hf import NACLIPConfig, NACLIPForSemanticSegmentation
from naclip_hf.cli import main
from naclip_hf.methods import (
    METHODS,
    Method,
    PublishedResult,
    combine_settings,
    comparison_table,
    get_method,
    register_method,
)
from naclip_hf.models.naclip.modeling_naclip import gaussian_neighbourhood_bias
from naclip_hf.models.naclip.options import DEFAULTS, method_settings
from naclip_hf.models.naclip.postprocessing_naclip import area_threshold_keep, post_process_image

BUILT_IN = ("naclip", "clip", "maskclip", "sclip", "clearclip")


# ------------------------------------------------------------------------------------------------ attention
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_qq_and_identity_attention_maps(implementation):
    model = tiny_model(slide_crop=0)
    model.set_attn_implementation(implementation)
    pixels = torch.randn(2, 3, 40, 56)
    query, _, scale = last_layer_projections(model, pixels)
    tokens = 1 + GRID[0] * GRID[1]
    qq = last_attention(model, pixels, attn_strategy="qq", arch="reduced")
    torch.testing.assert_close(qq, (scale * query @ query.transpose(-1, -2)).softmax(dim=-1), rtol=1e-5, atol=1e-6)
    identity = last_attention(model, pixels, attn_strategy="identity", arch="vanilla")
    assert identity.shape == (2, 4, tokens, tokens)
    assert torch.equal(identity, torch.eye(tokens).expand(2, 4, tokens, tokens))


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def plain_last_block(model: NACLIPForSemanticSegmentation, x: torch.Tensor, arch: str, strategy: str) -> torch.Tensor:
    """The last vision block written out from its weights: x [B, T, D] (its input) -> [B, T, D]."""
    layer = model.vision_model.encoder.layers[-1]
    attention = layer.self_attn
    heads, head_dim = attention.num_heads, attention.head_dim
    scale = head_dim**-0.5

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(*t.shape[:-1], heads, head_dim).transpose(1, 2)

    h = F.layer_norm(x, x.shape[-1:], layer.layer_norm1.weight, layer.layer_norm1.bias, layer.layer_norm1.eps)
    q = split(F.linear(h, attention.q_proj.weight, attention.q_proj.bias))
    k = split(F.linear(h, attention.k_proj.weight, attention.k_proj.bias))
    v = split(F.linear(h, attention.v_proj.weight, attention.v_proj.bias))
    tokens = x.shape[1]
    if strategy == "naclip":
        weights = (scale * k @ k.transpose(-1, -2) + gaussian_neighbourhood_bias(*GRID, 5.0)).softmax(-1)
    elif strategy == "vanilla":
        weights = (scale * q @ k.transpose(-1, -2)).softmax(-1)
    elif strategy == "csa":
        weights = (scale * q @ q.transpose(-1, -2)).softmax(-1) + (scale * k @ k.transpose(-1, -2)).softmax(-1)
    elif strategy == "qq":
        weights = (scale * q @ q.transpose(-1, -2)).softmax(-1)
    elif strategy == "identity":
        weights = torch.eye(tokens)
    else:
        raise AssertionError(strategy)
    attended = (weights @ v).transpose(1, 2).reshape(x.shape)
    attended = F.linear(attended, attention.out_proj.weight, attention.out_proj.bias)
    if arch == "reduced":
        return attended
    y = x + attended
    norm2 = layer.layer_norm2
    z = F.layer_norm(y, y.shape[-1:], norm2.weight, norm2.bias, norm2.eps)
    z = F.linear(_quick_gelu(F.linear(z, layer.mlp.fc1.weight, layer.mlp.fc1.bias)), layer.mlp.fc2.weight,
                 layer.mlp.fc2.bias)  # fmt: skip
    return y + z


@pytest.mark.parametrize("name", BUILT_IN)
def test_last_block_of_each_method_equals_its_plain_definition(name):
    method = get_method(name)
    expected_block = {
        "naclip": ("reduced", "naclip"),
        "clip": ("vanilla", "vanilla"),
        "maskclip": ("vanilla", "identity"),  # MaskCLIP's ViT code keeps the residual and the MLP
        "sclip": ("vanilla", "csa"),
        "clearclip": ("reduced", "qq"),  # no residual, no MLP
    }[name]
    assert (method.settings["arch"], method.settings["attn_strategy"]) == expected_block
    model = tiny_model(slide_crop=0, hidden_act="quick_gelu")
    assert model.config.vision_config.hidden_act == "quick_gelu"
    pixels = torch.randn(2, 3, 40, 56)
    block = {key: method.settings[key] for key in ("arch", "attn_strategy", "gaussian_std") if key in method.settings}
    with torch.no_grad():
        encoded = model.encode_patches(pixels, output_hidden_states=True, **block)
        expected = plain_last_block(model, encoded.hidden_states[-2], *expected_block)
    torch.testing.assert_close(encoded.last_hidden_state, expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------- area threshold
def test_area_threshold_on_a_hand_made_label_map():
    # 3 classes on a 4 x 5 image. Top classes: 0 on 8 pixels, 1 on 10, 2 on 2 (2 / 12 of the foreground).
    top = np.array([
        [0, 0, 0, 0, 1],
        [0, 0, 0, 0, 1],
        [1, 1, 1, 1, 2],
        [1, 1, 1, 1, 2],
    ])  # fmt: skip
    second = np.array([
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [0, 0, 0, 0, 1],  # the pixels of class 2: next best 1 ...
        [0, 0, 0, 0, 0],  # ... and 0 (background)
    ])  # fmt: skip
    probabilities = torch.full((3, 4, 5), 0.05)
    probabilities.scatter_(0, torch.from_numpy(top)[None], 0.6)
    probabilities.scatter_(0, torch.from_numpy(second)[None], 0.35)
    counts = torch.bincount(torch.from_numpy(top).reshape(-1), minlength=3)
    assert area_threshold_keep(counts, 0.1).tolist() == [True, True, True]  # 2 > 0.1 * 12
    assert area_threshold_keep(counts, 2 / 12).tolist() == [True, True, False]  # kept only when above, as SCLIP
    assert area_threshold_keep(counts, 0.9).tolist() == [True, False, False]  # class 0 is always kept
    dropped = apply_area_threshold(probabilities, 0.2)
    expected = top.copy()
    expected[2, 4], expected[3, 4] = 1, 0
    assert dropped.argmax(dim=0).numpy().tolist() == expected.tolist()
    assert torch.equal(dropped[2], torch.zeros(4, 5)) and torch.equal(dropped[:2], probabilities[:2])
    assert torch.equal(apply_area_threshold(probabilities, 0.1), probabilities)


@pytest.mark.parametrize("prob_thd", [0.0, 0.3])
def test_area_threshold_in_post_processing_is_the_same_for_any_tiling(prob_thd):
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 12, 16) * 0.05
    logits[0, 0, :6] += 1.0  # class 0 (background): the top half
    logits[0, 1, 6:, :8] += 1.0
    logits[0, 2, 6:, 8:] += 1.0
    logits[0, 3, 9:, 13:] += 1.5  # class 3: a small corner, about a tenth of the foreground
    name_to_class = [0, 1, 2, 3]
    whole = post_process_image(logits, None, (24, 32), name_to_class, 20.0, prob_thd, 0, [8, 16], area_thd=0.2,
                               return_probabilities=True)  # fmt: skip
    with tiles_of(7, 9):
        tiled = post_process_image(logits, None, (24, 32), name_to_class, 20.0, prob_thd, 0, [8, 16], area_thd=0.2,
                                   return_probabilities=True)  # fmt: skip
    assert torch.equal(whole.segmentation, tiled.segmentation)
    torch.testing.assert_close(whole.probabilities, tiled.probabilities)
    # By hand: the probabilities without thresholds, the area threshold, then prob_thd on what is left.
    plain = post_process_image(logits, None, (24, 32), name_to_class, 20.0, 0.0, 0, [8, 16],
                               return_probabilities=True)  # fmt: skip
    merged = F.interpolate(logits, size=(24, 32), mode="bilinear", align_corners=False)[0].mul(20.0).softmax(0)
    counts = torch.bincount(merged.argmax(0).reshape(-1), minlength=4)
    keep = area_threshold_keep(counts, 0.2)
    assert not keep.all(), "the example must drop a class"
    kept = merged * keep.view(-1, 1, 1)
    expected = kept.argmax(0)
    expected[kept.amax(0) < prob_thd] = 0
    assert torch.equal(whole.segmentation, expected)
    assert not torch.equal(plain.segmentation, whole.segmentation)
    torch.testing.assert_close(whole.probabilities, kept / kept.sum(0, keepdim=True))


def test_area_threshold_off_changes_nothing():
    logits = torch.randn(1, 3, 10, 10)
    off = post_process_image(logits, None, (10, 10), [0, 1, 2], 40.0, 0.1, 0, [8, 16], return_probabilities=True)
    zero = post_process_image(logits, None, (10, 10), [0, 1, 2], 40.0, 0.1, 0, [8, 16], area_thd=0.0,
                              return_probabilities=True)  # fmt: skip
    assert torch.equal(off.segmentation, zero.segmentation) and torch.equal(off.probabilities, zero.probabilities)
    assert DEFAULTS["area_thd"] == 0.0


# ------------------------------------------------------------------------------------------------- registry
def test_built_in_methods_and_their_sources():
    assert tuple(METHODS)[: len(BUILT_IN)] == BUILT_IN
    for method in METHODS.values():
        assert method.paper and method.code_url.startswith("https://github.com/")
    sclip = combine_settings("voc21", "sclip")
    assert (sclip["logit_scale"], sclip["prob_thd"], sclip["area_thd"], sclip["slide_crop"]) == (65.0, 0.1, 0.1, 224)
    assert combine_settings("coco_stuff", "sclip")["short_side"] == 448
    assert combine_settings("context60", "clearclip")["prob_thd"] == 0.15
    assert combine_settings("cityscapes", "clearclip")["slide_crop"] == 224
    assert combine_settings("voc21", "maskclip")["slide_crop"] == 0
    # The benchmark's own settings, then the method's, then its per-benchmark ones, then the overrides.
    assert combine_settings("voc21", "naclip") == combine_settings("voc21") | dict(get_method("naclip").settings)
    assert combine_settings("voc21", "sclip", {"prob_thd": 0.3})["prob_thd"] == 0.3


@pytest.mark.parametrize("name", ["maskclip", "sclip", "naclip"])
def test_published_averages_match_the_numbers(name):
    results = get_method(name).published
    assert results
    for result in results:
        if result.average is not None:
            assert len(result.miou) == 8
            # The printed average is rounded from unrounded numbers: within half a unit of the last digit.
            assert abs(sum(result.miou.values()) / 8 - result.average) <= 0.05 + 1e-9


def test_method_settings_and_errors():
    assert method_settings("sclip", {"pamr_steps": 3})["pamr_steps"] == 3
    assert method_settings("sclip")["attn_strategy"] == "csa"
    with pytest.raises(ValueError, match="Unknown method 'nope'.*naclip.*register_method"):
        get_method("nope")
    with pytest.raises(ValueError, match="attn_strategy='csa'"):
        Method("bad", "Bad", "csa without the vanilla block", {"attn_strategy": "csa"})
    with pytest.raises(ValueError, match="unknown benchmark"):
        register_method(Method("elsewhere", "E", "x", {}, benchmark_settings={"mars": {"prob_thd": 0.1}}))
    with pytest.raises(ValueError, match="already registered"):
        register_method(Method("sclip", "S", "again", {}))


def test_comparison_table_puts_published_numbers_beside_ours():
    measured = {("sclip", False): {name: 50.0 for name in get_method("sclip").published[0].miou},
                ("clearclip", False): {"voc20": 70.0}}  # fmt: skip
    table = comparison_table(measured)
    assert "| SCLIP | no | 50.0 (59.1) | 50.0 (30.4) |" in table
    assert "| 50.0 (38.2) |" in table
    assert "| ClearCLIP | no | – | – | – | 70.0 (80.9) |" in table
    assert "NACLIP paper (Hajimiri, Ben Ayed and Dolz, WACV 2025), Table 5" in table


# ------------------------------------------------------------------------------------ config, calls, pipeline
def test_config_method_with_overrides():
    config = NACLIPConfig(method="sclip", pamr_steps=3)
    assert (config.arch, config.attn_strategy, config.pamr_steps) == ("vanilla", "csa", 3)
    options = NACLIPConfig().inference_options(method="clearclip", prob_thd=0.3)
    assert (options.attn_strategy, options.slide_crop, options.short_side, options.prob_thd) == (
        "qq", 448, 448, 0.3)
    with pytest.raises(ValueError, match="Unknown method"):
        NACLIPConfig(method="nope")


def test_from_pretrained_with_a_method(tiny_checkpoint):
    model = NACLIPForSemanticSegmentation.from_pretrained(tiny_checkpoint, method="clearclip", prob_thd=0.2)
    assert (model.config.attn_strategy, model.config.arch, model.config.logit_scale) == ("qq", "reduced", 50.0)
    assert model.config.prob_thd == 0.2  # given alongside the method: it wins


def test_pipeline_method_per_call(tiny_checkpoint):
    from transformers import pipeline

    segmenter = pipeline("naclip-segmentation", model=str(tiny_checkpoint))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    before = segmenter.model.config.to_dict()
    labels = ["cat", "dog", "sky"]
    by_method = segmenter(image, candidate_labels=labels, method="sclip", return_probabilities=True)
    settings = {k: v for k, v in get_method("sclip").settings.items() if k != "short_side"}
    by_hand = segmenter(image, candidate_labels=labels, short_side=336, return_probabilities=True, **settings)
    np.testing.assert_allclose(by_method["probabilities"], by_hand["probabilities"], atol=1e-6)
    naclip = segmenter(image, candidate_labels=labels, return_probabilities=True)
    assert not np.allclose(naclip["probabilities"], by_method["probabilities"], atol=1e-4)
    assert segmenter.model.config.to_dict() == before  # the call changed nothing shared


# ----------------------------------------------------------------------------------------------- command line
def test_a_new_method_is_one_entry_and_reaches_segment(tiny_checkpoint, tmp_path, capsys):
    register_method(Method(
        "tiny_test_method", "Tiny", "a method defined by this test only",
        {"arch": "reduced", "attn_strategy": "qq", "slide_crop": 0, "logit_scale": 33.0, "pamr_steps": 0,
         "area_thd": 0.05, "short_side": 32},
        paper="this test", code_url="https://github.com/example/none",
        published=(PublishedResult("nowhere", False, {"voc20": 1.0}),),
    ), replace=True)  # fmt: skip
    try:
        image = tmp_path / "noise.png"
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image)
        out = tmp_path / "out"
        code = main(["segment", str(image), "--labels", "cat", "dog", "--model", str(tiny_checkpoint),
                     "--method", "tiny_test_method", "--set", "logit_scale=30", "--out", str(out)])  # fmt: skip
        captured = capsys.readouterr()
        assert code == 0, captured.err
        summary = json.loads((out / "noise.json").read_text())
        settings = summary["settings"]
        assert summary["method"] == "tiny_test_method"
        assert (settings["attn_strategy"], settings["slide_crop"], settings["pamr_steps"]) == ("qq", 0, 0)
        assert (settings["area_thd"], settings["short_side"]) == (0.05, 32)
        assert settings["logit_scale"] == 30.0  # --set wins over the method
    finally:
        METHODS.pop("tiny_test_method", None)


def test_evaluate_with_a_method_prints_its_table(tiny_checkpoint, tmp_path, capsys):
    from synthetic_data import make_benchmark_dataset

    root = make_benchmark_dataset("voc21", tmp_path / "data", num_images=2)
    out = tmp_path / "r.json"
    code = main(["evaluate", "--preset", "voc21", "--data-root", str(root), "--model", str(tiny_checkpoint),
                 "--method", "sclip", "--pamr", "on", "--set", "short_side=32", "--set", "pamr_steps=2",
                 "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(out.read_text())
    settings = result["settings"]
    assert settings["method"] == "sclip"
    # SCLIP's own VOC21 settings, --pamr on over its PAMR off, --set over both
    assert (settings["attn_strategy"], settings["arch"], settings["logit_scale"]) == ("csa", "vanilla", 65.0)
    assert (settings["area_thd"], settings["prob_thd"], settings["slide_crop"]) == (0.1, 0.1, 224)
    assert settings["pamr_steps"] == 2 and settings["short_side"] == 32
    ours = f"{result['miou_percent']:.1f}"
    assert f"| SCLIP | yes | {ours} (61.7) | {ours} (61.7) |" in captured.out


def test_run_all_benchmarks_compares_methods(tiny_checkpoint, tmp_path, capsys):
    from synthetic_data import make_benchmark_dataset
    from test_evaluate_cli import load_script

    script = load_script()
    voc = make_benchmark_dataset("voc21", tmp_path / "voc", num_images=1)
    out_dir = tmp_path / "out"
    code = script.main(["--roots", f"voc21={voc}", "--model", str(tiny_checkpoint), "--out-dir", str(out_dir),
                        "--pamr", "off", "--set", "short_side=32", "--no-progress",
                        "--methods", "sclip", "clearclip"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = [line for line in captured.out.splitlines() if line.startswith(("| SCLIP", "| ClearCLIP"))]
    assert len(rows) == 2
    sclip = json.loads((out_dir / "sclip" / "voc21_no_pamr.json").read_text())
    assert (sclip["settings"]["logit_scale"], sclip["settings"]["area_thd"]) == (65.0, 0.1)
    assert rows[0].startswith(f"| SCLIP | no | {sclip['miou_percent']:.1f} (59.1) | – (30.4) |")
    clearclip = json.loads((out_dir / "clearclip" / "voc21_no_pamr.json").read_text())
    assert (clearclip["settings"]["attn_strategy"], clearclip["settings"]["prob_thd"]) == ("qq", 0.5)
    assert (out_dir / "methods_table.md").read_text().strip() in captured.out
