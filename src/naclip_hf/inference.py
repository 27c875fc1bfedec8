"""Loading a NACLIP model with its processor, embedding class names, and segmenting one image end to end."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from .fileio import write_atomic
from .image_processing_naclip import POST_PROCESSING_OPTIONS
from .labels import flatten_class_names, parse_class_entries
from .modeling_naclip import NACLIPForSemanticSegmentation
from .options import DEFAULT_CHECKPOINT, names_of_stage
from .processing_naclip import NACLIPProcessor

# Options of `forward` (sliding windows and the last block), by name.
FORWARD_OPTIONS = names_of_stage("windows") + ("arch", "attn_strategy", "gaussian_std")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass
class ClassEmbeddings:
    """Text side of a label set: `text_embeds` [names, D], `name_to_class` [names], and the classes' names."""

    text_embeds: torch.Tensor
    name_to_class: torch.Tensor
    classes: list[list[str]]

    @property
    def class_labels(self) -> list[str]:
        """One display label per class: its first name."""
        return [names[0] for names in self.classes]


@dataclass
class SegmentationResult:
    """`logits` [names, h, w] at the processed size; `probabilities` [classes, H, W] (None when
    `segment_image(..., return_probabilities=False)`) and `segmentation` [H, W] (int64 class ids) at the original
    size."""

    logits: torch.Tensor
    probabilities: torch.Tensor | None
    segmentation: torch.Tensor


def check_checkpoint_location(model_id_or_path: str | os.PathLike) -> None:
    """Raise `OSError` for a local checkpoint path that cannot be one: a missing folder or one without
    `config.json`, each with the fix. Hub ids ("name" or "namespace/name" not present on disk) pass."""
    text = os.fspath(model_id_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise OSError(
                f"The model folder {text} has no config.json, so it is not a transformers checkpoint. Give a folder "
                "saved with save_pretrained (config.json + model.safetensors), or convert OpenAI CLIP weights with "
                "`naclip convert WEIGHTS.pt OUT_DIR`."
            )
        return
    if path.exists():
        raise OSError(
            f"{text} is a file, not a checkpoint folder; for OpenAI CLIP weights run `naclip convert {text} OUT_DIR` "
            "and use OUT_DIR."
        )
    if not _HUB_ID.match(text) or text.startswith((".", "~")):
        raise OSError(
            f"No such model folder: {text}. Check the path, or give a Hub id such as '{DEFAULT_CHECKPOINT}'."
        )


def load_processor(model_id_or_path: str | os.PathLike, **kwargs: Any) -> NACLIPProcessor:
    """`NACLIPProcessor.from_pretrained`: the processor of a NACLIP or plain CLIP checkpoint."""
    return NACLIPProcessor.from_pretrained(model_id_or_path, **kwargs)


def load_model(
    model_id_or_path: str | os.PathLike = DEFAULT_CHECKPOINT,
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> NACLIPForSemanticSegmentation:
    """`NACLIPForSemanticSegmentation.from_pretrained` with NACLIP settings set at load time, in eval mode.

    A missing local folder, a folder without `config.json`, or a Hub id that cannot be reached with no cached copy
    raises an `OSError` that says how to get a checkpoint; invalid settings raise `ValueError`.
    """
    check_checkpoint_location(model_id_or_path)
    overrides = dict(overrides or {})
    try:
        model = NACLIPForSemanticSegmentation.from_pretrained(os.fspath(model_id_or_path), **overrides, **kwargs)
    except OSError as error:
        raise OSError(
            f"Could not load the CLIP checkpoint {os.fspath(model_id_or_path)!r}: {error}\n"
            "Give a local folder holding a transformers CLIP checkpoint (config.json + model.safetensors), "
            "download it while online (e.g. `hf download openai/clip-vit-base-patch16`), or convert OpenAI CLIP "
            "weights with `naclip convert ViT-B-16.pt OUT_DIR`."
        ) from error
    except SafetensorError as error:
        raise ValueError(
            f"The weights file of {os.fspath(model_id_or_path)!r} is corrupt or truncated ({error}); download or "
            "convert the checkpoint again."
        ) from error
    if device is not None:
        model = model.to(device)
    return model.eval()


def encode_classes(
    model: NACLIPForSemanticSegmentation,
    processor: NACLIPProcessor,
    classes: Sequence[str | Sequence[str]],
    *,
    templates: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | bool | None = None,
) -> ClassEmbeddings:
    """Embed every name of every class with the prompt templates (see `get_name_embeddings`).

    Args:
        model, processor: the NACLIP model and its processor.
        classes: class entries (a string per class, synonyms separated by commas, or a list of names per class).
        templates: prompt templates, each with one `{}` (default: the config's `prompt_templates`, else the 80
            ImageNet templates).
        cache_dir: on-disk cache of the embeddings (see `naclip_hf.text_cache`): a directory, `True` for the
            default one (`$NACLIP_CACHE`, else `~/.cache/naclip_hf/text`), or `None`/`False` (default) for none.
            With a cache, a label set embedded before with the same text weights, tokenizer, templates and dtype
            is read back instead of running the text tower.

    Example:

    ```python
    >>> classes = encode_classes(model, processor, ["sky", "tree", "road, street"])
    >>> classes.text_embeds.shape, classes.name_to_class.tolist()  # (4, D), [0, 1, 2, 2]
    ```
    """
    from .options import check_settings
    from .text_cache import load_or_compute_name_embeddings, resolve_cache_dir

    parsed = parse_class_entries(classes)
    names, name_to_class = flatten_class_names(parsed)
    if templates is None:
        templates = model.config.prompt_templates
    else:
        templates = check_settings({"prompt_templates": templates})["prompt_templates"]

    def compute() -> torch.Tensor:
        text = processor.tokenize_class_names(parsed, templates)
        device = model.device
        return model.get_name_embeddings(
            text["input_ids"].to(device), text["attention_mask"].to(device), text["num_templates"]
        )

    directory = resolve_cache_dir(cache_dir)
    if directory is None:
        text_embeds = compute()
    else:
        text_embeds = load_or_compute_name_embeddings(
            model, processor.tokenizer, names, templates, directory, compute
        )
    return ClassEmbeddings(text_embeds, torch.tensor(name_to_class, dtype=torch.long), parsed)


def split_options(
    model: NACLIPForSemanticSegmentation, options: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-call options -> (keywords of `forward`, keywords of post-processing), with the config's values for the
    options not given. `method=NAME` (see `naclip_hf.methods`) gives that method's settings, under the other options.
    Raises `ValueError`/`TypeError` for an unknown or invalid option."""
    unknown = sorted(set(options) - set(FORWARD_OPTIONS) - set(POST_PROCESSING_OPTIONS) - {"method"})
    if unknown:
        valid = ", ".join((*FORWARD_OPTIONS, *POST_PROCESSING_OPTIONS, "short_side", "method"))
        raise TypeError(f"Unknown option(s) {', '.join(unknown)}; valid options: {valid}.")
    resolved = model.config.inference_options(**options)
    forward = {name: resolved[name] for name in FORWARD_OPTIONS}
    post = {name: resolved[name] for name in POST_PROCESSING_OPTIONS}
    return forward, post


@torch.no_grad()
def segment_image(
    model: NACLIPForSemanticSegmentation,
    processor: NACLIPProcessor,
    image: Any,
    classes: ClassEmbeddings,
    short_side: int | None = None,
    *,
    return_probabilities: bool = True,
    max_tile_bytes: int | None = None,
    **options: Any,
) -> SegmentationResult:
    """Segment one image into the given classes.

    Args:
        image: a path, URL, PIL image, array or tensor (see `naclip_hf.image_io`).
        classes: from `encode_classes`.
        short_side: resize the short side to this (default: the image processor's).
        return_probabilities: also return the full-size probabilities; without them post-processing memory does
            not grow with classes × height × width (see `post_process_semantic_segmentation`).
        max_tile_bytes: memory budget of one post-processing tile (speed and memory only).
        **options: per-call settings of `forward` (`slide_crop`, `slide_stride`, `slide_batch_size`, `arch`,
            `attn_strategy`, `gaussian_std`) and of post-processing (`logit_scale`, `prob_thd`, `pamr_steps`,
            `pamr_dilations`); defaults: the model's config, which is not changed.

    Example:

    ```python
    >>> result = segment_image(model, processor, "street.jpg", classes, pamr_steps=0)
    >>> result.segmentation.shape  # (H, W) of the image
    ```
    """
    forward_options, post_options = split_options(model, options)
    if short_side is None and options.get("method") is not None:
        short_side = model.config.inference_options(method=options["method"]).get("short_side")
    inputs = processor.image_processor(image, short_side=short_side)
    pixel_values = inputs["pixel_values"]
    if isinstance(pixel_values, list):
        pixel_values = pixel_values[0]
    pixel_values = pixel_values.to(model.device, model.dtype)
    text_embeds = classes.text_embeds.to(model.device)
    logits = model(pixel_values=pixel_values, text_embeds=text_embeds, **forward_options).logits
    (result,) = processor.image_processor.post_process_semantic_segmentation(
        logits,
        target_sizes=inputs["original_sizes"],
        pixel_values=pixel_values,
        name_to_class=classes.name_to_class,
        return_probabilities=return_probabilities,
        return_class_scores=True,  # a dict in both cases
        max_tile_bytes=max_tile_bytes,
        **post_options,
    )
    probabilities = result.get("probabilities")
    return SegmentationResult(
        logits[0].float().cpu(), None if probabilities is None else probabilities.cpu(), result["segmentation"].cpu()
    )


def save_scores(path: str | os.PathLike, result: SegmentationResult, metadata: Mapping[str, Any] | None = None) -> None:
    """Write `logits`, `probabilities` and `segmentation` to a safetensors file (atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {
        "logits": result.logits.float().contiguous(),
        "probabilities": result.probabilities.float().contiguous(),
        "segmentation": result.segmentation.to(torch.int64).contiguous(),
    }
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    write_atomic(path, lambda temporary: save_file(tensors, str(temporary), metadata=meta))


__all__ = ["ClassEmbeddings", "DEFAULT_CHECKPOINT", "FORWARD_OPTIONS", "SegmentationResult",
           "check_checkpoint_location", "encode_classes", "load_model", "load_processor", "save_scores",
           "segment_image", "split_options"]  # fmt: skip
