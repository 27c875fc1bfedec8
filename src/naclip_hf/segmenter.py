"""One segmenter interface for every command and the demo, with a PyTorch and an ONNX backend.

`load_segmenter(model)` returns a `TorchSegmenter` for a checkpoint (Hub id or folder) and an `OnnxSegmenter` for a
folder written by `naclip export` (it runs on onnxruntime and NumPy; this module imports neither torch nor
transformers for it). Callers use the `Segmenter` methods only and never ask which backend they have:

- `encode_classes(classes)`: the text side of a label set (`classes`, `class_labels`, `name_to_class`,
  `text_embeds`), cached on disk;
- `segment(image, label_set, **options)`: `segmentation` [H, W], `probabilities` [classes, H, W] and `logits`
  [names, h, w] of one image;
- `attention_maps(image, point, methods)`: the last layer's attention of one patch per method (a backend that
  cannot compute it raises a `ValueError` saying what to use instead);
- `settings`, `short_side`, `save_scores(...)`.

What differs between backends is told by capabilities, not by the backend's kind: `fixed_settings` (the last-block
settings a compiled graph fixed), `stored_classes`, `has_text_model`, `attention_strategies()`,
`supports_attention_maps` (with `check_attention_methods`) and `is_test_model`.

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
from typing import Any

from .models.naclip.options import CONFIG_SETTINGS, DEFAULTS, NACLIPInferenceOptions, names_of_stage

SMALLEST_REAL_VISION_WIDTH = 384
"""A vision tower narrower than this (every published CLIP has at least 768: ViT-B) is a test model."""


class Segmenter(ABC):
    """Open-vocabulary segmentation of images into classes named in text, on one loaded model.

    Attributes:
        source: the model as given (Hub id or folder).
        exported: whether the model is an ONNX export (for messages; behaviour goes through the methods and the
            capabilities below).
        supports_attention_maps: whether `attention_maps` can run.
    """

    source: str
    exported: bool = False
    supports_attention_maps: bool = False

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
    def max_long_side(self) -> int | None:
        """The cap on the long side after resizing (None: no cap)."""
        return None

    @property
    def device(self) -> str:
        """Where the model runs ("cpu", "cuda:0", ...)."""
        return "cpu"

    @property
    def dtype(self) -> str:
        """The precision the model runs in ("float32", "bfloat16", ...)."""
        return "float32"

    # ---------------------------------------------------------------------------------------- capabilities
    @property
    def fixed_settings(self) -> dict[str, Any]:
        """The last block's settings (`arch`, `attn_strategy`, `gaussian_std`) fixed in a compiled graph, by name:
        a call may only repeat these values. Empty when every call may choose its own last block."""
        return {}

    @property
    def stored_classes(self) -> list[list[str]]:
        """The classes (each a list of names) whose text embeddings come with the model; empty when none do."""
        return []

    @property
    def has_text_model(self) -> bool:
        """Whether the model can embed any class name (else only the names of `stored_classes`)."""
        return True

    @property
    def is_test_model(self) -> bool:
        """Whether the model is too small to be a real CLIP (e.g. a random test checkpoint); False when the model
        does not tell."""
        return False

    def attention_strategies(self) -> list[str]:
        """The attention strategies the last block can run (`attn_strategy` values)."""
        fixed = self.fixed_settings
        return [fixed["attn_strategy"]] if "attn_strategy" in fixed else [self.config.attn_strategy]

    def check_attention_methods(self, methods: Sequence[str]) -> list[str]:
        """The names of `methods` whose attention `attention_maps` can show, checked against the model
        (`ValueError` naming a method the model cannot run, or saying what to use when it shows none)."""
        raise ValueError(self._no_attention_maps())

    @abstractmethod
    def encode_classes(
        self,
        classes: Sequence[str | Sequence[str]] | None,
        *,
        templates: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | bool | None = True,
    ) -> Any:
        """The text side of a label set (class entries: a string per class, synonyms after commas, or a list of
        names), with `classes`, `class_labels`, `name_to_class` and `text_embeds`; from the disk cache when
        `cache_dir` is set (True: the default folder)."""

    @abstractmethod
    def options(self, options: NACLIPInferenceOptions | None = None, **call: Any) -> NACLIPInferenceOptions:
        """A call's options resolved once (`options.resolve_options`): the model's settings, then `options` when
        given, then `call` (`method=NAME`, `short_side`, sliding windows, last block where the backend allows it,
        post-processing). `TypeError` for an unknown keyword, `ValueError` for a value the backend cannot run."""

    @abstractmethod
    def segment(
        self,
        image: Any,
        label_set: Any,
        options: NACLIPInferenceOptions | None = None,
        *,
        return_probabilities: bool = True,
        max_tile_bytes: int | None = None,
        **call: Any,
    ) -> Any:
        """Segment one image (path, URL, PIL image or array) into the classes of `label_set`.

        `options`: the call's options from `options(...)` (default: the model's); `call`: keywords on top of them,
        resolved here. Returns `segmentation` [H, W] (class ids), `probabilities` [classes, H, W] (None without
        `return_probabilities`, where the backend can skip them) and `logits` [names, h, w].
        """

    @abstractmethod
    def save_scores(self, path: str | os.PathLike, result: Any, metadata: Mapping[str, Any] | None = None) -> None:
        """Write `logits`, `probabilities` and `segmentation` of `result` to a safetensors file, atomically."""

    def peak_bytes(self, height: int, width: int, label_set: Any, return_probabilities: bool) -> int | None:
        """An estimate of the memory that segmenting an image of `height` × `width` needs, or None when the backend
        has none (see `naclip_hf.scale.estimate_image_peak_bytes`)."""
        return None

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
        method's last-block settings (see `naclip_hf.attention_maps.attention_maps`)."""
        raise ValueError(self._no_attention_maps())

    def _no_attention_maps(self) -> str:
        return (
            f"The model {self.source} cannot show attention maps: an exported ONNX graph returns the segmentation "
            "logits only. Use the PyTorch checkpoint it was exported from (a Hub id such as "
            "openai/clip-vit-base-patch16, or a local folder)."
        )


class TorchSegmenter(Segmenter):
    """The PyTorch backend: a `NACLIPForSemanticSegmentation` and its processor (see `naclip_hf.inference`)."""

    supports_attention_maps = True

    def __init__(self, model: Any, processor: Any, source: str | os.PathLike | None = None) -> None:
        self.model = model
        self.processor = processor
        self.source = str(source if source is not None else getattr(model, "name_or_path", ""))

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

    @property
    def is_test_model(self) -> bool:
        return self.model.config.vision_config.hidden_size < SMALLEST_REAL_VISION_WIDTH

    def attention_strategies(self) -> list[str]:
        """Every registered attention strategy (`NACLIP_ATTENTION_FUNCTIONS`): a call may pick any."""
        from .models.naclip.modeling_naclip import NACLIP_ATTENTION_FUNCTIONS

        return list(NACLIP_ATTENTION_FUNCTIONS)

    def check_attention_methods(self, methods: Sequence[str]) -> list[str]:
        from .attention_maps import check_methods

        return list(check_methods(self.model, list(methods)))

    def encode_classes(
        self,
        classes: Sequence[str | Sequence[str]] | None,
        *,
        templates: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | bool | None = True,
    ) -> Any:
        from .inference import encode_classes

        return encode_classes(self.model, self.processor, classes, templates=templates, cache_dir=cache_dir)

    def options(self, options: NACLIPInferenceOptions | None = None, **call: Any) -> NACLIPInferenceOptions:
        return self.model.resolve_options(call, options=options)

    def segment(
        self,
        image: Any,
        label_set: Any,
        options: NACLIPInferenceOptions | None = None,
        *,
        return_probabilities: bool = True,
        max_tile_bytes: int | None = None,
        **call: Any,
    ) -> Any:
        from .inference import segment_image

        return segment_image(
            self.model, self.processor, image, label_set, self.options(options, **call),
            return_probabilities=return_probabilities, max_tile_bytes=max_tile_bytes,
        )  # fmt: skip

    def peak_bytes(self, height: int, width: int, label_set: Any, return_probabilities: bool) -> int | None:
        from .scale import estimate_image_peak_bytes

        config = self.config
        return estimate_image_peak_bytes(
            height, width, len(label_set.name_to_class), len(label_set.classes), config.pamr_steps,
            config.pamr_dilations, return_probabilities=return_probabilities,
        )  # fmt: skip

    def save_scores(self, path: str | os.PathLike, result: Any, metadata: Mapping[str, Any] | None = None) -> None:
        from .inference import save_scores

        save_scores(path, result, metadata)

    def attention_maps(
        self,
        image: Any,
        point: tuple[float, float],
        methods: Sequence[str],
        *,
        short_side: int | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Any:
        from .attention_maps import attention_maps

        return attention_maps(self.model, self.processor, image, point, methods, short_side=short_side,
                              overrides=overrides)  # fmt: skip


class OnnxSegmenter(Segmenter):
    """The ONNX backend: a folder written by `naclip export`, run by `naclip_hf.export.runtime.ExportedSegmenter`
    (onnxruntime and NumPy; no torch, no transformers)."""

    exported = True

    def __init__(self, runtime: Any, source: str | os.PathLike | None = None) -> None:
        self.runtime = runtime
        self.source = str(source if source is not None else runtime.folder)

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

    @property
    def fixed_settings(self) -> dict[str, Any]:
        """The last block's settings the graph was exported with."""
        return {name: getattr(self.runtime.config, name) for name in names_of_stage("block")}

    @property
    def stored_classes(self) -> list[list[str]]:
        """The classes whose text embeddings the export stores (`naclip export --labels`)."""
        return [list(names) for names in self.runtime.stored_classes or []]

    @property
    def has_text_model(self) -> bool:
        """Whether the export holds its text graph (`onnx/text_model.onnx`)."""
        return bool(self.runtime.has_text_model)

    def encode_classes(
        self,
        classes: Sequence[str | Sequence[str]] | None,
        *,
        templates: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | bool | None = True,
    ) -> Any:
        return self.runtime.encode_classes(classes, templates, cache_dir)

    def options(self, options: NACLIPInferenceOptions | None = None, **call: Any) -> NACLIPInferenceOptions:
        return self.runtime.options(options, **call)

    def segment(
        self,
        image: Any,
        label_set: Any,
        options: NACLIPInferenceOptions | None = None,
        *,
        return_probabilities: bool = True,
        max_tile_bytes: int | None = None,
        **call: Any,
    ) -> Any:
        # The NumPy post-processing always builds the probabilities; it runs whole images (no tiles).
        return self.runtime.segment(image, label_set, self.options(options, **call))

    def save_scores(self, path: str | os.PathLike, result: Any, metadata: Mapping[str, Any] | None = None) -> None:
        from .export.runtime import save_scores

        save_scores(path, result, metadata)


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


__all__ = ["OnnxSegmenter", "Segmenter", "TorchSegmenter", "export_dtype", "load_segmenter"]
