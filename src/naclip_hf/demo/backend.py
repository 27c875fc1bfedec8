"""What the demo computes, without any user interface: segmenting an image into classes typed as text with a named
method (`naclip_hf.methods`) and settings overriding it, and the last layer's attention map of one clicked patch
under several methods.

One `DemoBackend` runs every model through the `naclip_hf.segmenter.Segmenter` interface: a PyTorch checkpoint or a
folder written by `naclip export` (onnxruntime, no torch). What a model cannot do comes from the segmenter's own
methods (its `options` refuse a last block its graph cannot run, its `attention_maps` say where to find them), never
from asking its kind.

The demo's Gradio app (`naclip_hf.demo.app`) only turns widgets into these calls and their results into widgets,
so everything here is usable (and tested) without Gradio. Every call carries its own options: the model's config
is never changed, so many requests can run at once on one model.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from ..figures import heat_colours
from ..methods import DEFAULT_METHOD, Method, get_method
from ..models.naclip.image_io import describe_input, load_image
from ..models.naclip.labels import parse_label_set
from ..models.naclip.options import DEFAULTS
from ..visualization import class_palette, label_map_image, overlay_image

if TYPE_CHECKING:  # torch is loaded only for a PyTorch checkpoint: an exported model runs without it
    from ..models.naclip.options import NACLIPInferenceOptions
    from ..segmenter import Segmenter

Report = Callable[[float, str], None]
"""A progress callback: (fraction done in [0, 1], what is happening)."""

DEFAULT_ATTENTION_METHODS: tuple[str, ...] = ("clip", "sclip", "naclip")
"""The methods (names of `naclip_hf.methods.METHODS`) whose attention maps the Attention tab shows side by side at
first, as in Figure 1 of the NACLIP paper."""

EXAMPLE_LABELS = "table, wooden table\nsaucer, plate\ncoffee cup, cup\nspoon\ncoffee"
"""The classes of the example photo (the same as `examples/labels.txt`)."""


def example_image_path() -> Path:
    """The example photo shipped with the package (`coffee.jpg`, a CC0 photo, 450 × 300 pixels)."""
    return Path(str(resources.files(__package__).joinpath("coffee.jpg")))


def parse_labels_text(text: str | None) -> list[list[str]]:
    """Classes typed in a text box: one class per line, synonyms after commas (`"cup, mug"`); blank lines are
    skipped. Raises `ValueError` saying how to fix an empty box, a blank synonym, a class given twice or a single
    class (`parse_label_set`).

    >>> parse_labels_text("sky\\ncup, mug\\n")
    [['sky'], ['cup', 'mug']]
    """
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise ValueError(
            "No classes given: type the classes to find, one per line (synonyms after commas, e.g. 'cup, mug'), or "
            "pick a benchmark preset."
        )
    try:
        return parse_label_set(lines, "the box")
    except ValueError as error:
        raise ValueError(f"Classes: {error}") from None


def legend_rows(
    segmentation: np.ndarray, class_labels: Sequence[str], palette: np.ndarray
) -> list[dict[str, Any]]:
    """Each class present: `{"label", "share", "colour"}` (share of the pixels in [0, 1], colour "#rrggbb"), largest
    share first (ties in class order). The shares sum to 1."""
    counts = np.bincount(segmentation.reshape(-1), minlength=len(class_labels))
    order = sorted(np.flatnonzero(counts).tolist(), key=lambda index: (-counts[index], index))
    return [
        {
            "label": str(class_labels[index]),
            "share": float(counts[index] / segmentation.size),
            "colour": "#{:02x}{:02x}{:02x}".format(*(int(c) for c in palette[index])),
        }
        for index in order
    ]


def legend_html(rows: Sequence[Mapping[str, Any]] | None) -> str:
    """The classes found as an HTML table: colour swatch, class, share of the pixels in percent."""
    if not rows:
        return "<p class='naclip-legend-empty'>Run a segmentation to see the classes found.</p>"
    body = "".join(
        "<tr>"
        f"<td><span style='display:inline-block;width:1.1em;height:1.1em;border-radius:3px;"
        f"background:{html.escape(str(row['colour']))};border:1px solid #0003'></span></td>"
        f"<td class='naclip-class'>{html.escape(str(row['label']))}</td>"
        f"<td style='text-align:right'>{100 * float(row['share']):.1f}%</td>"
        "</tr>"
        for row in rows
    )
    return (
        "<table class='naclip-legend' style='width:100%'>"
        "<thead><tr><th></th><th style='text-align:left'>class</th><th style='text-align:right'>share of pixels</th>"
        f"</tr></thead><tbody>{body}</tbody></table>"
    )


@dataclass
class Segmentation:
    """One segmented image: `overlay` (RGB, the image's size, legend drawn in its corner), `label_map` (palette
    PNG-ready image, pixel value = class id), `rows` (see `legend_rows`), the class labels, the options used
    (resolved by the segmenter) and notes for the user (e.g. an option that was adjusted)."""

    overlay: Image.Image
    label_map: Image.Image
    rows: list[dict[str, Any]]
    class_labels: list[str]
    options: NACLIPInferenceOptions
    notes: list[str] = field(default_factory=list)


@dataclass
class AttentionMaps:
    """The attention of one clicked patch, per method (`methods`, names): `(method title, heat map image)` in
    `maps`, its head-averaged weights on the patch grid (`weights`, [rows, columns] float32 each) and the heat
    drawn (`heat`, [H, W] in [0, 1] at the image's size each); the patch (row, column) and the grid (rows, columns)."""

    methods: list[str]
    maps: list[tuple[str, Image.Image]]
    weights: list[np.ndarray]
    heat: list[np.ndarray]
    patch: tuple[int, int]
    grid: tuple[int, int]


class DemoBackend:
    """The demo's computations on one loaded model (a `naclip_hf.segmenter.Segmenter`: a PyTorch checkpoint or a
    folder written by `naclip export`), safe to call from many threads at once.

    Everything that differs between models comes from the segmenter's methods: `options` (a last block fixed in an
    exported graph: a method or setting asking for another is refused with the fix), `encode_classes`,
    `attention_maps` and `describe` (what the page tells about the model).

    Args:
        segmenter: the loaded model (see `naclip_hf.segmenter.load_segmenter`).
        model_name: how to name the model in the page (e.g. its Hub id or folder; default: the segmenter's source).

    Example:
        >>> backend = DemoBackend.from_pretrained("openai/clip-vit-base-patch16")  # doctest: +SKIP
        >>> result = backend.segment("examples/coffee.jpg", "cup\\ntable", method="sclip")  # doctest: +SKIP
        >>> [(row["label"], round(row["share"], 2)) for row in result.rows]  # doctest: +SKIP
    """

    def __init__(self, segmenter: Segmenter, model_name: str | None = None) -> None:
        self.segmenter = segmenter
        self.model_name = model_name or segmenter.source or "the model"

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        device: str | None = None,
        dtype: str | None = None,
        quantized: bool = False,
    ) -> DemoBackend:
        """Load `model`: a checkpoint (Hub id or folder) in `dtype` (None: float32; see
        `naclip_hf.inference.resolve_dtype`) on `device`, or a folder written by `naclip export` (run with
        onnxruntime on the CPU, in the precision it was exported in; `quantized`: its int8 graph). `OSError` with
        the fix when it cannot be found; `ValueError` for a device, dtype or `quantized` the model cannot take."""
        from ..export.runtime import is_exported_folder
        from ..segmenter import load_segmenter

        if device not in (None, "cpu") and is_exported_folder(model):
            raise ValueError(
                f"device={device!r}: an exported model runs with onnxruntime on the CPU; leave the device out, or "
                "run the demo on the PyTorch checkpoint to use this device."
            )
        segmenter = load_segmenter(model, quantized=quantized, device=device, dtype=dtype)
        return cls(segmenter, model_name=segmenter.source)

    # ------------------------------------------------------------------------------------------- options
    def options(
        self,
        method: str | None = None,
        pamr: bool | None = None,
        short_side: int | None = None,
        slide_crop: int | None = None,
        **settings: Any,
    ) -> tuple[NACLIPInferenceOptions, list[str]]:
        """The options of one segmentation, resolved by the segmenter (`segmenter.options(method=..., **given)`),
        and notes on what was adjusted: `method` (None = the model's own settings) and the settings given (not
        None) over it, some in the page's terms: `pamr` on or off, a sliding window `slide_crop` overlapping by
        half; `settings` as they are (`attn_strategy`, `arch`, `prob_thd`, `gaussian_std`).

        A strategy that needs the other `arch` (SCLIP's `csa` keeps the block's residual and MLP) gets it, with a
        note, where the model can run it. Raises `ValueError` naming an invalid method or option, or saying how to
        get a last block the model cannot run.
        """
        given = dict(settings)
        if pamr is not None:
            steps = self.segmenter.options(method=method).pamr_steps or self.segmenter.config.pamr_steps
            given["pamr_steps"] = (steps or DEFAULTS["pamr_steps"]) if pamr else 0
        if short_side is not None:
            given["short_side"] = _integer(short_side, "Short side")
        if slide_crop is not None:
            given["slide_crop"] = _integer(slide_crop, "Sliding window")
            given["slide_stride"] = max(1, given["slide_crop"] // 2) if given["slide_crop"] > 0 else None
        try:
            return self.segmenter.options(method=method, **given), []
        except ValueError as error:
            arch = given.get("arch") or self.segmenter.options(method=method).arch
            other = {"reduced": "vanilla", "vanilla": "reduced"}.get(arch)
            if given.get("attn_strategy") is None or other is None:
                raise
            try:
                options = self.segmenter.options(method=method, **{**given, "arch": other})
            except ValueError:
                raise error from None
            note = f"The attention strategy {options.attn_strategy!r} needs arch={other!r}; this run used it."
            return options, [note]

    # ------------------------------------------------------------------------------------------- segment
    def segment(
        self, image: Any, labels_text: str | None, method: str | None = None, report: Report | None = None,
        **controls: Any,
    ) -> Segmentation:
        """Segment `image` (path, URL, PIL image or array) into the classes of `labels_text` (one per line) with
        `method` (a name of `naclip_hf.methods.METHODS`; None: the model's own settings), the page's controls given
        (not None: `attn_strategy`, `arch`, `pamr`, `prob_thd`, `short_side`, `slide_crop`, `gaussian_std`; see
        `options`) overriding the method's; the method's own short side applies unless `short_side` is given.

        Raises `ValueError` with the fix for no classes, a class the model cannot embed, an unreadable image, an
        unknown method, a last block the model cannot run or an invalid option.
        """
        report = report or (lambda fraction, message: None)
        classes = parse_labels_text(labels_text)
        options, notes = self.options(method, **controls)
        if image is None:
            raise ValueError("No image given: upload an image (JPEG, PNG, WebP, ...) or pick the example.")
        report(0.05, "Reading the image")
        rgb = _read_image(image)
        report(0.15, f"Embedding {len(classes)} classes (once per set of classes)")
        label_set = self.segmenter.encode_classes(classes)
        report(0.4, "Segmenting")
        result = self.segmenter.segment(rgb, label_set, options, return_probabilities=False)
        report(0.9, "Drawing")
        labels = list(label_set.class_labels)
        label_map = np.asarray(result.segmentation).astype(np.uint8 if len(labels) <= 256 else np.int64)
        palette = class_palette(len(labels))
        return Segmentation(
            overlay=overlay_image(rgb, label_map, labels, palette),
            label_map=label_map_image(label_map, palette),
            rows=legend_rows(label_map, labels, palette),
            class_labels=labels,
            options=options,
            notes=notes,
        )

    # ------------------------------------------------------------------------------------------- attention
    def attention_maps(
        self,
        image: Any,
        point: tuple[float, float],
        methods: Sequence[str | Method] = DEFAULT_ATTENTION_METHODS,
        short_side: int | None = None,
        alpha: float = 0.6,
    ) -> AttentionMaps:
        """The last layer's attention of the patch under `point` (x, y in the image's pixels), head-averaged, for
        each method of `methods` (names of `naclip_hf.methods.METHODS`), drawn as heat maps over the image and
        titled with the methods' names: `Segmenter.attention_maps` (`naclip_hf.attention_maps.attention_maps`,
        which `naclip compare --attention-at` draws too), at `short_side` (default: the model's) for every method.
        A model without attention maps raises a `ValueError` saying what to use instead."""
        if image is None:
            raise ValueError("No image given: upload an image, then click a point on it.")
        found = self.segmenter.attention_maps(_read_image(image), point, list(methods), short_side=short_side)
        point = (float(point[0]), float(point[1]))
        maps = [(get_method(name).title, _heat_overlay(found.image, heat, point, alpha))
                for name, heat in zip(found.methods, found.heat)]  # fmt: skip
        return AttentionMaps(methods=found.methods, maps=maps, weights=found.weights, heat=found.heat,
                             patch=found.patch, grid=found.grid)  # fmt: skip


def load_backend(
    model: str | os.PathLike, device: str | None = None, dtype: str | None = None, quantized: bool = False
) -> DemoBackend:
    """The demo's backend for `model` (see `DemoBackend.from_pretrained`): a PyTorch checkpoint (Hub id or folder)
    in `dtype` on `device`, or a folder written by `naclip export` (it holds `onnx/model.onnx`; `device` must then
    be None or "cpu", and `dtype` None, "auto" or the export's)."""
    return DemoBackend.from_pretrained(model, device, dtype, quantized=quantized)


def _heat_overlay(rgb: np.ndarray, heat: np.ndarray, point: tuple[float, float], alpha: float) -> Image.Image:
    """The image blended with the heat map's colours, the clicked point marked by a ring."""
    mixed = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat_colours(heat).astype(np.float32)
    image = Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    radius = max(5, round(min(image.size) / 40))
    x, y = point
    for colour, width in (((0, 0, 0), radius // 2 + 2), ((255, 255, 255), max(1, radius // 3))):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=colour, width=width)
    return image


def _read_image(image: Any) -> np.ndarray:
    """`load_image`, with every failure as a `ValueError` naming the input and what to upload instead."""
    try:
        return load_image(image)
    except (OSError, ValueError, TypeError) as error:
        message = str(error)
        if describe_input(image) not in message:
            message = f"Could not read the image {_short_description(image)}: {message}"
        raise ValueError(message.rstrip(".") + ". Upload a JPEG, PNG, WebP, BMP or TIFF image.") from None


def _integer(value: Any, what: str) -> int:
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"{what} must be a whole number of pixels, got {value!r}.")
    return int(number)


def _short_description(image: Any) -> str:
    text = describe_input(image)
    return text if len(text) <= 120 else text[:117] + "..."


__all__ = [
    "AttentionMaps",
    "DEFAULT_ATTENTION_METHODS",
    "DEFAULT_METHOD",
    "DemoBackend",
    "EXAMPLE_LABELS",
    "Segmentation",
    "example_image_path",
    "legend_html",
    "legend_rows",
    "load_backend",
    "parse_labels_text",
]
