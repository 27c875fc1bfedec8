"""ResCLIP's last block (`models/naclip/resclip.py`) against the official code's outputs (golden_methods fixture:
a narrow random 12-layer CLIP run through github.com/yvhangyang/ResCLIP), and its pieces on hand-made inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from naclip_hf import NACLIPForSemanticSegmentation
from naclip_hf.models.naclip import resclip
from naclip_hf.models.naclip.image_utils import sliding_windows
from naclip_hf.models.naclip.postprocessing_naclip import post_process_image

METHODS_DIR = Path(__file__).parent / "fixtures" / "golden_methods"
LOGITS_TOL = 1e-4
PROBS_TOL = 1e-3
MIN_EQUAL_LABELS = 0.999
# Settings of a case that the official segmentor reads (`cli_set` names).
CASE_SETTINGS = (
    "slide_crop", "slide_stride", "logit_scale", "prob_thd", "temp_thd", "attn_rcs_weights", "attn_sfr_weights",
    "use_sfr",
)  # fmt: skip
WINDOW_BATCH = 6  # windows per call: the sliding cases also check that windows batch independently
SLOW_CASES = {"resclip_context59_p", "resclip_city_e"}  # 6 and 36 windows, each with a PAMR first pass


def _manifest() -> dict:
    return json.loads((METHODS_DIR / "manifest.json").read_text())


RESCLIP_CASES = [case["id"] for case in _manifest()["cases"] if case["id"].startswith("resclip")]


@pytest.fixture(scope="module")
def narrow_model(narrow_checkpoint) -> NACLIPForSemanticSegmentation:
    """The fixture's 12-layer narrow CLIP with eager attention (weights returned)."""
    return NACLIPForSemanticSegmentation.from_pretrained(narrow_checkpoint, attn_implementation="eager").eval()


def case_settings(model: NACLIPForSemanticSegmentation, case: dict) -> dict:
    """The case's `cli_set` values, typed from their text and checked by the model's settings."""
    typed = {}
    for name in CASE_SETTINGS:
        value = case["cli_set"][name]
        if value in ("true", "false"):
            value = value == "true"
        elif isinstance(value, str):
            value = [float(part) for part in value.split(",")]
        typed[name] = value
    return model.config.inference_options(**typed).to_dict()


def normalised_input(golden: dict, manifest: dict, case: dict) -> torch.Tensor:
    """The official network input [1, 3, h, w]: the MMSeg-resized image, (x − mean) / std, RGB."""
    image = golden[f"{case['image']}/resized_{case['short_side']}"].permute(2, 0, 1).float()
    mean = torch.tensor(manifest["pixel_mean"]).view(3, 1, 1)
    std = torch.tensor(manifest["pixel_std"]).view(3, 1, 1)
    return ((image - mean) / std)[None]


def window_tokens(model, windows: torch.Tensor, text_embeds: torch.Tensor, settings: dict) -> torch.Tensor:
    """ResCLIP's last-block patch tokens [B, N, width] of `windows` [B, 3, h, w], through CLIP's own tower."""
    patch = model.config.vision_config.patch_size
    grid = (windows.shape[-2] // patch, windows.shape[-1] // patch)
    # The tower runs NACLIP's last layer too; only the hidden states and attention weights are used.
    encoded = model.encode_patches(windows, output_attentions=True, output_hidden_states=True)
    return resclip.resclip_block(
        model, encoded.hidden_states, encoded.attentions, patch_grid=grid, pixel_values=windows,
        text_embeds=text_embeds, settings=settings,
    )  # fmt: skip


def window_logits(model, tokens: torch.Tensor, text_embeds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-name logits [B, names, h, w] of the windows of `size` from their patch tokens [B, N, width]."""
    patch = model.config.vision_config.patch_size
    features = F.normalize(model.visual_projection(model.vision_model.post_layernorm(tokens)), dim=-1)
    logits = (features @ text_embeds.T).transpose(1, 2)
    logits = logits.reshape(len(tokens), -1, size[0] // patch, size[1] // patch)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def run_case(model, golden: dict, manifest: dict, case: dict, monkeypatch) -> tuple[torch.Tensor, list, dict]:
    """Processed-size logits [names, h, w], the SFR patch labels of every window (in window order) and the
    settings, for one golden case."""
    settings = case_settings(model, case)
    text_embeds = golden["text/query_features"]
    pixel_values = normalised_input(golden, manifest, case)
    height, width = pixel_values.shape[-2:]
    boxes = [(0, height, 0, width)]
    if settings["slide_crop"] > 0:
        boxes = sliding_windows(height, width, settings["slide_crop"], settings["slide_stride"])
    assert [list(box) for box in boxes] == case["windows"]
    labels: list[torch.Tensor] = []
    original = resclip.sfr_patch_labels

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        labels.extend(result)
        return result

    monkeypatch.setattr(resclip, "sfr_patch_labels", recording)
    canvas = torch.zeros((len(text_embeds), height, width))
    count = torch.zeros((height, width))
    with torch.no_grad():
        for first in range(0, len(boxes), WINDOW_BATCH):
            chunk = boxes[first : first + WINDOW_BATCH]
            windows = torch.cat([pixel_values[:, :, a:b, c:d] for a, b, c, d in chunk])
            tokens = window_tokens(model, windows, text_embeds, settings)
            logits = window_logits(model, tokens, text_embeds, tuple(windows.shape[-2:]))
            for (a, b, c, d), values in zip(chunk, logits):
                canvas[:, a:b, c:d] += values
                count[a:b, c:d] += 1
    return canvas / count, labels, settings


@pytest.mark.parametrize(
    "case_id", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in RESCLIP_CASES]
)
def test_case_matches_official(narrow_model, methods_golden, methods_manifest, case_id, monkeypatch):
    case = next(case for case in methods_manifest["cases"] if case["id"] == case_id)
    logits, labels, settings = run_case(narrow_model, methods_golden, methods_manifest, case, monkeypatch)
    expected = methods_golden[f"{case_id}/logits_processed_sub4"]
    assert logits[:, ::4, ::4].shape == expected.shape
    diff = (logits[:, ::4, ::4] - expected).abs().max().item()
    assert diff <= LOGITS_TOL, f"{case_id}: logits differ by {diff:.3g}"
    if settings["use_sfr"]:
        assert torch.equal(torch.stack(labels), methods_golden[f"{case_id}/sfr_patch_labels"].long())
    else:
        assert not labels  # SFR really off: no first pass
    # Post-processing as the official segmentor: resize, softmax, synonyms merged by max, prob_thd; no PAMR.
    size = tuple(case["image_hw"])
    result = post_process_image(
        logits[None], None, size, methods_golden["text/query_class"], settings["logit_scale"], settings["prob_thd"],
        0, [8, 16], return_probabilities=True,
    )  # fmt: skip
    probs_diff = (result.probabilities[:, ::4, ::4] - methods_golden[f"{case_id}/probs_sub4"]).abs().max().item()
    assert probs_diff <= PROBS_TOL, f"{case_id}: probabilities differ by {probs_diff:.3g}"
    equal = (result.segmentation == methods_golden[f"{case_id}/pred"].long()).float().mean().item()
    assert equal >= MIN_EQUAL_LABELS, f"{case_id}: only {equal:.4%} of labels equal"


def test_windows_in_one_call_equal_one_call_each(narrow_model, methods_golden, methods_manifest, monkeypatch):
    """Two windows of one call give the tokens and SFR labels of two single-window calls (every statistic of SFR,
    its labels and the maximum of its affinity, is per window). Windows of 112×160 pixels: a 7×10 patch grid."""
    case = next(case for case in methods_manifest["cases"] if case["id"] == "resclip_context59_p")
    settings = case_settings(narrow_model, case)
    text_embeds = methods_golden["text/query_features"]
    pixel_values = normalised_input(methods_golden, methods_manifest, case)
    windows = torch.cat([pixel_values[:, :, a : a + 112, c : c + 160] for a, c in ((0, 0), (200, 120))])
    labels: list[torch.Tensor] = []
    original = resclip.sfr_patch_labels
    monkeypatch.setattr(resclip, "sfr_patch_labels", lambda *a, **k: labels.append(original(*a, **k)) or labels[-1])
    with torch.no_grad():
        together = window_tokens(narrow_model, windows, text_embeds, settings)
        alone = [window_tokens(narrow_model, window[None], text_embeds, settings) for window in windows]
    assert torch.equal(labels[0], torch.cat(labels[1:]))
    assert not torch.equal(labels[1], labels[2])  # the two windows differ
    torch.testing.assert_close(together, torch.cat(alone), rtol=0, atol=1e-5)


def test_use_sfr_switches_sfr_off(narrow_model, methods_golden, methods_manifest):
    """`use_sfr=False` is RCS only: different tokens from the default, and equal to the first pass of SFR."""
    case = next(case for case in methods_manifest["cases"] if case["id"] == "resclip_context59_p")
    settings = case_settings(narrow_model, case)
    text_embeds = methods_golden["text/query_features"]
    window = normalised_input(methods_golden, methods_manifest, case)[:, :, :224, :224]
    with torch.no_grad():
        with_sfr = window_tokens(narrow_model, window, text_embeds, settings)
        without = window_tokens(narrow_model, window, text_embeds, {**settings, "use_sfr": False})
        encoded = narrow_model.encode_patches(window, output_attentions=True, output_hidden_states=True)
        average = resclip.rcs_attention(encoded.attentions, resclip.rcs_layer_indices(12))
        first = resclip.resclip_attention(
            narrow_model.vision_model.encoder.layers[-1], encoded.hidden_states[-2], (14, 14), 5.0,
            (average, *settings["attn_rcs_weights"]), None,
        )  # fmt: skip
    assert torch.equal(without, first[:, 1:])
    assert (with_sfr - without).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------- the pieces
# Patch labels of a 3×3 grid, row-major indices 0..8.
GRID = torch.tensor([[0, 0, 1], [0, 1, 1], [0, 0, 0]])


@pytest.mark.parametrize(
    ("start", "end", "connected"),
    [
        ((0, 0), (2, 0), True),  # straight down through label 0
        ((0, 0), (2, 2), False),  # the diagonal crosses (1, 1), label 1
        ((2, 2), (0, 0), False),
        # Distance 1 < T = 2: only t = 0 and t = 0.5 are looked at; (0.5, 0.5) rounds half to even, to (0, 0).
        # The pair counts as connected although (1, 1) has another label (rounding half up would say no).
        ((0, 0), (1, 1), True),
        ((0, 2), (1, 1), True),  # (0.5, 1.5) -> (0, 2): the start itself
        ((1, 1), (0, 2), True),  # (0.5, 1.5) -> (0, 2), label 1 like the start
        ((0, 1), (2, 1), False),  # (1, 1) on the way
        ((2, 0), (2, 2), True),
    ],
)
def test_connectivity_on_a_hand_made_grid(start, end, connected):
    result = resclip.sfr_connectivity(GRID)
    assert result.shape == (9, 9)
    assert bool(result[start[0] * 3 + start[1], end[0] * 3 + end[1]]) is connected
    assert result.diagonal().all()


def reference_connectivity(labels: np.ndarray) -> np.ndarray:
    """The path rule pair by pair, in NumPy float32 (np.rint rounds half to even)."""
    rows, cols = labels.shape
    reach = max(rows, cols) - 1
    t = torch.linspace(0, 1, reach + 1).numpy()
    coords = [(i // cols, i % cols) for i in range(rows * cols)]
    result = np.zeros((rows * cols, rows * cols), dtype=bool)
    for i, (r0, c0) in enumerate(coords):
        for j, (r1, c1) in enumerate(coords):
            steps = max(abs(r1 - r0), abs(c1 - c0))
            ok = True
            for k in range(steps + 1):
                one = np.float32(1) - t[k]
                r = np.rint(np.float32(r0) * one + np.float32(r1) * t[k])
                c = np.rint(np.float32(c0) * one + np.float32(c1) * t[k])
                ok &= labels[int(r), int(c)] == labels[r0, c0]
            result[i, j] = ok
    return result


@pytest.mark.parametrize("shape", [(3, 5), (5, 2), (1, 4)])
def test_connectivity_on_non_square_grids(shape, monkeypatch):
    generator = torch.Generator().manual_seed(sum(shape))
    labels = torch.randint(0, 2, shape, generator=generator)
    expected = reference_connectivity(labels.numpy())
    assert np.array_equal(resclip.sfr_connectivity(labels).numpy(), expected)
    monkeypatch.setattr(resclip, "CONNECTIVITY_CHUNK_BYTES", 1)  # one start patch at a time: same result
    assert np.array_equal(resclip.sfr_connectivity(labels).numpy(), expected)


def test_affinity_decays_unconnected_pairs_and_normalises_rows():
    affinity = resclip.sfr_affinity(GRID, gaussian_std=5.0)
    assert affinity.shape == (10, 10)
    assert affinity[0].abs().sum() == 0 and affinity[:, 0].abs().sum() == 0  # CLS row and column
    torch.testing.assert_close(affinity[1:].sum(dim=1), torch.ones(9))
    # With σ = 0.1 the blur is the identity (kernel size 1): same label and connected -> 1, same label but not
    # connected -> exp(-steps / T), other label -> 0; then rows are normalised.
    sharp = resclip.sfr_affinity(GRID, gaussian_std=0.1)[1:, 1:]
    row = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, float(np.exp(np.float32(-1.0)))])
    torch.testing.assert_close(sharp[0], row / (row.sum() + 1e-8))
    assert sharp.dtype == torch.float32


def test_patch_labels_threshold_and_ties():
    # 2×2-pixel patches, 1 × 3 patches (a 2×7 input: the last column is beyond whole patches and ignored).
    names = torch.tensor([[0, 2, 1, 1, 2, 2, 0], [2, 0, 1, 3, 3, 1, 0]])
    probabilities = F.one_hot(names, 4).permute(2, 0, 1).float()[None] * 0.9 + 0.025
    probabilities[0, :, 1, 3] = 0.25  # a four-way tie below temp_thd: name 0
    labels = resclip.sfr_patch_labels(probabilities, patch_size=2, temp_thd=0.3)
    # patch 0: {0, 2, 2, 0} tie -> 0; patch 1: {1, 1, 1, 0} -> 1; patch 2: {2, 2, 3, 1} -> 2
    assert labels.tolist() == [[[0, 1, 2]]]


def test_missing_attention_weights_are_refused(narrow_model):
    hidden = tuple(torch.zeros(1, 197, 128) for _ in range(13))
    with pytest.raises(ValueError, match="eager"):
        resclip.resclip_block(
            narrow_model, hidden, (), patch_grid=(14, 14), pixel_values=torch.zeros(1, 3, 224, 224),
            text_embeds=torch.zeros(2, 64), settings=narrow_model.config.inference_options().to_dict(),
        )  # fmt: skip


def test_rcs_layers_relative_to_depth():
    assert resclip.rcs_layer_indices(12) == (5, 6, 7, 8)
    assert resclip.rcs_layer_indices(24) == tuple(range(10, 18))
    assert resclip.rcs_layer_indices(2) == (0,)
    for depth in range(2, 40):
        layers = resclip.rcs_layer_indices(depth)
        assert layers and max(layers) < depth - 1
