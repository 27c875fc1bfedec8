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

from .configuration_naclip import NACLIP_SETTINGS, NACLIPConfig
from .fileio import write_atomic
from .labels import flatten_class_names, parse_class_entries
from .modeling_naclip import NACLIPForSemanticSegmentation
from .processing_naclip import NACLIPImageProcessor, NACLIPProcessor

DEFAULT_CHECKPOINT = "openai/clip-vit-base-patch16"


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
    """`logits` [names, h, w] at the processed size; `probabilities` [classes, H, W] and `segmentation` [H, W]
    (int64 class ids) at the original size."""

    logits: torch.Tensor
    probabilities: torch.Tensor
    segmentation: torch.Tensor


def load_processor(model_id_or_path: str | os.PathLike, **kwargs: Any) -> NACLIPProcessor:
    """The processor saved with a NACLIP model, or, for a plain CLIP checkpoint, its tokenizer with a default
    [`NACLIPImageProcessor`]."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(model_id_or_path), **kwargs)
    image_processor = NACLIPImageProcessor()
    try:
        saved = NACLIPImageProcessor.get_image_processor_dict(str(model_id_or_path), **kwargs)[0]
    except OSError:
        saved = {}
    if saved.get("image_processor_type") == NACLIPImageProcessor.__name__:
        image_processor = NACLIPImageProcessor.from_dict(saved)
    return NACLIPProcessor(image_processor, tokenizer)


def load_model(
    model_id_or_path: str | os.PathLike = DEFAULT_CHECKPOINT,
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> NACLIPForSemanticSegmentation:
    """`NACLIPForSemanticSegmentation.from_pretrained` with NACLIP settings overridden, in eval mode.

    A missing local folder, or a Hub id that cannot be reached with no cached copy, raises an `OSError` that
    says how to get a local checkpoint.
    """
    overrides = dict(overrides or {})
    try:
        model = NACLIPForSemanticSegmentation.from_pretrained(str(model_id_or_path), **overrides, **kwargs)
    except OSError as error:
        raise OSError(
            f"Could not load the CLIP checkpoint {str(model_id_or_path)!r}: {error}\n"
            "Give a local folder holding a transformers CLIP checkpoint (config.json + model.safetensors), "
            "download it while online (e.g. `hf download openai/clip-vit-base-patch16`), or convert OpenAI CLIP "
            "weights with `naclip convert ViT-B-16.pt OUT_DIR --tokenizer TOKENIZER_DIR`."
        ) from error
    except SafetensorError as error:
        raise ValueError(
            f"The weights file of {str(model_id_or_path)!r} is corrupt or truncated ({error}); download or convert "
            "the checkpoint again."
        ) from error
    if device is not None:
        model = model.to(device)
    return model.eval()


def encode_classes(
    model: NACLIPForSemanticSegmentation,
    processor: NACLIPProcessor,
    classes: Sequence[str | Sequence[str]],
    *,
    cache_dir: str | os.PathLike | bool | None = None,
) -> ClassEmbeddings:
    """Embed every name of every class with the model's prompt templates (see `get_name_embeddings`).

    Args:
        model, processor: the NACLIP model and its processor.
        classes: class entries (a string per class, synonyms separated by commas, or a list of names per class).
        cache_dir: on-disk cache of the embeddings (see `naclip_hf.text_cache`): a directory, `True` for the
            default one (`$NACLIP_CACHE`, else `~/.cache/naclip_hf/text`), or `None`/`False` (default) for none.
            With a cache, a label set embedded before with the same text weights, tokenizer, templates and dtype
            is read back instead of running the text tower.
    """
    from .text_cache import load_or_compute_name_embeddings, resolve_cache_dir

    parsed = parse_class_entries(classes)
    names, name_to_class = flatten_class_names(parsed)
    templates = model.config.prompt_templates

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


@torch.no_grad()
def segment_image(
    model: NACLIPForSemanticSegmentation,
    processor: NACLIPProcessor,
    image: Any,
    classes: ClassEmbeddings,
    short_side: int | None = None,
) -> SegmentationResult:
    """Segment one image (PIL, array or tensor) into the given classes."""
    inputs = processor.image_processor(image, short_side=short_side)
    pixel_values = inputs["pixel_values"]
    if isinstance(pixel_values, list):
        pixel_values = pixel_values[0]
    pixel_values = pixel_values.to(model.device, model.dtype)
    text_embeds = classes.text_embeds.to(model.device)
    logits = model(pixel_values=pixel_values, text_embeds=text_embeds).logits
    probabilities, segmentation = model.post_process_logits(
        logits, pixel_values, inputs["original_sizes"][0].tolist(), classes.name_to_class
    )
    return SegmentationResult(logits[0].float().cpu(), probabilities[0].cpu(), segmentation[0].cpu())


def parse_setting_overrides(pairs: Sequence[str]) -> tuple[dict[str, Any], int | None]:
    """Parse `KEY=VALUE` strings into NACLIP config overrides (typed as the config field) and `short_side`.

    Raises `ValueError` for an unknown key or a value of the wrong type, naming the valid keys.
    """
    fields = NACLIPConfig.__dataclass_fields__
    settable = set(NACLIP_SETTINGS) - {"prompt_templates"}
    overrides: dict[str, Any] = {}
    short_side = None
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"Setting {pair!r} is not of the form KEY=VALUE (e.g. --set attn_strategy=csa).")
        if key == "short_side":
            short_side = _parse_int(key, value)
            if short_side < 0:
                raise ValueError(f"short_side={short_side} must be >= 0 (0 keeps the original size).")
            continue
        if key not in settable:
            raise ValueError(f"Unknown setting {key!r}; valid keys: {', '.join(sorted(settable | {'short_side'}))}.")
        default = fields[key].default
        if key == "pamr_dilations":
            overrides[key] = [_parse_int(key, part) for part in value.replace(" ", "").split(",") if part]
        elif isinstance(default, bool):
            overrides[key] = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int):
            overrides[key] = _parse_int(key, value)
        elif isinstance(default, float):
            try:
                overrides[key] = float(value)
            except ValueError:
                raise ValueError(f"Setting {key} needs a number, got {value!r}.") from None
        else:
            overrides[key] = value
    if overrides:
        NACLIPConfig(**overrides)  # validates the values together, with ValueError
    return overrides, short_side


def _parse_int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Setting {key} needs an integer, got {value!r}.") from None


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


__all__ = ["ClassEmbeddings", "DEFAULT_CHECKPOINT", "SegmentationResult", "encode_classes", "load_model",
           "load_processor", "parse_setting_overrides", "save_scores", "segment_image"]  # fmt: skip
