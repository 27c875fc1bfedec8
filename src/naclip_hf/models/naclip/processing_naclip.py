"""Processor of NACLIP: the image processor paired with CLIP's tokenizer, which turns class names into prompts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypedDict

import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin, Unpack

from .image_processing_naclip import NACLIPImageProcessor
from .labels import flatten_class_names, parse_class_entries
from .options import resolve_options
from .templates import IMAGENET_TEMPLATES
from .tokenization import tokenizer_max_length

# Keywords of `from_pretrained` that locate files (passed on to the config and image processor loaders).
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


class NACLIPProcessorKwargs(TypedDict, total=False):
    """The keywords of `NACLIPProcessor.__call__`."""

    templates: Sequence[str] | None
    short_side: int | None
    method: str | None
    return_tensors: str | None


def build_prompts(names: Sequence[str], templates: Sequence[str] | None = None) -> list[str]:
    """Every template filled with every name: name 0's prompts first, then name 1's, ..."""
    templates = IMAGENET_TEMPLATES if templates is None else templates
    return [template.format(name) for name in names for template in templates]


class NACLIPProcessor(ProcessorMixin):
    r"""
    Pairs [`NACLIPImageProcessor`] with CLIP's tokenizer. `text` takes class entries (a string per class,
    synonyms separated by commas, or a list of names per class); each name is expanded into one prompt per
    template, tokenised and padded to the longest prompt.

    Example:

    ```python
    >>> inputs = processor(images=image, text=["sky", "tree", "road, street"])
    >>> outputs = model(**inputs)
    >>> labels = processor.post_process_semantic_segmentation(outputs, inputs)[0]  # [H, W] class ids

    The returned `BatchFeature` holds the model's inputs (`pixel_values`, `input_ids`, `attention_mask`,
    `num_templates`); what only post-processing needs is kept as attributes: `original_sizes` [B, 2] and
    `name_to_class` [names].
    ```
    """

    def __init__(self, image_processor: NACLIPImageProcessor | None = None, tokenizer: Any = None, **kwargs: Any):
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> NACLIPProcessor:
        """The processor of a NACLIP or plain CLIP checkpoint (a Hub id or a folder).

        The tokenizer is the checkpoint's; a folder without tokenizer files gets OpenAI CLIP's BPE when its text
        tower has that vocabulary, and an error naming the folder otherwise (`tokenization.load_clip_tokenizer`).
        The image processor is the saved `NACLIPImageProcessor`, or the default one: a plain CLIP's
        `CLIPImageProcessor` centre-crops to 224 pixels, which does not suit segmentation.

        Example:

        ```python
        >>> processor = NACLIPProcessor.from_pretrained("openai/clip-vit-base-patch16")
        ```
        """
        from transformers import AutoConfig

        from .tokenization import load_clip_tokenizer

        source = os.fspath(pretrained_model_name_or_path)
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        try:
            text_config = AutoConfig.from_pretrained(source, **hub_kwargs).text_config
        except (OSError, ValueError, AttributeError):
            text_config = None
        tokenizer = load_clip_tokenizer(source, text_config)
        try:
            saved = NACLIPImageProcessor.get_image_processor_dict(source, **hub_kwargs)[0]
        except (OSError, ValueError):
            saved = {}
        if saved.get("image_processor_type") == NACLIPImageProcessor.__name__:
            image_processor = NACLIPImageProcessor.from_dict(saved)
        else:
            image_processor = NACLIPImageProcessor()
        return cls(image_processor, tokenizer)

    def tokenize_class_names(
        self, classes: Sequence[str | Sequence[str]], templates: Sequence[str] | None = None
    ) -> BatchFeature:
        """Prompts for every name of every class.

        Returns `input_ids` and `attention_mask` [names * templates, L] and `num_templates`; the attribute
        `name_to_class` [names] gives the class of each name.
        """
        names, name_to_class = flatten_class_names(parse_class_entries(classes))
        templates = list(IMAGENET_TEMPLATES if templates is None else templates)
        max_length = tokenizer_max_length(getattr(self.tokenizer, "model_max_length", None))
        encoded = self.tokenizer(
            build_prompts(names, templates), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        features = BatchFeature(
            data={
                "input_ids": encoded["input_ids"],
                "attention_mask": encoded["attention_mask"],
                "num_templates": len(templates),
            }
        )
        features.name_to_class = torch.tensor(name_to_class, dtype=torch.long)  # for post-processing only
        return features

    def __call__(
        self, images: Any = None, text: Sequence[str | Sequence[str]] | None = None,
        **kwargs: Unpack[NACLIPProcessorKwargs],
    ) -> BatchFeature:
        """Images -> `pixel_values` (attribute `original_sizes`); class entries -> prompts (see
        `tokenize_class_names`; attribute `name_to_class`). `model(**processor(images, text))` runs the model.

        Keywords (`NACLIPProcessorKwargs`): `templates`, `short_side` (default: the method's, else this
        processor's), `return_tensors`, and `method`: a method's name, resized for as it asks and handed on to the
        model with the inputs, so that `model(**inputs)` and then `post_process_semantic_segmentation(outputs,
        inputs)` run that method with the keyword given once. Any other keyword raises a `TypeError` listing these.
        """
        unknown = sorted(set(kwargs) - set(NACLIPProcessorKwargs.__annotations__))
        if unknown:
            raise TypeError(
                f"Unexpected argument(s) {', '.join(unknown)} for {type(self).__name__}; it takes images, text and "
                f"{', '.join(NACLIPProcessorKwargs.__annotations__)}."
            )
        if images is None and text is None:
            raise ValueError("Pass images, class names (text), or both.")
        method, short_side = kwargs.get("method"), kwargs.get("short_side")
        if method is not None and short_side is None:
            short_side = resolve_options({}, {"method": method}).short_side
        features = BatchFeature()
        for part in self._parts(images, text, kwargs.get("templates"), short_side, kwargs.get("return_tensors", "pt")):
            features.update(part)
            for name in ("original_sizes", "name_to_class"):
                if name in vars(part):
                    setattr(features, name, vars(part)[name])
        if method is not None:
            features["method"] = method
        return features

    def _parts(
        self, images: Any, text: Any, templates: Sequence[str] | None, short_side: int | None, return_tensors: Any
    ) -> list[BatchFeature]:
        parts = []
        if images is not None:
            parts.append(self.image_processor(images, short_side=short_side, return_tensors=return_tensors))
        if text is not None:
            parts.append(self.tokenize_class_names([text] if isinstance(text, str) else text, templates))
        return parts

    def post_process_semantic_segmentation(
        self, outputs: Any, inputs: BatchFeature | dict | None = None, **kwargs: Any
    ) -> list[Any]:
        """`NACLIPImageProcessor.post_process_semantic_segmentation`, with `target_sizes` (`inputs.original_sizes`),
        `pixel_values` and `name_to_class` taken from `inputs` (what this processor returned) unless given."""
        if inputs is not None:
            found = {
                "target_sizes": getattr(inputs, "original_sizes", None),
                "pixel_values": inputs.get("pixel_values"),
                "name_to_class": getattr(inputs, "name_to_class", None),
            }
            for key, value in found.items():
                if kwargs.get(key) is None and value is not None:
                    kwargs[key] = value
        return self.image_processor.post_process_semantic_segmentation(outputs, **kwargs)


__all__ = ["NACLIPProcessor", "NACLIPProcessorKwargs", "build_prompts"]
