"""Side-by-side figures of several methods on one image, in the layouts of the NACLIP paper's Figures 1 and 2.

- `segmentation_figure`: the image, then one segmentation per method, with one legend shared by all (Figure 2).
- `attention_figure`: the image with a marked pixel, then, per method, the last layer's attention of the patch
  under that pixel over the whole image (Figure 1).

`segment_with_methods` computes what `segmentation_figure` draws (one model, one set of class embeddings, each
method's settings per call, so the model's config is never changed); `naclip_hf.attention_maps` computes what
`attention_figure` draws. The drawing functions need only numpy and Pillow.

Example:

```python
>>> segmenter = load_segmenter("openai/clip-vit-base-patch16")
>>> label_set = segmenter.encode_classes(["cat", "dog, puppy", "grass"])
>>> results = segment_with_methods(segmenter, image, label_set, ["clip", "sclip", "naclip"])
>>> segmentation_figure(image, {name: r.segmentation for name, r in results.items()}, label_set.class_labels)
```
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .methods import METHODS
from .models.naclip.image_io import load_image
from .visualization import blend, class_palette, font_for_text

# Colours of the attention heat map from low to high (a dark-to-bright sequential scale).
HEAT_COLOURS = np.array(
    [(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21), (250, 193, 39),
     (252, 255, 164)], dtype=np.float64,
)  # fmt: skip
DEFAULT_PANEL_HEIGHT = 256
_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)
# The legend's frame and the edge of its colour swatches (visible around light colours on white).
LEGEND_FRAME = (150, 150, 150)
_SWATCH_EDGE = (110, 110, 110)
# A legend needing more columns than this beside the panels goes below them instead.
_MAX_SIDE_COLUMNS = 2


# ---------------------------------------------------------------------------------------------- computing
def segment_with_methods(
    segmenter: Any,
    image: Any,
    label_set: Any,
    methods: Sequence[str],
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Segment `image` with each method: {method name: the result of `segmenter.segment`}.

    `segmenter` is a `naclip_hf.segmenter.Segmenter` and `label_set` comes from its `encode_classes`; each method
    runs with its own settings (and its own short side), `overrides` on top of every method's (e.g.
    `{"pamr_steps": 0}`).
    """
    array = load_image(image)
    results = {}
    for name in methods:
        try:
            options = segmenter.options(method=name, **(overrides or {}))
            results[name] = segmenter.segment(array, label_set, options, return_probabilities=False)
        except ValueError as error:  # e.g. a last block that an exported graph cannot change
            raise ValueError(f"Method {name!r}: {error}") from None
    return results


# ------------------------------------------------------------------------------------------------ drawing
def heat_colours(values: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] -> [H, W, 3] uint8 colours of `HEAT_COLOURS` (interpolated)."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(HEAT_COLOURS) - 1)
    low = np.floor(values).astype(np.int64).clip(max=len(HEAT_COLOURS) - 2)
    fraction = (values - low)[..., None]
    colours = HEAT_COLOURS[low] * (1.0 - fraction) + HEAT_COLOURS[low + 1] * fraction
    return np.rint(colours).astype(np.uint8)


def _panel(picture: Image.Image, height: int) -> Image.Image:
    width = max(1, round(picture.width * height / picture.height))
    resample = Image.NEAREST if height >= picture.height else Image.BILINEAR
    return picture.resize((width, height), resample)


def text_size(panel_height: int) -> int:
    """Font size in pixels of the panel titles and of the legend: an eighth of a panel's height, 14 to 40 (about
    11 pixels once a row of six panels is scaled to a 900-pixel-wide page)."""
    return max(14, min(40, panel_height // 8))


def _spacing(font_size: int) -> int:
    return max(4, font_size // 3)


def _framed_width(column_widths: list[int], spacing: int) -> int:
    """Width of a legend: its columns, twice `spacing` between them and `spacing` inside the frame."""
    return sum(column_widths) + 2 * spacing * len(column_widths)


def _legend_layout(
    entries: Sequence[tuple[str, tuple[int, int, int]]],
    font_size: int,
    max_height: int | None = None,
    max_width: int | None = None,
) -> tuple[list[list[int]], list[int], int]:
    """The legend's columns (entry indices, column by column), each column's width and the row height.

    With `max_height`, as few columns as keep the legend within that height; with `max_width`, as few rows as keep
    it within that width (one column if none does)."""
    spacing = _spacing(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_widths = [measure.textlength(label, font=font_for_text(label, font_size)) for label, _ in entries]
    row = font_size + spacing

    def columns_of(rows: int) -> tuple[list[list[int]], list[int]]:
        columns = [list(range(start, min(start + rows, len(entries)))) for start in range(0, len(entries), rows)]
        widths = [font_size + spacing + int(np.ceil(max(label_widths[i] for i in column))) for column in columns]
        return columns, widths

    if max_width is not None:
        for count in range(len(entries), 0, -1):  # columns, most first: the shortest legend that fits
            columns, widths = columns_of(math.ceil(len(entries) / count))
            if _framed_width(widths, spacing) <= max_width:
                return columns, widths, row
        return (*columns_of(len(entries)), row)
    rows = len(entries)
    if max_height is not None:
        rows = max(1, min(rows, (max_height - spacing) // row))
        rows = math.ceil(len(entries) / math.ceil(len(entries) / rows))  # as many columns, filled evenly
    return (*columns_of(rows), row)


def _draw_legend(
    entries: Sequence[tuple[str, tuple[int, int, int]]],
    font_size: int,
    layout: tuple[list[list[int]], list[int], int],
) -> Image.Image:
    columns, widths, row = layout
    spacing = _spacing(font_size)
    rows = max(len(column) for column in columns)
    width = _framed_width(widths, spacing)
    height = rows * row + spacing
    legend = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(legend)
    draw.rectangle([0, 0, width - 1, height - 1], outline=LEGEND_FRAME)
    left = spacing
    for column, column_width in zip(columns, widths):
        for position, index in enumerate(column):
            label, colour = entries[index]
            top = spacing + position * row
            draw.rectangle([left, top, left + font_size - 1, top + font_size - 1], fill=colour, outline=_SWATCH_EDGE)
            font = font_for_text(label, font_size)
            # Centre the line's full height (capitals and descenders), so that every label sits alike.
            reference = draw.textbbox((0, 0), "Hg", font=font)
            y = top + (font_size - (reference[3] - reference[1])) / 2 - reference[1]
            draw.text((left + font_size + spacing, y), label, font=font, fill=_TEXT)
        left += column_width + 2 * spacing
    return legend


def _titled_row(
    panels: Sequence[tuple[str, Image.Image]],
    legend_entries: Sequence[tuple[str, tuple[int, int, int]]] = (),
) -> Image.Image:
    """Panels side by side with their titles above them, and a legend of `legend_entries` at the right (below
    the panels when it would need more than `_MAX_SIDE_COLUMNS` columns there). The legend's text is as large as
    the titles'."""
    height = panels[0][1].height
    font_size = text_size(height)
    gap = _spacing(font_size)
    title_height = font_size + 2 * gap
    row_width = sum(panel.width for _, panel in panels) + gap * (len(panels) + 1)
    legend, below = None, False
    if legend_entries:
        layout = _legend_layout(legend_entries, font_size, max_height=height)
        below = len(layout[0]) > _MAX_SIDE_COLUMNS
        if below:
            layout = _legend_layout(legend_entries, font_size, max_width=row_width - 2 * gap)
        legend = _draw_legend(legend_entries, font_size, layout)
    width, canvas_height = row_width, title_height + height + gap
    if legend is not None and below:
        width = max(width, legend.width + 2 * gap)
        canvas_height += legend.height + gap
    elif legend is not None:
        width += legend.width + gap
        canvas_height = max(canvas_height, title_height + legend.height + gap)
    canvas = Image.new("RGB", (width, canvas_height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x = gap
    for title, panel in panels:
        font = font_for_text(title, font_size)
        text_width = draw.textlength(title, font=font)
        draw.text((x + (panel.width - text_width) / 2, gap), title, font=font, fill=_TEXT)
        canvas.paste(panel, (x, title_height))
        x += panel.width + gap
    if legend is not None:
        canvas.paste(legend, (gap, title_height + height + gap) if below else (x, title_height))
    return canvas


def _titles(methods: Sequence[str]) -> list[str]:
    """The panels' titles: a registered method's title, else the name as given."""
    return [METHODS[name].title if name in METHODS else name for name in methods]


def segmentation_figure(
    image: Any,
    segmentations: Mapping[str, Any],
    class_labels: Sequence[str],
    alpha: float = 0.6,
    panel_height: int = DEFAULT_PANEL_HEIGHT,
    palette: np.ndarray | None = None,
) -> Image.Image:
    """The paper's Figure 2 layout: the image, then each segmentation ([H, W] class ids, keyed by method name) blended
    over it, titled with the method's name, and one legend of the classes present in any of them at the right (below
    the panels when it needs more than two columns). The legend's text is as large as the titles (`text_size`) and
    its frame fits its entries."""
    array = load_image(image)
    if not segmentations:
        raise ValueError("No segmentations to draw; give at least one method.")
    palette = class_palette(len(class_labels)) if palette is None else np.asarray(palette, dtype=np.uint8)
    panels = [("image", _panel(Image.fromarray(array), panel_height))]
    present: set[int] = set()
    for title, segmentation in zip(_titles(list(segmentations)), segmentations.values()):
        labels = np.asarray(segmentation)
        present.update(np.unique(labels).tolist())
        panels.append((title, _panel(blend(array, labels, palette[: len(class_labels)], alpha), panel_height)))
    entries = [(str(class_labels[index]), tuple(int(c) for c in palette[index])) for index in sorted(present)]
    return _titled_row(panels, entries)


def attention_figure(
    image: Any,
    maps: Mapping[str, np.ndarray],
    point: tuple[int, int],
    alpha: float = 0.6,
    panel_height: int = DEFAULT_PANEL_HEIGHT,
) -> Image.Image:
    """The paper's Figure 1 layout: the image with the chosen pixel marked, then each method's attention map
    ([H, W] in [0, 1], keyed by method name) as a heat map over the image, with the pixel marked."""
    array = load_image(image)
    if not maps:
        raise ValueError("No attention maps to draw; give at least one method.")

    def marked(picture: Image.Image) -> Image.Image:
        panel = _panel(picture, panel_height)
        scale = panel.height / array.shape[0]
        cx, cy = (point[0] + 0.5) * scale, (point[1] + 0.5) * scale
        radius = max(3, panel_height // 40)
        draw = ImageDraw.Draw(panel)
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=(0, 255, 0), width=2)
        return panel

    panels = [("image", marked(Image.fromarray(array)))]
    for title, (name, values) in zip(_titles(list(maps)), maps.items()):
        values = np.asarray(values)
        if values.shape != array.shape[:2]:
            raise ValueError(f"The attention map of {name} is {values.shape}, the image {array.shape[:2]} (H, W).")
        mixed = (1.0 - alpha) * array.astype(np.float64) + alpha * heat_colours(values)
        panels.append((title, marked(Image.fromarray(np.rint(mixed).astype(np.uint8)))))
    return _titled_row(panels)


__all__ = [
    "DEFAULT_PANEL_HEIGHT",
    "HEAT_COLOURS",
    "LEGEND_FRAME",
    "attention_figure",
    "heat_colours",
    "segment_with_methods",
    "segmentation_figure",
    "text_size",
]
