"""The demo's Gradio app: a **Segment** tab (image + classes in text -> overlay, table of classes, label map) and an
**Attention** tab (click a patch -> its last-layer attention under CLIP, SCLIP and NACLIP side by side).

Needs the `demo` extra: `pip install "naclip-hf[demo]"`. Run it with `naclip demo`, or build it in Python:

```python
from naclip_hf.demo import build_demo

build_demo("openai/clip-vit-base-patch16").launch()
```

The app also serves an API endpoint `/segment(image, labels, attn_strategy, arch, pamr, prob_thd, short_side,
slide_crop, gaussian_std)` returning the overlay, the classes found with their share of the pixels, and the label
map PNG (see `segment_api_example`).
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
from ..options import DEFAULT_CHECKPOINT, SETTINGS_BY_NAME
from .backend import (
    ATTENTION_COMPARISONS,
    EXAMPLE_LABELS,
    DemoBackend,
    example_image_path,
    legend_html,
)

DEFAULT_CONCURRENCY = 4
"""Requests run at once (each in its own thread on the one shared model); more wait in the queue."""
DOWNLOAD_LIFETIME = 3600.0
"""Seconds a request's label-map file is kept on disk."""
NO_PRESET = "(none: type your own classes)"
TITLE = "NACLIP: open-vocabulary semantic segmentation"


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
        "    handle_file('photo.jpg'), 'sky\\nroad, street\\nperson', api_name='/segment'\n"
        ")\n"
        "print(classes)  # [{'label': 'road', 'share': 0.41, 'colour': '#e82727'}, ...]"
    )


def _model_note(backend: DemoBackend) -> str:
    name = html.escape(backend.model_name)
    if backend.is_test_model:
        return (
            f"**Model:** `{name}`, a tiny test model with random weights: its segmentations and attention maps are "
            "noise. For real results use CLIP weights: `naclip demo --model openai/clip-vit-base-patch16` (download "
            "them once while online with `hf download openai/clip-vit-base-patch16`), or convert OpenAI's `.pt` "
            "weights with `naclip convert ViT-B-16.pt OUT_DIR` and pass `--model OUT_DIR`."
        )
    return f"**Model:** `{name}`. Each set of classes is embedded once; later images with the same set are fast."


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


def build_demo(
    model: str | os.PathLike | DemoBackend = DEFAULT_CHECKPOINT,
    comparisons: Sequence[tuple[str, Mapping[str, Any]]] = ATTENTION_COMPARISONS,
    concurrency: int = DEFAULT_CONCURRENCY,
    device: str | None = None,
) -> gr.Blocks:
    """Build the demo (queue enabled, `concurrency` requests at once) for a checkpoint or a loaded `DemoBackend`.

    Args:
        model: Hub id or checkpoint folder (loaded here; `OSError` with the fix when it cannot be), or a backend.
        comparisons: the Attention tab's maps: `(label, options of the last block)` each, e.g.
            `("NACLIP", {"attn_strategy": "naclip", "arch": "reduced"})`.
        concurrency: how many requests run at once on the shared model.
        device: where to load the model ("cpu", "cuda", ...; default: transformers' choice, the CPU).

    Returns:
        The `gr.Blocks` app; call `.launch()` on it.

    Example:
        >>> demo = build_demo("path/to/checkpoint")  # doctest: +SKIP
        >>> demo.launch(server_name="127.0.0.1", server_port=7860)  # doctest: +SKIP
    """
    backend = model if isinstance(model, DemoBackend) else DemoBackend.from_pretrained(os.fspath(model), device)
    comparisons = [(str(label), dict(options)) for label, options in comparisons]
    for label, options in comparisons:
        try:
            backend.model.config.inference_options(**options)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Attention comparison {label!r}: {error}") from None
    defaults = backend.defaults
    example = str(example_image_path())
    strategies = backend.attention_strategies()
    # Label maps offered for download; each request's file is kept for an hour (Gradio serves a copy of it).
    downloads = tempfile.TemporaryDirectory(prefix="naclip-demo-")
    help_of = {name: SETTINGS_BY_NAME[name].help for name in ("arch", "prob_thd", "short_side", "gaussian_std")}

    def run_segment(
        image: str | None,
        labels: str,
        attn_strategy: str = defaults["attn_strategy"],
        arch: str = defaults["arch"],
        pamr: bool = defaults["pamr"],
        prob_thd: float = defaults["prob_thd"],
        short_side: float = defaults["short_side"],
        slide_crop: float = defaults["slide_crop"],
        gaussian_std: float = defaults["gaussian_std"],
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects the tracker through this default)
    ) -> tuple[Any, list[dict[str, Any]], str]:
        try:
            result = backend.segment(
                image, labels, attn_strategy=attn_strategy, arch=arch, pamr=pamr, prob_thd=prob_thd,
                short_side=short_side, slide_crop=slide_crop, gaussian_std=gaussian_std,
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

    def run_attention(image: str | None, evt: gr.SelectData) -> tuple[list[tuple[Any, str]], str]:
        try:
            x, y = evt.index[0], evt.index[1]
            maps = backend.attention_maps(image, (x, y), comparisons)
        except (OSError, ValueError, TypeError) as error:
            raise _error(error) from None
        row, column = maps.patch
        rows, columns = maps.grid
        caption = (
            f"Patch at row {row + 1}, column {column + 1} of the {rows} × {columns} patch grid (point {x}, {y}). "
            "Each map: the last layer's attention of that patch, averaged over heads, scaled to its own maximum."
        )
        return [(image, label) for label, image in maps.maps], caption

    def apply_preset(name: str) -> tuple[Any, ...]:
        if not name:
            return (gr.update(),) * 4
        benchmark = get_benchmark(name)
        classes = "\n".join(", ".join(names) for names in benchmark.class_names())
        return classes, benchmark.prob_thd, benchmark.short_side, benchmark.slide_crop

    def strategy_changed(strategy: str, arch: str) -> Any:
        try:
            backend.call_options(attn_strategy=strategy, arch=arch)
        except ValueError:
            return gr.update()
        options, notes = backend.call_options(attn_strategy=strategy, arch=arch)
        return options.get("arch", arch) if notes else gr.update()

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nName any classes in text and get a per-pixel segmentation from a frozen CLIP.")
        gr.Markdown(_model_note(backend), elem_id="model-note")
        with gr.Tabs():
            with gr.Tab("Segment", id="segment"):
                with gr.Row():
                    with gr.Column():
                        image = image_input(label="Image", elem_id="segment-image")
                        labels = gr.Textbox(
                            label="Classes (one per line, synonyms after commas)", lines=6, elem_id="labels",
                            placeholder="sky\nroad, street\nperson, person in shirt",
                        )  # fmt: skip
                        preset = gr.Dropdown(_preset_choices(), value="", label="Or a benchmark's classes")
                        with gr.Row():
                            strategy = gr.Dropdown(strategies, value=defaults["attn_strategy"],
                                                   label="Attention of the last block", elem_id="strategy")
                            arch = gr.Radio(["reduced", "vanilla"], value=defaults["arch"], label="Last block",
                                            info=help_of["arch"])  # fmt: skip
                        with gr.Row():
                            pamr = gr.Checkbox(value=defaults["pamr"], label="PAMR refinement")
                            prob_thd = gr.Slider(0.0, 1.0, value=defaults["prob_thd"], step=0.01,
                                                 label="Probability threshold", info=help_of["prob_thd"])
                        with gr.Accordion("More settings", open=False):
                            short_side = gr.Number(defaults["short_side"], label="Short side (pixels)",
                                                   info=help_of["short_side"], precision=0, minimum=0)
                            slide_crop = gr.Number(defaults["slide_crop"], precision=0, minimum=0,
                                                   label="Sliding window (pixels; 0 = whole image in one pass)")
                            gaussian_std = gr.Number(defaults["gaussian_std"], label="σ of the neighbourhood (patches)",
                                                     info=help_of["gaussian_std"], minimum=0.01)  # fmt: skip
                        run = gr.Button("Segment", variant="primary", elem_id="segment-button")
                    with gr.Column():
                        # No label badge: it would cover the legend drawn in the overlay's top-left corner.
                        overlay = gr.Image(label="Segmentation", show_label=False, type="pil", format="png",
                                           interactive=False, elem_id="overlay")  # fmt: skip
                        table = gr.HTML(legend_html(None), elem_id="legend")
                        found = gr.JSON(label="Classes found", visible=False)
                        label_map = gr.File(label="Label map (PNG, pixel value = class id)", elem_id="label-map")
                gr.Examples([[example, EXAMPLE_LABELS]], inputs=[image, labels], label="Example")
                inputs = [image, labels, strategy, arch, pamr, prob_thd, short_side, slide_crop, gaussian_std]
                run.click(run_segment, inputs, [overlay, found, label_map], api_name="segment").then(
                    legend_html, found, table, api_visibility="private"
                )
                preset.change(apply_preset, preset, [labels, prob_thd, short_side, slide_crop],
                              api_visibility="private")  # fmt: skip
                strategy.change(strategy_changed, [strategy, arch], arch, api_visibility="private")
            with gr.Tab("Attention", id="attention"):
                gr.Markdown(
                    "Click a point of the image to see where its patch looks in the last layer under "
                    + ", ".join(label for label, _ in comparisons)
                    + ". With CLIP's weights, CLIP's own attention is spread over the whole image wherever you "
                    "click; NACLIP's stays around the clicked patch."
                )
                with gr.Row():
                    attention_image = image_input(value=example, label="Image (click a point)", scale=1,
                                                  elem_id="attention-image")  # fmt: skip
                    caption = gr.Markdown("No point clicked yet.", elem_id="attention-caption")
                maps = gr.Gallery(label="Attention of the clicked patch", columns=len(comparisons), height="auto",
                                  elem_id="attention-maps", format="png", object_fit="contain")  # fmt: skip
                attention_image.select(run_attention, attention_image, [maps, caption], api_visibility="private")
    demo.queue(default_concurrency_limit=concurrency)
    demo.naclip_downloads = downloads  # removed with the app
    return demo


__all__ = ["DEFAULT_CONCURRENCY", "build_demo", "image_input", "segment_api_example"]
