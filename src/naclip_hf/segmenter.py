"""One segmenter interface for every command and the demo, with a PyTorch and an ONNX backend.

`load_segmenter(model)` returns a `TorchSegmenter` for a checkpoint (Hub id or folder) and an `OnnxSegmenter` for a
folder written by `naclip export` (it runs on onnxruntime and NumPy; this module imports neither torch nor
transformers for it). Callers use the `Segmenter` methods only and never ask which backend they have:

- `encode_classes(classes)`: the text side of a label set (`classes`, `class_labels`, `name_to_class`,
  `text_embeds`), kept in memory for the label sets used last and cached on disk;
- `options(**call)`: a call's options resolved once (`NACLIPInferenceOptions`), refused with the fix where the
  backend cannot run them (e.g. another last block than an exported graph's);
- `segment(image, label_set, options)`: `segmentation` [H, W], `probabilities` [classes, H, W] and `logits`
  [names, h, w] of one image;
- `attention_maps(image, point, methods)`: the last layer's attention of one patch per method (a backend that
  cannot compute it raises a `ValueError` saying what to use instead);
- `describe()`: what a page tells about the model (a note for its user, the classes it comes with, the settings a
  call may only repeat), as plain data;
- `source`, `config`, `settings`, `short_side`, `max_long_side`, `device`, `dtype`, `peak_bytes(...)` (the memory
  an image needs) and `save_scores(...)`.

The backends differ in what they hold (a PyTorch model and processor, or an onnxruntime session), not in flags
callers read.

Example:

```python
>>> segmenter = load_segmenter("openai/clip-vit-base-patch16")  # or an export folder
>>> label_set = segmenter.encode_classes(["sky", "road, street"])
>>> segmenter.segment("photo.jpg", label_set, pamr_steps=0).segmentation.shape  # (H, W)
```
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .models.naclip.labels import parse_class_entries
from .models.naclip.options import CONFIG_SETTINGS, DEFAULTS, NACLIPInferenceOptions, names_of_stage
from .models.naclip.recently_used import RecentlyUsed

SMALLEST_REAL_VISION_WIDTH = 384
"""A vision tower narrower than this (every published CLIP has at least 768: ViT-B) is a test model."""
LABEL_SETS_IN_MEMORY = 32
"""Label sets (sets of classes) whose text embeddings a segmenter keeps in memory, the most recently used."""
TEST_MODEL_NOTE = (
    "A tiny test model with random weights: its segmentations and attention maps are noise. For real results use "
    "CLIP weights: `--model openai/clip-vit-base-patch16` (download them once while online with `hf download "
    "openai/clip-vit-base-patch16`), or convert OpenAI's `.pt` weights with `naclip convert ViT-B-16.pt OUT_DIR` "
    "and pass `--model OUT_DIR`."
)


@dataclass(frozen=True)
class SegmenterDescription:
    """What a page tells about a loaded model, as plain data (see `Segmenter.describe`).

    Attributes:
        note: sentences for the model's user: how it runs, which classes it takes, what it cannot show, whether its
            results mean anything, its precision when not float32.
        default_labels: the classes (the names of each) the model comes with; empty when it has none.
        fixed_settings: settings a call may only repeat (the last block of an exported graph), by name; empty when
            a call may choose every setting.
        attention_strategies: the attention strategies (`attn_strategy` values) a call may choose.
    """

    note: tuple[str, ...] = ()
    default_labels: tuple[tuple[str, ...], ...] = ()
    fixed_settings: Mapping[str, Any] = field(default_factory=dict)
    attention_strategies: tuple[str, ...] = ()


class Segmenter(ABC):
    """Open-vocabulary segmentation of images into classes named in text, on one loaded model; safe to call from
    many threads at once.

    Attributes:
        source: the model as given (Hub id or folder).
    """

    def __init__(self, source: str) -> None:
        self.source = source
        # Embedding a label set is the slow part of a first request; one at a time keeps the CPU for the others.
        self._label_sets: RecentlyUsed[Any] = RecentlyUsed(LABEL_SETS_IN_MEMORY, one_at_a_time=True)

    @property
    @abstractmethod
    def config(self) -> Any:
        """The model's settings as attributes (`config.pamr_steps`, ...)."""

    @property
    def settings(self) -> dict[str, Any]:
        """Every NACLIP setting of the model's config, by name."""
        return {name: getattr(self.config, name) for name in CONFIG_SETTINGS}

    @property
    @abstractmethod
    def short_side(self) -> int:
        """The short side images are resized to by default."""

    @property
    @abstractmethod
    def max_long_side(self) -> int | None:
        """The cap on the long side after resizing (None: no cap)."""

    @property
    def device(self) -> str:
        """Where the model runs ("cpu", "cuda:0", ...)."""
        return "cpu"

    @property
    @abstractmethod
    def dtype(self) -> str:
        """The precision the model runs in ("float32", "bfloat16", ...)."""

    @abstractmethod
    def describe(self) -> SegmenterDescription:
        """What a page tells about the model (see `SegmenterDescription`)."""

    def _precision_note(self) -> tuple[str, ...]:
        """A sentence naming the model's precision when it is not float32 (the default), else none."""
        if self.dtype == "float32":
            return ()
        return (
            f"It runs in {self.dtype}: a few pixels may get other labels than in float32 (the default, exact to the "
            "official code).",
        )

    def encode_classes(
        self,
        classes: Sequence[str | Sequence[str]] | None,
        *,
        templates: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | bool | None = True,
    ) -> Any:
        """The text side of a label set (class entries: a string per class, synonyms after commas, or a list of
        names; None: the classes the model comes with), with `classes`, `class_labels`, `name_to_class` and
        `text_embeds`. The label sets used last are kept in memory (embedded one at a time); others are read from
        the disk cache when `cache_dir` is set (True: the default folder) or embedded."""
        parsed = None if classes is None else parse_class_entries(classes)
        key = (
            None if parsed is None else tuple(tuple(names) for names in parsed),
            None if templates is None else tuple(templates),
        )
        return self._label_sets.get_or_compute(key, lambda: self._embed_classes(parsed, templates, cache_dir))

    @abstractmethod
    def _embed_classes(
        self, classes: list[list[str]] | None, templates: Sequence[str] | None, cache_dir: Any
    ) -> Any:
        """`encode_classes` without the memory."""

    @abstractmethod
    def options(self, options: NACLIPInferenceOptions | None = None, **call: Any) -> NACLIPInferenceOptions:
        """A call's options resolved once (`options.resolve_options`): the model's settings, then `options` when
        given, then `call` (`method=NAME`, `short_side`, sliding windows, last block, post-processing). `TypeError`
        for an unknown keyword, `ValueError` with the fix for a value the backend cannot run."""

    def segment(self, image: Any, label_set: Any, options: NACLIPInferenceOptions | None = None, *,
                return_probabilities: bool = True, max_tile_bytes: int | None = None, **call: Any) -> Any:  # fmt: skip
        """Segment one image (path, URL, PIL image or array) into the classes of `label_set`.

        `options`: the call's options from `options(...)` (default: the model's); `call`: keywords on top of them,
        resolved here. Returns `segmentation` [H, W] (class ids), `probabilities` [classes, H, W] (None without
        `return_probabilities`, where the backend can skip them) and `logits` [names, h, w].
        """
        return self._segment(image, label_set, self.options(options, **call), return_probabilities, max_tile_bytes)

    @abstractmethod
    def _segment(
        self,
        image: Any,
        label_set: Any,
        options: NACLIPInferenceOptions,
        return_probabilities: bool,
        max_tile_bytes: int | None,
    ) -> Any:
        """`segment` with the options resolved."""

    def attention_maps(
        self,
        image: Any,
        point: tuple[float, float],
        methods: Sequence[str],
        *,
        short_side: int | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Any:
        """The last layer's attention of the patch under `point` = (x, y), per method, `overrides` on top of each
        method's last-block settings (see `naclip_hf.attention_maps.attention_maps`); `ValueError` with the fix
        when the model cannot show it."""
        return self._attention_maps(image, point, list(methods), short_side, overrides)

    @abstractmethod
    def _attention_maps(
        self, image: Any, point: tuple[float, float], methods: list[str], short_side: int | None, overrides: Any
    ) -> Any:
        """`attention_maps`, with the methods as a list."""

    @abstractmethod
    def save_scores(self, path: str | os.PathLike, result: Any, metadata: Mapping[str, Any] | None = None) -> None:
        """Write `logits`, `probabilities` and `segmentation` of `result` to a safetensors file, atomically."""

    def peak_bytes(self, height: int, width: int, label_set: Any, return_probabilities: bool) -> int:
        """An estimate of the memory that segmenting an image of `height` × `width` into `label_set` needs, from
        the sizes and the model's post-processing settings (see `naclip_hf.scale.image_peak_bytes`)."""
        from .scale import image_peak_bytes

        classes = len(label_set.classes)
        post = self._post_processing_bytes(height, width, len(label_set.name_to_class), classes, return_probabilities)
        return image_peak_bytes(height, width, post, classes, return_probabilities)

    @abstractmethod
    def _post_processing_bytes(self, height: int, width: int, names: int, classes: int, probabilities: bool) -> int:
        """Peak bytes of the backend's post-processing of one image, with its full-size outputs."""


class TorchSegmenter(Segmenter):
    """The PyTorch backend: a `NACLIPForSemanticSegmentation` and its processor (see `naclip_hf.inference`)."""

    def __init__(self, model: Any, processor: Any, source: str | os.PathLike | None = None) -> None:
        super().__init__(str(source if source is not None else getattr(model, "name_or_path", "")))
        self.model = model
        self.processor = processor

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def short_side(self) -> int:
        return int(getattr(self.processor.image_processor, "short_side", DEFAULTS["short_side"]))

    @property
    def max_long_side(self) -> int | None:
        return getattr(self.processor.image_processor, "max_long_side", None)

    @property
    def device(self) -> str:
        return str(self.model.device)

    @property
    def dtype(self) -> str:
        return str(self.model.dtype).removeprefix("torch.")

    def describe(self) -> SegmenterDescription:
        """Any class, any registered attention strategy; a test model says its results are noise."""
        from .models.naclip.modeling_naclip import NACLIP_ATTENTION_FUNCTIONS

        if self.model.config.vision_config.hidden_size < SMALLEST_REAL_VISION_WIDTH:
            note = TEST_MODEL_NOTE
        else:
            note = "Each set of classes is embedded once; later images with the same set are fast."
        return SegmenterDescription(
            note=(note, *self._precision_note()), attention_strategies=tuple(NACLIP_ATTENTION_FUNCTIONS)
        )

    def _embed_classes(self, classes: list[list[str]] | None, templates: Sequence[str] | None, cache_dir: Any) -> Any:
        from .inference import encode_classes

        return encode_classes(self.model, self.processor, classes, templates=templates, cache_dir=cache_dir)

    def options(self, options: NACLIPInferenceOptions | None = None, **call: Any) -> NACLIPInferenceOptions:
        return self.model.resolve_options(call, options=options)

    def _segment(
        self, image: Any, label_set: Any, options: Any, return_probabilities: bool, max_tile_bytes: int | None
    ) -> Any:
        from .inference import segment_image

        return segment_image(self.model, self.processor, image, label_set, options,
                             return_probabilities=return_probabilities, max_tile_bytes=max_tile_bytes)  # fmt: skip

    def save_scores(self, path: str | os.PathLike, result: Any, metadata: Mapping[str, Any] | None = None) -> None:
        from .inference import save_scores

        save_scores(path, result, metadata)

    def _post_processing_bytes(self, height: int, width: int, names: int, classes: int, probabilities: bool) -> int:
        from .models.naclip.postprocessing_naclip import estimate_post_processing_bytes

        config = self.config
        return estimate_post_processing_bytes(height, width, names, classes, config.pamr_steps, config.pamr_dilations,
                                              probabilities)  # fmt: skip

    def _attention_maps(
        self, image: Any, point: tuple[float, float], methods: list[str], short_side: int | None, overrides: Any
    ) -> Any:
        from .attention_maps import attention_maps

        return attention_maps(self.model, self.processor, image, point, methods, short_side=short_side,
                              overrides=overrides)  # fmt: skip


class OnnxSegmenter(Segmenter):
    """The ONNX backend: a folder written by `naclip export`, run by `naclip_hf.export.runtime.ExportedSegmenter`
    (onnxruntime and NumPy; no torch, no transformers). Its last block is fixed in its graph and it shows no
    attention maps; its classes come from its text graph or from the embeddings stored with it."""

    def __init__(self, runtime: Any, source: str | os.PathLike | None = None) -> None:
        super().__init__(str(source if source is not None else runtime.folder))
        self.runtime = runtime

    @property
    def config(self) -> Any:
        return self.runtime.config

    @property
    def short_side(self) -> int:
        return int(self.runtime.config.short_side)

    @property
    def max_long_side(self) -> int | None:
        return self.runtime.max_long_side

    @property
    def dtype(self) -> str:
        return export_dtype(self.runtime.folder)

    def describe(self) -> SegmenterDescription:
        """The stored classes first, the last block fixed in the graph, and which classes the export can embed."""
        stored = tuple(tuple(names) for names in self.runtime.stored_classes or [])
        names = ", ".join(f"'{name}'" for names in stored for name in names)
        names = names or "none (the export stores no class embeddings)"
        if self.runtime.has_text_model:
            classes = (
                "Type any classes (one per line, synonyms after commas): the exported text model embeds them; the "
                f"classes stored with the export ({names}) need no text model run."
            )
        else:
            classes = (
                f"Its text embeddings are stored for these classes only: {names}; type any of these names (one class "
                "per line, synonyms after commas). To segment other classes, export the model again with them "
                "(`naclip export MODEL OUT --labels ...`) or run the PyTorch checkpoint."
            )
        fixed = {name: getattr(self.config, name) for name in names_of_stage("block")}
        return SegmenterDescription(
            note=("Exported with `naclip export` and run with onnxruntime (no PyTorch).", classes,
                  "It shows no attention maps (its graph returns the segmentation logits only): the PyTorch "
                  "checkpoint it was exported from does.", *self._precision_note()),
            default_labels=stored, fixed_settings=fixed, attention_strategies=(fixed["attn_strategy"],),
        )  # fmt: skip

    def _embed_classes(self, classes: list[list[str]] | None, templates: Sequence[str] | None, cache_dir: Any) -> Any:
        return self.runtime.encode_classes(classes, templates, cache_dir)

    def options(self, options: NACLIPInferenceOptions | None = None, **call: Any) -> NACLIPInferenceOptions:
        return self.runtime.options(options, **call)

    def _segment(
        self, image: Any, label_set: Any, options: Any, return_probabilities: bool, max_tile_bytes: int | None
    ) -> Any:
        # The NumPy post-processing always builds the probabilities; it runs whole images (no tiles).
        return self.runtime.segment(image, label_set, options)

    def save_scores(self, path: str | os.PathLike, result: Any, metadata: Mapping[str, Any] | None = None) -> None:
        from .export.runtime import save_scores

        save_scores(path, result, metadata)

    def _post_processing_bytes(self, height: int, width: int, names: int, classes: int, probabilities: bool) -> int:
        """The NumPy post-processing runs whole images and always builds the probabilities."""
        from .export.runtime import estimate_post_processing_bytes

        config = self.config
        return estimate_post_processing_bytes(height, width, names, classes, config.pamr_steps, config.pamr_dilations)

    def _attention_maps(
        self, image: Any, point: tuple[float, float], methods: list[str], short_side: int | None, overrides: Any
    ) -> Any:
        """Refused: an exported graph returns the segmentation logits only (`ValueError` naming what to use)."""
        raise ValueError(
            f"The model {self.source} cannot show attention maps: an exported ONNX graph returns the segmentation "
            "logits only. Use the PyTorch checkpoint it was exported from (a Hub id such as "
            "openai/clip-vit-base-patch16, or a local folder)."
        )


def export_dtype(folder: str | os.PathLike, requested: str | None = None) -> str:
    """The precision of an export written by `naclip export` (fixed in its graphs; its config.json's `dtype`,
    float32 when absent). `requested` may be None, `auto` or that precision; another raises `ValueError`."""
    import json
    from pathlib import Path

    try:
        recorded = json.loads((Path(folder).expanduser() / "config.json").read_text(encoding="utf-8")).get("dtype")
    except (OSError, ValueError):
        recorded = None
    recorded = recorded if isinstance(recorded, str) else "float32"
    if requested not in (None, "auto", recorded):
        raise ValueError(
            f"--dtype {requested}: {folder} is an ONNX export, which runs in the precision it was exported in "
            f"({recorded}); drop --dtype, export again with `naclip export ... --dtype {requested}`, or run the "
            "PyTorch checkpoint with it."
        )
    return recorded


def load_segmenter(
    model: str | os.PathLike | Any,
    overrides: Mapping[str, Any] | None = None,
    *,
    quantized: bool = False,
    device: str | None = None,
    dtype: Any = None,
) -> Segmenter:
    """The segmenter of `model`: an export folder (`onnx/model.onnx` inside) runs on onnxruntime, anything else is a
    PyTorch checkpoint (Hub id or folder, or a `naclip_hf.checkpoints.Checkpoint` resolved already; see
    `naclip_hf.inference.load_model`), resolved once.

    Args:
        overrides: settings for every call, on top of the model's.
        quantized: run an export's int8 graph (`naclip export --quantize`); refused for a PyTorch checkpoint.
        device, dtype: where and in which precision a PyTorch model runs (`dtype`: a torch dtype or its name;
            None: float32).
    """
    from .checkpoints import Checkpoint, resolve_checkpoint
    from .export.runtime import ExportedSegmenter, is_exported_folder

    if is_exported_folder(model.source if isinstance(model, Checkpoint) else model):
        model = model.source if isinstance(model, Checkpoint) else model
        export_dtype(model, None if dtype is None else str(dtype).removeprefix("torch."))
        return OnnxSegmenter(ExportedSegmenter(model, overrides, quantized=quantized), model)
    if quantized:
        raise ValueError(
            f"--quantized runs the int8 graph of an exported model, but {model} is a PyTorch checkpoint; export it "
            "with `naclip export MODEL OUT --quantize` and pass --model OUT, or leave out --quantized."
        )
    from .inference import load_model, load_processor

    checkpoint = resolve_checkpoint(model)  # once: the loaders below take the resolved checkpoint as it is
    kwargs: dict[str, Any] = {} if device is None else {"device": device}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return TorchSegmenter(load_model(checkpoint, overrides, **kwargs), load_processor(checkpoint), checkpoint.name)


__all__ = [
    "OnnxSegmenter", "Segmenter", "SegmenterDescription", "TorchSegmenter", "export_dtype", "load_segmenter"
]
