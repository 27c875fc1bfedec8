"""SC-CLIP and SFP (dense methods that replace the last block): parity with the official code on the
golden_methods fixture (a narrow 12-layer random CLIP), the registry, and where ours differs on purpose."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_clip_config
from naclip_hf import NACLIPConfig, NACLIPForSemanticSegmentation
from naclip_hf.cli import main
from naclip_hf.cli._common import parse_set_options
from naclip_hf.inference import encode_classes, load_processor
from naclip_hf.methods import combine_settings, get_method
from naclip_hf.models.naclip.dense_methods import (
    DENSE_METHODS,
    DenseMethodInterface,
    cosine_similarity_matrix,
    layer_plan,
    lof_outliers,
    reads_attentions,
    register_dense_method,
    repair_outliers,
    sfp_block,
    som_outliers,
)

CASES = ["scclip_voc20_b", "scclip_voc21_p", "scclip_city_e", "sfp_voc20_b", "sfp_voc21_p", "sfp_city_e",
         "resclip_voc20_b", "resclip_voc20_b_nosfr", "resclip_voc21_p", "resclip_context59_p", "resclip_city_e"]
SLOW_CASES = ("scclip_city_e", "sfp_city_e", "resclip_city_e", "resclip_context59_p")
# The benchmark of each official config file.
CONFIG_BENCHMARKS = {"configs/cfg_voc20.py": "voc20", "configs/cfg_voc21.py": "voc21",
                     "configs/cfg_city_scapes.py": "cityscapes", "configs/cfg_context59.py": "context59"}
LOGITS_TOL, PROBS_TOL, MIN_EQUAL_LABELS = 1e-4, 1e-3, 0.999


@pytest.fixture(scope="session")
def narrow_model(narrow_checkpoint) -> NACLIPForSemanticSegmentation:
    return NACLIPForSemanticSegmentation.from_pretrained(narrow_checkpoint).eval()


def _case(manifest: dict, case_id: str) -> tuple[dict, dict]:
    """(case entry, its settings but the short side) from the manifest's `cli_set`, typed as `--set` types them."""
    case = next(c for c in manifest["cases"] if c["id"] == case_id)
    settings = parse_set_options([f"{key}={value}" for key, value in case["cli_set"].items()])
    return case, {key: value for key, value in settings.items() if key != "short_side"}


def _window(golden: dict, image: str = "img_b", rows: slice = slice(0, 224), cols: slice = slice(0, 224)):
    """A normalised window [1, 3, h, w] of a golden image resized to short side 336."""
    mean = torch.tensor([122.771, 116.746, 104.094])[:, None, None]
    std = torch.tensor([68.501, 66.632, 70.323])[:, None, None]
    pixels = golden[f"{image}/resized_336"].permute(2, 0, 1).float()
    return ((pixels - mean) / std)[None, :, rows, cols]


def _check(golden: dict, case_id: str, logits, probabilities, segmentation) -> tuple[float, float, float]:
    logits_diff = (logits[:, ::4, ::4] - golden[f"{case_id}/logits_processed_sub4"]).abs().max().item()
    probs_diff = (probabilities[:, ::4, ::4] - golden[f"{case_id}/probs_sub4"]).abs().max().item()
    equal = (segmentation.long() == golden[f"{case_id}/pred"].long()).float().mean().item()
    assert logits_diff <= LOGITS_TOL, f"{case_id}: logits differ by {logits_diff:.3g}"
    assert probs_diff <= PROBS_TOL, f"{case_id}: probabilities differ by {probs_diff:.3g}"
    assert equal >= MIN_EQUAL_LABELS, f"{case_id}: only {equal:.4%} of labels equal"
    return logits_diff, probs_diff, equal


# ----------------------------------------------------------------------------------- parity with the official
@pytest.mark.parametrize(
    "case_id", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES]
)
def test_case_through_from_pretrained(narrow_checkpoint, methods_golden, methods_manifest, case_id):
    """`from_pretrained(path, method=...)` with the case's settings, our processor on the fixture's resized image."""
    case, settings = _case(methods_manifest, case_id)
    model = NACLIPForSemanticSegmentation.from_pretrained(narrow_checkpoint, method=case["method"], **settings)
    assert model.config.arch == case["method"]
    assert model.config.method == case["method"]
    processor = load_processor(narrow_checkpoint)
    raw = methods_golden[f"{case['image']}/raw"]
    fed = methods_golden[f"{case['image']}/resized_{case['short_side']}"]
    pixel_values = processor.image_processor(fed.numpy(), short_side=0)["pixel_values"]
    assert list(pixel_values.shape[-2:]) == case["input_hw"]
    embeddings = encode_classes(model, processor, methods_manifest["classes"])
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, text_embeds=embeddings.text_embeds)
    (result,) = processor.image_processor.post_process_semantic_segmentation(
        outputs, target_sizes=[raw.shape[:2]], pixel_values=pixel_values, name_to_class=embeddings.name_to_class,
        return_probabilities=True,
    )  # fmt: skip
    _check(methods_golden, case_id, outputs.logits[0], result["probabilities"], result["segmentation"])


@pytest.mark.parametrize("case_id", ["scclip_voc21_p", "sfp_voc20_b", "resclip_voc21_p"])
def test_case_through_cli(narrow_checkpoint, methods_golden, methods_manifest, tmp_path, case_id):
    """`naclip segment --method NAME --set ...` on the raw image, resized by our own image processor."""
    case, _ = _case(methods_manifest, case_id)
    image_path = tmp_path / "image.png"
    Image.fromarray(methods_golden[f"{case['image']}/raw"].numpy()).save(image_path)
    labels = tmp_path / "classes.txt"
    labels.write_text("\n".join(", ".join(names) for names in methods_manifest["classes"]) + "\n")
    scores = tmp_path / "scores.safetensors"
    argv = ["segment", str(image_path), "--model", str(narrow_checkpoint), "--labels-file", str(labels),
            "--method", case["method"], "--save-scores", str(scores)]  # fmt: skip
    for key, value in case["cli_set"].items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0
    from safetensors.torch import load_file

    saved = load_file(str(scores))
    _check(methods_golden, case_id, saved["logits"], saved["probabilities"], saved["segmentation"])


def test_pipeline_with_a_dense_method(narrow_checkpoint, methods_golden, methods_manifest):
    from transformers import pipeline

    segmenter = pipeline("naclip-segmentation", model=str(narrow_checkpoint))
    labels = [", ".join(names) for names in methods_manifest["classes"]]
    image = methods_golden["img_b/raw"].numpy()
    result = segmenter(image, candidate_labels=labels, method="sfp", return_probabilities=True, return_label_map=True)
    expected = methods_golden["sfp_voc20_b/probs_sub4"].numpy()
    assert np.abs(result["probabilities"][:, ::4, ::4] - expected).max() <= PROBS_TOL
    assert segmenter.model.config.arch == "reduced"  # the call changed nothing shared


@pytest.mark.parametrize("case_id", ["scclip_voc20_b", "scclip_voc21_p", "sfp_voc20_b", "sfp_voc21_p"])
def test_outliers_equal_the_official_ones(narrow_model, methods_golden, methods_manifest, case_id):
    """Per window, the LOF / SOM outliers are the patches the official code flags (recorded in the manifest)."""
    case, _ = _case(methods_manifest, case_id)
    image = methods_golden[f"{case['image']}/resized_{case['short_side']}"].permute(2, 0, 1).float()
    mean = torch.tensor(methods_manifest["pixel_mean"])[:, None, None]
    std = torch.tensor(methods_manifest["pixel_std"])[:, None, None]
    windows = torch.stack([((image - mean) / std)[:, a:b, c:d] for a, b, c, d in case["windows"]])
    with torch.no_grad():
        encoded = narrow_model.encode_patches(windows, output_hidden_states=True, output_attentions=True,
                                              arch=case["method"])  # fmt: skip
    if case["method"] == "scclip":
        outliers = lof_outliers(encoded.hidden_states[11][:, 1:])
        expected = case["debug"]["lof_outliers"]
    else:
        outliers = som_outliers(encoded.attentions[0])
        # The official pairs are (index // rows, index % rows): on these square 14×14 windows, row and column.
        expected = [sorted(a * 14 + b for a, b in pairs) for pairs in case["debug"]["som_outliers_rowcol"]]
    assert [row.nonzero().flatten().tolist() for row in outliers] == expected


# ------------------------------------------------------------------------------------------- the registry
def test_methods_and_their_settings():
    assert combine_settings("voc21", "scclip") | {} == {
        **combine_settings("voc21"), "arch": "scclip", "slide_crop": 224, "slide_stride": 112,
        "window_padding": "none", "logit_scale": 50.0, "prob_thd": 0.15, "area_thd": 0.1, "pamr_steps": 0,
        "short_side": 336,
    }  # fmt: skip
    assert combine_settings("ade20k", "sfp")["short_side"] == 384
    assert combine_settings("cityscapes", "scclip")["short_side"] == 560
    assert combine_settings("coco_object", "sfp")["logit_scale"] == 55.0
    assert get_method("scclip").published_result(False).average == 43.9
    from naclip_hf.benchmarks import get_benchmark

    assert get_benchmark("voc21").class_names(method="sfp")[15][0] == "people"
    assert NACLIPConfig(method="sfp").arch == "sfp"


def test_a_new_dense_method_is_one_function_and_one_entry(narrow_model, methods_golden):
    calls = []

    @reads_attentions(lambda depth: (2, 5))
    def mean_of_two_blocks(model, hidden_states, attentions, *, patch_grid, pixel_values, text_embeds, settings):
        calls.append((len(hidden_states), [a is not None for a in attentions], patch_grid, settings["arch"]))
        return (hidden_states[3] + hidden_states[6])[:, 1:] / 2

    register_dense_method("mean_two_test", mean_of_two_blocks)
    try:
        window = _window(methods_golden)
        with torch.no_grad():
            encoded = narrow_model.encode_patches(window, arch="mean_two_test", text_embeds=torch.zeros(2, 64))
            plain = narrow_model.encode_patches(window, arch="reduced", output_hidden_states=True)
        assert calls == [(12, [i in (2, 5) for i in range(11)], (14, 14), "mean_two_test")]
        expected = (plain.hidden_states[3] + plain.hidden_states[6])[:, 1:] / 2
        torch.testing.assert_close(encoded.last_hidden_state, expected)
        with pytest.raises(ValueError, match="block architecture"):
            register_dense_method("reduced", mean_of_two_blocks)
    finally:
        DenseMethodInterface._global_mapping.pop("mean_two_test", None)
    local = DenseMethodInterface()
    local["scclip"] = mean_of_two_blocks
    assert local["scclip"] is mean_of_two_blocks and DENSE_METHODS["scclip"] is not mean_of_two_blocks


@pytest.mark.parametrize("method", ["scclip", "sfp"])
def test_captures_and_attention_implementations(narrow_checkpoint, methods_golden, method):
    """Only the blocks a method reads run eager attention; eager and SDPA models give the same tokens."""
    window = _window(methods_golden)
    outputs = {}
    for implementation in ("sdpa", "eager"):
        model = NACLIPForSemanticSegmentation.from_pretrained(narrow_checkpoint, attn_implementation=implementation)
        with torch.no_grad():
            outputs[implementation] = model.encode_patches(
                window, output_attentions=True, output_hidden_states=True, arch=method
            )
    sdpa, eager = outputs["sdpa"], outputs["eager"]
    assert sdpa.last_hidden_state.shape == (1, 196, 128)  # no CLS token
    assert len(sdpa.hidden_states) == 12  # the embeddings and blocks 0 … 10: the last block is not run
    assert len(sdpa.attentions) == (1 if method == "sfp" else 0) and len(eager.attentions) == 11
    if method == "sfp":
        torch.testing.assert_close(sdpa.attentions[0], eager.attentions[10], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sdpa.last_hidden_state, eager.last_hidden_state, rtol=1e-4, atol=1e-5)


def test_invalid_arch_and_missing_attention(narrow_model, methods_golden):
    with pytest.raises(ValueError, match="arch='nope' is invalid: it must be one of reduced, vanilla, scclip, sfp"):
        narrow_model(_window(methods_golden), text_embeds=torch.zeros(2, 64), arch="nope")
    hidden = tuple(torch.zeros(1, 5, 128) for _ in range(12))
    with pytest.raises(ValueError, match="SFP needs the attention weights of block 10"):
        sfp_block(narrow_model, hidden, (None,) * 11, patch_grid=(2, 2), pixel_values=None, text_embeds=None,
                  settings={})  # fmt: skip


# ------------------------------------------------------------------------------- better than the official code
def test_sfp_outlier_without_kept_neighbours_stays_finite(narrow_model, methods_golden):
    """A corner patch whose three neighbours are outliers too: SFP's code zeroes it (then divides 0 by 0 and the
    window becomes NaN); ours keeps its value."""
    window = _window(methods_golden)
    with torch.no_grad():
        encoded = narrow_model.encode_patches(window, output_hidden_states=True, arch="reduced")
    rows = cols = 14
    cluster = [0, 1, cols, cols + 1]
    attention = torch.zeros(1, 2, 197, 197)
    attention[:, :, 0, [1 + p for p in cluster]] = 1.0  # the CLS token attends to the corner cluster
    attention[:, :, range(1, 197), range(1, 197)] = 0.1
    attentions = (None,) * 10 + (attention,)
    outliers = som_outliers(attention)
    assert outliers[0].nonzero().flatten().tolist() == cluster
    tokens = encoded.hidden_states[11][:, 1:]
    repaired = repair_outliers(tokens, outliers, (rows, cols))
    torch.testing.assert_close(repaired[0, 0], tokens[0, 0])  # no kept neighbour: kept as is
    zeroed = repaired.clone()
    zeroed[0, 0] = 0  # the official rule
    assert cosine_similarity_matrix(zeroed).isnan().any()
    with torch.no_grad():
        out = sfp_block(narrow_model, encoded.hidden_states[:12], attentions, patch_grid=(rows, cols),
                        pixel_values=window, text_embeds=None, settings={})  # fmt: skip
    assert out.shape == (1, 196, 128) and torch.isfinite(out).all()


def _reference_repair(tokens: torch.Tensor, outliers: list[int], rows: int, cols: int) -> torch.Tensor:
    """The outlier repair written out with (row, column) = (index // cols, index % cols)."""
    out = tokens.clone()
    for index in outliers:
        r, c = divmod(index, cols)
        kept = [
            (r + dr) * cols + (c + dc)
            for dr in (-1, 0, 1) for dc in (-1, 0, 1)
            if (dr or dc) and 0 <= r + dr < rows and 0 <= c + dc < cols and (r + dr) * cols + c + dc not in outliers
        ]  # fmt: skip
        if kept:
            out[index] = tokens[kept].mean(dim=0)
    return out


def test_outlier_positions_on_a_non_square_grid():
    rows, cols = 3, 5
    tokens = torch.randn(1, rows * cols, 6, generator=torch.Generator().manual_seed(0))
    outliers = [3, 7, 9, 14]
    mask = torch.zeros(1, rows * cols, dtype=torch.bool)
    mask[0, outliers] = True
    repaired = repair_outliers(tokens, mask, (rows, cols))
    torch.testing.assert_close(repaired[0], _reference_repair(tokens[0], outliers, rows, cols))
    # The official position (index // rows, index % rows) puts index 7 at (2, 1) instead of (1, 2): another token.
    assert divmod(7, rows) != divmod(7, cols)


def test_non_square_windows_run(narrow_model, methods_golden):
    window = _window(methods_golden, rows=slice(0, 224), cols=slice(0, 160))
    for method in ("scclip", "sfp"):
        with torch.no_grad():
            logits = narrow_model(window, text_embeds=torch.nn.functional.normalize(torch.randn(3, 64), dim=-1),
                                  arch=method, slide_crop=0).logits  # fmt: skip
        assert logits.shape == (1, 3, 224, 160) and torch.isfinite(logits).all()


@pytest.mark.parametrize("method", ["scclip", "sfp"])
def test_a_batch_of_windows_equals_one_call_per_window(narrow_model, methods_golden, method):
    windows = torch.cat([
        _window(methods_golden, rows=slice(0, 224), cols=slice(0, 224)),
        _window(methods_golden, rows=slice(112, 336), cols=slice(224, 448)),
        _window(methods_golden, "img_p", rows=slice(112, 336), cols=slice(0, 224)),
    ])  # fmt: skip
    with torch.no_grad():
        batched = narrow_model.encode_patches(windows, arch=method, output_attentions=True, output_hidden_states=True)
        single = [narrow_model.encode_patches(windows[i : i + 1], arch=method) for i in range(len(windows))]
    for index, one in enumerate(single):
        torch.testing.assert_close(batched.last_hidden_state[index : index + 1], one.last_hidden_state,
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
    # The per-window statistics themselves, exactly (the SDPA model records only the attention SFP reads).
    if method == "scclip":
        last = batched.hidden_states[11][:, 1:]
        outliers = lof_outliers(last)
        singles = [lof_outliers(last[index : index + 1]) for index in range(len(windows))]
    else:
        (attention,) = batched.attentions
        outliers = som_outliers(attention)
        singles = [som_outliers(attention[index : index + 1]) for index in range(len(windows))]
    assert torch.equal(outliers, torch.cat(singles))
    assert outliers.sum(dim=1).tolist() == [10, 10, 10]
    assert not torch.equal(outliers[0], outliers[1])  # the windows differ: a batch-wide statistic would not


def test_lof_with_few_tokens_and_without_outliers(narrow_model, methods_golden):
    generator = torch.Generator().manual_seed(1)
    few = lof_outliers(torch.randn(2, 25, 8, generator=generator))  # 5×5: fewer than 31 tokens
    assert few.shape == (2, 25) and 1 <= int(few.sum(dim=1).min()) and int(few.sum(dim=1).max()) <= 2
    assert not lof_outliers(torch.randn(1, 1, 8)).any()  # one token: no neighbour, no outlier
    assert not lof_outliers(torch.ones(1, 36, 8)).any()  # all LOF equal (undefined): no outlier
    tokens = torch.randn(1, 6, 4)
    assert torch.equal(repair_outliers(tokens, torch.zeros(1, 6, dtype=torch.bool), (2, 3)), tokens)
    small = _window(methods_golden, rows=slice(0, 80), cols=slice(0, 80))  # a 5×5 grid
    with torch.no_grad():
        logits = narrow_model(small, text_embeds=torch.nn.functional.normalize(torch.randn(3, 64), dim=-1),
                              arch="scclip", slide_crop=0).logits  # fmt: skip
    assert torch.isfinite(logits).all()


def test_som_with_few_or_no_salient_patches():
    attention = torch.full((2, 2, 10, 10), 0.05)
    attention[:, :, range(10), range(10)] = 0.5  # every patch attends to itself more than the CLS token to it
    attention[1, :, 0, 1:4] = 0.9  # window 1: three salient patches, fewer than ten
    outliers = som_outliers(attention)
    assert outliers[0].sum() == 0 and outliers[1].nonzero().flatten().tolist() == [0, 1, 2]


# ---------------------------------------------------------------------------------------- depth and precision
def test_layer_plan_by_depth():
    official = layer_plan(12)
    assert (official.outliers, official.pre, official.post, official.multi) == (10, 8, 3, range(3, 10))
    large = layer_plan(24)
    assert (large.outliers, large.pre, large.post, large.multi) == (22, 16, 6, range(6, 20))
    two = layer_plan(2)
    assert (two.outliers, two.pre, two.post, two.multi) == (0, 0, 0, range(0, 1))
    with pytest.raises(ValueError, match="at least 2 vision layers"):
        layer_plan(1)


@pytest.mark.parametrize("layers", [2, 5])
@pytest.mark.parametrize("method", ["scclip", "sfp"])
def test_other_depths_run(method, layers):
    config = tiny_clip_config(arch=method, slide_crop=0)
    config["vision_config"]["num_hidden_layers"] = layers
    torch.manual_seed(0)
    model = NACLIPForSemanticSegmentation(NACLIPConfig(**config)).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 48, 64), text_embeds=torch.randn(3, 16)).logits
    assert logits.shape == (2, 3, 48, 64) and torch.isfinite(logits).all()


@pytest.mark.parametrize("case_id", ["scclip_voc20_b", "sfp_voc20_b", "resclip_voc20_b"])
def test_bfloat16(narrow_checkpoint, methods_golden, methods_manifest, case_id):
    """A bfloat16 model gives finite logits and nearly the labels of float32 (the same float32 name embeddings:
    this random model's class margins are about the size of bfloat16's rounding of the embeddings)."""
    case, settings = _case(methods_manifest, case_id)
    processor = load_processor(narrow_checkpoint)
    fed = methods_golden[f"{case['image']}/resized_{case['short_side']}"]
    pixel_values = processor.image_processor(fed.numpy(), short_side=0)["pixel_values"]
    model = NACLIPForSemanticSegmentation.from_pretrained(narrow_checkpoint, method=case["method"], **settings)
    embeddings = encode_classes(model, processor, methods_manifest["classes"])
    labels = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = model.to(dtype).eval()
        with torch.no_grad():
            logits = model(pixel_values=pixel_values.to(dtype), text_embeds=embeddings.text_embeds).logits
        assert torch.isfinite(logits).all()
        labels[dtype] = logits[0].argmax(dim=0)
    equal = (labels[torch.float32] == labels[torch.bfloat16]).float().mean().item()
    assert equal >= 0.95, f"bfloat16 labels equal to float32 on only {equal:.2%}"


def test_attention_maps_refuse_dense_methods(narrow_model):
    from naclip_hf.attention_maps import check_methods

    assert check_methods(narrow_model, ["sclip"]) == {"sclip": {"arch": "vanilla", "attn_strategy": "csa"}}
    with pytest.raises(ValueError, match="Method 'sfp' replaces the last block"):
        check_methods(narrow_model, ["naclip", "sfp"])


@pytest.mark.parametrize("case_id", CASES)
def test_registry_settings_equal_the_official_configs(methods_manifest, case_id):
    """Each case ran the official code with its official config: the registry's settings for that method and
    benchmark (benchmark, then method, then the method's own for the benchmark) are the case's, but the switch the
    ablation turns off."""
    case, settings = _case(methods_manifest, case_id)
    registered = combine_settings(CONFIG_BENCHMARKS[case["official_config"]], case["method"])
    expected = {**settings, "short_side": case["short_side"]}
    if case_id.endswith("_nosfr"):
        expected["use_sfr"] = True  # the official code always runs SFR; the ablation is ours
    def plain(value):
        return [float(item) for item in value] if isinstance(value, (list, tuple)) else value

    assert {key: plain(registered.get(key)) for key in expected} == {key: plain(v) for key, v in expected.items()}


@pytest.mark.parametrize("method", ["scclip", "sfp", "resclip"])
def test_export_refuses_a_replaced_last_block_at_once(tiny_checkpoint, tmp_path, capsys, method):
    out = tmp_path / "export"
    assert main(["export", str(tiny_checkpoint), str(out), "--method", method, "--labels", "cat", "dog"]) == 2
    error = capsys.readouterr().err
    assert f"arch={method!r} cannot be exported to ONNX" in error and "PyTorch checkpoint" in error
    assert not out.exists()


def test_export_onnx_refuses_a_replaced_last_block(narrow_checkpoint, tmp_path):
    pytest.importorskip("onnx")
    from naclip_hf.export.onnx_export import export_onnx

    with pytest.raises(ValueError, match="arch='resclip' cannot be exported to ONNX"):
        export_onnx(str(narrow_checkpoint), tmp_path / "out", overrides={"arch": "resclip"})
    assert not (tmp_path / "out").exists()


NEW_METHODS = ("scclip", "sfp", "resclip")


def test_every_command_takes_the_new_methods(tiny_checkpoint, golden, tmp_path, capsys):
    """`evaluate` (with the method's own settings for the benchmark), `label` and `compare` run each new method."""
    import datasets

    from synthetic_data import make_benchmark_dataset

    root = make_benchmark_dataset("voc20", tmp_path / "data", num_images=2)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(golden["img_b/raw"].numpy()).resize((80, 60)).save(photos / "a.png")
    for method in NEW_METHODS:
        out = tmp_path / f"{method}.json"
        assert main(["evaluate", "--preset", "voc20", "--data-root", str(root), "--model", str(tiny_checkpoint),
                     "--method", method, "--limit", "2", "--out", str(out), "--set", "short_side=64"]) == 0
        settings = json.loads(out.read_text())["settings"]
        assert settings["arch"] == method
        if method == "resclip":  # ResCLIP's own voc20 settings: one whole-image pass, its temperature threshold
            assert (settings["slide_crop"], settings["temp_thd"]) == (0, 0.1)
        labelled = tmp_path / f"labelled-{method}"
        assert main(["label", str(photos), "--model", str(tiny_checkpoint), "--labels", "cat", "sky", "--method",
                     method, "--set", "short_side=64", "--out", str(labelled)]) == 0
        assert len(datasets.load_from_disk(str(labelled))) == 1
    figure = tmp_path / "compare.png"
    assert main(["compare", str(photos / "a.png"), "--model", str(tiny_checkpoint), "--labels", "cat", "sky",
                 "--methods", "naclip", *NEW_METHODS, "--out", str(figure)]) == 0
    assert Image.open(figure).width > 0
    capsys.readouterr()
