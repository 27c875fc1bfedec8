"""Image processor and processor for NACLIP: resize the short side, normalise, and turn class names into prompts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, CLIPTokenizer
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin

from .image_utils import resize_short_side
from .labels import flatten_class_names, parse_class_entries
from .templates import IMAGENET_TEMPLATES

# Pixel statistics of CLIP's training data, on the 0-255 scale, RGB.
CLIP_PIXEL_MEAN = (122.771, 116.746, 104.094)
CLIP_PIXEL_STD = (68.501, 66.632, 70.323)


def to_rgb_array(image: Any) -> np.ndarray:
    """A PIL image, [H, W, 3] / [H, W] array or [3, H, W] / [H, W, 3] tensor, as a [H, W, 3] uint8 RGB array."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.permute(1, 2, 0)
        array = array.numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise TypeError(f"Unsupported image type {type(image).__name__}; pass a PIL image, numpy array or tensor.")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Expected an image of shape [H, W, 3], got {array.shape}.")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


class NACLIPImageProcessor(BaseImageProcessor):
    r"""
    Prepares images for NACLIP as the official evaluation does: resize so that the short side is `short_side`
    (long side at most `max_long_side`, aspect ratio kept, bilinear like OpenCV's `INTER_LINEAR`), then normalise
    with CLIP's mean and std on the 0-255 scale.

    Args:
        short_side (`int`, defaults to 336): target short side; 0 keeps the image size.
        max_long_side (`int`, defaults to 2048): cap on the long side after resizing.
        do_resize (`bool`, defaults to `True`), do_normalize (`bool`, defaults to `True`).
        image_mean, image_std (`list[float]`): per-channel RGB statistics on the 0-255 scale.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        short_side: int = 336,
        max_long_side: int = 2048,
        do_resize: bool = True,
        do_normalize: bool = True,
        image_mean: Sequence[float] = CLIP_PIXEL_MEAN,
        image_std: Sequence[float] = CLIP_PIXEL_STD,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.short_side = int(short_side)
        self.max_long_side = int(max_long_side)
        self.do_resize = bool(do_resize)
        self.do_normalize = bool(do_normalize)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self._check(self.short_side, self.max_long_side)

    @staticmethod
    def _check(short_side: int, max_long_side: int) -> None:
        if short_side < 0:
            raise ValueError(f"short_side={short_side} must be >= 0 (0 keeps the original size).")
        if max_long_side < 1:
            raise ValueError(f"max_long_side={max_long_side} must be >= 1.")

    def resize_image(self, image: np.ndarray, short_side: int | None = None) -> np.ndarray:
        """[H, W, 3] uint8 -> [h, w, 3] uint8 with the short side resized."""
        short_side = self.short_side if short_side is None else int(short_side)
        self._check(short_side, self.max_long_side)
        if not self.do_resize or short_side == 0:
            return image
        return resize_short_side(image, short_side, self.max_long_side)

    def normalize_image(self, image: np.ndarray) -> torch.Tensor:
        """[h, w, 3] uint8 -> [3, h, w] float32 pixel values."""
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
        if self.do_normalize:
            mean = torch.tensor(self.image_mean).view(3, 1, 1)
            std = torch.tensor(self.image_std).view(3, 1, 1)
            pixels = (pixels - mean) / std
        return pixels

    def preprocess(
        self,
        images: Any,
        short_side: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Process one image or a list of them.

        Returns a `BatchFeature` with `pixel_values` ([B, 3, h, w] when all processed images share a size, else a
        list of [1, 3, h, w]) and `original_sizes` ([B, 2], (H, W) before resizing).
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments {sorted(kwargs)} for {type(self).__name__}.")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; NACLIP works on PyTorch tensors.")
        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        if not batch:
            raise ValueError("No images given.")
        arrays = [to_rgb_array(image) for image in batch]
        original_sizes = torch.tensor([array.shape[:2] for array in arrays], dtype=torch.long)
        pixels = [self.normalize_image(self.resize_image(array, short_side)) for array in arrays]
        if len({tuple(p.shape) for p in pixels}) == 1:
            pixel_values: Any = torch.stack(pixels)
        else:
            pixel_values = [p[None] for p in pixels]
        return BatchFeature(data={"pixel_values": pixel_values, "original_sizes": original_sizes})


def build_prompts(names: Sequence[str], templates: Sequence[str] | None = None) -> list[str]:
    """Every template filled with every name: name 0's prompts first, then name 1's, ..."""
    templates = IMAGENET_TEMPLATES if templates is None else templates
    return [template.format(name) for name in names for template in templates]


class NACLIPProcessor(ProcessorMixin):
    r"""
    Pairs [`NACLIPImageProcessor`] with CLIP's tokenizer. `text` takes class entries (a string per class,
    synonyms separated by commas, or a list of names per class); each name is expanded into one prompt per
    template, tokenised and padded to the longest prompt.
    """

    def __init__(self, image_processor: NACLIPImageProcessor | None = None, tokenizer: Any = None, **kwargs: Any):
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_tokenizer_dir(cls, tokenizer_dir: str | os.PathLike, **image_processor_kwargs: Any) -> NACLIPProcessor:
        """A processor from a folder holding CLIP's `vocab.json` and `merges.txt` (or a saved tokenizer)."""
        if not os.path.isdir(tokenizer_dir):
            raise FileNotFoundError(f"Tokenizer folder {tokenizer_dir} does not exist; it must hold vocab.json and "
                                    "merges.txt of the CLIP BPE.")
        try:
            # CLIP's text tower has 77 positions; a bare BPE folder does not say so.
            tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=77)
        except Exception as error:
            raise ValueError(f"Could not load a CLIP tokenizer from {tokenizer_dir}: {error}") from error
        return cls(NACLIPImageProcessor(**image_processor_kwargs), tokenizer)

    def tokenize_class_names(
        self, classes: Sequence[str | Sequence[str]], templates: Sequence[str] | None = None
    ) -> BatchFeature:
        """Prompts for every name of every class.

        Returns `input_ids` and `attention_mask` [names * templates, L], `name_to_class` [names] and
        `num_templates`.
        """
        names, name_to_class = flatten_class_names(parse_class_entries(classes))
        templates = list(IMAGENET_TEMPLATES if templates is None else templates)
        max_length = getattr(self.tokenizer, "model_max_length", 77)
        max_length = 77 if not isinstance(max_length, int) or max_length > 10_000 else max_length
        encoded = self.tokenizer(
            build_prompts(names, templates), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return BatchFeature(
            data={
                "input_ids": encoded["input_ids"],
                "attention_mask": encoded["attention_mask"],
                "name_to_class": torch.tensor(name_to_class, dtype=torch.long),
                "num_templates": len(templates),
            }
        )

    def __call__(
        self,
        images: Any = None,
        text: Sequence[str | Sequence[str]] | None = None,
        templates: Sequence[str] | None = None,
        short_side: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Images -> `pixel_values`, `original_sizes`; class entries -> prompts (see `tokenize_class_names`)."""
        if images is None and text is None:
            raise ValueError("Pass images, class names (text), or both.")
        data: dict[str, Any] = {}
        if images is not None:
            data.update(self.image_processor(images, short_side=short_side, return_tensors=return_tensors))
        if text is not None:
            if isinstance(text, str):
                text = [text]
            data.update(self.tokenize_class_names(text, templates))
        return BatchFeature(data=data)


__all__ = ["NACLIPImageProcessor", "NACLIPProcessor", "build_prompts", "to_rgb_array"]
