"""The demo's Gradio app: a **Segment** tab (image + classes in text + a method of `naclip_hf.methods` -> overlay,
table of classes, label map) and an **Attention** tab (click a patch -> its last-layer attention under the methods
chosen, at first CLIP, SCLIP and NACLIP, side by side).

Needs the `demo` extra: `pip install "naclip-hf[demo]"`. Run it with `naclip demo`, or build it in Python:

```python
from naclip_hf.demo import build_demo

build_demo("openai/clip-vit-base-patch16").launch()
```

The app also serves an API endpoint `/segment(image, labels, method, attn_strategy, arch, pamr, prob_thd, short_side,
slide_crop, gaussian_std)` returning the overlay, the classes found with their share of the pixels, and the label
map PNG (see `segment_api_example`). `method` defaults to the page's method; the settings after it default to `""`,
"the method's value", and override the method's when given (`pamr` "on" or "off"; the numbers as numbers or text).

The page adapts to what the model tells of itself (`naclip_hf.segmenter.Segmenter.describe`), whichever backend runs
it: its note on the model, its classes in the classes box, and the settings it fixed shown but not editable. What it
cannot do is refused by the segmenter with the fix, shown where the result would be (e.g. the Attention tab of a
model without attention maps says where to find them).
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from ..benchmarks import BENCHMARKS, get_benchmark
from ..fileio import write_atomic
from ..methods import DEFAULT_METHOD, METHODS, combine_settings, format_settings, get_method
from ..models.naclip.options import DEFAULT_CHECKPOINT, SETTINGS_BY_NAME
from ..segmenter import SegmenterDescription
from .backend import (
    DEFAULT_ATTENTION_METHODS,
    EXAMPLE_LABELS,
    DemoBackend,
    example_image_path,
    legend_html,
    load_backend,
)

DEFAULT_CONCURRENCY = 4
"""Requests run at once (each in its own thread on the one shared model); more wait in the queue."""
DOWNLOAD_LIFETIME = 3600.0
"""Seconds a request's label-map file is kept on disk."""
NO_PRESET = "(none: type your own classes)"
TITLE = "NACLIP: open-vocabulary semantic segmentation"
PAMR_CHOICES = {"": None, "on": True, "off": False}
"""The PAMR control's values: "" = the method's choice."""
NUMBER_LABELS = {
    "prob_thd": "Probability threshold",
    "short_side": "Short side (pixels)",
    "slide_crop": "Sliding window (pixels; 0 = whole image in one pass)",
    "gaussian_std": "σ of the neighbourhood (patches)",
}
"""The Segment tab's number settings and their labels."""
PRESET_SETTINGS = ("prob_thd", "short_side", "slide_crop")
"""The settings a benchmark preset puts in the Segment tab's controls (the benchmark's, for the chosen method)."""
SEGMENT_HELP = (
    "**Settings:** each control starts at *the method's* value (the first choice, or an empty box; its value is shown "
    "there) and overrides the method when you change it. Picking another method puts every control back to that "
    "method's values; a benchmark's classes set its threshold, short side and window for the chosen method."
)


def image_input(**kwargs: Any) -> gr.Image:
    """A `gr.Image` (file path values) whose unreadable uploads give a message saying what to upload, instead of
    Gradio's internal processing error. (Wrapped on the instance: a subclass would make Gradio write a type stub
    next to this file.)"""
    component = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], **kwargs)
    preprocess = component.preprocess

    def checked_preprocess(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except (OSError, ValueError, SyntaxError) as error:  # what PIL raises for files that are not images
            name = getattr(payload, "orig_name", None) or "the upload"
            raise gr.Error(
                f"Could not read {name} as an image ({error}). Upload a JPEG, PNG, WebP, BMP or TIFF image.",
                print_exception=False,
            ) from None

    component.preprocess = checked_preprocess
    return component


def segment_api_example(url: str) -> str:
    """Python code calling the `/segment` endpoint of the app served at `url` with `gradio_client`."""
    return (
        "from gradio_client import Client, handle_file\n\n"
        f"client = Client({url!r})\n"
        "overlay, classes, label_map = client.predict(\n"
        "    handle_file('photo.jpg'), 'sky\\nroad, street\\nperson', method='sclip', api_name='/segment'\n"
        ")\n"
        "print(classes)  # [{'label': 'road', 'share': 0.41, 'colour': '#e82727'}, ...]"
    )


EXPORTED_METHOD_CHOICE = ("the exported model's settings", "")
"""The method control's value on a model whose last block is fixed in its graph: its stored settings."""


def _model_note(name: str, description: SegmenterDescription) -> str:
    """The page's note on the model: its name, then what the model tells of itself (how it runs, which classes it
    takes, whether its results mean anything)."""
    return " ".join([f"**Model:** `{html.escape(name)}`.", *(html.escape(line) for line in description.note)])


def _remove_old_downloads(root: Path, max_age: float = DOWNLOAD_LIFETIME) -> None:
    now = time.time()
    for folder in root.iterdir():
        try:
            if now - folder.stat().st_mtime > max_age:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # removed by a concurrent request
            pass


def _preset_choices() -> list[tuple[str, str]]:
    return [(NO_PRESET, "")] + [(f"{b.name}: {b.display_name}", b.name) for b in BENCHMARKS.values()]


def _error(error: Exception) -> gr.Error:
    return gr.Error(str(error), print_exception=False)


def _method_choices() -> list[tuple[str, str]]:
    return [(method.title, method.name) for method in METHODS.values()]


def _fixed_block_note(fixed_settings: Mapping[str, Any]) -> str:
    fixed = ", ".join(f"{name}={value!r}" for name, value in fixed_settings.items())
    return (
        f"**Last block fixed in the exported graph** (`{html.escape(fixed)}`): the method, the attention strategy, "
        "the block and σ cannot be changed here. PAMR, the threshold, the short side and the sliding window still "
        "apply. To try other methods, export again (`naclip export MODEL OUT --set NAME=VALUE`) or run the demo on "
        "the PyTorch checkpoint."
    )


def _method_note(name: str) -> str:
    method = get_method(name)
    source = f" [Code]({method.code_url})." if method.code_url else ""
    return f"**{html.escape(method.title)}**: {html.escape(method.summary)}.{source}  \nIts settings: " + (
        f"`{format_settings(method.settings)}`" if method.settings else "the model's own."
    )


def _theirs(value: Any) -> str:
    """How a control shows the method's value it stands for."""
    shown = ("on" if value else "off") if isinstance(value, bool) else _shown(value)
    return f"the method's ({shown})"


def _shown(value: Any) -> str:
    """A number as the text of its box (whole numbers without decimals); None as an empty box."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _number(text: Any, label: str) -> float | None:
    """The number typed in a box, or None for an empty one (the method's value); `ValueError` saying what to type."""
    if text is None or not str(text).strip():
        return None
    try:
        return float(str(text).strip())
    except ValueError:
        raise ValueError(
            f"{label}: {str(text).strip()!r} is not a number; type one (e.g. 0.1), or empty the box for the method's "
            "value."
        ) from None


def _preset_values(preset: str | None, method: str | None) -> dict[str, Any]:
    """The settings a benchmark preset puts in the controls: the benchmark's, under the method's own for it."""
    if not preset:
        return {}
    settings = combine_settings(preset, method)
    return {name: settings[name] for name in PRESET_SETTINGS if name in settings}


def build_demo(
    model: str | os.PathLike | DemoBackend = DEFAULT_CHECKPOINT,
    method: str | None = DEFAULT_METHOD,
    attention_methods: Sequence[str] = DEFAULT_ATTENTION_METHODS,
    concurrency: int = DEFAULT_CONCURRENCY,
    device: str | None = None,
    dtype: str | None = None,
) -> gr.Blocks:
    """Build the demo (queue enabled, `concurrency` requests at once) for a checkpoint, a folder written by
    `naclip export` or a loaded backend.

    With an export (a folder holding `onnx/model.onnx`), the app runs on onnxruntime without torch: the Segment tab
    and `/segment` take any classes its text model embeds (the stored ones pre-filled), the last block's controls are
    disabled (the block is fixed in the graph) and the Attention tab explains how to get maps (the PyTorch
    checkpoint). The page takes this from the segmenter (`describe`, and the errors of its methods), not its kind.

    Args:
        model: Hub id, checkpoint or export folder (loaded here; `OSError` with the fix when it cannot be), or a
            `DemoBackend`.
        method: the Segment tab's method at first and the `/segment` endpoint's default (a name of
            `naclip_hf.methods.METHODS`; None: `DEFAULT_METHOD`, or the stored settings of a model whose last block
            is fixed in its graph).
        attention_methods: the methods the Attention tab compares at first (any registered method can be added
            in the page).
        concurrency: how many requests run at once on the shared model.
        device: where to load the model ("cpu", "cuda", ...; default: transformers' choice, the CPU).
        dtype: the model's precision: "float32" (None, the default; exact to the official code), "bfloat16",
            "float16" (GPUs) or "auto" (see `naclip_hf.inference.resolve_dtype`); an export keeps its own.

    Returns:
        The `gr.Blocks` app; call `.launch()` on it.

    Example:
        >>> demo = build_demo("path/to/checkpoint", method="sclip")  # doctest: +SKIP
        >>> demo.launch(server_name="127.0.0.1", server_port=7860)  # doctest: +SKIP
    """
    backend = model if isinstance(model, DemoBackend) else load_backend(model, device, dtype)
    description = backend.segmenter.describe()
    # A graph's fixed last block may not be the default method's: the page then starts at the stored settings.
    method = get_method(method).name if method else ("" if description.fixed_settings else DEFAULT_METHOD)
    backend.options(method or None)  # a method that does not suit the model raises, naming it
    attention_methods = [get_method(name).name for name in attention_methods]  # an unknown name raises
    example = str(example_image_path())
    # Label maps offered for download; each request's file is kept for an hour (Gradio serves a copy of it).
    downloads = tempfile.TemporaryDirectory(prefix="naclip-demo-")

    def run_segment(
        image: str | None,
        labels: str,
        method: str | None = method,
        attn_strategy: str = "",
        arch: str = "",
        pamr: str = "",
        prob_thd: str = "",
        short_side: str = "",
        slide_crop: str = "",
        gaussian_std: str = "",
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects the tracker through this default)
    ) -> tuple[Any, list[dict[str, Any]], str]:
        try:
            texts = (prob_thd, short_side, slide_crop, gaussian_std)
            numbers = {name: _number(text, NUMBER_LABELS[name]) for name, text in zip(NUMBER_LABELS, texts)}
            result = backend.segment(
                image, labels, method=method or None, attn_strategy=attn_strategy or None, arch=arch or None,
                pamr=PAMR_CHOICES[pamr or ""], **numbers,
                report=lambda fraction, message: progress(fraction, desc=message),
            )  # fmt: skip
        except (OSError, ValueError, TypeError) as error:
            raise _error(error) from None
        for note in result.notes:
            gr.Info(note)
        if len(result.rows) == 1 and len(result.class_labels) > 1:
            gr.Warning(f"Every pixel is {result.rows[0]['label']!r}; try other classes or a lower threshold.")
        stem = Path(image).stem if isinstance(image, str) else "image"
        folder = Path(tempfile.mkdtemp(prefix="request-", dir=downloads.name))
        label_map_path = write_atomic(folder / f"{stem}_labels.png", lambda path: result.label_map.save(path, "PNG"))
        _remove_old_downloads(Path(downloads.name))
        return result.overlay, result.rows, str(label_map_path)

    first = _method_controls(backend, description, method, None)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nName any classes in text and get a per-pixel segmentation from a frozen CLIP.")
        gr.Markdown(_model_note(backend.model_name, description), elem_id="model-note")
        with gr.Tabs():
            _segment_tab(backend, description, example, first, run_segment, method)
            _attention_tab(backend, example, attention_methods)
    demo.queue(default_concurrency_limit=concurrency)
    demo.naclip_downloads = downloads  # removed with the app
    return demo


def _method_controls(
    backend: DemoBackend, description: SegmenterDescription, name: str, preset: str | None
) -> tuple[Any, ...]:
    """Every control back to "the method's", showing its values (the method's options as the model resolves them;
    `ValueError` naming a method that does not suit the model); a preset's settings on top."""
    options, _ = backend.options(name or None)
    values = {**options.to_dict(), "pamr": options.pamr_steps > 0}
    if options.short_side is None:
        values["short_side"] = backend.segmenter.short_side
    preset_values = _preset_values(preset, name or None)
    strategies = description.attention_strategies
    return (
        gr.update(choices=[(_theirs(values["attn_strategy"]), "")] + [(s, s) for s in strategies], value=""),
        gr.update(choices=[(_theirs(values["arch"]), ""), ("reduced", "reduced"), ("vanilla", "vanilla")],
                  value=""),  # fmt: skip
        gr.update(choices=[(_theirs(values["pamr"]), ""), ("on", "on"), ("off", "off")], value=""),
        *(
            gr.update(value=_shown(preset_values.get(setting)), placeholder=_theirs(values[setting]))
            for setting in NUMBER_LABELS
        ),
        _fixed_block_note(description.fixed_settings) if description.fixed_settings else _method_note(name),
    )


def _segment_tab(
    backend: DemoBackend,
    description: SegmenterDescription,
    example: str,
    first: tuple[Any, ...],
    run_segment: Any,
    method: str,
) -> None:
    """The Segment tab: image, classes, method and settings, the overlay with its legend; `/segment`."""
    fixed = description.fixed_settings  # settings the model fixed: their controls are shown, not editable
    stored_labels = "\n".join(", ".join(names) for names in description.default_labels)

    def method_changed(name: str, preset: str | None) -> tuple[Any, ...]:
        try:
            return _method_controls(backend, description, name, preset)
        except ValueError as error:
            raise _error(error) from None
    help_of = {name: SETTINGS_BY_NAME[name].help for name in ("arch", "prob_thd", "short_side", "gaussian_std")}

    def apply_preset(name: str, method: str) -> tuple[Any, ...]:
        if not name:
            return (gr.update(),) * (1 + len(PRESET_SETTINGS))
        classes = "\n".join(", ".join(names) for names in get_benchmark(name).class_names(method=method or None))
        values = _preset_values(name, method)
        return (classes, *(_shown(values.get(setting)) for setting in PRESET_SETTINGS))

    def strategy_changed(method: str, strategy: str, arch: str) -> Any:
        if not strategy:
            return gr.update()
        try:
            options, notes = backend.options(method or None, attn_strategy=strategy, arch=arch or None)
        except ValueError:
            return gr.update()
        return options.arch if notes else gr.update()

    with gr.Tab("Segment", id="segment"):
        with gr.Row():
            with gr.Column():
                image = image_input(label="Image", elem_id="segment-image")
                labels = gr.Textbox(
                    label="Classes (one per line, synonyms after commas)", lines=6, elem_id="labels",
                    placeholder="sky\nroad, street\nperson, person in shirt",
                    value=stored_labels or None,
                )  # fmt: skip
                # A benchmark's classes come with its settings for the chosen method: offered where the method can
                # be chosen.
                preset = gr.Dropdown(_preset_choices(), value="", label="Or a benchmark's classes",
                                     visible=not fixed)  # fmt: skip
                methods = [EXPORTED_METHOD_CHOICE, *_method_choices()] if fixed else _method_choices()
                chosen = gr.Dropdown(methods, value=method, label="Method", elem_id="method",
                                     interactive=not fixed)  # fmt: skip
                method_note = gr.Markdown(first[-1], elem_id="method-note")
                with gr.Row():
                    strategy = gr.Dropdown(label="Attention of the last block", elem_id="strategy",
                                           interactive="attn_strategy" not in fixed, **_initial(first[0]))  # fmt: skip
                    arch = gr.Radio(label="Last block", info=help_of["arch"], elem_id="arch",
                                    interactive="arch" not in fixed, **_initial(first[1]))  # fmt: skip
                with gr.Row():
                    pamr = gr.Radio(label="PAMR refinement", elem_id="pamr", **_initial(first[2]))
                    prob_thd = _number_box(first[3], "prob_thd", help_of["prob_thd"])
                with gr.Accordion("More settings", open=False):
                    short_side = _number_box(first[4], "short_side", help_of["short_side"])
                    slide_crop = _number_box(first[5], "slide_crop")
                    gaussian_std = _number_box(first[6], "gaussian_std", help_of["gaussian_std"],
                                               interactive="gaussian_std" not in fixed)  # fmt: skip
                gr.Markdown(SEGMENT_HELP, elem_id="settings-help")
                run = gr.Button("Segment", variant="primary", elem_id="segment-button")
            with gr.Column():
                # No label badge: it would cover the legend drawn in the overlay's top-left corner.
                overlay = gr.Image(label="Segmentation", show_label=False, type="pil", format="png",
                                   interactive=False, elem_id="overlay")  # fmt: skip
                table = gr.HTML(legend_html(None), elem_id="legend")
                found = gr.JSON(label="Classes found", visible=False)
                label_map = gr.File(label="Label map (PNG, pixel value = class id)", elem_id="label-map")
        example_labels = stored_labels or EXAMPLE_LABELS
        gr.Examples([[example, example_labels]], inputs=[image, labels], label="Example")
        settings = [strategy, arch, pamr, prob_thd, short_side, slide_crop, gaussian_std]
        run.click(run_segment, [image, labels, chosen, *settings], [overlay, found, label_map],
                  api_name="segment").then(legend_html, found, table, api_visibility="private")  # fmt: skip
        chosen.change(method_changed, [chosen, preset], [*settings, method_note], api_visibility="private")
        preset.change(apply_preset, [preset, chosen], [labels, prob_thd, short_side, slide_crop],
                      api_visibility="private")  # fmt: skip
        strategy.change(strategy_changed, [chosen, strategy, arch], arch, api_visibility="private")


def _attention_tab(backend: DemoBackend, example: str, attention_methods: Sequence[str]) -> None:
    """The Attention tab: click a point, see its patch's last-layer attention under each method chosen. What stops
    the maps (no image, a method the model cannot run, a model without attention maps) is said in their place."""

    def run_attention(image: str | None, methods: list[str], evt: gr.SelectData) -> tuple[Any, str, Any]:
        point = (evt.index[0], evt.index[1])
        return (*draw_attention(image, methods, point), point)

    def draw_attention(image: str | None, methods: list[str], point: tuple[int, int]) -> tuple[Any, str]:
        try:
            maps = backend.attention_maps(image, point, methods or [])
        except (OSError, ValueError, TypeError) as error:
            return gr.update(value=None), f"**No attention maps:** {html.escape(str(error))}"
        row, column = maps.patch
        rows, columns = maps.grid
        caption = (
            f"Patch at row {row + 1}, column {column + 1} of the {rows} × {columns} patch grid (point {point[0]}, "
            f"{point[1]}). Each map: the last layer's attention of that patch, averaged over heads, scaled to its own "
            "maximum."
        )
        gallery = [(picture, label) for label, picture in maps.maps]
        return gr.update(value=gallery, columns=len(gallery)), caption

    def methods_changed(image: str | None, methods: list[str], point: tuple[int, int] | None) -> tuple[Any, str]:
        if point is None or not methods:
            return gr.update(), gr.update()
        return draw_attention(image, methods, point)

    with gr.Tab("Attention", id="attention"):
        titles = [get_method(name).title for name in attention_methods]
        gr.Markdown(
            "Click a point of the image to see where its patch looks in the last layer under each method chosen (at "
            f"first {', '.join(titles)}), each with its own last block (`arch`, `attn_strategy`, `gaussian_std`); all "
            "maps come from one pass at the same size, so they show the same patch. With CLIP's weights, CLIP's own "
            "attention is spread over the whole image wherever you click; NACLIP's stays around the clicked patch."
        )
        with gr.Row():
            attention_image = image_input(value=example, label="Image (click a point)", scale=1,
                                          elem_id="attention-image")  # fmt: skip
            with gr.Column(scale=1):
                compared = gr.Dropdown(_method_choices(), value=list(attention_methods), multiselect=True,
                                       label="Methods compared", elem_id="attention-methods")  # fmt: skip
                caption = gr.Markdown("No point clicked yet.", elem_id="attention-caption")
        maps = gr.Gallery(label="Attention of the clicked patch", columns=len(attention_methods),
                          height="auto", elem_id="attention-maps", format="png", object_fit="contain")  # fmt: skip
        clicked = gr.State(None)
        attention_image.select(run_attention, [attention_image, compared], [maps, caption, clicked],
                               api_visibility="private")  # fmt: skip
        compared.change(methods_changed, [attention_image, compared, clicked], [maps, caption],
                        api_visibility="private")  # fmt: skip
        attention_image.upload(lambda: (None, "No point clicked yet."), None, [clicked, caption],
                               api_visibility="private")  # fmt: skip


def _number_box(
    update: Mapping[str, Any], setting: str, info: str | None = None, interactive: bool = True
) -> gr.Textbox:
    """The box of a number setting: empty = the method's value, shown as its placeholder. (A text box: Gradio's
    number box cannot start empty in the page.)"""
    return gr.Textbox(update["value"], label=NUMBER_LABELS[setting], info=info, placeholder=update["placeholder"],
                      lines=1, max_lines=1, elem_id=setting.replace("_", "-"), interactive=interactive)  # fmt: skip


def _initial(update: Mapping[str, Any]) -> dict[str, Any]:
    """A choice control's first choices and value, from the update `method_controls` gives for a method."""
    return {"choices": update["choices"], "value": update["value"]}


__all__ = ["DEFAULT_CONCURRENCY", "PAMR_CHOICES", "build_demo", "image_input", "segment_api_example"]
