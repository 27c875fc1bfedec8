"""The last layer's attention of one patch over the image, per method: the NACLIP paper's Figure 1.

One function computes it for every place that shows it (`naclip compare --attention-at` and the demo's Attention
tab), so that both draw the same map for the same point and method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .methods import Method, get_method
from .models.naclip.image_io import load_image
from .models.naclip.options import BLOCK_ARCHS, names_of_stage


@dataclass
class PatchAttention:
    """The attention of the patch under one point, per method (`methods`, names, in order).

    `heat`: [H, W] float32 in [0, 1] at the image's size, one per method; `weights`: the head-averaged weights on
    the patch grid, [rows, columns] float32 each; `patch`: the (row, column) of the patch; `grid`: (rows,
    columns); `image`: the image read, [H, W, 3] uint8.
    """

    methods: list[str]
    heat: list[np.ndarray]
    weights: list[np.ndarray]
    patch: tuple[int, int]
    grid: tuple[int, int]
    image: np.ndarray


def block_settings(method: str | Method, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings of `method` (with `overrides` on top) that shape the last layer's attention; the model's config
    gives the others. `ValueError` listing the methods for an unknown name.

    >>> block_settings("sclip")
    {'arch': 'vanilla', 'attn_strategy': 'csa'}
    """
    settings = {**get_method(method).settings, **(overrides or {})}
    return {name: settings[name] for name in names_of_stage("block") if name in settings}


def check_methods(
    model: Any, methods: Sequence[str | Method] | str | Method, overrides: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """{method name: its last-block settings} for `methods`, checked against `model` (`ValueError` naming a method
    this model cannot run, or asking for one when none is given)."""
    if isinstance(methods, (str, Method)):
        methods = [methods]
    if not methods:
        raise ValueError("No method chosen: pick at least one method to compare.")
    settings = {}
    for method in methods:
        method = get_method(method)
        try:
            arch = model.config.inference_options(**block_settings(method, overrides)).arch
        except ValueError as error:
            raise ValueError(f"Method {method.name!r}: {error}") from None
        if arch not in BLOCK_ARCHS:
            raise ValueError(
                f"Method {method.name!r} replaces the last block (arch={arch!r}) with no attention map of its own to "
                "show; compare methods whose last block runs as a block."
            )
        settings[method.name] = block_settings(method, overrides)
    return settings


def attention_maps(
    model: Any,
    processor: Any,
    image: Any,
    point: tuple[float, float],
    methods: Sequence[str | Method],
    *,
    short_side: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> PatchAttention:
    """The last layer's attention of the patch under `point` = (x, y) (the image's pixels), for each method.

    The image goes through the model once per method, as one whole-image pass at `short_side` (default: the image
    processor's), the same for every method so that every map shows the same patch. The last layer's weights
    [1, heads, T, T] (T = 1 + rows × columns, CLS first) are averaged over heads; the patch's row (token
    1 + row × columns + column) without the CLS entry is put on the patch grid, upsampled bilinearly to the part
    of the image the grid covers (the rest, under a last partial patch, takes its neighbour's value) and scaled to
    [0, 1]. The attention runs eagerly whatever the model's attention implementation (only its weights are read).

    Example:

    ```python
    >>> maps = attention_maps(model, processor, "street.jpg", (120, 80), ["clip", "sclip", "naclip"])
    >>> maps.heat[0].shape  # (H, W) of the image
    ```
    """
    import torch

    settings = check_methods(model, methods, overrides)
    rgb = load_image(image)
    pixel_values = processor.image_processor(rgb, short_side=short_side)["pixel_values"]
    if isinstance(pixel_values, list):
        pixel_values = pixel_values[0]
    pixel_values = pixel_values.to(model.device, model.dtype)
    token, patch, grid, covered = _locate(rgb.shape[:2], tuple(pixel_values.shape[-2:]), point, model)
    heats, weights = [], []
    with torch.inference_mode():
        for block in settings.values():
            attentions = model.encode_patches(pixel_values, output_attentions=True, **block).attentions[-1]
            on_grid = attentions[0].float().mean(dim=0)[token, 1:].reshape(grid)
            weights.append(on_grid.cpu().numpy())
            heats.append(_heat(on_grid, covered, rgb.shape[:2]))
    return PatchAttention(list(settings), heats, weights, patch, grid, rgb)


def _locate(
    size: tuple[int, int], processed: tuple[int, int], point: tuple[float, float], model: Any
) -> tuple[int, tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(token, (row, column), grid, covered): the patch under `point` on the processed image's grid, and the part
    of the original image (height, width) that the grid covers."""
    height, width = size
    x, y = float(point[0]), float(point[1])
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(
            f"The pixel ({x:g}, {y:g}) is outside the image, which is {width}×{height} pixels; give x in "
            f"0..{width - 1} and y in 0..{height - 1}."
        )
    patch = model.config.vision_config.patch_size
    rows, columns = processed[0] // patch, processed[1] // patch
    if rows < 1 or columns < 1:
        raise ValueError(f"The image is smaller than one {patch}×{patch} patch after resizing; use a larger one.")
    row = min(int(y * processed[0] / height) // patch, rows - 1)
    column = min(int(x * processed[1] / width) // patch, columns - 1)
    covered = (
        max(1, min(height, round(rows * patch * height / processed[0]))),
        max(1, min(width, round(columns * patch * width / processed[1]))),
    )
    return 1 + row * columns + column, (row, column), (rows, columns), covered


def _heat(on_grid: Any, covered: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Weights on the patch grid -> [H, W] float32 in [0, 1] over the image."""
    import torch.nn.functional as F

    heat = F.interpolate(on_grid[None, None], size=covered, mode="bilinear", align_corners=False)
    heat = F.pad(heat, (0, size[1] - covered[1], 0, size[0] - covered[0]), mode="replicate")[0, 0]
    heat = heat - heat.min()
    return (heat / heat.max().clamp(min=1e-12)).cpu().numpy().astype(np.float32)


__all__ = ["PatchAttention", "attention_maps", "block_settings", "check_methods"]
