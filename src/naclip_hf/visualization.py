"""Pictures of a segmentation: a colour palette per class, palette label maps, and overlays with a legend.

Legend labels in scripts that Pillow's built-in font lacks (Chinese, Japanese, Korean, some symbols) are drawn
with a system font that has their glyphs when one is installed: `$NACLIP_LEGEND_FONT` if set, else the Noto CJK
fonts (Debian/Ubuntu package `fonts-noto-cjk`) or the usual CJK fonts of macOS and Windows, else what `fc-match`
suggests. Without one, such characters show as boxes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .models.naclip.image_utils import row_bands

# Candidate colours for the palette: a 15-level grid per channel, without the darkest and lightest levels so
# that every colour stays visible when blended over a photo and next to white legend text.
_LEVELS = np.linspace(24, 232, 15).round().astype(np.int64)
# Channel weights of the colour distance (green differences are seen most, blue least).
_WEIGHTS = np.array([2.0, 4.0, 3.0])
_FIRST_COLOUR = (232, 39, 39)
MAX_PALETTE_SIZE = len(_LEVELS) ** 3
# Images smaller than this (either side, in pixels) get no legend: it would hide the picture.
MIN_LEGEND_SIDE = 64
# Pixels per row band of the per-pixel work on label maps and overlays (its temporaries stay a few MB).
_BLEND_BAND_PIXELS = 1 << 20


@lru_cache(maxsize=8)
def _greedy_palette(num_classes: int) -> np.ndarray:
    grid = np.stack(np.meshgrid(_LEVELS, _LEVELS, _LEVELS, indexing="ij"), axis=-1).reshape(-1, 3)
    first = int(np.argmin(((grid - np.array(_FIRST_COLOUR)) ** 2 * _WEIGHTS).sum(axis=1)))
    chosen = [first]
    nearest = ((grid - grid[first]) ** 2 * _WEIGHTS).sum(axis=1).astype(np.float64)
    for _ in range(1, num_classes):
        index = int(np.argmax(nearest))  # farthest from every colour chosen so far; first index wins ties
        chosen.append(index)
        nearest = np.minimum(nearest, ((grid - grid[index]) ** 2 * _WEIGHTS).sum(axis=1))
    return grid[chosen].astype(np.uint8)


def class_palette(num_classes: int) -> np.ndarray:
    """`num_classes` distinct RGB colours, [N, 3] uint8, the same on every call.

    Each colour is the one farthest (in a weighted RGB distance) from all colours before it, so the first
    classes get the most different colours. At most `MAX_PALETTE_SIZE` (3375) classes.
    """
    if not 0 <= num_classes <= MAX_PALETTE_SIZE:
        raise ValueError(f"num_classes={num_classes} must be between 0 and {MAX_PALETTE_SIZE}.")
    if num_classes == 0:
        return np.zeros((0, 3), dtype=np.uint8)
    return _greedy_palette(num_classes).copy()


def _segmentation_array(segmentation: Any, num_classes: int) -> np.ndarray:
    array = np.asarray(segmentation)
    if array.ndim != 2:
        raise ValueError(f"Expected a segmentation of shape [H, W], got {array.shape}.")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"Expected integer class ids in the segmentation, got dtype {array.dtype}.")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(
            f"Segmentation holds class ids {int(array.min())}..{int(array.max())}, outside 0..{num_classes - 1}."
        )
    return array


def narrow_segmentation(segmentation: Any, num_classes: int) -> np.ndarray:
    """The segmentation [H, W] with the smallest unsigned dtype holding `num_classes` class ids (uint8 up to 256
    classes, then uint16, uint32): a 12000x9000 label map takes 108 MB as uint8 instead of 864 MB as int64."""
    array = _segmentation_array(segmentation, num_classes)
    dtype = next(dtype for dtype in (np.uint8, np.uint16, np.uint32) if num_classes <= np.iinfo(dtype).max + 1)
    return array.astype(dtype, copy=False)


def label_map_image(segmentation: Any, palette: np.ndarray) -> Image.Image:
    """The segmentation [H, W] as a palette PNG-ready image: pixel value = class id, colours from `palette`.

    Mode "P" for up to 256 classes; with more classes a 16-bit greyscale image (mode "I;16") holding the ids.
    """
    palette = np.asarray(palette, dtype=np.uint8)
    array = _segmentation_array(segmentation, len(palette))
    if len(palette) > 256:
        if len(palette) > 65536:
            raise ValueError(f"A label map holds at most 65536 classes, got {len(palette)}.")
        return Image.fromarray(array.astype(np.uint16, copy=False))
    image = Image.fromarray(array.astype(np.uint8, copy=False)).convert("P")
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(palette)] = palette
    image.putpalette(flat.reshape(-1).tolist())
    return image


def _present_classes(segmentation: Any, num_classes: int) -> list[tuple[int, float]]:
    """(class id, fraction of pixels) of every class present, largest first, ties in class order."""
    array = _segmentation_array(segmentation, num_classes)
    if array.size == 0:
        return []
    counts = np.zeros(num_classes, dtype=np.int64)
    for top, bottom in row_bands(*array.shape, _BLEND_BAND_PIXELS):  # bincount copies its input to int64
        counts += np.bincount(array[top:bottom].reshape(-1), minlength=num_classes)
    order = sorted(np.flatnonzero(counts).tolist(), key=lambda index: (-counts[index], index))
    return [(index, float(counts[index] / array.size)) for index in order]


def class_shares(segmentation: Any, class_labels: Sequence[str]) -> dict[str, float]:
    """Fraction of the pixels labelled with each class present, keyed by label, largest first (ties in class
    order). The fractions of the present classes sum to 1; absent classes are left out."""
    return {str(class_labels[index]): share for index, share in _present_classes(segmentation, len(class_labels))}


# Fonts with CJK glyphs at their usual places (Linux packages, macOS, Windows).
FALLBACK_FONT_PATHS: tuple[str, ...] = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKsc-Regular.otf",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/YuGothM.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)
# Families asked of fontconfig when none of the paths above exists.
_FC_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK KR", "Noto Sans")
# Characters up to here (Latin, Latin-1, Latin Extended) are in Pillow's built-in font.
_BUILT_IN_LAST = 0x24F
# A code point no font has: its rendering is the font's "missing glyph" box.
_NO_GLYPH = "\U0010fffd"
_FONT_ENV = "NACLIP_LEGEND_FONT"


def _load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


@lru_cache(maxsize=1)
def fallback_font_paths() -> tuple[str, ...]:
    """Font files to try, in order, for characters Pillow's built-in font lacks: `$NACLIP_LEGEND_FONT`, the
    existing files of `FALLBACK_FONT_PATHS`, then fontconfig's matches for Noto CJK (when `fc-match` exists)."""
    paths = [os.environ[_FONT_ENV]] if os.environ.get(_FONT_ENV) else []
    paths += [path for path in FALLBACK_FONT_PATHS if os.path.isfile(path)]
    fc_match = shutil.which("fc-match")
    if fc_match is not None:
        for family in _FC_FAMILIES:
            try:
                found = subprocess.run(
                    [fc_match, "-f", "%{file}", family], capture_output=True, text=True, timeout=5, check=False
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                break
            if found and os.path.isfile(found):
                paths.append(found)
    return tuple(dict.fromkeys(paths))


@lru_cache(maxsize=32)
def _truetype(path: str, size: int) -> ImageFont.FreeTypeFont | None:
    try:
        return ImageFont.truetype(path, size)
    except OSError:
        return None


def _has_glyphs(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str) -> bool:
    """Whether `font` draws every non-space character of `text` with a glyph of its own (not the box)."""
    try:
        missing = font.getmask(_NO_GLYPH)
        missing_key = (missing.size, bytes(missing))
        for character in set(text):
            if character.isspace():
                continue
            mask = font.getmask(character)
            if (mask.size, bytes(mask)) == missing_key:
                return False
    except (UnicodeEncodeError, OSError, ValueError):  # a bitmap font without Unicode support
        return False
    return True


def font_for_text(text: str, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The font to draw `text` at `size`: Pillow's built-in font when it has every glyph, else the first of
    `fallback_font_paths()` that has them, else the built-in font (missing glyphs then show as boxes)."""
    default = _load_font(size)
    if all(ord(character) <= _BUILT_IN_LAST for character in text) or _has_glyphs(default, text):
        return default
    for path in fallback_font_paths():
        font = _truetype(path, size)
        if font is not None and _has_glyphs(font, text):
            return font
    return default


def _format_share(share: float) -> str:
    percent = share * 100
    return "<1%" if 0 < percent < 1 else f"{percent:.0f}%"


LegendEntry = tuple[str, str, tuple[int, int, int] | None]


def draw_legend(
    image: Image.Image,
    entries: Sequence[LegendEntry],
    font_size: int | None = None,
) -> Image.Image:
    """Draw a legend in a semi-opaque box in the top-left corner of `image`: per entry `(label, detail, colour)`
    a colour swatch, the label, and the detail (e.g. "42%") right-aligned in a second column.

    Returns a new RGB image of the same size. Entries that do not fit are summarised as "+N more"; images with a
    side under `MIN_LEGEND_SIDE` pixels are returned without a legend.
    """
    width, height = image.size
    if not entries or min(width, height) < MIN_LEGEND_SIDE:
        return image.convert("RGB")
    size = font_size or max(10, min(22, round(min(width, height) / 22)))
    font = _load_font(size)
    pad = gap = max(2, size // 3)
    swatch = size
    row = swatch + max(2, size // 4)
    max_rows = max(1, (height - 2 * gap - 2 * pad + (row - swatch)) // row)
    shown = list(entries)
    if len(shown) > max_rows:
        hidden = len(shown) - (max_rows - 1)
        shown = shown[: max_rows - 1] + [(f"+{hidden} more", "", None)]
    label_fonts = [font_for_text(label, size) for label, _, _ in shown]
    draw = ImageDraw.Draw(Image.new("RGBA", (1, 1)))  # measures the text; the legend is drawn on `layer` below
    label_width = max(draw.textlength(label, font=f) for (label, _, _), f in zip(shown, label_fonts))
    detail_width = max(draw.textlength(detail, font=font) for _, detail, _ in shown)
    column_gap = gap * 2 if detail_width else 0
    box_width = int(np.ceil(pad + swatch + gap + label_width + column_gap + detail_width + pad))
    box_height = pad + len(shown) * row - (row - swatch) + pad
    left = top = gap
    # Only the corner under the legend (with a margin for glyphs reaching past their advance) is drawn and
    # composited: whole-image RGBA copies of a 100-megapixel image (base, layer, composite) would take 1.2 GB.
    corner = (0, 0, min(width, left + box_width + size), min(height, top + box_height + size))
    layer = Image.new("RGBA", corner[2:], (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle([left, top, left + box_width - 1, top + box_height - 1], fill=(0, 0, 0, 170))
    white = (255, 255, 255, 255)
    for position, ((label, detail, colour), label_font) in enumerate(zip(shown, label_fonts)):
        x, y = left + pad, top + pad + position * row
        if colour is not None:
            draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=(*colour, 255), outline=white)
        for text, text_x, text_font in (
            (label, x + swatch + gap, label_font),
            (detail, left + box_width - pad - draw.textlength(detail, font=font), font),
        ):
            if text:
                bbox = draw.textbbox((0, 0), text, font=text_font)
                draw.text((text_x, y + (swatch - (bbox[3] - bbox[1])) / 2 - bbox[1]), text, font=text_font, fill=white)
    out = image.convert("RGB")
    out.paste(Image.alpha_composite(image.crop(corner).convert("RGBA"), layer).convert("RGB"), corner[:2])
    return out


def blend(image: Any, segmentation: Any, palette: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The image with each pixel mixed with its class colour: `(1 - alpha) * image + alpha * colour`."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be between 0 and 1.")
    palette = np.asarray(palette, dtype=np.uint8)
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    array = _segmentation_array(segmentation, len(palette))
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != array.shape:
        raise ValueError(f"Image of shape {rgb.shape} does not match the segmentation's {array.shape} (H, W).")
    height, width = array.shape
    out = Image.new("RGB", (width, height))
    # Row bands, pasted straight into the result, keep the temporaries small on very large images (no full-size
    # float or uint8 copy); every pixel is computed alone, so the result does not depend on the band height.
    for top, bottom in row_bands(height, width, _BLEND_BAND_PIXELS):
        rows = slice(top, bottom)
        mixed = (1.0 - alpha) * rgb[rows].astype(np.float32) + alpha * palette[array[rows]].astype(np.float32)
        out.paste(Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8)), (0, top))
    return out


def overlay_image(
    image: Any,
    segmentation: Any,
    class_labels: Sequence[str],
    palette: np.ndarray,
    alpha: float = 0.5,
) -> Image.Image:
    """The image blended with its class colours, with a legend of the classes present (largest share first,
    with their share of the pixels) drawn inside the image's top-left corner. Same size as the image, mode RGB.

    `image` is a PIL image or an [H, W, 3] uint8 array; `segmentation` [H, W] holds class ids indexing
    `class_labels` and `palette`."""
    palette = np.asarray(palette, dtype=np.uint8)
    if len(palette) < len(class_labels):
        raise ValueError(f"The palette has {len(palette)} colours for {len(class_labels)} classes.")
    blended = blend(image, segmentation, palette[: len(class_labels)], alpha)
    entries = [
        (str(class_labels[index]), _format_share(share), tuple(int(c) for c in palette[index]))
        for index, share in _present_classes(segmentation, len(class_labels))
    ]
    return draw_legend(blended, entries)


__all__ = [
    "FALLBACK_FONT_PATHS",
    "MAX_PALETTE_SIZE",
    "MIN_LEGEND_SIDE",
    "LegendEntry",
    "blend",
    "class_palette",
    "class_shares",
    "draw_legend",
    "fallback_font_paths",
    "font_for_text",
    "label_map_image",
    "overlay_image",
]
