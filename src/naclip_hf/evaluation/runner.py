"""Benchmark evaluation following the official NACLIP protocol, on one process or split across several.

For every image of a split: segment it with the benchmark's settings (short side, sliding window, probability
threshold, PAMR on or off), compare the prediction at the original image size with the label map (label ids
reduced per preset, 255 ignored), and add the pixel counts to one confusion matrix. mIoU, per-class IoU and
accuracies come from the matrix accumulated over the whole split.

The model is a `naclip_hf.segmenter.Segmenter` (a PyTorch checkpoint or an ONNX export; a PyTorch model and its
processor are wrapped in one). Under `accelerate launch` or `torchrun` (`WORLD_SIZE > 1`), image `i` goes to process
`i % world_size` (`naclip_hf.distributed.ProcessGroup`), and the per-process confusion matrices are summed (integer
counts), so the result is the same as on one process.

The model's config is never changed: settings of the run that differ from it are passed to `Segmenter.segment`
for each call. When an image fails, `EvaluationFailed` carries the scores of the images done so far.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..benchmarks import PUBLISHED_KEYS, Benchmark, get_benchmark
from ..distributed import ProcessGroup
from ..fileio import write_text_atomic
from ..models.naclip.options import (
    CONFIG_SETTINGS,
    DEFAULTS,
    FORWARD_OPTIONS,
    POST_PROCESSING_OPTIONS,
    SETTINGS,
    NACLIPInferenceOptions,
)
from ..segmenter import Segmenter, TorchSegmenter
from .datasets import (
    IGNORE_INDEX,
    check_label_map,
    check_limit,
    describe_cell,
    load_benchmark_dataset,
    load_hub_dataset,
    open_cell,
    read_label_map,
)
from .metric import MeanIoU

if TYPE_CHECKING:
    import datasets

    from ..models.naclip.modeling_naclip import NACLIPForSemanticSegmentation
    from ..models.naclip.processing_naclip import NACLIPProcessor

PAMR_STEPS_ON = DEFAULTS["pamr_steps"]
"""PAMR iterations of the official evaluation when PAMR is on (the default)."""

# Settings that change speed or memory only; they never make a run differ from the official protocol.
_SPEED_ONLY = tuple(setting.name for setting in SETTINGS if setting.speed_only)


class EvaluationFailed(RuntimeError):
    """An image could not be evaluated. The message names the file; `partial` holds the scores of the images
    done before (`partial.partial` is True), or None when none were."""

    def __init__(self, message: str, partial: EvaluationResult | None) -> None:
        super().__init__(message)
        self.partial = partial


def class_display_names(preset: Benchmark, classes: Sequence[Sequence[str]] | None = None) -> list[str]:
    """One short name per class of the preset (or of `classes`, the names embedded for it): its first synonym.

    Class 0 of a benchmark with a probability threshold is where low-confidence pixels go, i.e. the background;
    it is called "background" even when its synonyms list background things ("sky, wall, tree, ...").
    """
    names = [synonyms[0] for synonyms in (preset.class_names() if classes is None else classes)]
    if preset.prob_thd > 0 and names:
        names[0] = "background"
    if len(set(names)) != len(names):
        names = [f"{name} ({index})" for index, name in enumerate(names)]
    return names


def _percent(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value) * 100.0


@dataclass
class EvaluationResult:
    """Scores of one benchmark run with the settings that produced them.

    `confusion_matrix` is int64 `[num_classes, num_classes]` (rows = ground truth, columns = prediction).
    Fractions (`mean_iou`, ...) are in [0, 1]; NaN when undefined (nothing counted, class never seen).
    `settings` holds every NACLIP setting, the short side, the model, split and preset; `published` the
    benchmark's published mIoU (%) under "paper_no_pamr", "paper_pamr", "repo_pamr". A run stopped by an error
    has `partial=True`, `num_images_done` images counted (of `num_images`) and the `error`.
    """

    preset: str
    class_names: list[str]
    confusion_matrix: np.ndarray
    mean_iou: float
    mean_accuracy: float
    overall_accuracy: float
    per_class_iou: np.ndarray
    per_class_accuracy: np.ndarray
    num_images: int
    settings: dict[str, Any]
    published: dict[str, float]
    protocol_deviations: list[str] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    partial: bool = False
    num_images_done: int | None = None
    error: str | None = None

    @property
    def miou_percent(self) -> float | None:
        """mIoU in percent (None if undefined)."""
        return _percent(self.mean_iou)

    @property
    def pamr(self) -> bool:
        """Whether PAMR was on."""
        return int(self.settings.get("pamr_steps", 0)) > 0

    def comparison(self) -> dict[str, Any]:
        """The published numbers this run compares with, and the differences (percentage points)."""
        paper_key = "paper_pamr" if self.pamr else "paper_no_pamr"
        ours = self.miou_percent
        paper = self.published.get(paper_key)
        repo = self.published.get("repo_pamr")
        return {
            "pamr": self.pamr,
            "paper_key": paper_key,
            "paper_miou_percent": paper,
            "repo_miou_percent": repo,
            "delta_paper": None if ours is None or paper is None else round(ours - paper, 4),
            "delta_repo": None if ours is None or repo is None or not self.pamr else round(ours - repo, 4),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: NaN becomes None, arrays become lists."""
        return {
            "preset": self.preset,
            "partial": self.partial,
            "model": self.settings.get("model"),
            "split": self.settings.get("split"),
            "num_images": self.num_images,
            "num_images_done": self.num_images if self.num_images_done is None else self.num_images_done,
            "error": self.error,
            "miou_percent": self.miou_percent,
            "mean_iou": None if math.isnan(self.mean_iou) else self.mean_iou,
            "aacc_percent": _percent(self.overall_accuracy),
            "macc_percent": _percent(self.mean_accuracy),
            "overall_accuracy": None if math.isnan(self.overall_accuracy) else self.overall_accuracy,
            "mean_accuracy": None if math.isnan(self.mean_accuracy) else self.mean_accuracy,
            "per_class_iou": {n: _percent(v) for n, v in zip(self.class_names, self.per_class_iou.tolist())},
            "per_class_accuracy": {n: _percent(v) for n, v in zip(self.class_names, self.per_class_accuracy.tolist())},
            "class_names": list(self.class_names),
            "settings": dict(self.settings),
            "published": dict(self.published),
            "comparison": self.comparison(),
            "protocol_deviations": list(self.protocol_deviations),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "confusion_matrix": self.confusion_matrix.tolist(),
        }

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write `to_dict()` to `path` atomically (temporary file in the same folder, then rename)."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def format_table(self) -> str:
        """The per-class table: class name, IoU %, accuracy % ("-" for classes never seen)."""
        width = max([len("class"), *(len(name) for name in self.class_names)])

        def cell(value: float) -> str:
            return f"{'-':>7}" if math.isnan(value) else f"{value * 100:7.2f}"

        rule = f"+-{'-' * width}-+---------+---------+"
        lines = [rule, f"| {'class':<{width}} |   IoU % |   Acc % |", rule]
        for name, iou, accuracy in zip(self.class_names, self.per_class_iou, self.per_class_accuracy):
            lines.append(f"| {name:<{width}} | {cell(iou)} | {cell(accuracy)} |")
        lines.append(rule)
        return "\n".join(lines)

    def format_report(self) -> str:
        """Human-readable report: per-class table, summary scores, settings, published numbers."""

        def pct(value: float) -> str:
            return "n/a" if math.isnan(value) else f"{value * 100:.2f}"

        settings = self.settings
        header = (
            f"NACLIP evaluation: {self.preset} ({settings.get('split')} split, {self.num_images} images, "
            f"{settings.get('num_processes', 1)} process(es), {self.elapsed_seconds:.1f} s)"
        )
        lines = [header]
        if self.partial:
            lines.append(
                f"PARTIAL RESULT: stopped after {self.num_images_done} of {self.num_images} images ({self.error})"
            )
        lines.append(self.format_table())
        lines.append(
            f"mIoU {pct(self.mean_iou)}  |  aAcc {pct(self.overall_accuracy)}  |  mAcc {pct(self.mean_accuracy)}"
        )
        lines.append("Settings:")
        for key in ("preset", "model", "data", "split", "num_images", "short_side", "max_long_side", *CONFIG_SETTINGS):
            if key in settings:
                value = settings[key]
                if key == "prompt_templates":
                    value = "ImageNet (80 templates)" if value is None else f"{len(value)} custom templates"
                lines.append(f"  {key:<24} {value}")
        for key in ("reduce_zero_label", "ignore_index", "num_processes", "device", "dtype"):
            if key in settings:
                lines.append(f"  {key:<24} {settings[key]}")
        comparison = self.comparison()
        ours = self.miou_percent
        lines.append(f"Published mIoU (%) for {self.preset} (ViT-B/16, OpenAI weights); this run: {pct(self.mean_iou)}")
        for key in ("paper_no_pamr", "paper_pamr", "repo_pamr"):
            if key not in self.published:
                continue
            published = self.published[key]
            compared = key == comparison["paper_key"] or (key == "repo_pamr" and self.pamr)
            delta = f"  ours - published: {ours - published:+.2f}" if compared and ours is not None else ""
            marker = "*" if compared else " "
            lines.append(f" {marker} {PUBLISHED_KEYS[key]:<28} {published:6.2f}{delta}")
        lines.append(f"  (* = same PAMR setting as this run: PAMR {'on' if self.pamr else 'off'})")
        if self.protocol_deviations:
            lines.append("Differs from the official protocol: " + "; ".join(self.protocol_deviations) + ".")
        return "\n".join(lines)


def resolve_settings(
    preset: Benchmark | str, pamr: bool | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The settings of a run (names from `naclip_hf.models.naclip.options`): the benchmark's (crop, stride,
    threshold, short side), then PAMR, then `overrides`.

    `pamr=True/False` sets `pamr_steps` to 10 / 0; `None` keeps the model's setting. Explicit `overrides` win.
    """
    settings = get_benchmark(preset).settings()
    if pamr is not None:
        settings["pamr_steps"] = PAMR_STEPS_ON if pamr else 0
    settings.update(overrides or {})
    return settings


def _open_image(value: Any) -> Any:
    """An RGB PIL image (or the array itself) from a path, PIL image, `{"bytes"/"path"}` dict or array."""
    from PIL import Image

    value = open_cell(value, "Image")
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    with Image.open(value) as image:
        return image.convert("RGB")


def _describe_row(row: Mapping[str, Any], column: str) -> str:
    return describe_cell(row.get(column), f"{column} of image id {row.get('id')!r}")


def _protocol_deviations(
    preset: Benchmark, settings: Mapping[str, Any], short_side: int, limit: int | None, other_names: bool = False
) -> list[str]:
    """How the run's settings differ from the benchmark's official protocol (the defaults of
    `naclip_hf.models.naclip.options`, which are the official code's, with the benchmark's own settings)."""
    official = {key: _plain(DEFAULTS[key]) for key in CONFIG_SETTINGS if key not in _SPEED_ONLY}
    official.pop("pamr_steps")
    official.update({key: value for key, value in preset.settings().items() if key != "short_side"})
    if preset.slide_crop == 0:
        official.pop("slide_stride")
    notes = []
    if short_side != preset.short_side:
        notes.append(f"short_side={short_side} (official {preset.short_side})")
    for key, value in official.items():
        actual = settings.get(key)
        if isinstance(value, float):
            differs = not isinstance(actual, (int, float)) or not math.isclose(actual, value)
        else:
            differs = actual != value
        if differs and key == "prompt_templates":
            notes.append(f"prompt_templates: {len(actual)} custom templates (official: the 80 ImageNet templates)")
        elif differs:
            notes.append(f"{key}={actual!r} (official {value!r})")
    steps = int(settings.get("pamr_steps", 0))
    if steps not in (0, PAMR_STEPS_ON):
        notes.append(f"pamr_steps={steps} (official 0 or {PAMR_STEPS_ON})")
    if limit is not None:
        notes.append(f"limit={limit} (a subset of the split)")
    if other_names:
        notes.append(f"class names other than the benchmark's ({preset.classes_file})")
    return notes


def split_call_options(config: Any, settings: Mapping[str, Any]) -> tuple[dict[str, Any], int | None]:
    """The per-call options of `Segmenter.segment` for a run's `settings`: those that differ from the model's
    `config`, among the options a call takes (`FORWARD_OPTIONS` and `POST_PROCESSING_OPTIONS` of
    `naclip_hf.models.naclip.options`); and the short side (None if not among the settings).

    A setting a call cannot change (the text settings, the resize of the positional embeddings) that differs from
    the model's raises `ValueError` (load the model with it instead)."""
    per_call = (*FORWARD_OPTIONS, *POST_PROCESSING_OPTIONS)
    options: dict[str, Any] = {}
    for key, value in settings.items():
        if key == "short_side" or _plain(getattr(config, key)) == _plain(value):
            continue
        if key not in per_call:
            raise ValueError(
                f"{key} differs from the model's ({key}={value!r}) and cannot change per call; load the model with "
                f"it, e.g. load_segmenter(..., overrides={{{key!r}: ...}})."
            )
        options[key] = value
    return options, settings.get("short_side")


def _select_images(dataset: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    """`dataset` cut to its first `limit` rows, checked: image and label columns, at least one row."""
    check_limit(limit)
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(range(limit))
    missing = [column for column in ("image", "label") if column not in dataset.column_names]
    if missing:
        raise ValueError(f"The dataset has no {missing} column(s); its columns are {dataset.column_names}.")
    if len(dataset) == 0:
        raise ValueError("The dataset has no images to evaluate.")
    return dataset


def _classes_to_embed(
    preset: Benchmark, classes: Sequence[Sequence[str]] | None, class_embeddings: Any
) -> list[list[str]]:
    """The class names of the run: `classes` (one per label id), else those `class_embeddings` were made from,
    else the benchmark's."""
    if classes is not None:
        classes = [list(names) for names in classes]
        if len(classes) != preset.num_classes:
            raise ValueError(
                f"classes hold {len(classes)} classes but {preset.name} has {preset.num_classes} (class i is label "
                f"id i); pass the benchmark's names, e.g. get_benchmark({preset.name!r}).class_names(method=...)."
            )
        return classes
    if class_embeddings is not None:
        return [list(names) for names in class_embeddings.classes]
    return preset.class_names()


def _as_segmenter(model: Any, processor: Any, processes: ProcessGroup) -> Segmenter:
    """`model` itself when it is a `Segmenter` (then `processor` must be None), else a PyTorch model and its
    processor, moved to this process's device under a multi-process launch."""
    if isinstance(model, Segmenter):
        if processor is not None:
            raise ValueError(
                "A Segmenter brings its own processor; call evaluate_preset(segmenter, None, ...) without one."
            )
        return model
    if model is None or processor is None:
        raise ValueError(
            "Pass a Segmenter (naclip_hf.segmenter.load_segmenter: a checkpoint or an ONNX export) with "
            "processor=None, or a NACLIP model with its processor (naclip_hf.inference.load_model, load_processor)."
        )
    device = processes.model_device
    if device is not None and str(model.device) != device:
        model.to(device)
    return TorchSegmenter(model, processor)


def _embed_classes(segmenter: Segmenter, preset: Benchmark, classes: list[list[str]], class_embeddings: Any) -> Any:
    """The text side of the run: `class_embeddings` when given (checked), else `classes` embedded (disk cache)."""
    try:
        if class_embeddings is None:
            return segmenter.encode_classes(classes, cache_dir=True)
        if len(class_embeddings.classes) != preset.num_classes:
            raise ValueError(
                f"class_embeddings hold {len(class_embeddings.classes)} classes but {preset.name} has "
                f"{preset.num_classes}; embed the benchmark's class_names()."
            )
        return class_embeddings
    except Exception as problem:  # every process meets the same problem: no need to tell the others
        raise ValueError(f"{preset.name}: could not embed the class names ({problem})") from problem


def _score_image(
    segmenter: Segmenter,
    preset: Benchmark,
    row: Mapping[str, Any],
    embeddings: Any,
    options: NACLIPInferenceOptions,
    metric: MeanIoU,
) -> str | None:
    """Segment the image of `row` and add its pixel counts to `metric`; None when done, else the problem, naming
    the file at fault first."""
    where = f"{_describe_row(row, 'image')} (label {_describe_row(row, 'label')})"
    try:
        image = _open_image(row["image"])
        label = read_label_map(row["label"], preset.reduce_zero_label)
        size = (image.height, image.width) if hasattr(image, "height") else image.shape[:2]
        try:
            check_label_map(label, preset.num_classes, size, IGNORE_INDEX)
        except ValueError:
            where = f"{_describe_row(row, 'label')} (image {_describe_row(row, 'image')})"
            raise
        result = segmenter.segment(image, embeddings, options)
        metric.update(np.asarray(result.segmentation), label)
    except Exception as problem:  # reported with the file, once the other processes know about it
        return f"{where}: {problem}"
    return None


def _count_pixels(
    segmenter: Segmenter,
    preset: Benchmark,
    dataset: datasets.Dataset,
    embeddings: Any,
    options: NACLIPInferenceOptions,
    processes: ProcessGroup,
    progress: bool,
) -> tuple[np.ndarray, int, str | None]:
    """This process's images (`rank, rank + world_size, ...`) scored in order until one fails: its confusion
    matrix (int64 `[classes, classes]`), the number of images done and the problem (None when all were done)."""
    from tqdm.auto import tqdm

    metric = MeanIoU(num_labels=preset.num_classes, ignore_index=IGNORE_INDEX)
    indices = range(processes.rank, len(dataset), processes.world_size)
    world_size = processes.world_size
    description = preset.name if world_size == 1 else f"{preset.name} [{world_size} processes]"
    done = 0
    for index in tqdm(indices, desc=description, unit="img", disable=not (progress and processes.is_main)):
        error = _score_image(segmenter, preset, dataset[index], embeddings, options, metric)
        if error is not None:
            return metric.confusion_matrix, done, error
        done += 1
    return metric.confusion_matrix, done, None


def _sum_over_processes(
    matrix: np.ndarray, done: int, error: str | None, processes: ProcessGroup
) -> tuple[np.ndarray, int, str | None]:
    """The confusion matrix and images done summed over the processes (exchanged in one int64 array, so every
    process gets the same), and the error: this process's, else a note when another process failed."""
    flat = np.concatenate([matrix.reshape(-1), np.array([done, int(error is not None)])])
    total = processes.sum_array(flat)
    failures = int(total[-1])
    if error is None and failures:
        error = f"The evaluation failed on {failures} other process(es); see the error message printed by that process."
    return total[:-2].reshape(matrix.shape), int(total[-2]), error


def _recorded_settings(
    segmenter: Segmenter,
    options: Mapping[str, Any],
    preset: Benchmark,
    short_side: int,
    num_images: int,
    limit: int | None,
    split: str | None,
    overrides: Mapping[str, Any] | None,
    world_size: int,
) -> dict[str, Any]:
    """Every setting the run used (the model's with the per-call options over them) and how it ran."""
    settings = {key: _plain(value) for key, value in segmenter.settings.items()}
    settings.update({key: _plain(value) for key, value in options.items()})
    settings.update(
        {
            "short_side": short_side,
            "max_long_side": segmenter.max_long_side,
            "model": segmenter.source or None,
            "preset": preset.name,
            "split": split,
            "num_images": num_images,
            "limit": limit,
            "reduce_zero_label": preset.reduce_zero_label,
            "ignore_index": IGNORE_INDEX,
            "num_processes": world_size,
            "device": segmenter.device,
            "dtype": segmenter.dtype,
            "overrides": {key: _plain(value) for key, value in (overrides or {}).items()},
        }
    )
    return settings


def _scored_result(
    preset: Benchmark,
    names: list[str],
    matrix: np.ndarray,
    settings: dict[str, Any],
    deviations: list[str],
    elapsed: float,
    done: int,
    error: str | None,
) -> EvaluationResult:
    """The scores of the summed confusion matrix, with the run's settings (partial when `error`)."""
    total = MeanIoU(num_labels=preset.num_classes, ignore_index=IGNORE_INDEX)
    total.add_confusion_matrix(matrix)
    scores = total.compute()
    return EvaluationResult(
        preset=preset.name,
        class_names=names,
        confusion_matrix=scores["confusion_matrix"],
        mean_iou=scores["mean_iou"],
        mean_accuracy=scores["mean_accuracy"],
        overall_accuracy=scores["overall_accuracy"],
        per_class_iou=scores["per_category_iou"],
        per_class_accuracy=scores["per_category_accuracy"],
        num_images=settings["num_images"],
        settings=settings,
        published=dict(preset.published),
        protocol_deviations=deviations,
        elapsed_seconds=elapsed,
        partial=error is not None,
        num_images_done=done,
        error=error,
    )


def evaluate_preset(
    model: Segmenter | NACLIPForSemanticSegmentation | None,
    processor: NACLIPProcessor | None,
    preset: Benchmark | str,
    dataset: datasets.Dataset,
    *,
    pamr: bool | None = None,
    short_side: int | None = None,
    limit: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    split: str | None = None,
    classes: Sequence[Sequence[str]] | None = None,
    class_embeddings: Any = None,
    processes: ProcessGroup | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate a model on `dataset` (columns image, label, id) with the official protocol of a benchmark.

    `model` is a `Segmenter` (`naclip_hf.segmenter.load_segmenter`: a PyTorch checkpoint or an ONNX export folder)
    with `processor=None`, or a `NACLIPForSemanticSegmentation` with its `NACLIPProcessor`.

    The run's settings are the benchmark's `slide_crop`, `slide_stride` and `prob_thd`; `pamr=True/False` sets
    `pamr_steps` to 10 / 0 (None keeps the model's value); `overrides` (settings of
    `naclip_hf.models.naclip.options`) win over both. Those that differ from the model's config are passed to
    `segment` per call; the config is not changed. `short_side` defaults to the benchmark's. `limit` keeps
    the first images. `classes` (each a list of synonyms, class i = label id i) are the names to embed, by
    default the benchmark's `class_names()`; e.g. `class_names(method="clearclip")` for the names ClearCLIP's
    code uses. `class_embeddings` (from `encode_classes` on those classes) skips embedding the class names again,
    e.g. when running a benchmark with and without PAMR. Labels are read with the benchmark's
    `reduce_zero_label` and checked against their image; 255 is ignored.

    When launched on several processes (`processes`, or `WORLD_SIZE > 1`, which joins them with
    `ProcessGroup.start()`), image `i` is segmented by process `i % world_size` and the confusion matrices are
    summed: every process returns the same result, equal to a single-process run. A PyTorch model is moved to the
    process's device; load a `Segmenter` there (`load_segmenter(..., device=processes.model_device)`). The
    progress bar shows on the main process only.

    Raises `EvaluationFailed` (naming the file) when an image cannot be evaluated, on every process, with the
    scores of the images done so far in its `partial`.

    Example:

    ```python
    >>> segmenter = load_segmenter("openai/clip-vit-base-patch16")  # or an export folder
    >>> dataset = load_evaluation_dataset("voc21", data_root="data/VOCdevkit/VOC2012")
    >>> evaluate_preset(segmenter, None, "voc21", dataset, pamr=False).miou_percent
    ```
    """
    start = time.perf_counter()
    preset = get_benchmark(preset)
    dataset = _select_images(dataset, limit)
    classes = _classes_to_embed(preset, classes, class_embeddings)
    run_settings = resolve_settings(preset, pamr, overrides)
    if short_side is not None:
        run_settings["short_side"] = short_side
    short_side = int(run_settings["short_side"])
    if short_side < 0:
        raise ValueError(f"short_side={short_side} must be >= 0 (0 keeps the original size).")
    processes = processes if processes is not None else ProcessGroup.start()
    segmenter = _as_segmenter(model, processor, processes)
    options, _ = split_call_options(segmenter.config, run_settings)
    embeddings = _embed_classes(segmenter, preset, classes, class_embeddings)

    resolved = segmenter.options(short_side=short_side, **options)  # once for the whole run
    matrix, done, error = _count_pixels(segmenter, preset, dataset, embeddings, resolved, processes,
                                        progress)  # fmt: skip
    matrix, done, error = _sum_over_processes(matrix, done, error, processes)
    settings = _recorded_settings(segmenter, options, preset, short_side, len(dataset), limit, split, overrides,
                                  processes.world_size)  # fmt: skip
    deviations = _protocol_deviations(preset, settings, short_side, limit, classes != preset.class_names())
    result = _scored_result(preset, class_display_names(preset, classes), matrix, settings, deviations,
                            time.perf_counter() - start, done, error)  # fmt: skip
    if error is not None:
        raise EvaluationFailed(error, result if done > 0 else None)
    return result


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a setting's value (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def load_evaluation_dataset(
    preset: Benchmark | str,
    data_root: str | os.PathLike | None = None,
    dataset: str | os.PathLike | None = None,
    split: str = "val",
    image_column: str = "image",
    label_column: str = "label",
    limit: int | None = None,
) -> datasets.Dataset:
    """The images and labels to evaluate: a benchmark folder (`data_root`) or a Hub/saved dataset (`dataset`)."""
    preset = get_benchmark(preset)
    if data_root is not None and dataset is not None:
        raise ValueError("Give either --data-root (a dataset folder) or --dataset (a Hub dataset), not both.")
    if data_root is None and dataset is None:
        raise ValueError(
            f"No data given: pass --data-root DIR, the {preset.name} dataset folder in its usual layout, or "
            "--dataset ID_OR_PATH for a Hub or saved dataset."
        )
    if data_root is not None:
        return load_benchmark_dataset(preset, data_root, split=split, limit=limit)
    return load_hub_dataset(dataset, split, image_column, label_column, limit=limit)


__all__ = [
    "EvaluationFailed",
    "EvaluationResult",
    "class_display_names",
    "evaluate_preset",
    "load_evaluation_dataset",
    "resolve_settings",
    "split_call_options",
]
