"""Torch-free image helpers shared by the model and the ONNX runtime: resizing that reproduces MMSeg's
``Resize(scale=(2048, S), keep_ratio=True)`` on uint8 images, the sliding windows, PAMR's neighbour offsets and the
row bands that large arrays are worked in.

MMSeg rescales with OpenCV's bilinear interpolation (``INTER_LINEAR``). For 8-bit images OpenCV runs a
fixed-point algorithm whose rounding differs from a float bilinear resize by one grey level on roughly an
eighth of the values. :func:`resize_bilinear_uint8` re-implements that arithmetic with numpy (no OpenCV
dependency) and agrees with ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)`` bit for bit:

* Source coordinate of output index ``d``: ``f = float32((d + 0.5) * scale - 0.5)`` with
  ``scale = 1 / (dst / src)`` in double precision; ``s = floor(f)``, fraction ``t = f - s``.
* Weights ``round(2048 * (1 - t))`` and ``round(2048 * t)`` (11 fractional bits, round half to even).
  Along the width, a coordinate left of the first or right of the last pixel snaps to that pixel with
  weights ``(2048, 0)``; along the height the weights are kept and the two rows are clamped to the image.
* Horizontal pass: exact integer sums ``p0 * a0 + p1 * a1`` (pixel value scaled by 2048).
* Vertical pass, in 16-bit-friendly steps: ``(((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16) + 2) >> 2``
  with arithmetic (flooring) shifts.

An exact 2x downscale (which OpenCV routes to its fast area path) gives the same 2x2 rounded mean with
these formulas, so it needs no special case.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

# numpy and the standard library only at import time (the ONNX runtime imports this module without torch); a
# tensor can only be given once torch is imported, so tensors are recognised through `sys.modules`.
ImageT = TypeVar("ImageT", np.ndarray, "torch.Tensor")

_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS  # 2048


def resized_shape(height: int, width: int, short_side: int, max_long_side: int = 2048) -> tuple[int, int]:
    """Output ``(height, width)`` of MMSeg's ``Resize(scale=(max_long_side, short_side), keep_ratio=True)``.

    The scale factor is ``f = min(long_edge / max(h, w), short_edge / min(h, w))`` with
    ``long_edge, short_edge = max(scale), min(scale)``; each side becomes ``int(side * f + 0.5)``.
    ``short_side == 0`` means no resizing.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if short_side == 0:
        return height, width
    if short_side < 0 or max_long_side <= 0:
        raise ValueError(f"target sizes must be positive, got short_side={short_side}, max={max_long_side}")
    long_edge, short_edge = max(max_long_side, short_side), min(max_long_side, short_side)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _opencv_source_positions(dst_len: int, src_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer source index [dst_len] int64 and its float32 fraction [dst_len] for each output index, as OpenCV's
    uint8 bilinear resize computes them."""
    scale = 1.0 / (dst_len / src_len)
    pos = ((np.arange(dst_len, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    index = np.floor(pos).astype(np.int64)
    frac = (pos - index.astype(np.float32)).astype(np.float32)
    return index, frac


def _fixed_point_weights(frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """11-bit weights ``(round(2048 * (1 - t)), round(2048 * t))`` for float32 fractions ``t``, as int32."""
    scale = np.float32(_COEF_SCALE)
    w0 = np.rint((np.float32(1.0) - frac) * scale).astype(np.int32)
    w1 = np.rint(frac * scale).astype(np.int32)
    return w0, w1


def _resize_numpy(image: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """OpenCV-exact bilinear resize of a uint8 array [H, W, C] to [out_height, out_width, C]."""
    height, width = image.shape[:2]

    # Columns: snap out-of-range coordinates to the border pixel with weights (2048, 0).
    x0, fx = _opencv_source_positions(out_width, width)
    outside = (x0 < 0) | (x0 >= width - 1)
    fx = np.where(outside, np.float32(0.0), fx)
    x0 = np.clip(x0, 0, width - 1)
    x1 = np.minimum(x0 + 1, width - 1)
    ax0, ax1 = _fixed_point_weights(fx)

    # Rows: weights are kept as computed, the row indices are clamped.
    y0, fy = _opencv_source_positions(out_height, height)
    by0, by1 = _fixed_point_weights(fy)
    y0, y1 = np.clip(y0, 0, height - 1), np.clip(y0 + 1, 0, height - 1)

    # Horizontal pass on each needed source row once (exact, values scaled by 2048).
    rows, inverse = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    src = image[rows]
    horiz = src[:, x0].astype(np.int32) * ax0[None, :, None]
    horiz += src[:, x1].astype(np.int32) * ax1[None, :, None]
    horiz >>= 4
    top, bottom = horiz[inverse[:out_height]], horiz[inverse[out_height:]]

    # Vertical pass with the truncating 16-bit products.
    top *= by0[:, None, None]
    top >>= 16
    bottom *= by1[:, None, None]
    bottom >>= 16
    top += bottom
    top += 2
    top >>= 2
    return np.clip(top, 0, 255).astype(np.uint8)


def resize_bilinear_uint8(image: ImageT, size: tuple[int, int]) -> ImageT:
    """Bilinear resize of a uint8 image, bit-exact with OpenCV's ``INTER_LINEAR`` for 8-bit images.

    Args:
        image: uint8 [H, W, C] (or [H, W]) numpy array or torch tensor.
        size: output ``(height, width)``.
    Returns:
        uint8 [height, width, C] (or [height, width]) of the same type (and device, for tensors).
    """
    out_height, out_width = int(size[0]), int(size[1])
    if out_height <= 0 or out_width <= 0:
        raise ValueError(f"output size must be positive, got {size}")
    torch = sys.modules.get("torch")
    is_tensor = torch is not None and isinstance(image, torch.Tensor)
    array = image.detach().cpu().numpy() if is_tensor else np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {array.dtype}")
    if array.ndim not in (2, 3) or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"expected a non-empty [H, W, C] or [H, W] image, got shape {array.shape}")

    squeeze = array.ndim == 2
    hwc = array[:, :, None] if squeeze else array
    if (out_height, out_width) == hwc.shape[:2]:
        out = hwc.copy()
    else:
        out = _resize_numpy(hwc, out_height, out_width)
    if squeeze:
        out = out[:, :, 0]
    if is_tensor:
        return torch.from_numpy(np.ascontiguousarray(out)).to(image.device)
    return out


def resize_short_side(image: ImageT, short_side: int, max_long_side: int = 2048) -> ImageT:
    """Rescale like MMSeg's ``Resize(scale=(max_long_side, short_side), keep_ratio=True)``.

    Args:
        image: uint8 [H, W, C] numpy array or torch tensor.
        short_side: target short side (0: returned unchanged); the long side is capped at ``max_long_side``.
    Returns:
        uint8 [h, w, C] of the same type, with ``(h, w) = resized_shape(H, W, short_side, max_long_side)``.
    """
    height, width = int(image.shape[0]), int(image.shape[1])
    size = resized_shape(height, width, short_side, max_long_side)
    if size == (height, width):
        return image
    return resize_bilinear_uint8(image, size)


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list[Box]:
    """Window boxes (y1, y2, x1, x2) covering an image, placed as the official NACLIP/MMSeg code places them:
    a regular grid whose last row/column is shifted back to end at the border; windows are cropped to the image
    when it is smaller than `crop`."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, height), min(c * stride + crop, width)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


Box = tuple[int, int, int, int]


def window_batches(num_images: int, boxes: list[Box], batch_size: int) -> list[list[tuple[int, Box]]]:
    """The windows `(image, box)` of `num_images` images cut at the same `boxes` (image 0's first), in batches of
    `batch_size`: the order in which the model and the ONNX runtime run them."""
    windows = [(image, box) for image in range(num_images) for box in boxes]
    return [windows[start : start + batch_size] for start in range(0, len(windows), batch_size)]


def window_coverage(height: int, width: int, boxes: list[Box]) -> np.ndarray:
    """[height, width] float32: how many of `boxes` cover each pixel (the summed window logits are divided by it)."""
    count = np.zeros((height, width), dtype=np.float32)
    for a, b, c, d in boxes:
        count[a:b, c:d] += 1
    return count


def row_bands(height: int, row_size: int, band_size: int) -> list[tuple[int, int]]:
    """(top, bottom) of the bands of rows, about `band_size` each (at least one row), covering `height` rows of
    `row_size` each (bytes or pixels, in the unit of `band_size`). Large arrays are worked band by band so that the
    temporaries stay small or in cache; every pixel is computed the same way whatever the bands."""
    rows = max(1, band_size // max(1, row_size))
    return [(top, min(height, top + rows)) for top in range(0, height, rows)]


# The eight neighbours of a 3×3 window (centre excluded), as (row, column) offsets in units of PAMR's dilation.
NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
# The full 3×3 window, centre included (the local spread of PAMR's affinity is taken over it).
WINDOW_OFFSETS: tuple[tuple[int, int], ...] = NEIGHBOUR_OFFSETS[:4] + ((0, 0),) + NEIGHBOUR_OFFSETS[4:]



def band_neighbours(padded: ImageT, dilations: Sequence[int], top: int, bottom: int) -> list[ImageT]:
    """Views of `padded` (an array or tensor [..., H, W] edge-padded by the largest dilation) holding, for rows
    `top:bottom`, every pixel's neighbour at each dilation and `NEIGHBOUR_OFFSETS` offset, in that order. One copy
    serves every dilation: edge padding repeats the edge pixel, so a neighbour past the border is the same whatever
    the padding."""
    reach = max(dilations)
    width = padded.shape[-1] - 2 * reach
    return [padded[..., reach + dy * d + top : reach + dy * d + bottom, reach + dx * d : reach + dx * d + width]
            for d in dilations for dy, dx in NEIGHBOUR_OFFSETS]  # fmt: skip


def window_tokens(height: int, width: int, crop: int, patch_size: int) -> int:
    """Tokens of one sliding window of an image of `height` × `width` (see `sliding_windows`): the class token and
    the window's whole patches."""
    return 1 + (min(crop, height) // patch_size) * (min(crop, width) // patch_size)
