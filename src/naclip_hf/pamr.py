"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as used by NACLIP.

Each iteration replaces every pixel's score by a weighted mean of its neighbours' scores at a few dilations;
the weights (an affinity) depend on the guide image only, so they are computed once per image. Neighbours
past the border repeat the edge pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# The eight neighbours of a 3×3 window (centre excluded), as (row, column) offsets in units of the dilation.
NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = (
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, -1),
    (0, 1),
    (1, -1),
    (1, 0),
    (1, 1),
)
# The full 3×3 window, centre included (the local spread of the affinity is taken over it).
WINDOW_OFFSETS: tuple[tuple[int, int], ...] = NEIGHBOUR_OFFSETS[:4] + ((0, 0),) + NEIGHBOUR_OFFSETS[4:]


def _shifted_views(
    padded: torch.Tensor, dilation: int, height: int, width: int, offsets
) -> list[torch.Tensor]:
    """Views of `padded` (replicate-padded by `dilation`) holding, at each pixel, the neighbour at each offset."""
    return [
        padded[
            ...,
            dilation + dy * dilation : dilation + dy * dilation + height,
            dilation + dx * dilation : dilation + dx * dilation + width,
        ]
        for dy, dx in offsets
    ]


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Affinity of each pixel to its 8 neighbours at each dilation.

    Args:
        image: guide image [B, K, H, W].
    Returns:
        weights [B, 8 * len(dilations), H, W] that sum to 1 over dim 1.
    """
    height, width = image.shape[-2:]
    padded = [F.pad(image, [d] * 4, mode="replicate") for d in dilations]
    neighbours = [
        view
        for d, p in zip(dilations, padded)
        for view in _shifted_views(p, d, height, width, NEIGHBOUR_OFFSETS)
    ]
    # Local spread: unbiased std over the 3×3 windows (centre included) of every dilation, i.e. over the
    # neighbours and len(dilations) copies of the centre; two passes (mean, then squared deviations), accumulated
    # in place over views instead of stacking the 9·len(dilations) shifted images.
    repeats, count = len(dilations), len(neighbours) + len(dilations)
    mean = image * repeats
    for neighbour in neighbours:
        mean.add_(neighbour)
    mean.div_(count)
    deviation = image - mean
    variance = deviation.square() * repeats
    for neighbour in neighbours:
        torch.sub(neighbour, mean, out=deviation)
        variance.addcmul_(deviation, deviation)
    del mean
    inverse_scale = variance.div_(count - 1).sqrt_().mul_(0.1).add_(1e-8).reciprocal_()  # 1 / (1e-8 + 0.1 std)
    # logits[:, p] = -mean over channels of |image - neighbour_p| / scale
    logits = image.new_empty((image.shape[0], len(neighbours), height, width))
    for p, neighbour in enumerate(neighbours):
        torch.sub(image, neighbour, out=deviation).abs_().mul_(inverse_scale)
        torch.sum(deviation, dim=1, out=logits[:, p])
    return logits.mul_(-1.0 / image.shape[1]).softmax(dim=1)


def pamr(image: torch.Tensor, scores: torch.Tensor, num_iter: int, dilations: Sequence[int]) -> torch.Tensor:
    """Refine `scores` [B, C, H, W] with the guide `image` [B, K, H, W]; returns [B, C, H, W].

    Memory stays at a few copies of `scores`: neighbours are read as views of one padded copy per dilation
    and accumulated in place, instead of materialising all 8·len(dilations) shifted copies.
    """
    if num_iter <= 0:
        return scores
    if scores.shape[-2:] != image.shape[-2:]:
        scores = F.interpolate(scores, size=image.shape[-2:], mode="bilinear", align_corners=True)
    height, width = scores.shape[-2:]
    affinity = pamr_affinity(image.to(scores.dtype), dilations).unsqueeze(2)  # [B, P, 1, H, W]
    for _ in range(num_iter):
        refined = torch.zeros_like(scores)
        p = 0
        for d in dilations:
            padded = F.pad(scores, [d] * 4, mode="replicate")
            for neighbour in _shifted_views(padded, d, height, width, NEIGHBOUR_OFFSETS):
                refined.addcmul_(neighbour, affinity[:, p])
                p += 1
            del padded, neighbour  # the last view would keep this padded copy alive next to the next one
        scores = refined
    return scores


__all__ = ["NEIGHBOUR_OFFSETS", "WINDOW_OFFSETS", "pamr", "pamr_affinity"]
