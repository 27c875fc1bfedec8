"""Loading a NACLIP model with its processor, embedding class names, and segmenting one image end to end."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from .checkpoints import resolve_checkpoint
from .fileio import write_atomic
from .models.naclip import class_embeddings
from .models.naclip.class_embeddings import ClassEmbeddings
from .models.naclip.modeling_naclip import NACLIPForSemanticSegmentation
from .models.naclip.options import DEFAULT_CHECKPOINT, NACLIPInferenceOptions
from .models.naclip.processing_naclip import NACLIPProcessor
from .registration import register_naclip
from .text_cache import disk_cache

register_naclip()  # models loaded here also work with transformers' auto classes and pipeline()

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The precisions a model loads in, by name (`load_model(dtype=...)`, `--dtype`); "auto" picks one of them."""
FAST_BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU features (as /proc/cpuinfo names them) that multiply bfloat16 matrices natively."""
FLOAT16_ON_CPU_ERROR = (
    "float16 is for GPUs: on the CPU, PyTorch multiplies float16 matrices without native instructions, many times "
    "slower than float32, and float16 overflows where bfloat16 does not. Use bfloat16 on the CPU (--dtype bfloat16, "
    "or dtype=torch.bfloat16; fast on CPUs with AMX or AVX512-BF16, which --dtype auto detects), or float32."
)


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, from /proc/cpuinfo (Linux); empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_has_fast_bfloat16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU multiplies bfloat16 matrices natively (AMX-BF16 or AVX512-BF16; see
    `FAST_BFLOAT16_CPU_FLAGS`), from `flags` (default: `cpu_flags()`; without /proc/cpuinfo, PyTorch's own CPU
    checks)."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    if flags:
        return any(flag in flags for flag in FAST_BFLOAT16_CPU_FLAGS)
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if callable(check))


def resolve_dtype(
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    *,
    cpu_bfloat16: bool | None = None,
) -> torch.dtype:
    """The torch dtype to run a model in, for a `dtype` asked for on `device` (None: the CPU).

    - None or "float32": float32, the default, exact to the official code.
    - "bfloat16" or "float16" (or the torch dtypes): that precision. float16 on the CPU raises `ValueError` (see
      `FLOAT16_ON_CPU_ERROR`: slow there, use bfloat16); bfloat16 on a CPU without native bfloat16 logs a warning
      that float32 is faster there.
    - "auto": the fastest precision the hardware runs: float16 on a CUDA device; bfloat16 on a CPU with AMX or
      AVX512-BF16 (`cpu_has_fast_bfloat16`); float32 otherwise.

    `cpu_bfloat16` stands for `cpu_has_fast_bfloat16()` when given. Post-processing runs in float32 whatever the
    model's dtype.

    Example:

    ```python
    >>> resolve_dtype("auto", "cpu", cpu_bfloat16=True), resolve_dtype("auto", "cuda"), resolve_dtype(None)
    (torch.bfloat16, torch.float16, torch.float32)
    ```
    """
    device_type = torch.device("cpu" if device is None else device).type
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        if device_type == "cuda":
            return torch.float16
        fast = cpu_has_fast_bfloat16() if cpu_bfloat16 is None else cpu_bfloat16
        return torch.bfloat16 if device_type == "cpu" and fast else torch.float32
    resolved = DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if resolved not in DTYPES.values():
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {', '.join(DTYPES)} or 'auto'.")
    if device_type == "cpu" and resolved == torch.float16:
        raise ValueError(FLOAT16_ON_CPU_ERROR)
    if device_type == "cpu" and resolved == torch.bfloat16:
        if not (cpu_has_fast_bfloat16() if cpu_bfloat16 is None else cpu_bfloat16):
            logger.warning(
                "bfloat16 on this CPU (no AMX or AVX512-BF16) runs on a slow fallback, many times slower than float32; "
                "float32 (the default) is faster here."
            )
    return resolved


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
    dtype: str | torch.dtype | None = None,
    **kwargs: Any,
) -> NACLIPForSemanticSegmentation:
    """`NACLIPForSemanticSegmentation.from_pretrained` with NACLIP settings set at load time, in eval mode.

    `dtype`: the precision of the weights and activations, resolved for `device` by `resolve_dtype`: float32 by
    default (whatever dtype the checkpoint was saved in), "bfloat16", "float16" (GPUs), or "auto" (the fastest the
    hardware runs). Post-processing runs in float32 whatever the model's dtype.

    The checkpoint is checked first (`naclip_hf.checkpoints.resolve_checkpoint`): a missing folder, a folder
    without `config.json`, or a Hub id that is neither cached nor downloadable raises an `OSError` at once that
    says how to get a checkpoint (a `CheckpointUnavailableError` for the Hub, with an offline try); invalid
    settings raise `ValueError`.

    Example:

    ```python
    >>> model = load_model("openai/clip-vit-base-patch16", {"pamr_steps": 0})
    >>> fast = load_model("openai/clip-vit-base-patch16", dtype="auto")  # bfloat16 on CPUs with AMX, ...
    ```
    """
    checkpoint = resolve_checkpoint(model_id_or_path, revision=kwargs.get("revision"))
    overrides = dict(overrides or {})
    dtype = resolve_dtype(dtype, device)
    try:
        model = NACLIPForSemanticSegmentation.from_pretrained(checkpoint.source, **overrides, dtype=dtype, **kwargs)
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
    options: NACLIPInferenceOptions | None = None,
    *,
    return_probabilities: bool = True,
    max_tile_bytes: int | None = None,
    **call: Any,
) -> SegmentationResult:
    """Segment one image into the given classes.

    Args:
        image: a path, URL, PIL image, array or tensor (see `naclip_hf.models.naclip.image_io`).
        classes: from `encode_classes`.
        options: the call's options, resolved (`model.config.inference_options(...)`); default: the config's.
        return_probabilities: also return the full-size probabilities; without them post-processing memory does
            not grow with classes × height × width (see `post_process_semantic_segmentation`).
        max_tile_bytes: memory budget of one post-processing tile (speed and memory only).
        **call: options of this call on top of `options` (`method`, `short_side`, the sliding windows, the last
            block, post-processing; see `options.CALL_OPTIONS`); the model's config is not changed.

    Example:

    ```python
    >>> result = segment_image(model, processor, "street.jpg", classes, pamr_steps=0)
    >>> result.segmentation.shape  # (H, W) of the image
    ```
    """
    options = model.resolve_options(call, options=options)
    inputs = processor.image_processor(image, short_side=options.short_side)
    pixel_values = inputs["pixel_values"]
    if isinstance(pixel_values, list):
        pixel_values = pixel_values[0]
    pixel_values = pixel_values.to(model.device, model.dtype)
    outputs = model(pixel_values=pixel_values, text_embeds=classes.text_embeds.to(model.device), options=options)
    (result,) = processor.image_processor.post_process_semantic_segmentation(
        outputs,
        target_sizes=inputs.original_sizes,
        pixel_values=pixel_values,
        name_to_class=classes.name_to_class,
        return_probabilities=return_probabilities,
        return_class_scores=True,  # a dict in both cases
        max_tile_bytes=max_tile_bytes,
    )
    probabilities = result.get("probabilities")
    return SegmentationResult(
        outputs.logits[0].float().cpu(), None if probabilities is None else probabilities.cpu(),
        result["segmentation"].cpu(),
    )  # fmt: skip


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


__all__ = ["ClassEmbeddings", "DEFAULT_CHECKPOINT", "DTYPES", "SegmentationResult", "cpu_has_fast_bfloat16",
           "encode_classes", "load_model", "load_processor", "resolve_dtype", "save_scores",
           "segment_image"]  # fmt: skip
