"""The `naclip-segmentation` pipeline: open-vocabulary semantic segmentation of images into classes named in text.

This module is also shipped as remote code in folders written by `save_for_hub`, so it only imports torch,
transformers, numpy, PIL and sibling modules of this package (never `naclip_hf` itself).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline
from transformers.utils import logging

from .class_embeddings import ClassEmbeddings, encode_classes
from .dense_methods import check_arch
from .image_io import describe_input, load_image
from .image_processing_naclip import NACLIPImageProcessor
from .labels import parse_label_set
from .modeling_naclip import NACLIPSemanticSegmenterOutput, check_attention_strategy
from .options import CALL_OPTIONS, NACLIPInferenceOptions
from .processing_naclip import NACLIPProcessor
from .recently_used import RecentlyUsed
from .tokenization import load_clip_tokenizer

logger = logging.get_logger(__name__)

TASK = "naclip-segmentation"
# How many label sets keep their text embeddings in a pipeline.
LABEL_CACHE_SIZE = 32


def parse_candidate_labels(candidate_labels: Any) -> list[list[str]]:
    """Validate `candidate_labels` (a list; each entry a string with comma-separated synonyms, or a list of names)
    and return the names of every class. Raises `ValueError` for a missing, empty, blank, repeated or lone label."""
    if candidate_labels is None:
        raise ValueError(
            "candidate_labels is required: name the classes to segment, e.g. "
            "candidate_labels=['sky', 'road', 'person, person in shirt'] (synonyms separated by ', ')."
        )
    if isinstance(candidate_labels, str):
        raise ValueError(
            f"candidate_labels must be a list of classes, got the string {candidate_labels!r}; a comma inside one "
            "entry separates synonyms of one class, so write e.g. candidate_labels=['cat', 'dog']."
        )
    if not isinstance(candidate_labels, Sequence):
        raise ValueError(f"candidate_labels must be a list of classes, got {type(candidate_labels).__name__}.")
    for position, entry in enumerate(candidate_labels):
        names_ok = isinstance(entry, (list, tuple)) and all(isinstance(name, str) for name in entry)
        if not (isinstance(entry, str) or names_ok):
            raise ValueError(
                f"candidate_labels[{position}] = {entry!r} is neither a string nor a list of strings (the names "
                "of one class)."
            )
    return parse_label_set(candidate_labels, "candidate_labels")


def _is_naclip_image_processor(image_processor: Any) -> bool:
    # By name: under remote code the class may come from another copy of this package's modules.
    return image_processor is not None and type(image_processor).__name__ == NACLIPImageProcessor.__name__


def _saved_image_processor(source: str | None) -> NACLIPImageProcessor:
    """The NACLIP image processor saved with a checkpoint, or the default one (e.g. for a plain CLIP checkpoint,
    whose CLIPImageProcessor centre-crops to 224 pixels and does not suit segmentation)."""
    if source:
        try:
            saved = NACLIPImageProcessor.get_image_processor_dict(source)[0]
        except (OSError, ValueError):
            saved = {}
        if saved.get("image_processor_type") == NACLIPImageProcessor.__name__:
            return NACLIPImageProcessor.from_dict(saved)
    return NACLIPImageProcessor()


def _resolve_processor(model: Any, tokenizer: Any, image_processor: Any, processor: Any) -> NACLIPProcessor:
    """A `NACLIPProcessor` from what `pipeline()` loaded, falling back to the checkpoint's own files."""
    if processor is not None:
        if not hasattr(processor, "tokenize_class_names"):
            raise TypeError(f"processor must be a NACLIPProcessor, got {type(processor).__name__}.")
        tokenizer = tokenizer if tokenizer is not None else processor.tokenizer
        image_processor = image_processor if image_processor is not None else processor.image_processor
    source = getattr(model, "name_or_path", None) or None
    text_config = model.config.text_config
    if tokenizer is None or len(tokenizer) != text_config.vocab_size:
        # A folder without tokenizer files yields an empty tokenizer: every prompt would get the same ids.
        tokenizer = load_clip_tokenizer(source, text_config)
    if _is_naclip_image_processor(image_processor):
        if not isinstance(image_processor, NACLIPImageProcessor):
            image_processor = NACLIPImageProcessor.from_dict(image_processor.to_dict())
    else:
        image_processor = _saved_image_processor(source)
    return NACLIPProcessor(image_processor, tokenizer)


def _load_checkpoint(model_id_or_path: str | os.PathLike, **kwargs: Any) -> Any:
    """Load a checkpoint given to the pipeline class as an id or path. The registered default checkpoint is an
    object with its own `load` (whose errors explain how to get a checkpoint)."""
    load = getattr(model_id_or_path, "load", None)
    if callable(load):
        return load(**kwargs)
    from .modeling_naclip import NACLIPForSemanticSegmentation

    return NACLIPForSemanticSegmentation.from_pretrained(os.fspath(model_id_or_path), **kwargs).eval()



class NACLIPSegmentationPipeline(Pipeline):
    r"""
    Open-vocabulary semantic segmentation with NACLIP: every pixel gets one of the classes named in
    `candidate_labels`, with no training.

    ```python
    >>> from transformers import pipeline
    >>> import naclip_hf  # registers the task with transformers
    >>> segmenter = pipeline("naclip-segmentation", model="path/to/checkpoint")
    >>> segments = segmenter("street.jpg", candidate_labels=["road", "sky", "car", "person, person in shirt"])
    >>> [(s["label"], round(s["score"], 2)) for s in segments]
    ```

    Call arguments:
        inputs: an image (path, URL, PIL image, [H, W, 3] / [H, W] array or tensor) or a list of them.
        candidate_labels (`list`): one entry per class: a string (synonyms separated by ", ", e.g.
            `"person, person in shirt"`) or a list of names. The first name is the class label in the output.
            Required (at call time or when building the pipeline).
        short_side (`int`, *optional*): resize the image's short side to this before the model (0: keep the size);
            defaults to the method's (the call's, else the config's), else the image processor's (336).
        return_label_map (`bool`, defaults to `False`), return_probabilities (`bool`, defaults to `False`):
            see "Output" below.
        skip_errors (`bool`, defaults to `False`): by default an input that cannot be read raises a `ValueError`
            naming it (for a list, nothing is returned). With `skip_errors=True` its result is
            `{"error": "<message>"}` and the other images are still segmented.
        timeout (`float`, *optional*): timeout in seconds when fetching URLs.
        NACLIP options for this call only (defaults: the model's config, which is never changed): the settings
            of `options.SETTINGS` of the stages `block`, `windows` and `post`, and `method=NAME`.

    Any of these can also be given when building the pipeline (`pipeline("naclip-segmentation", model=...,
    candidate_labels=[...], pamr_steps=0)`); they then apply to every call (options given at call time are
    added on top). Calls from several threads at once are safe: nothing a call does changes shared state but the
    label-embedding cache, which is locked.

    Output, per image (a list of them for a list of images):
        - by default, as transformers' image-segmentation pipeline: a list with one dict per class present in the
          prediction, in class order: `label` (the class's first name), `mask` (PIL image, mode "L", size of the
          input: 255 where the pixel is that class, 0 elsewhere) and `score`, the mean probability of that class
          over the pixels of its mask.
        - with `return_label_map` or `return_probabilities`: a dict with `segments` (that list), `labels` (the label
          of every class id), and as asked `label_map` (`np.ndarray` int64 [H, W] of class ids, indices into
          `labels`) and `probabilities` (`np.ndarray` float32 [classes, H, W], summing to 1 over classes).

    The text embeddings of a label set are computed once per pipeline (`label_embeddings`), and kept in
    `text_cache` when one is given.

    Batching (`batch_size=N`): images are read N at a time; those of equal processed size go through the model in
    one call, the others one call per size (transformers' default collation would pad them, changing the images).
    Post-processing stays per image, in tiles bounded by a memory budget.
    """

    _load_tokenizer = None
    _load_image_processor = None
    _load_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        image_processor: Any = None,
        processor: Any = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(model, (str, os.PathLike)):
            dtype = kwargs.get("dtype")
            model = _load_checkpoint(model, **({} if dtype in (None, "auto") else {"dtype": dtype}))
        if not callable(getattr(model, "get_name_embeddings", None)):
            raise TypeError(
                f"The naclip-segmentation pipeline needs a NACLIPForSemanticSegmentation model, got "
                f"{type(model).__name__}."
            )
        processor = _resolve_processor(model, tokenizer, image_processor, processor)
        self._label_sets: RecentlyUsed[ClassEmbeddings] = RecentlyUsed(LABEL_CACHE_SIZE)
        # A store of label embeddings beyond this pipeline (see `encode_classes`'s `cache`), e.g. on disk.
        self.text_cache = kwargs.pop("text_cache", None)
        # Options given when building the pipeline: every call's, under the call's own.
        self._built_settings = {name: kwargs[name] for name in CALL_OPTIONS if name in kwargs}
        super().__init__(
            model=model,
            tokenizer=processor.tokenizer,
            image_processor=processor.image_processor,
            processor=processor,
            **kwargs,
        )

    # ------------------------------------------------------------------------------------------- parameters
    def _sanitize_parameters(
        self,
        candidate_labels: Any = None,
        return_label_map: bool | None = None,
        return_probabilities: bool | None = None,
        skip_errors: bool | None = None,
        timeout: float | None = None,
        **settings: Any,
    ) -> tuple[dict, dict, dict]:
        preprocess: dict[str, Any] = {}
        postprocess: dict[str, Any] = {}
        if candidate_labels is not None:
            preprocess["candidate_labels"] = parse_candidate_labels(candidate_labels)
        if timeout is not None:
            preprocess["timeout"] = timeout
        if skip_errors is not None:
            preprocess["skip_errors"] = bool(skip_errors)
        # This call's options, resolved once before any image is read: the model's config (with its method), the
        # options given when the pipeline was built, then those given now.
        try:
            options = self.model.config.inference_options(**{**self._built_settings, **settings})
        except TypeError as error:
            raise TypeError(f"{error} (for the {TASK} pipeline; also candidate_labels, return_label_map, "
                            "return_probabilities, skip_errors, timeout)") from None
        check_attention_strategy(options.attn_strategy)  # names of the model package's registries
        check_arch(options.arch)
        preprocess["short_side"] = options.short_side
        if return_label_map is not None:
            postprocess["return_label_map"] = bool(return_label_map)
        if return_probabilities is not None:
            postprocess["return_probabilities"] = bool(return_probabilities)
        return preprocess, {"options": options}, postprocess

    def __call__(self, inputs: Any = None, candidate_labels: Any = None, **kwargs: Any) -> Any:
        """Segment an image or a list of images into `candidate_labels` (see the class docstring).

        Returns a list of `{"label", "score", "mask"}` per image, or a dict with `segments`, `labels`, and
        `label_map` / `probabilities` when asked; a list of those for a list of images.
        """
        if inputs is None:
            inputs = kwargs.pop("images", None)
        if inputs is None:
            raise ValueError("No image given: pass an image (path, URL, PIL image or array) or a list of images.")
        if candidate_labels is None and "candidate_labels" not in self._preprocess_params:
            parse_candidate_labels(None)  # raises with an example
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            return []
        if candidate_labels is not None:
            kwargs["candidate_labels"] = candidate_labels
        return super().__call__(inputs, **kwargs)

    def get_iterator(
        self, inputs: Any, num_workers: int, batch_size: int, preprocess_params: dict[str, Any],
        forward_params: dict[str, Any], postprocess_params: dict[str, Any],
    ) -> Any:  # fmt: skip
        """The outputs for an iterable of images, in order; with `batch_size > 1`, `batch_size` images per model
        call where their processed sizes are equal (see the class docstring)."""
        if not batch_size or batch_size <= 1:
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
        return self._batched_outputs(inputs, batch_size, preprocess_params, forward_params, postprocess_params)

    def _batched_outputs(
        self, inputs: Any, batch_size: int, preprocess_params: dict[str, Any], forward_params: dict[str, Any],
        postprocess_params: dict[str, Any],
    ) -> Any:  # fmt: skip
        iterator = iter(inputs)
        while True:
            chunk = list(itertools.islice(iterator, batch_size))
            if not chunk:
                return
            items = [self.preprocess(image, **preprocess_params) for image in chunk]
            for output in self.forward({"batch": items}, **forward_params)["batch"]:
                yield self.postprocess(output, **postprocess_params)

    # ----------------------------------------------------------------------------------------------- labels
    def label_embeddings(self, candidate_labels: Any) -> ClassEmbeddings:
        """The text embeddings of a label set (as `candidate_labels` takes it), computed once and then read from the
        pipeline's cache (and the disk cache). Calling it ahead of the images makes their calls skip the text tower.

        Example:

        ```python
        >>> segmenter.label_embeddings(["sky", "road, street"]).text_embeds.shape  # (3, projection_dim)
        ```
        """
        classes = parse_candidate_labels(candidate_labels)
        templates = self.model.config.prompt_templates
        key = (tuple(tuple(names) for names in classes), None if templates is None else tuple(templates))
        return self._label_sets.get_or_compute(
            key, lambda: encode_classes(self.model, self.processor, classes, cache=self.text_cache)
        )

    # ------------------------------------------------------------------------------------------------ steps
    def preprocess(
        self,
        image: Any,
        candidate_labels: list[list[str]] | None = None,
        short_side: int | None = None,
        skip_errors: bool = False,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """One input -> `pixel_values` [1, 3, h, w], `original_size` (H, W) and the label set's embeddings (see
        `label_embeddings`); or `{"error": ...}` when the input cannot be read and `skip_errors` is set."""
        if candidate_labels is None:
            parse_candidate_labels(None)  # raises with an example
        try:
            encoded = self.image_processor(load_image(image, timeout=timeout), short_side=short_side)
        except (OSError, ValueError, TypeError) as error:
            message = f"Could not read image {describe_input(image)}: {error}"
            if not skip_errors:
                raise ValueError(message + " (pass skip_errors=True to get an error entry for it instead)") from error
            logger.warning(message)
            return {"error": message}
        pixel_values = encoded["pixel_values"]
        if isinstance(pixel_values, list):
            pixel_values = pixel_values[0]
        return {
            "pixel_values": pixel_values,
            "original_size": tuple(encoded.original_sizes[0].tolist()),
            "label_set": self.label_embeddings(candidate_labels),
        }

    def _forward(self, model_inputs: dict[str, Any], options: NACLIPInferenceOptions | None = None) -> dict[str, Any]:
        """One image's `pixel_values` [1, 3, h, w] -> its `logits` [1, names, h, w]; or, for `{"batch": [...]}`,
        the outputs of every image, images of equal processed size in one model call."""
        batch = model_inputs["batch"] if "batch" in model_inputs else [model_inputs]
        outputs: list[dict[str, Any]] = list(batch)  # error entries pass through
        readable = [position for position, item in enumerate(batch) if "error" not in item]
        if readable:
            label_set = batch[readable[0]]["label_set"]
            by_size: dict[tuple[int, ...], list[int]] = {}
            for position in readable:
                by_size.setdefault(tuple(batch[position]["pixel_values"].shape), []).append(position)
            for positions in by_size.values():
                pixel_values = torch.cat([batch[position]["pixel_values"] for position in positions])
                pixel_values = pixel_values.to(self.device, self.model.dtype)
                output = self.model(pixel_values=pixel_values, text_embeds=label_set.text_embeds, options=options)
                for row, position in enumerate(positions):
                    outputs[position] = {
                        "outputs": NACLIPSemanticSegmenterOutput(
                            logits=output.logits[row : row + 1], options=output.options
                        ),
                        "pixel_values": pixel_values[row : row + 1],
                        "original_size": batch[position]["original_size"],
                        "label_set": label_set,
                    }
        return {"batch": outputs} if "batch" in model_inputs else outputs[0]

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        return_label_map: bool = False,
        return_probabilities: bool = False,
    ) -> list[dict[str, Any]] | dict[str, Any]:
        if "error" in model_outputs:
            return {"error": model_outputs["error"]}
        label_set = model_outputs["label_set"]
        # `class_scores`: mean probability of each class over the pixels labelled with it, gathered tile by tile.
        (result,) = self.image_processor.post_process_semantic_segmentation(
            model_outputs["outputs"],  # post-processed with the options the model ran with
            target_sizes=[model_outputs["original_size"]],
            pixel_values=model_outputs["pixel_values"],
            name_to_class=label_set.name_to_class,
            return_probabilities=return_probabilities,
            return_class_scores=True,
        )
        segmentation, scores = result["segmentation"], result["class_scores"]
        labels = label_set.class_labels
        label_map = segmentation.cpu().numpy().astype(np.int64, copy=False)
        segments = []
        for class_id in torch.nonzero(result["class_pixel_counts"]).flatten().tolist():
            mask = Image.fromarray((label_map == class_id).view(np.uint8) * np.uint8(255))
            segments.append({"label": labels[class_id], "score": float(scores[class_id]), "mask": mask})
        if not (return_label_map or return_probabilities):
            return segments
        output: dict[str, Any] = {"segments": segments, "labels": list(labels)}
        if return_label_map:
            output["label_map"] = label_map
        if return_probabilities:
            output["probabilities"] = result["probabilities"].float().cpu().numpy()
        return output


__all__ = ["TASK", "NACLIPSegmentationPipeline", "parse_candidate_labels"]
