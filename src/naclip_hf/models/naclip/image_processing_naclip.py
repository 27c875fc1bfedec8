"""Image processor of NACLIP: resize the short side and normalise; post-process logits into label maps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import Unpack

from .image_io import load_image
from .image_utils import resize_short_side
from .options import (
    DEFAULTS,
    POST_PROCESSING_OPTIONS,
    NACLIPInferenceOptions,
    check_settings,
    resolve_options,
    settings_typed_dict,
)
from .postprocessing_naclip import post_process_image

# Keywords of `post_process_semantic_segmentation` for one call (built from `options.SETTINGS`).
NACLIPPostProcessingKwargs = settings_typed_dict("NACLIPPostProcessingKwargs", "post")
# Pixel statistics of CLIP's training data, on the 0-255 scale, RGB.
CLIP_PIXEL_MEAN = (122.771, 116.746, 104.094)
CLIP_PIXEL_STD = (68.501, 66.632, 70.323)


class NACLIPImageProcessor(BaseImageProcessor):
    r"""
    Prepares images for NACLIP as the official evaluation does: resize so that the short side is `short_side`
    (long side at most `max_long_side`, aspect ratio kept, bilinear like OpenCV's `INTER_LINEAR`), then normalise
    with CLIP's mean and std on the 0-255 scale. `post_process_semantic_segmentation` turns the model's logits into
    label maps at the original size.

    Args:
        short_side (`int`, defaults to 336): target short side; 0 keeps the image size.
        max_long_side (`int`, defaults to 2048): cap on the long side after resizing.
        do_resize (`bool`, defaults to `True`), do_normalize (`bool`, defaults to `True`).
        image_mean, image_std (`list[float]`): per-channel RGB statistics on the 0-255 scale.

    Example:

    ```python
    >>> processor = NACLIPImageProcessor(short_side=336)
    >>> inputs = processor(image)  # inputs["pixel_values"] [1, 3, h, w]; inputs.original_sizes [1, 2]
    ```
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        short_side: int = DEFAULTS["short_side"],
        max_long_side: int = 2048,
        do_resize: bool = True,
        do_normalize: bool = True,
        image_mean: Sequence[float] = CLIP_PIXEL_MEAN,
        image_std: Sequence[float] = CLIP_PIXEL_STD,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.short_side = check_settings({"short_side": short_side})["short_side"]
        if isinstance(max_long_side, bool) or not isinstance(max_long_side, int) or max_long_side < 1:
            raise ValueError(f"max_long_side={max_long_side!r} is invalid: it must be an integer >= 1.")
        self.max_long_side = max_long_side
        self.do_resize = bool(do_resize)
        self.do_normalize = bool(do_normalize)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]

    # ----------------------------------------------------------------------------------------- pre-processing
    def resize_image(self, image: np.ndarray, short_side: int | None = None) -> np.ndarray:
        """[H, W, 3] uint8 -> [h, w, 3] uint8 with the short side resized (`short_side` default: this processor's)."""
        short_side = self.short_side if short_side is None else check_settings({"short_side": short_side})["short_side"]
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
        """Process one image or a list of them (paths, URLs, PIL images, arrays or tensors; see `image_io`).

        Returns a `BatchFeature` holding the model's input `pixel_values` ([B, 3, h, w] when all processed images
        share a size, else a list of [1, 3, h, w]); its attribute `original_sizes` ([B, 2], (H, W) before
        resizing) is what `post_process_semantic_segmentation` takes as `target_sizes`.
        """
        if kwargs:
            raise TypeError(
                f"Unexpected argument(s) {', '.join(sorted(kwargs))} for {type(self).__name__}; it takes images, "
                "short_side and return_tensors."
            )
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; NACLIP works on PyTorch tensors.")
        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        if not batch:
            raise ValueError("No images given.")
        arrays = [load_image(image) for image in batch]
        original_sizes = torch.tensor([array.shape[:2] for array in arrays], dtype=torch.long)
        pixels = [self.normalize_image(self.resize_image(array, short_side)) for array in arrays]
        if len({tuple(p.shape) for p in pixels}) == 1:
            pixel_values: Any = torch.stack(pixels)
        else:
            pixel_values = [p[None] for p in pixels]
        features = BatchFeature(data={"pixel_values": pixel_values})
        features.original_sizes = original_sizes  # not a model input: post-processing's target sizes
        return features

    # ---------------------------------------------------------------------------------------- post-processing
    @torch.no_grad()
    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        name_to_class: Sequence[int] | torch.Tensor | None = None,
        return_probabilities: bool = False,
        *,
        return_class_scores: bool = False,
        max_tile_bytes: int | None = None,
        **kwargs: Unpack[NACLIPPostProcessingKwargs],
    ) -> list[torch.Tensor] | list[dict[str, torch.Tensor]]:
        r"""From per-name logits to class label maps (and probabilities) at the original image sizes.

        For each image: logits upsampled bilinearly to its target size; PAMR (when `pamr_steps > 0`, guided by
        `pixel_values` upsampled to that size); softmax over names of `logit_scale · logits`; each class's
        probability = the maximum over its names (synonyms); label = argmax over classes, and 0 where the top
        probability is below `prob_thd`. Runs in fp32 whatever the model's dtype.

        Args:
            outputs: the model's output (its `logits`, `(batch_size, num_names, h, w)`), or that tensor.
            target_sizes: `(batch_size, 2)` (height, width) per image; default: the logits' size.
            pixel_values (`(batch_size, 3, h, w)`): the model input, PAMR's guide image (needed when PAMR is on).
            name_to_class (`(num_names,)`): class index of each name; default: every name its own class.
            kwargs (`NACLIPPostProcessingKwargs`): the post-processing options of `options.SETTINGS` (stage
                `post`: `logit_scale`, `prob_thd`, `area_thd`, `pamr_steps`, `pamr_dilations`), on top of those the
                model ran with (`outputs.options`: its config, method and call keywords); for a bare logits tensor,
                on top of the defaults. Any other keyword raises a `TypeError` naming the valid ones.
            return_probabilities: also return the class probabilities (the only full-size float output: without
                it, memory does not grow with classes × height × width).
            return_class_scores: also return `class_scores` `(num_classes,)` float64, the mean probability of each
                class over the pixels labelled with it (0 for absent classes), and `class_pixel_counts`.
            max_tile_bytes: the work runs in tiles of at most `max_tile_bytes` (default 1 GiB), with the context
                PAMR needs around each; this changes speed and memory, never the result (see `post_process_image`).

        Returns:
            One `torch.LongTensor` `(height, width)` of class ids per image; with `return_probabilities` or
            `return_class_scores`, one dict per image with `segmentation` and, as asked, `probabilities`
            `(num_classes, height, width)` (summing to 1 over classes), `class_scores` and `class_pixel_counts`.

        Example:

        ```python
        >>> inputs = processor(images=image, text=["sky", "tree", "road, street"])
        >>> outputs = model(**inputs)
        >>> labels = processor.image_processor.post_process_semantic_segmentation(
        ...     outputs, target_sizes=inputs.original_sizes, pixel_values=inputs["pixel_values"],
        ...     name_to_class=inputs.name_to_class)[0]
        ```
        """
        logits = outputs if isinstance(outputs, torch.Tensor) else outputs.logits
        options = self.post_processing_options(getattr(outputs, "options", None), **kwargs)
        if logits.ndim != 4:
            raise ValueError(f"logits must be [batch, names, height, width], got shape {tuple(logits.shape)}.")
        batch, num_names = logits.shape[:2]
        if target_sizes is None:
            target_sizes = [tuple(logits.shape[-2:])] * batch
        if len(target_sizes) != batch:
            raise ValueError(f"target_sizes has {len(target_sizes)} entries for a batch of {batch} images.")
        if options["pamr_steps"] > 0 and pixel_values is None:
            raise ValueError("PAMR needs the model input as guide image: pass pixel_values (or pamr_steps=0).")
        index = torch.arange(num_names) if name_to_class is None else torch.as_tensor(name_to_class, dtype=torch.long)
        if index.numel() != num_names:
            raise ValueError(f"name_to_class has {index.numel()} entries for {num_names} names.")
        results: list[Any] = []
        for image in range(batch):
            height, width = (int(v) for v in target_sizes[image])
            guide = None if pixel_values is None else pixel_values[image : image + 1]
            result = post_process_image(
                logits[image : image + 1], guide, (height, width), index, **options,
                return_probabilities=return_probabilities, max_tile_bytes=max_tile_bytes,
            )  # fmt: skip
            if not (return_probabilities or return_class_scores):
                results.append(result.segmentation)
                continue
            entry = {"segmentation": result.segmentation}
            if return_probabilities:
                entry["probabilities"] = result.probabilities
            if return_class_scores:
                entry["class_scores"] = result.class_scores()
                entry["class_pixel_counts"] = result.class_pixel_counts
            results.append(entry)
        return results

    @staticmethod
    def post_processing_options(ran_with: NACLIPInferenceOptions | None = None, **options: Any) -> dict[str, Any]:
        """The post-processing options: `options` (None values ignored) on top of `ran_with` (the options the
        model ran with; default: the defaults), checked (`TypeError` for an unknown name, `ValueError` for a
        value)."""
        unknown = sorted(set(options) - set(POST_PROCESSING_OPTIONS))
        if unknown:
            valid = ", ".join(POST_PROCESSING_OPTIONS)
            raise TypeError(f"Unknown post-processing option(s) {unknown}; valid: {valid}.")
        given = {name: value for name, value in options.items() if value is not None}
        if ran_with is None:
            ran_with = resolve_options({})
        return (ran_with.replace(**given) if given else ran_with).of_stage("post")


__all__ = ["CLIP_PIXEL_MEAN", "CLIP_PIXEL_STD", "NACLIPImageProcessor"]
