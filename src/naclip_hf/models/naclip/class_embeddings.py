"""The text side of a label set: every name of every class embedded with the prompt templates."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .labels import flatten_class_names, parse_class_entries
from .options import check_settings


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


def encode_classes(
    model: Any,
    processor: Any,
    classes: Sequence[str | Sequence[str]],
    *,
    templates: Sequence[str] | None = None,
    cache: Callable[..., torch.Tensor] | None = None,
) -> ClassEmbeddings:
    """Embed every name of every class with the prompt templates (see `get_name_embeddings`).

    Args:
        model, processor: a `NACLIPForSemanticSegmentation` and its `NACLIPProcessor`.
        classes: class entries (a string per class, synonyms separated by commas, or a list of names per class).
        templates: prompt templates, each with one `{}` (default: the config's `prompt_templates`, else the 80
            ImageNet templates).
        cache: a store of embeddings called as `cache(model, tokenizer, names, templates, compute)`, which returns
            the stored embeddings or those of `compute()` (e.g. the disk cache of `naclip_hf.text_cache`); None
            computes them.

    Returns:
        `ClassEmbeddings` with `text_embeds` [names, projection_dim] (L2-normalised) and `name_to_class` [names].

    Example:

    ```python
    >>> classes = encode_classes(model, processor, ["sky", "tree", "road, street"])
    >>> classes.text_embeds.shape, classes.name_to_class.tolist()  # (4, D), [0, 1, 2, 2]
    ```
    """
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

    text_embeds = compute() if cache is None else cache(model, processor.tokenizer, names, templates, compute)
    return ClassEmbeddings(text_embeds, torch.tensor(name_to_class, dtype=torch.long), parsed)


__all__ = ["ClassEmbeddings", "encode_classes"]
