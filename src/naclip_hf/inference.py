"""Loading a NACLIP model with its processor, embedding class names, and segmenting one image end to end."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from .checkpoints import resolve_checkpoint
from .fileio import write_atomic
from .models.naclip import class_embeddings
from .models.naclip.class_embeddings import ClassEmbeddings
from .models.naclip.configuration_naclip import split_options
from .models.naclip.modeling_naclip import NACLIPForSemanticSegmentation
from .models.naclip.options import DEFAULT_CHECKPOINT
from .models.naclip.processing_naclip import NACLIPProcessor
from .registration import register_naclip
from .text_cache import disk_cache

register_naclip()  # models loaded here also work with transformers' auto classes and pipeline()


@dataclass
class SegmentationResult:
    """`logits` [names, h, w] at the processed size; `probabilities` [classes, H, W] (None when
    `segment_image(..., return_probabilities=False)`) and `segmentation` [H, W] (int64 class ids) at the original
    size."""

    logits: torch.Tensor
    probabilities: torch.Tensor | None
    segmentation: torch.Tensor


def load_processor(model_id_or_path: str | os.PathLike, **kwargs: Any) -> NACLIPProcessor:
    """`NACLIPProcessor.from_pretrained`: the processor of a NACLIP or plain CLIP checkpoint, checked first as in
    `load_model`."""
    checkpoint = resolve_checkpoint(model_id_or_path, revision=kwargs.get("revision"))
    return NACLIPProcessor.from_pretrained(checkpoint.source, **kwargs)


def load_model(
    model_id_or_path: str | os.PathLike = DEFAULT_CHECKPOINT,
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> NACLIPForSemanticSegmentation:
    """`NACLIPForSemanticSegmentation.from_pretrained` with NACLIP settings set at load time, in eval mode.

    The checkpoint is checked first (`naclip_hf.checkpoints.resolve_checkpoint`): a missing folder, a folder
    without `config.json`, or a Hub id that is neither cached nor downloadable raises an `OSError` at once that
    says how to get a checkpoint (a `CheckpointUnavailableError` for the Hub, with an offline try); invalid
    settings raise `ValueError`.

    Example:

    ```python
    >>> model = load_model("openai/clip-vit-base-patch16", {"pamr_steps": 0})
    ```
    """
    checkpoint = resolve_checkpoint(model_id_or_path, revision=kwargs.get("revision"))
    overrides = dict(overrides or {})
    try:
        model = NACLIPForSemanticSegmentation.from_pretrained(checkpoint.source, **overrides, **kwargs)
    except OSError as error:
        raise OSError(
            f"Could not load the CLIP checkpoint {checkpoint.name!r}: {error}\n"
            "Give a local folder holding a transformers CLIP checkpoint (config.json + model.safetensors), "
            f"download it while online (e.g. `hf download {DEFAULT_CHECKPOINT}`), or convert OpenAI CLIP "
            "weights with `naclip convert ViT-B-16.pt OUT_DIR`."
        ) from error
    except SafetensorError as error:
        raise ValueError(
            f"The weights file of {checkpoint.name!r} is corrupt or truncated ({error}); download or "
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
    """`naclip_hf.models.naclip.class_embeddings.encode_classes` with the on-disk cache of `naclip_hf.text_cache`.

    `cache_dir`: a directory, `True` for the default one (`$NACLIP_CACHE`, else `~/.cache/naclip_hf/text`), or
    `None`/`False` (default) for none. With a cache, a label set embedded before with the same text weights,
    tokenizer, templates and dtype is read back instead of running the text tower.

    Example:

    ```python
    >>> classes = encode_classes(model, processor, ["sky", "tree", "road, street"], cache_dir=True)
    >>> classes.text_embeds.shape, classes.name_to_class.tolist()  # (4, D), [0, 1, 2, 2]
    ```
    """
    return class_embeddings.encode_classes(model, processor, classes, templates=templates, cache=disk_cache(cache_dir))


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
        image: a path, URL, PIL image, array or tensor (see `naclip_hf.models.naclip.image_io`).
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
    forward_options, post_options = split_options(model.config, options)
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
        target_sizes=inputs.original_sizes,
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


__all__ = ["ClassEmbeddings", "DEFAULT_CHECKPOINT", "SegmentationResult",
           "encode_classes", "load_model", "load_processor", "save_scores",
           "segment_image", "split_options"]  # fmt: skip
