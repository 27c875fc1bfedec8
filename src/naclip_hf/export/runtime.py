"""Run an exported NACLIP folder with numpy, onnxruntime, Pillow and `tokenizers` only: no torch, no transformers.

`ExportedSegmenter` reproduces `naclip segment` (and `naclip_hf.inference.segment_image`) step by step:

0. embed the class names: those stored at export are read from `class_embeddings.safetensors`; any other name
   runs through the text graph `onnx/text_model.onnx` (see `naclip_hf.export.text`), with the on-disk cache;
1. read the image (`naclip_hf.models.naclip.image_io.load_image`), resize its short side
   (`image_utils.resize_short_side`, the same code as the image processor's) and normalise it with the stored mean
   and std;
2. run the ONNX graph of one window on the whole image or on the sliding windows of `image_utils.sliding_windows`
   (the boxes `NACLIPForSemanticSegmentation.forward` uses), summing overlapping windows and dividing by the count;
3. post-process in numpy as `NACLIPImageProcessor.post_process_semantic_segmentation` does in PyTorch (see
   `postprocessing_naclip.post_process_image`): bilinear upsampling to the original size, PAMR, temperature
   softmax over names, synonyms merged by their maximum, `prob_thd`.

The PyTorch functions are the reference; the numpy ones here follow them operation by operation and are checked
against them by the tests. `save_scores` writes the file format of `naclip_hf.inference.save_scores`.

Example:

```python
>>> from naclip_hf.export.runtime import ExportedSegmenter
>>> segmenter = ExportedSegmenter("naclip-onnx")  # a folder written by `naclip export`
>>> result = segmenter.segment("photo.jpg", ["sky", "road, street"])  # any names; none: the stored classes
>>> result.segmentation.shape, result.probabilities.shape  # (H, W), (classes, H, W)
```
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from ..models.naclip.image_io import load_image
from ..models.naclip.image_utils import (
    NEIGHBOUR_OFFSETS,
    band_neighbours,
    resize_short_side,
    row_bands,
    sliding_windows,
    window_batches,
    window_coverage,
    window_tokens,
)
from ..models.naclip.labels import flatten_class_names, parse_class_entries, parse_label_set
from ..models.naclip.options import (
    CONFIG_SETTINGS,
    DEFAULTS,
    SETTINGS_BY_NAME,
    NACLIPInferenceOptions,
    check_settings,
    names_of_stage,
    resolve_options,
    window_batch_size,
)
from ..models.naclip.templates import IMAGENET_TEMPLATES
from .layout import (
    CLASS_EMBEDDINGS_FILE,
    CLASSES_FILE,
    CONFIG_FILE,
    GRAPH_INPUTS,
    GRAPH_OUTPUT,
    MODEL_FILE,
    ONNX_DIR,
    PREPROCESSOR_FILE,
    QUANTIZED_MODEL_FILE,
    SIGNED_INT8_MODEL_FILE,
    TEXT_MODEL_FILE,
)

# Settings fixed in the graph when it was exported: the last block and the positional embeddings.
GRAPH_SETTINGS = names_of_stage("block", "model")
# Settings a call may change: sliding windows, post-processing and the short side; and the text side.
CALL_SETTINGS = names_of_stage("windows", "post", "image")
TEXT_SETTINGS = names_of_stage("text")
# Settings this runtime does not implement yet, with the only value it takes.
_UNSUPPORTED_SETTINGS = {"window_padding": DEFAULTS["window_padding"], "area_thd": DEFAULTS["area_thd"]}

_EXPORT_HINT = "export the model again with `naclip export MODEL OUT` (naclip-hf installed with `pip install .[onnx]`)"


def open_graph(path: Path, session_options: Any = None, providers: Sequence[Any] | None = None) -> Any:
    """The `onnxruntime.InferenceSession` of the graph file `path` of an export.

    A file onnxruntime cannot load as a graph (overwritten, emptied or truncated by an interrupted copy or download)
    raises `ValueError` naming the file and how to get a good one, instead of onnxruntime's `InvalidProtobuf`,
    `InvalidGraph` or `InvalidArgument` ("No graph was found")."""
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, InvalidGraph, InvalidProtobuf

    try:
        return onnxruntime.InferenceSession(
            str(path), sess_options=session_options, providers=list(providers or ["CPUExecutionProvider"])
        )
    except (InvalidProtobuf, InvalidGraph, InvalidArgument) as error:
        if isinstance(error, InvalidArgument) and "Load model from" not in str(error):
            raise  # an invalid session option or provider, not the file
        reason = (str(error).partition("failed:")[2] or str(error)).strip().splitlines()[0].rstrip(".")
        newer = (
            f", or made for a newer onnxruntime than {onnxruntime.__version__} (pip install -U onnxruntime)"
            if isinstance(error, InvalidGraph)
            else ""
        )
        quantize = " --quantize" if path.name in (QUANTIZED_MODEL_FILE, SIGNED_INT8_MODEL_FILE) else ""
        raise ValueError(
            f"The ONNX graph {path} is corrupt or truncated (onnxruntime: {reason}){newer}; export the model again "
            f"into a new folder with `naclip export MODEL NEW_FOLDER{quantize}` (or copy the export folder again "
            "from where it was made)."
        ) from None


def is_exported_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by `naclip export` (it holds `onnx/model.onnx`)."""
    return (Path(path).expanduser() / ONNX_DIR / MODEL_FILE).is_file()


# ------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class ClassEmbeddings:
    """The text side of a label set: `text_embeds` [names, D] float32, `name_to_class` [names] int64 and the
    classes' names: `naclip_hf.models.naclip.class_embeddings.ClassEmbeddings` in numpy."""

    text_embeds: np.ndarray
    name_to_class: np.ndarray
    classes: list[list[str]]

    @property
    def class_labels(self) -> list[str]:
        """One display label per class: its first name."""
        return [names[0] for names in self.classes]


@dataclass(frozen=True)
class SegmentationResult:
    """`logits` [names, h, w] at the processed size; `probabilities` [classes, H, W] (float32) and `segmentation`
    [H, W] (int64 class ids) at the original size: `naclip_hf.inference.SegmentationResult` in numpy."""

    logits: np.ndarray
    probabilities: np.ndarray
    segmentation: np.ndarray


class ExportedConfig:
    """Read-only view of an export's settings with attribute access (`config.slide_crop`), like a model config."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", MappingProxyType(dict(values)))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("The settings of an exported model are read-only; pass options per call instead.")

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def with_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """These settings with `given` (checked, in their context) on top."""
        return {**self._values, **check_settings(given, context=self._values)}


# ------------------------------------------------------------------------------------- the segmenter
class ExportedSegmenter:
    """An exported NACLIP folder, ready to segment images into any classes with onnxruntime.

    Args:
        folder: a folder written by `naclip export` (or `naclip_hf.export.export_onnx`).
        overrides: settings for every call (sliding windows, post-processing, `short_side`, `prompt_templates`,
            `text_batch_size`), on top of the stored ones; the last block's settings (`arch`, `attn_strategy`,
            `gaussian_std`, `pos_embed_interpolation`) are fixed in the graph and may only be repeated with their
            exported values.
        quantized: run an int8 graph written by `naclip export --quantize` (see `int8_graph_file`).
        providers, session_options: passed to `onnxruntime.InferenceSession` of both graphs (default: the CPU
            provider and onnxruntime's options, which already apply every graph optimisation and run one thread per
            physical core).

    Calls never change the results of later calls; one instance may serve several threads.

    Example:

    ```python
    >>> segmenter = ExportedSegmenter("naclip-onnx", quantized=True)
    >>> classes = segmenter.encode_classes(["sky", "road, street"])  # text graph (or stored embeddings)
    >>> segmenter.segment("photo.jpg", classes).segmentation.shape  # (H, W)
    ```
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        overrides: Mapping[str, Any] | None = None,
        quantized: bool = False,
        providers: Sequence[Any] | None = None,
        session_options: Any = None,
    ) -> None:
        import onnxruntime  # noqa: F401 (without onnxruntime, fail here, before reading the folder)

        self.folder = Path(folder).expanduser()
        if not is_exported_folder(self.folder):
            raise OSError(
                f"{self.folder} holds no {ONNX_DIR}/{MODEL_FILE}, so it is not an exported model; {_EXPORT_HINT}."
            )
        config = _read_json(self.folder / CONFIG_FILE, "model config")
        image = _read_json(self.folder / PREPROCESSOR_FILE, "image processor config")
        try:
            stored = {name: config.get(name, DEFAULTS[name]) for name in CONFIG_SETTINGS}
            stored["short_side"] = image.get("short_side", DEFAULTS["short_side"])
            stored = {**stored, **check_settings(stored)}
            self.patch_size = int(config["vision_config"]["patch_size"])
            self.embedding_dim = int(config["projection_dim"])
            self.max_long_side = int(image.get("max_long_side", 2048))
            self.do_resize = bool(image.get("do_resize", True))
            self.do_normalize = bool(image.get("do_normalize", True))
            self.image_mean = np.asarray(image["image_mean"], dtype=np.float32)
            self.image_std = np.asarray(image["image_std"], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"The exported model {self.folder} has an invalid {CONFIG_FILE} or {PREPROCESSOR_FILE} ({error}); "
                f"{_EXPORT_HINT}."
            ) from None
        self.stored_classes, self._stored_embeds, templates = _read_classes(self.folder, self.embedding_dim)
        if self.stored_classes is not None:
            stored["prompt_templates"] = templates  # those of the stored embeddings
        given = dict(overrides or {})
        _check_call_settings(given, stored, "overrides")
        self.config = ExportedConfig({**stored, **check_settings(given, context=stored)})
        _check_supported(self.config.to_dict(), self.folder)
        self._stored_templates = templates
        graph = self.folder / ONNX_DIR / (int8_graph_file(self.folder) if quantized else MODEL_FILE)
        if not graph.is_file():
            raise OSError(
                f"The exported model {self.folder} has no {ONNX_DIR}/{QUANTIZED_MODEL_FILE} (the int8 graph); export "
                "it again with `naclip export MODEL OUT --quantize`, or leave out the quantized option."
            )
        self.graph_path = graph
        self._providers = list(providers or ["CPUExecutionProvider"])
        self._session_options = session_options
        self.session = open_graph(graph, self._session_options, self._providers)
        self.text_graph_path = self.folder / ONNX_DIR / TEXT_MODEL_FILE
        self._text_tower: Any = None
        self._text_lock = threading.Lock()

    # ---------------------------------------------------------------------------------------------- text
    @property
    def has_text_model(self) -> bool:
        """Whether the export holds the text graph (`onnx/text_model.onnx`), so that it can embed any name."""
        return self.text_graph_path.is_file()

    @property
    def text_tower(self) -> Any:
        """The text graph and tokenizer (`naclip_hf.export.text.ExportedTextTower`), loaded on first use."""
        with self._text_lock:
            if self._text_tower is None:
                from .text import ExportedTextTower

                self._text_tower = ExportedTextTower(self.folder, self._session_options, self._providers)
            return self._text_tower

    def encode_classes(
        self,
        classes: Sequence[str | Sequence[str]] | None = None,
        templates: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | bool | None = None,
    ) -> ClassEmbeddings:
        """The text embeddings of `classes` (default: the stored classes, in their order).

        Names stored at export (with the same templates) are read back; every other name is embedded by the text
        graph as `NACLIPForSemanticSegmentation.get_name_embeddings` does (one prompt per template, the normalised
        prompt features averaged and normalised again).

        Args:
            classes: class entries (a string per class, synonyms separated by commas, or a list of names per class).
            templates: prompt templates, each with one `{}` (default: `config.prompt_templates`; `None` = the 80
                ImageNet templates).
            cache_dir: on-disk cache of the computed embeddings: a directory, `True` for the default one
                (`$NACLIP_CACHE`, else `~/.cache/naclip_hf/text`), or `None`/`False` (default) for none (the label
                sets used last are kept in memory by `naclip_hf.segmenter.OnnxSegmenter`).
        Returns:
            A `ClassEmbeddings`: `text_embeds` [names, D], `name_to_class` [names] and the classes.
        """
        if templates is None:
            templates = self.config.prompt_templates
        else:
            templates = check_settings({"prompt_templates": templates})["prompt_templates"]
        templates = list(IMAGENET_TEMPLATES if templates is None else templates)
        if classes is None:
            if self.stored_classes is None:
                raise ValueError(
                    f"The exported model {self.folder} stores no classes; name the classes to segment "
                    "(e.g. classes=['sky', 'road, street'], or --labels on the command line)."
                )
            parsed = self.stored_classes
        else:
            parsed = parse_class_entries(classes)
        names, name_to_class = flatten_class_names(parsed)
        stored_rows: dict[str, int] = {}
        if self.stored_classes is not None and templates == list(self._stored_templates or IMAGENET_TEMPLATES):
            stored_rows = {name: row for row, name in enumerate(flatten_class_names(self.stored_classes)[0])}
        missing = [name for name in dict.fromkeys(names) if name not in stored_rows]
        if missing and not self.has_text_model:
            self._raise_without_text_model(missing, bool(stored_rows) or self.stored_classes is None)
        rows = {name: self._stored_embeds[row] for name, row in stored_rows.items()}
        if missing:
            computed = self.text_tower.embed_names(missing, templates, self.config.text_batch_size, cache_dir)
            rows.update(zip(missing, computed))
        text_embeds = np.stack([rows[name] for name in names]).astype(np.float32, copy=False)
        return ClassEmbeddings(text_embeds, np.asarray(name_to_class, dtype=np.int64), parsed)

    def _check_label_set(self, classes: Sequence[str | Sequence[str]] | ClassEmbeddings | None) -> None:
        """Refuse fewer than two classes to segment into (`parse_label_set`), given or stored."""
        if classes is not None:
            parse_label_set(classes.classes if isinstance(classes, ClassEmbeddings) else classes, "classes")
        elif self.stored_classes is not None and len(self.stored_classes) < 2:
            raise ValueError(
                f"The exported model {self.folder} stores only one class ({CLASSES_FILE}), which would label every "
                "pixel; name at least two classes to segment (e.g. classes=['sky', 'road'], or --labels sky road on "
                "the command line)."
            )

    def _raise_without_text_model(self, missing: Sequence[str], same_templates: bool) -> None:
        """The error for names an export without text graph cannot embed."""
        again = (
            "export the model again with `naclip export MODEL OUT` (current exports hold the text model and embed "
            "any name)"
        )
        if self.stored_classes is None:
            raise ValueError(
                f"The exported model {self.folder} has no text model ({ONNX_DIR}/{TEXT_MODEL_FILE}) and stores no "
                f"class embeddings; {again}, or pass text_embeds to `forward` yourself."
            )
        if not same_templates:
            raise ValueError(
                f"The class embeddings of the exported model {self.folder} were made with other prompt templates and "
                f"it has no text model ({ONNX_DIR}/{TEXT_MODEL_FILE}); leave the templates out, or {again}."
            )
        stored_names, _ = flatten_class_names(self.stored_classes)
        raise ValueError(
            f"The exported model {self.folder} has no text embedding for {', '.join(map(repr, missing))} (it stores "
            f"{', '.join(map(repr, stored_names))}) and no text model ({ONNX_DIR}/{TEXT_MODEL_FILE}); {again}, or "
            "with these labels (`naclip export MODEL OUT --labels-file FILE`)."
        )

    # ----------------------------------------------------------------------------------------- images
    def preprocess(self, image: Any, short_side: int | None = None, timeout: float | None = None) -> np.ndarray:
        """One image (path, URL, PIL image, array) -> `pixel_values` [1, 3, h, w] float32, as the image processor."""
        array = load_image(image, timeout=timeout)
        short_side = self.config.short_side if short_side is None else check_settings({"short_side": short_side})[
            "short_side"
        ]
        if self.do_resize and short_side > 0:
            array = resize_short_side(array, short_side, self.max_long_side)
        return normalize_image(array, self.image_mean, self.image_std, self.do_normalize)[None]

    def forward(
        self,
        pixel_values: np.ndarray,
        text_embeds: np.ndarray,
        slide_crop: int | None = None,
        slide_stride: int | None = None,
        slide_batch_size: int | None = None,
    ) -> np.ndarray:
        """Per-name logits [B, N, h, w] of `pixel_values` [B, 3, h, w] against `text_embeds` [N, D], whole-image or
        by sliding windows as `NACLIPForSemanticSegmentation.forward` (defaults: the stored settings)."""
        given = {"slide_crop": slide_crop, "slide_stride": slide_stride, "slide_batch_size": slide_batch_size}
        options = self.config.with_options({k: v for k, v in given.items() if v is not None})
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        text_embeds = np.ascontiguousarray(text_embeds, dtype=np.float32)
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be an array [batch, 3, height, width], got {pixel_values.shape}.")
        if text_embeds.ndim != 2 or text_embeds.shape[1] != self.embedding_dim:
            raise ValueError(
                f"text_embeds must be an array [names, {self.embedding_dim}], got {text_embeds.shape}."
            )
        batch, _, height, width = pixel_values.shape
        if min(height, width) < self.patch_size:
            raise ValueError(
                f"The processed image is {height}×{width} pixels, smaller than one {self.patch_size}×"
                f"{self.patch_size} patch; use a larger image or a larger short_side (at least {self.patch_size})."
            )
        crop = options["slide_crop"]
        if crop <= 0:
            return self._run(pixel_values, text_embeds)
        boxes = sliding_windows(height, width, crop, options["slide_stride"])
        logits = np.zeros((batch, len(text_embeds), height, width), dtype=np.float32)
        tokens = window_tokens(height, width, crop, self.patch_size)
        # The graph's inputs are float32 whatever its precision: batches as for float32.
        step = window_batch_size(options["slide_batch_size"], tokens, pixel_values.itemsize, on_cpu=True)
        for chunk in window_batches(batch, boxes, step):
            crops = np.stack([pixel_values[image, :, a:b, c:d] for image, (a, b, c, d) in chunk])
            for (image, (a, b, c, d)), values in zip(chunk, self._run(crops, text_embeds)):
                logits[image, :, a:b, c:d] += values
        return logits / window_coverage(height, width, boxes)

    def _run(self, pixel_values: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
        feed = {GRAPH_INPUTS[0]: np.ascontiguousarray(pixel_values), GRAPH_INPUTS[1]: text_embeds}
        return self.session.run([GRAPH_OUTPUT], feed)[0]

    def options(self, options: NACLIPInferenceOptions | None = None, **call: Any) -> NACLIPInferenceOptions:
        """A call's options, resolved once (`options.resolve_options`) over the stored settings (or `options`);
        the settings the graph fixed may only repeat their exported values (`ValueError` naming how to change
        them), and settings this runtime does not implement are refused."""
        stored = self.config.to_dict()
        resolved = resolve_options(stored if options is None else options.to_dict(), call)
        _check_call_settings({k: v for k, v in resolved.to_dict().items() if k in GRAPH_SETTINGS}, stored, "options")
        _check_supported(resolved.to_dict(), self.folder)
        return resolved

    def segment(
        self,
        image: Any,
        classes: Sequence[str | Sequence[str]] | ClassEmbeddings | None = None,
        options: NACLIPInferenceOptions | None = None,
        timeout: float | None = None,
        **call: Any,
    ) -> SegmentationResult:
        """Segment one image (path, URL, PIL image or array) into `classes` (default: the stored classes): at least
        two classes (`ValueError` otherwise, before any work: one class would label every pixel).

        `options`: this call's options from `options(...)` (default: the stored ones); `call`: keywords on top of
        them (`method`, `short_side`, sliding windows and post-processing); see `naclip_hf.inference.segment_image`.
        """
        self._check_label_set(classes)
        options = self.options(options, **call)
        embeddings = classes if isinstance(classes, ClassEmbeddings) else self.encode_classes(classes)
        original = load_image(image, timeout=timeout)
        pixel_values = self.preprocess(original, options.short_side)
        logits = self.forward(
            pixel_values, embeddings.text_embeds, options.slide_crop, options.slide_stride, options.slide_batch_size
        )
        probabilities, segmentation = post_process_logits(
            logits, pixel_values, original.shape[:2], embeddings.name_to_class, options.logit_scale,
            options.prob_thd, options.pamr_steps, options.pamr_dilations,
        )  # fmt: skip
        return SegmentationResult(logits[0], probabilities[0], segmentation[0])


def _check_call_settings(values: Mapping[str, Any], stored: Mapping[str, Any], what: str) -> None:
    """Refuse settings that the graph fixed (unless equal to the exported value) and settings a call cannot take."""
    for name, value in values.items():
        if name in GRAPH_SETTINGS:
            if SETTINGS_BY_NAME[name].check(value) != stored[name]:
                raise ValueError(
                    f"{name}={value!r} cannot be changed on an exported model: its graph was built with "
                    f"{name}={stored[name]!r}. Export it again with `naclip export MODEL OUT --set {name}=...`, or run "
                    "the PyTorch checkpoint it was exported from."
                )
        elif name not in CALL_SETTINGS and name not in TEXT_SETTINGS:
            valid = ", ".join(CALL_SETTINGS + TEXT_SETTINGS)
            raise TypeError(f"Unknown {what} {name!r} for an exported model; valid: {valid}.")


def _check_supported(settings: Mapping[str, Any], folder: Path) -> None:
    """Refuse values of the settings this runtime does not implement (rather than ignoring them)."""
    for name, only in _UNSUPPORTED_SETTINGS.items():
        if name in settings and settings[name] != only:
            raise ValueError(
                f"{name}={settings[name]!r} is not supported by the ONNX runtime (exported model {folder}); use "
                f"{name}={only!r}, or run the PyTorch checkpoint the export was made from."
            )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except FileNotFoundError:
        raise OSError(f"The exported model has no {path.name} ({what}) in {path.parent}; {_EXPORT_HINT}.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} ({what}) is not valid JSON ({error}); {_EXPORT_HINT}.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} ({what}) does not hold a JSON object; {_EXPORT_HINT}.")
    return value


def _read_classes(folder: Path, dim: int) -> tuple[list[list[str]] | None, np.ndarray | None, list[str] | None]:
    """The stored classes, their names' embeddings [names, dim] and templates, or Nones when none are stored."""
    if not (folder / CLASSES_FILE).is_file():
        return None, None, None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    description = _read_json(folder / CLASSES_FILE, "stored classes")
    try:
        classes = parse_class_entries(description["classes"])
        tensors = load_file(str(folder / CLASS_EMBEDDINGS_FILE))
        text_embeds = np.ascontiguousarray(tensors["text_embeds"], dtype=np.float32)
    except (KeyError, TypeError, ValueError, OSError, SafetensorError) as error:
        raise ValueError(
            f"The class embeddings of {folder} ({CLASSES_FILE}, {CLASS_EMBEDDINGS_FILE}) are missing or invalid "
            f"({error}); {_EXPORT_HINT}."
        ) from None
    names, _ = flatten_class_names(classes)
    if text_embeds.shape != (len(names), dim):
        raise ValueError(
            f"{folder / CLASS_EMBEDDINGS_FILE} holds embeddings of shape {text_embeds.shape}, expected "
            f"({len(names)}, {dim}) for the {len(names)} names of {CLASSES_FILE}; {_EXPORT_HINT}."
        )
    templates = description.get("templates")
    return classes, text_embeds, None if templates is None else list(templates)


# ------------------------------------------------------------------------ numpy pre- and post-processing
def normalize_image(image: np.ndarray, mean: np.ndarray, std: np.ndarray, do_normalize: bool = True) -> np.ndarray:
    """[h, w, 3] uint8 -> [3, h, w] float32 `(pixel - mean) / std` (reference:
    `NACLIPImageProcessor.normalize_image`)."""
    pixels = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    if do_normalize:
        pixels = (pixels - mean.reshape(3, 1, 1)) / std.reshape(3, 1, 1)
    return pixels


BAND_BYTES = 1 << 19
"""Bytes of one row band (every image and channel) that a thread works on at a time in the post-processing below:
small enough to stay in cache (speed only; every pixel is computed the same way whatever the bands)."""


def _in_bands(function: Any, bands: list[tuple[int, int]], pool: ThreadPoolExecutor | None = None) -> None:
    """`function(top, bottom)` for every band, on `pool` or on `os.cpu_count()` threads of a new one (NumPy releases
    the GIL in its loops, so the bands run in parallel)."""
    workers = min(len(bands), os.cpu_count() or 1)
    if pool is None and workers <= 1:
        for top, bottom in bands:
            function(top, bottom)
        return
    if pool is None:
        with ThreadPoolExecutor(max_workers=workers) as own:
            list(own.map(lambda band: function(*band), bands))
    else:
        list(pool.map(lambda band: function(*band), bands))


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of bilinear resizing along one axis, as PyTorch's CPU kernel computes them (the
    numpy twin of `postprocessing_naclip._bilinear_taps`)."""
    if in_size == out_size:
        index = np.arange(out_size)
        return index, index, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    position = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    first = np.minimum(np.floor(position).astype(np.int64), in_size - 1)
    weight1 = np.clip(position - first.astype(np.float32), 0, 1).astype(np.float32)
    second = first + (first < in_size - 1)
    return first, second, (np.float32(1) - weight1).astype(np.float32), weight1


def resize_bilinear(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[B, C, h, w] float32 -> [B, C, H, W]: bilinear with `align_corners=False` (reference:
    `F.interpolate(values, size, mode="bilinear", align_corners=False)`)."""
    height, width = int(size[0]), int(size[1])
    values = np.asarray(values, dtype=np.float32)
    x0, x1, wx0, wx1 = _bilinear_taps(values.shape[-1], width)
    y0, y1, wy0, wy1 = _bilinear_taps(values.shape[-2], height)
    rows = values[..., x0] * wx0 + values[..., x1] * wx1  # [B, C, h, W]
    resized = np.empty((*values.shape[:-2], height, width), dtype=np.float32)

    def band(top: int, bottom: int) -> None:
        first, second = rows[..., y0[top:bottom], :], rows[..., y1[top:bottom], :]
        np.add(first * wy0[top:bottom, None], second * wy1[top:bottom, None], out=resized[..., top:bottom, :])

    _in_bands(band, row_bands(height, int(np.prod(values.shape[:-2])) * width * 4, BAND_BYTES))
    return resized


def pamr_affinity(image: np.ndarray, dilations: Sequence[int]) -> np.ndarray:
    """Affinity [B, 8 * len(dilations), H, W] of each pixel to its neighbours in the guide `image` [B, K, H, W]
    (reference: `naclip_hf.models.naclip.postprocessing_naclip.pamr_affinity`), by row bands on threads."""
    reach, count = max(dilations), len(NEIGHBOUR_OFFSETS) * len(dilations)
    padded = np.pad(image, [(0, 0)] * (image.ndim - 2) + [(reach, reach)] * 2, mode="edge")
    affinity = np.empty((image.shape[0], count, *image.shape[-2:]), dtype=np.float32)

    def band(top: int, bottom: int) -> None:
        around = band_neighbours(padded, dilations, top, bottom)
        affinity[:, :, top:bottom] = _affinity(image[..., top:bottom, :], around, len(dilations))

    _in_bands(band, row_bands(image.shape[-2], image.shape[0] * count * image.shape[-1] * 4, BAND_BYTES))
    return affinity


def _affinity(image: np.ndarray, neighbours: list[np.ndarray], repeats: int) -> np.ndarray:
    """`pamr_affinity` of pixels `image` [B, K, h, W] whose neighbours are `neighbours` (one array each)."""
    count = len(neighbours) + repeats
    mean = image * np.float32(repeats)
    for neighbour in neighbours:
        mean += neighbour
    mean /= np.float32(count)
    variance = np.square(image - mean) * np.float32(repeats)
    for neighbour in neighbours:
        variance += np.square(neighbour - mean)
    del mean
    inverse_scale = np.float32(1) / (np.sqrt(variance / np.float32(count - 1)) * np.float32(0.1) + np.float32(1e-8))
    logits = np.empty((image.shape[0], len(neighbours), *image.shape[-2:]), dtype=np.float32)
    for p, neighbour in enumerate(neighbours):
        logits[:, p] = (np.abs(image - neighbour) * inverse_scale).sum(axis=1)
    logits *= np.float32(-1.0 / image.shape[1])
    return softmax(logits, axis=1)


def pamr(image: np.ndarray, scores: np.ndarray, num_iter: int, dilations: Sequence[int]) -> np.ndarray:
    """Refine `scores` [B, C, H, W] with the guide `image` [B, K, H, W] of the same size (reference:
    `naclip_hf.models.naclip.postprocessing_naclip.pamr`).

    Each step reads the neighbours from an edge-padded copy and writes the refined scores straight into the
    interior of the next padded copy (two buffers in turn), by row bands on threads (see `_in_bands`)."""
    if num_iter <= 0:
        return scores
    affinity = pamr_affinity(np.asarray(image, dtype=np.float32), dilations)[:, :, None]  # [B, P, 1, H, W]
    scores = np.asarray(scores, dtype=np.float32)
    height, width = scores.shape[-2:]
    reach = max(dilations)
    bands = row_bands(height, scores.shape[0] * scores.shape[1] * width * scores.itemsize, BAND_BYTES)
    source = np.empty((*scores.shape[:2], height + 2 * reach, width + 2 * reach), dtype=np.float32)
    target = np.empty_like(source)
    source[..., reach : reach + height, reach : reach + width] = scores
    _fill_edges(source, reach)

    def refine(top: int, bottom: int) -> None:
        out = target[..., reach + top : reach + bottom, reach : reach + width]
        product = np.empty_like(out)
        for p, neighbour in enumerate(band_neighbours(source, dilations, top, bottom)):
            np.multiply(neighbour, affinity[:, p, :, top:bottom], out=out if p == 0 else product)
            if p:
                out += product

    with ThreadPoolExecutor(max_workers=min(len(bands), os.cpu_count() or 1)) as pool:
        for _ in range(num_iter):
            _in_bands(refine, bands, pool)
            _fill_edges(target, reach)
            source, target = target, source
    return np.ascontiguousarray(source[..., reach : reach + height, reach : reach + width])


def _fill_edges(padded: np.ndarray, reach: int) -> None:
    """Repeat the edge pixels of the interior of `padded` (its last two axes) into its `reach`-wide border."""
    if reach == 0:
        return
    padded[..., :reach, :] = padded[..., reach : reach + 1, :]
    padded[..., -reach:, :] = padded[..., -reach - 1 : -reach, :]
    padded[..., :reach] = padded[..., reach : reach + 1]
    padded[..., -reach:] = padded[..., -reach - 1 : -reach]


def softmax(values: np.ndarray, axis: int) -> np.ndarray:
    """Softmax of float32 `values` along `axis`."""
    shifted = np.exp(values - values.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def post_process_logits(
    logits: np.ndarray,
    pixel_values: np.ndarray | None,
    size: tuple[int, int],
    name_to_class: np.ndarray,
    logit_scale: float,
    prob_thd: float,
    pamr_steps: int,
    pamr_dilations: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities [B, classes, H, W] and labels [B, H, W] (int64) from per-name logits [B, names, h, w]
    (reference: `naclip_hf.models.naclip.postprocessing_naclip.post_process_image`, per image); `pixel_values`
    [B, 3, h, w] guides PAMR."""
    height, width = int(size[0]), int(size[1])
    logits = resize_bilinear(logits, (height, width))
    if pamr_steps > 0:
        if pixel_values is None:
            raise ValueError("PAMR needs the model input as guide image: pass pixel_values (or pamr_steps=0).")
        guide = resize_bilinear(pixel_values, (height, width))
        logits = pamr(guide, logits, pamr_steps, pamr_dilations)
    probabilities = softmax(logits * np.float32(logit_scale), axis=1)
    index = np.asarray(name_to_class, dtype=np.int64)
    if index.size != probabilities.shape[1]:
        raise ValueError(f"name_to_class has {index.size} entries for {probabilities.shape[1]} names.")
    num_classes = int(index.max()) + 1
    if num_classes != probabilities.shape[1]:
        merged = np.full((probabilities.shape[0], num_classes, height, width), -1.0, dtype=np.float32)
        for name, klass in enumerate(index):
            np.maximum(merged[:, klass], probabilities[:, name], out=merged[:, klass])
        probabilities = merged
    segmentation = probabilities.argmax(axis=1)
    segmentation[probabilities.max(axis=1) < prob_thd] = 0
    return probabilities / probabilities.sum(axis=1, keepdims=True), segmentation.astype(np.int64)


def estimate_post_processing_bytes(
    height: int, width: int, num_names: int, num_classes: int, pamr_steps: int, pamr_dilations: Sequence[int]
) -> int:
    """Peak bytes of `post_process_logits` on one `height` × `width` image (whole, not in tiles): the upsampled
    logits, then the larger of PAMR (guide, affinity, two padded score buffers and the result) and the softmax's
    temporaries, then the class probabilities twice (merged, normalised) and the int64 labels."""
    pixels = height * width
    reach = max(pamr_dilations) if pamr_steps > 0 else 0
    padded = (height + 2 * reach) * (width + 2 * reach)
    pamr_bytes = (12 + 32 * len(pamr_dilations)) * pixels + 8 * num_names * padded + 4 * num_names * pixels
    work = max(pamr_bytes if pamr_steps > 0 else 0, 8 * num_names * pixels)
    return 4 * num_names * pixels + work + (8 * num_classes + 8) * pixels


# ----------------------------------------------------------------------------------------------- int8
# CPU flags (Linux's /proc/cpuinfo) of native int8 dot products, with which onnxruntime multiplies unsigned
# activations by signed weights without saturating.
_INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def native_int8_dot_products() -> bool:
    """Whether this CPU has native int8 dot products (x86 VNNI or AMX), read from /proc/cpuinfo; False where that
    cannot be told (other systems), which keeps the int8 graph that is right everywhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return bool(_INT8_DOT_PRODUCT_FLAGS & set(line.split(":", 1)[-1].split()))
    except OSError:
        pass
    return False


def int8_graph_file(folder: str | os.PathLike) -> str:
    """The int8 graph the runtime runs for `quantized=True`: `model_int8.onnx` (signed weights, 3-4x faster) on a
    CPU with native int8 dot products when the export has it, else `model_quantized.onnx` (unsigned weights)."""
    signed = Path(folder).expanduser() / ONNX_DIR / SIGNED_INT8_MODEL_FILE
    return SIGNED_INT8_MODEL_FILE if signed.is_file() and native_int8_dot_products() else QUANTIZED_MODEL_FILE


# ---------------------------------------------------------------------------------------------- scores
def save_scores(path: str | os.PathLike, result: Any, metadata: Mapping[str, Any] | None = None) -> None:
    """Write `logits`, `probabilities` and `segmentation` to a safetensors file, atomically (the format of
    `naclip_hf.inference.save_scores`)."""
    from safetensors.numpy import save_file

    from ..fileio import write_atomic

    arrays = {
        "logits": np.ascontiguousarray(result.logits, dtype=np.float32),
        "probabilities": np.ascontiguousarray(result.probabilities, dtype=np.float32),
        "segmentation": np.ascontiguousarray(result.segmentation, dtype=np.int64),
    }
    meta = {key: json.dumps(value) for key, value in (metadata or {}).items()}
    write_atomic(Path(path), lambda temporary: save_file(arrays, str(temporary), metadata=meta))


__all__ = ["ClassEmbeddings", "ExportedConfig", "ExportedSegmenter", "SegmentationResult", "TEXT_SETTINGS",
           "estimate_post_processing_bytes", "int8_graph_file", "is_exported_folder", "native_int8_dot_products",
           "normalize_image", "pamr", "pamr_affinity", "post_process_logits", "resize_bilinear", "save_scores",
           "softmax"]  # fmt: skip
