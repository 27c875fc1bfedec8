"""Post-processing in tiles gives the whole-image result: labels exactly, probabilities to 1e-5."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import grid_tiles, tiles_of
from naclip_hf.models.naclip import postprocessing_naclip
from naclip_hf.models.naclip.image_processing_naclip import NACLIPImageProcessor
from naclip_hf.models.naclip.postprocessing_naclip import (
    estimate_post_processing_bytes,
    pamr,
    pamr_halo,
    plan_tiles,
    post_process_image,
    upsample_region,
)

DILATIONS = [2, 3]


def random_inputs(names: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # small logits so that PAMR and the softmax leave several classes in play
    return torch.randn(1, names, h, w, generator=generator) * 0.05, torch.randn(1, 3, h, w, generator=generator)


def assert_same(tiled, whole) -> None:
    assert torch.equal(tiled.segmentation, whole.segmentation)
    torch.testing.assert_close(tiled.probabilities, whole.probabilities, rtol=0, atol=1e-5)
    assert torch.equal(tiled.class_pixel_counts, whole.class_pixel_counts)
    torch.testing.assert_close(tiled.class_probability_sums, whole.class_probability_sums, rtol=1e-9, atol=1e-6)


CASES = {
    # name: (h, w, H, W, name_to_class, prob_thd, pamr_steps)
    "pamr_synonyms_threshold": (13, 17, 61, 47, [0, 1, 1, 2, 3], 0.3, 3),
    "pamr_off": (11, 9, 53, 45, [0, 1, 2, 2], 0.4, 0),
    "downsampled_pamr": (24, 20, 17, 15, [0, 1, 2], 0.0, 3),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("tile_shape", [(4, 5), (1, 1000), (1000, 3), (5, 1000)])
def test_tiles_equal_whole_image(case, tile_shape):
    h, w, height, width, name_to_class, prob_thd, steps = CASES[case]
    logits, pixels = random_inputs(len(name_to_class), h, w)
    options = dict(logit_scale=40.0, prob_thd=prob_thd, pamr_steps=steps, pamr_dilations=DILATIONS)
    whole = post_process_image(logits, pixels, (height, width), name_to_class, **options, return_probabilities=True)
    assert len(plan_tiles(height, width, len(name_to_class), 4, steps, DILATIONS)) == 1  # the default: one tile
    with tiles_of(*tile_shape):
        tiled = post_process_image(logits, pixels, (height, width), name_to_class, **options,
                                   return_probabilities=True)  # fmt: skip
    tiles = grid_tiles(height, width, *tile_shape)
    assert len(tiles) > 3
    if steps:  # the context PAMR needs reaches across one or more neighbouring tiles
        assert pamr_halo(steps, DILATIONS) >= min(tile_shape)
    assert_same(tiled, whole)
    assert len(torch.unique(whole.segmentation)) > 1


def test_whole_image_path_matches_interpolate_and_pamr():
    """The tiled implementation computes what the textbook pipeline does (F.interpolate, pamr, softmax)."""
    logits, pixels = random_inputs(4, 12, 16, seed=1)
    size = (50, 70)
    result = post_process_image(logits, pixels, size, [0, 1, 2, 3], 40.0, 0.0, 3, DILATIONS, return_probabilities=True)
    upsampled = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    guide = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
    expected = (pamr(guide, upsampled, 3, DILATIONS) * 40.0).softmax(dim=1)[0]
    torch.testing.assert_close(result.probabilities, expected, rtol=0, atol=1e-5)
    margin = expected.topk(2, dim=0).values
    clear = (margin[0] - margin[1]) > 1e-4
    assert torch.equal(result.segmentation[clear], expected.argmax(dim=0)[clear])


def test_halo_is_needed(monkeypatch):
    """With one row of context less than `pamr_halo`, tiles no longer give the whole-image result."""
    h, w, height, width, name_to_class, prob_thd, steps = CASES["pamr_synonyms_threshold"]
    logits, pixels = random_inputs(len(name_to_class), h, w)
    options = dict(logit_scale=40.0, prob_thd=prob_thd, pamr_steps=steps, pamr_dilations=DILATIONS)
    whole = post_process_image(logits, pixels, (height, width), name_to_class, **options, return_probabilities=True)
    monkeypatch.setattr(postprocessing_naclip, "pamr_halo", lambda s, d: s * max(d) - 1)
    with tiles_of(8, 1000):
        short = post_process_image(logits, pixels, (height, width), name_to_class, **options,
                                   return_probabilities=True)  # fmt: skip
    assert (short.probabilities - whole.probabilities).abs().max() > 1e-5


@pytest.mark.parametrize("size", [(45, 61), (7, 5), (375, 500), (301, 33)])
def test_upsampled_regions_equal_rows_of_the_whole(size):
    values = torch.randn(2, 3, 13, 17)
    height, width = size
    whole = upsample_region(values, size, (0, height), (0, width))
    torch.testing.assert_close(whole, F.interpolate(values, size=size, mode="bilinear"), rtol=0, atol=2e-6)
    for rows, cols in [((0, 1), (0, width)), ((height // 3, height // 2 + 1), (width // 4, width - 1)),
                       ((height - 2, height), (width - 3, width))]:  # fmt: skip
        region = upsample_region(values, size, rows, cols)
        assert torch.equal(region, whole[..., rows[0] : rows[1], cols[0] : cols[1]])


def test_tiles_follow_the_memory_budget():
    # 12000 × 9000 with 20 classes and PAMR: many tiles, each within the budget, covering every pixel once
    budget = 512 << 20
    tiles = plan_tiles(9000, 12000, 20, 20, 10, [8, 16], max_tile_bytes=budget)
    assert len(tiles) > 1
    covered = sum((bottom - top) * (right - left) for top, bottom, left, right in tiles)
    assert covered == 9000 * 12000
    estimate = estimate_post_processing_bytes(9000, 12000, 20, 20, 10, [8, 16], max_tile_bytes=budget)
    assert budget < estimate <= budget + 9000 * 12000 * 8  # the tile, plus the int64 label map
    with_probabilities = estimate_post_processing_bytes(9000, 12000, 20, 20, 10, [8, 16], True, budget)
    assert with_probabilities - estimate == 9000 * 12000 * 20 * 4
    # a larger budget gives fewer, larger tiles; an ordinary image is one tile
    assert len(plan_tiles(9000, 12000, 20, 20, 10, [8, 16], max_tile_bytes=4 * budget)) < len(tiles)
    assert plan_tiles(375, 500, 21, 21, 10, [8, 16]) == [(0, 375, 0, 500)]


def test_processor_keywords_and_class_scores():
    processor = NACLIPImageProcessor()
    logits, pixels = random_inputs(5, 10, 12, seed=2)
    kwargs = dict(target_sizes=[(33, 29)], pixel_values=pixels, name_to_class=[0, 1, 1, 2, 3], pamr_steps=2,
                  pamr_dilations=DILATIONS, return_probabilities=True, return_class_scores=True)  # fmt: skip
    (whole,) = processor.post_process_semantic_segmentation(logits, **kwargs)
    with tiles_of(5, 7):
        (tiled,) = processor.post_process_semantic_segmentation(logits, **kwargs)
    assert torch.equal(whole["segmentation"], tiled["segmentation"])
    labels, probabilities = whole["segmentation"], whole["probabilities"]
    top = probabilities.gather(0, labels[None])[0].double()
    for class_id in range(4):
        mask = labels == class_id
        expected = top[mask].mean().item() if mask.any() else 0.0
        assert whole["class_scores"][class_id].item() == pytest.approx(expected, abs=1e-9)
        assert tiled["class_scores"][class_id].item() == pytest.approx(expected, abs=1e-6)
        assert int(whole["class_pixel_counts"][class_id]) == int(mask.sum())
    (labels_only,) = processor.post_process_semantic_segmentation(logits, **{**kwargs, "return_probabilities": False,
                                                                             "return_class_scores": False})  # fmt: skip
    assert torch.equal(labels_only, labels)
