"""Post-processing of NACLIP's logits, on tensors only: from per-name logits at the processed size to class
probabilities and a label map at the original size. `NACLIPImageProcessor.post_process_semantic_segmentation` is
the entry point; the NumPy twin of these steps, for the torch-free runtime, is in `naclip_hf.export.runtime`.

- PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as used by NACLIP: each iteration replaces
  every pixel's score by a weighted mean of its neighbours' scores at a few dilations; the weights (an affinity)
  depend on the guide image only, so they are computed once per image. Neighbours past the border repeat the edge
  pixel.
- The tiled engine (`post_process_image`): the image is processed in tiles whose size follows a memory budget,
  each with the context PAMR needs around it, so that memory does not grow with the image; the result does not
  depend on the tiling.
- SCLIP's area threshold and the probability threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .image_utils import NEIGHBOUR_OFFSETS, WINDOW_OFFSETS, band_neighbours, row_bands


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Affinity of each pixel to its 8 neighbours at each dilation.

    Args:
        image: guide image [B, K, H, W].
    Returns:
        weights [B, 8 * len(dilations), H, W] that sum to 1 over dim 1.
    """
    padded = F.pad(image, [max(dilations)] * 4, mode="replicate")
    logits = image.new_empty((image.shape[0], len(NEIGHBOUR_OFFSETS) * len(dilations), *image.shape[-2:]))
    repeats, count = len(dilations), len(WINDOW_OFFSETS) * len(dilations)
    # Rows in bands, so that the ~100 passes below over each band read it from cache (speed only).
    for top, bottom in row_bands(image.shape[-2], image.shape[-1] * image.element_size(), AFFINITY_BAND_BYTES):
        centre, neighbours = image[..., top:bottom, :], band_neighbours(padded, dilations, top, bottom)
        # Local spread: unbiased std over the 3×3 windows (centre included) of every dilation, i.e. over the
        # neighbours and len(dilations) copies of the centre; two passes (mean, then squared deviations).
        mean = centre * repeats
        for neighbour in neighbours:
            mean.add_(neighbour)
        mean.div_(count)
        deviation = centre - mean
        variance = deviation.square() * repeats
        for neighbour in neighbours:
            torch.sub(neighbour, mean, out=deviation)
            variance.addcmul_(deviation, deviation)
        inverse_scale = variance.div_(count - 1).sqrt_().mul_(0.1).add_(1e-8).reciprocal_()  # 1 / (1e-8 + 0.1 std)
        # logits[:, p] = -mean over channels of |image - neighbour_p| / scale
        for p, neighbour in enumerate(neighbours):
            torch.sub(centre, neighbour, out=deviation).abs_().mul_(inverse_scale)
            torch.sum(deviation, dim=1, out=logits[:, p, top:bottom])
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
    affinity = pamr_affinity(image.to(scores.dtype), dilations).unsqueeze(2)  # [B, P, 1, H, W]
    return _pamr_refine(scores, affinity, num_iter, dilations)


# ------------------------------------------------------------------------------------------------ tiled post-processing
DEFAULT_MAX_TILE_BYTES = 1 << 30
"""Default memory budget of one post-processing tile (speed and memory only: results do not depend on it)."""
PAMR_NAME_CHUNK = 8
"""Names refined by PAMR at a time inside a tile (PAMR treats every name on its own)."""
PAMR_BAND_BYTES = 1 << 18
"""Bytes per channel of the row bands one PAMR step refines at a time (speed only: see `_pamr_refine`)."""
AFFINITY_BAND_BYTES = 1 << 20
"""Bytes per channel of the row bands of `pamr_affinity` (speed only: about 1.6× faster at 1125×1500)."""
_AFFINITY_FLOATS = 53  # floats per guide pixel while `pamr_affinity` runs (an upper bound: it works in bands)


@dataclass
class ImagePostProcessing:
    """What `post_process_image` returns for one image.

    `segmentation` [H, W] int64 class ids; `probabilities` [classes, H, W] (summing to 1 over classes) or None
    when not asked for; `class_pixel_counts` [classes] int64 pixels per class; `class_probability_sums` [classes]
    float64, the sum of each class's probability over its pixels (so that sums / counts is its mean score).
    """

    segmentation: torch.Tensor
    probabilities: torch.Tensor | None
    class_pixel_counts: torch.Tensor
    class_probability_sums: torch.Tensor

    def class_scores(self) -> torch.Tensor:
        """[classes] float64: mean probability of each class over the pixels labelled with it (0 when absent)."""
        return self.class_probability_sums / self.class_pixel_counts.clamp(min=1)


def pamr_halo(pamr_steps: int, pamr_dilations: Sequence[int]) -> int:
    """Rows (and columns) of context a tile needs around it so that PAMR gives exactly the whole-image result.

    One PAMR step reads neighbours at most `max(dilations)` pixels away, and so does the affinity (from the
    guide). A wrong value (from padding a tile's cut edge instead of reading the real neighbour) therefore moves
    inward by at most `max(dilations)` per step: the affinity is wrong within `max(dilations)` of a cut edge,
    step 1 also within `max(dilations)`, step k within `k · max(dilations)`. After `steps` steps the pixels
    farther than `steps · max(dilations)` from a cut edge are exact. At the image border the tile pads exactly as
    the whole image does (replicate), so no context is needed there.
    """
    return pamr_steps * max(pamr_dilations) if pamr_steps > 0 else 0


def _tile_floats(
    out_rows: int, out_cols: int, ext_rows: int, ext_cols: int, names: int, classes: int, pamr_on: bool,
    dilations: int,
) -> int:
    """Peak number of float32 values alive while one tile is processed (a slight overestimate)."""
    out, ext = out_rows * out_cols, ext_rows * ext_cols
    chunk = min(names, PAMR_NAME_CHUNK)
    post = out * (2 * names + 2 * classes + 6)  # logits, softmax, merged and normalised probabilities, labels
    if not pamr_on:
        return post + out * names
    neighbours = 8 * dilations
    affinity = ext * (_AFFINITY_FLOATS * dilations // 2 + 3)
    refine = ext * (neighbours + 4 * chunk) + out * names  # affinity, a chunk (scores, refined, padded), results
    # Resident memory measured while tiles run reaches about twice the live tensors counted here (freed blocks the
    # allocator keeps, kernels' scratch buffers): budget for that.
    return 2 * max(affinity, refine, post)


def plan_tiles(
    height: int, width: int, num_names: int, num_classes: int, pamr_steps: int, pamr_dilations: Sequence[int],
    max_tile_bytes: int | None = None,
) -> list[tuple[int, int, int, int]]:
    """The tiles `(row_start, row_stop, col_start, col_stop)` covering an image of `height` × `width`, in row-major
    order, each small enough that its work fits `max_tile_bytes` (default `DEFAULT_MAX_TILE_BYTES`). Images that
    fit are one tile. Tiles are as square as the budget allows (full rows when the width fits), since PAMR's
    context around a tile costs less around squares."""
    budget = (DEFAULT_MAX_TILE_BYTES if max_tile_bytes is None else int(max_tile_bytes)) // 4
    if budget < 1:
        raise ValueError(f"max_tile_bytes={max_tile_bytes!r} must be a positive number of bytes.")
    halo = pamr_halo(pamr_steps, pamr_dilations)

    def fits(rows: int, cols: int) -> bool:
        ext_rows, ext_cols = min(height, rows + 2 * halo), min(width, cols + 2 * halo)
        return _tile_floats(rows, cols, ext_rows, ext_cols, num_names, num_classes, pamr_steps > 0,
                            len(pamr_dilations)) <= budget  # fmt: skip

    def largest(limit: int, shape) -> int:
        low, high = 1, limit  # the largest n in [1, limit] with fits(*shape(n)), or 1
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(*shape(middle)) else (low, middle - 1)
        return low

    side = largest(max(height, width), lambda n: (min(height, n), min(width, n)))
    rows, cols = min(height, side), min(width, side)
    if cols == width and rows < height:
        rows = largest(height, lambda n: (n, width))
    return [(top, min(top + rows, height), left, min(left + cols, width))
            for top in range(0, height, rows) for left in range(0, width, cols)]  # fmt: skip


def estimate_post_processing_bytes(
    height: int, width: int, num_names: int, num_classes: int, pamr_steps: int, pamr_dilations: Sequence[int],
    return_probabilities: bool = False, max_tile_bytes: int | None = None,
) -> int:
    """Peak bytes of `post_process_image` on an image of `height` × `width`: the largest tile's work plus the
    full-size outputs (labels, and probabilities when asked for)."""
    tiles = plan_tiles(height, width, num_names, num_classes, pamr_steps, pamr_dilations, max_tile_bytes)
    halo = pamr_halo(pamr_steps, pamr_dilations)
    top, bottom, left, right = tiles[0]
    ext_rows, ext_cols = min(height, bottom - top + 2 * halo), min(width, right - left + 2 * halo)
    tile = 4 * _tile_floats(bottom - top, right - left, ext_rows, ext_cols, num_names, num_classes, pamr_steps > 0,
                            len(pamr_dilations))  # fmt: skip
    outputs = height * width * (8 + (4 * num_classes if return_probabilities else 0))
    return tile + outputs


def _bilinear_taps(
    in_size: int, out_size: int, start: int, stop: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For output positions `start..stop-1` of a bilinear resize `in_size -> out_size` (`align_corners=False`):
    the two source indices and their weights, computed as PyTorch's CPU kernel does (float32 scale, the source
    position rounded once as a fused multiply-add gives it)."""
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    centres = torch.arange(start, stop, dtype=torch.float32) + 0.5
    # scale * centre - 0.5 in float64 is exact (24-bit operands), so rounding it once to float32 equals an FMA
    source = (scale.double() * centres.double() - 0.5).float().clamp_(min=0.0)
    first = source.floor().long().clamp_(max=in_size - 1)
    weight = (source - first.float()).clamp_(0.0, 1.0)
    second = first + (first < in_size - 1).long()
    if in_size == out_size:  # PyTorch copies when the size does not change
        first = second = torch.arange(start, stop)
        weight = torch.zeros(stop - start)
    return first.to(device), second.to(device), (1.0 - weight).to(device), weight.to(device)


def upsample_region(
    values: torch.Tensor, size: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]
) -> torch.Tensor:
    """Rows `rows[0]:rows[1]` and columns `cols[0]:cols[1]` of `values` [B, C, h, w] resized bilinearly
    (`align_corners=False`) to `size` (H, W), computed from the source pixels they need only: [B, C, rows, cols].

    A region equals the same region of the whole resized image exactly, whatever the tiling. It agrees with
    `F.interpolate(values, size, mode="bilinear")` to float32 rounding (PyTorch's kernels differ among themselves
    by that much, depending on sizes and threads)."""
    height, width = size
    in_height, in_width = values.shape[-2:]
    r_first, r_second, r_w0, r_w1 = _bilinear_taps(in_height, height, rows[0], rows[1], values.device)
    c_first, c_second, c_w0, c_w1 = _bilinear_taps(in_width, width, cols[0], cols[1], values.device)
    low, high = int(r_first.min()), int(r_second.max()) + 1
    source = values[..., low:high, :].float()
    across = source[..., c_first].mul_(c_w0).addcmul_(source[..., c_second], c_w1)  # [B, C, high - low, cols]
    r_first, r_second = r_first - low, r_second - low
    return across[..., r_first, :].mul_(r_w0[:, None]).addcmul_(across[..., r_second, :], r_w1[:, None])


def _pamr_refine(scores: torch.Tensor, affinity: torch.Tensor, steps: int, dilations: Sequence[int]) -> torch.Tensor:
    """`steps` PAMR iterations of `scores` [B, C, H, W] with a precomputed `affinity` [B, P, 1, H, W] (see
    `pamr`). Neighbours are read as views of one padded copy and accumulated in place.

    One copy padded by the largest dilation serves every dilation (see `band_neighbours`). Rows are refined in
    bands of about `PAMR_BAND_BYTES` per channel, so that a band of each neighbour's weights is read from cache for
    every channel rather than from memory; every pixel sums the same terms in the same order, so the result does not
    depend on the bands."""
    bands = row_bands(scores.shape[-2], scores.shape[-1] * scores.element_size(), PAMR_BAND_BYTES)
    for _ in range(steps):
        padded = F.pad(scores, [max(dilations)] * 4, mode="replicate")
        refined = torch.empty_like(scores)
        for top, bottom in bands:
            band, weights = refined[..., top:bottom, :], affinity[..., top:bottom, :]
            for p, neighbour in enumerate(band_neighbours(padded, dilations, top, bottom)):
                if p == 0:
                    torch.mul(neighbour, weights[:, 0], out=band)
                else:
                    band.addcmul_(neighbour, weights[:, p])
        del padded
        scores = refined
    return scores


def area_threshold_keep(class_pixel_counts: torch.Tensor, area_thd: float) -> torch.Tensor:
    """The classes SCLIP's area threshold keeps: [classes] bool from the pixel count of each top class [classes].

    The counts are of each pixel's most probable class, before `prob_thd`. Class 0 (background) is always kept;
    a class c >= 1 is kept when its count is above `area_thd` times the count of all classes >= 1 (the
    foreground), as in SCLIP's `postprocess_result`.

    Example:

    ```python
    >>> area_threshold_keep(torch.tensor([50, 45, 5]), 0.1)  # class 2 holds 5 / 50 of the foreground
    tensor([ True,  True, False])
    ```
    """
    counts = class_pixel_counts.double()
    keep = counts > area_thd * counts[1:].sum()
    keep[0] = True
    return keep


def drop_classes(probabilities: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`probabilities` [..., classes, H, W] with the classes not in `keep` [classes] (bool) set to 0, in place.

    The argmax then gives every pixel of a dropped class its most probable kept class (background included),
    and `prob_thd` compares that class's probability, as SCLIP's area threshold does.
    """
    return probabilities.mul_(keep.to(probabilities.dtype).view(-1, 1, 1))


@torch.no_grad()
def post_process_image(
    logits: torch.Tensor,
    pixel_values: torch.Tensor | None,
    size: tuple[int, int],
    name_to_class: Sequence[int] | torch.Tensor,
    logit_scale: float,
    prob_thd: float,
    pamr_steps: int,
    pamr_dilations: Sequence[int],
    *,
    area_thd: float = 0.0,
    return_probabilities: bool = False,
    max_tile_bytes: int | None = None,
) -> ImagePostProcessing:
    """Labels (and probabilities) of one image at `size` (H, W) from its per-name logits [1, names, h, w], in tiles.

    Upsampling, PAMR (guided by `pixel_values` [1, 3, h, w]), the softmax, merging synonyms, `prob_thd` and the
    argmax run tile by tile, each tile with the context PAMR needs around it (`pamr_halo`), so the result is the
    same for any tiling while memory is bounded by `max_tile_bytes` (default `DEFAULT_MAX_TILE_BYTES`) plus the
    full-size outputs: the labels, and the probabilities only when `return_probabilities` is set.

    Example:

    ```python
    >>> result = post_process_image(logits, pixel_values, (9000, 12000), [0, 1, 2], 40.0, 0.0, 10, [8, 16])
    >>> result.segmentation.shape, result.class_scores()
    ```
    """
    if logits.ndim != 4 or logits.shape[0] != 1:
        raise ValueError(f"logits must be [1, names, height, width], got shape {tuple(logits.shape)}.")
    height, width = (int(v) for v in size)
    num_names = logits.shape[1]
    device = logits.device
    index = torch.as_tensor(name_to_class, dtype=torch.long).to(device)
    num_classes = int(index.max()) + 1
    if pamr_steps > 0 and pixel_values is None:
        raise ValueError("PAMR needs the model input as guide image: pass pixel_values (or pamr_steps=0).")
    halo = pamr_halo(pamr_steps, pamr_dilations)
    segmentation = torch.empty((height, width), dtype=torch.long, device=device)
    probabilities = (
        torch.empty((num_classes, height, width), dtype=torch.float32, device=device) if return_probabilities else None
    )
    counts = torch.zeros(num_classes, dtype=torch.long, device=device)
    sums = torch.zeros(num_classes, dtype=torch.float64, device=device)
    tiles = plan_tiles(height, width, num_names, num_classes, pamr_steps, pamr_dilations, max_tile_bytes)
    keep = None
    if area_thd > 0 and len(tiles) > 1:
        # The area threshold needs every class's area over the whole image before any tile is labelled: a first
        # pass without thresholds counts the pixels of each top class.
        areas = post_process_image(
            logits, pixel_values, size, index, logit_scale, 0.0, pamr_steps, pamr_dilations,
            max_tile_bytes=max_tile_bytes,
        ).class_pixel_counts  # fmt: skip
        keep = area_threshold_keep(areas, area_thd)
    for top, bottom, left, right in tiles:
        if pamr_steps > 0:
            ext_top, ext_bottom = max(0, top - halo), min(height, bottom + halo)
            ext_left, ext_right = max(0, left - halo), min(width, right + halo)
            guide = upsample_region(pixel_values, (height, width), (ext_top, ext_bottom), (ext_left, ext_right))
            affinity = pamr_affinity(guide, pamr_dilations).unsqueeze(2)  # [1, P, 1, rows, cols]
            del guide
            scores = logits.new_empty((1, num_names, bottom - top, right - left), dtype=torch.float32)
            crop = (slice(top - ext_top, bottom - ext_top), slice(left - ext_left, right - ext_left))
            for first in range(0, num_names, PAMR_NAME_CHUNK):
                chunk = upsample_region(
                    logits[:, first : first + PAMR_NAME_CHUNK], (height, width), (ext_top, ext_bottom),
                    (ext_left, ext_right),
                )  # fmt: skip
                scores[:, first : first + PAMR_NAME_CHUNK] = _pamr_refine(
                    chunk, affinity, pamr_steps, pamr_dilations
                )[..., crop[0], crop[1]]
                del chunk
            del affinity
        else:
            scores = upsample_region(logits, (height, width), (top, bottom), (left, right))
        probs = scores.mul_(logit_scale).softmax(dim=1)
        del scores
        if num_classes != num_names:
            merged = probs.new_full((1, num_classes, *probs.shape[-2:]), -1.0)
            probs = merged.scatter_reduce_(1, index.view(1, -1, 1, 1).expand_as(probs), probs, reduce="amax")
        if area_thd > 0:
            if keep is None:  # one tile: the whole image
                keep = area_threshold_keep(torch.bincount(probs.argmax(dim=1).reshape(-1), minlength=num_classes),
                                           area_thd)  # fmt: skip
            probs = drop_classes(probs, keep)
        best, labels = probs.max(dim=1)  # one pass, and faster than argmax over dim 1; same first-maximum indices
        labels[best < prob_thd] = 0
        del best
        probs = probs.div_(probs.sum(dim=1, keepdim=True).clamp_(min=torch.finfo(probs.dtype).tiny))[0]
        labels = labels[0]
        segmentation[top:bottom, left:right] = labels
        if probabilities is not None:
            probabilities[:, top:bottom, left:right] = probs
        flat = labels.reshape(-1)
        counts += torch.bincount(flat, minlength=num_classes)
        top_probability = probs.gather(0, labels[None]).reshape(-1).double()
        sums += torch.bincount(flat, weights=top_probability, minlength=num_classes)
        del probs, labels
    return ImagePostProcessing(segmentation, probabilities, counts, sums)


__all__ = ["DEFAULT_MAX_TILE_BYTES", "ImagePostProcessing",
           "area_threshold_keep", "drop_classes", "estimate_post_processing_bytes", "pamr",
           "pamr_affinity", "pamr_halo", "plan_tiles", "post_process_image",
           "upsample_region"]  # fmt: skip
