"""Mean Intersection-over-Union for semantic segmentation, accumulated as a confusion matrix.

`MeanIoU` is the streaming path (used by the evaluation runner): every `update` adds the pixel counts of a
batch to a `[num_labels, num_labels]` int64 confusion matrix (rows = ground truth, columns = prediction), so
memory does not grow with the number of images, and matrices from several processes can simply be summed
(`merge`, `add_confusion_matrix`). The numbers follow `evaluate`'s `mean_iou` and MMSeg's `IoUMetric`.

`load_mean_iou_metric` returns the same computation wrapped as an `evaluate` metric module, for code that
wants the standard `evaluate` API (`add_batch` / `compute`); `evaluate` keeps every added label map in an
Arrow table until `compute`, so its memory grows with the number of images.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import evaluate

LabelMaps = Any
"""A single label map `[H, W]` or a batch: `[N, H, W]` array/tensor or a list of `[H, W]` arrays/tensors."""

MEAN_IOU_MODULE_PATH = Path(__file__).resolve().parent / "mean_iou" / "mean_iou.py"
"""The `evaluate` metric script shipped with the package (loadable offline with `evaluate.load`)."""

_MAX_LISTED_VALUES = 10


def _as_int_index(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got the bool {value!r}.")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).") from None


def _nesting_depth(value: Any) -> int:
    """Number of dimensions of a (possibly nested) list/tuple of arrays, tensors or numbers."""
    depth = 0
    while isinstance(value, (list, tuple)):
        depth += 1
        if len(value) == 0:
            return depth
        value = value[0]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        depth += value.ndim
    return depth


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except ValueError as error:
        raise ValueError(f"{name} is not a rectangular label map: {error}") from None


def _as_label_maps(value: Any, name: str) -> list[np.ndarray]:
    """Split one `[H, W]` map or a batch (`[N, H, W]` or a list of `[H, W]`) into a list of `[H, W]` maps."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        ndim = value.ndim
    elif isinstance(value, (list, tuple)):
        if len(value) == 0:
            return []
        ndim = _nesting_depth(value)
    else:
        raise ValueError(f"{name} must be a numpy array, a torch tensor or a list of them, got {type(value).__name__}.")
    if ndim == 2:
        maps = [_to_numpy(value, name)]
    elif ndim == 3:
        if isinstance(value, (np.ndarray, torch.Tensor)):
            maps = list(_to_numpy(value, name))
        else:
            maps = [_to_numpy(item, f"{name}[{index}]") for index, item in enumerate(value)]
    else:
        raise ValueError(
            f"{name} must be one label map [H, W] or a batch of label maps ([N, H, W] or a list of [H, W]); "
            f"got {ndim} dimension(s). Pass class indices (e.g. logits.argmax(dim=1)), not logits or one-hot "
            "maps."
        )
    for index, label_map in enumerate(maps):
        if label_map.ndim != 2:
            raise ValueError(f"{name}[{index}] has shape {tuple(label_map.shape)}; every label map must be 2-D [H, W].")
    return maps


def _as_int64(label_map: np.ndarray, name: str) -> np.ndarray:
    kind = label_map.dtype.kind
    if kind in "biu":
        return label_map.astype(np.int64, copy=False)
    if kind == "f":
        if not np.all(np.isfinite(label_map)) or not np.array_equal(label_map, np.floor(label_map)):
            raise ValueError(f"{name} holds non-integer values; label maps must contain integer class indices.")
        return label_map.astype(np.int64)
    raise ValueError(f"{name} has dtype {label_map.dtype}; label maps must contain integer class indices.")


def _describe_values(values: np.ndarray) -> str:
    unique = np.unique(values)
    listed = ", ".join(str(int(v)) for v in unique[:_MAX_LISTED_VALUES])
    if unique.size > _MAX_LISTED_VALUES:
        listed += f", ... ({unique.size} distinct values)"
    return f"[{listed}]"


class MeanIoU:
    """Streaming mean IoU over a `[num_labels, num_labels]` int64 confusion matrix (rows = ground truth).

    Args:
        num_labels: number of classes; valid labels are `0 .. num_labels - 1`.
        ignore_index: reference value of pixels that are not counted (e.g. 255 for VOC boundaries).
        reduce_labels: as in `evaluate`'s `mean_iou`: in the references, 0 becomes 255, every other label is
            decreased by 1, and 255 stays 255 (for datasets where 0 is background/unlabelled). Applied before
            `ignore_index` is checked.
    """

    def __init__(self, num_labels: int, ignore_index: int = 255, reduce_labels: bool = False) -> None:
        num_labels = _as_int_index(num_labels, "num_labels")
        if num_labels < 1:
            raise ValueError(f"num_labels must be at least 1, got {num_labels}.")
        ignore_index = _as_int_index(ignore_index, "ignore_index")
        if 0 <= ignore_index < num_labels:
            raise ValueError(
                f"ignore_index={ignore_index} is a valid class index for num_labels={num_labels}, so that "
                "class would never be counted; use a value outside [0, num_labels), e.g. 255."
            )
        if not isinstance(reduce_labels, (bool, np.bool_)):
            raise ValueError(f"reduce_labels must be True or False, got {reduce_labels!r}.")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.reduce_labels = bool(reduce_labels)
        self._matrix = np.zeros((num_labels, num_labels), dtype=np.int64)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_labels={self.num_labels}, ignore_index={self.ignore_index}, "
            f"reduce_labels={self.reduce_labels}, counted_pixels={int(self._matrix.sum())})"
        )

    @property
    def confusion_matrix(self) -> np.ndarray:
        """Copy of the counts, int64 `[num_labels, num_labels]` (rows = ground truth, cols = prediction)."""
        return self._matrix.copy()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._matrix[...] = 0

    def _reduce(self, reference: np.ndarray) -> np.ndarray:
        reduced = np.where(reference == 0, 255, reference) - 1
        reduced[reduced == 254] = 255
        return reduced

    def _count(self, prediction: np.ndarray, reference: np.ndarray, index: int) -> np.ndarray:
        """Confusion matrix `[num_labels, num_labels]` of one pair of same-shape `[H, W]` maps."""
        prediction = _as_int64(prediction, f"predictions[{index}]")
        reference = _as_int64(reference, f"references[{index}]")
        if self.reduce_labels:
            reference = self._reduce(reference)
        counted = reference != self.ignore_index
        reference = reference[counted]
        prediction = prediction[counted]
        n = self.num_labels
        bad = (reference < 0) | (reference >= n)
        if bad.any():
            after = " (after reduce_labels: 0 -> 255, others - 1)" if self.reduce_labels else ""
            raise ValueError(
                f"references[{index}] contains label values {_describe_values(reference[bad])}{after} "
                f"outside [0, {n}) that are not ignore_index={self.ignore_index}. Set num_labels to the "
                "number of classes, set ignore_index to the value that marks unlabelled pixels, map these "
                f"values to {self.ignore_index} beforehand, or use reduce_labels=True if label 0 means "
                "'unlabelled' and classes start at 1."
            )
        bad = (prediction < 0) | (prediction >= n)
        if bad.any():
            raise ValueError(
                f"predictions[{index}] contains values {_describe_values(prediction[bad])} outside [0, {n}); "
                f"predictions must be class indices below num_labels={n} (e.g. logits.argmax(dim=1))."
            )
        flat = np.bincount(reference * n + prediction, minlength=n * n)
        return flat.reshape(n, n)

    def update(self, predictions: LabelMaps, references: LabelMaps) -> None:
        """Add one `[H, W]` map each, or batches (`[N, H, W]` or lists of `[H, W]`), numpy or torch.

        Values are class indices (any integer dtype). Pixels whose reference equals `ignore_index` are
        skipped; their prediction is not checked. The maps of a pair must have the same shape; pairs may
        differ in size. Nothing is added if any pair is invalid.
        """
        prediction_maps = _as_label_maps(predictions, "predictions")
        reference_maps = _as_label_maps(references, "references")
        if len(prediction_maps) != len(reference_maps):
            raise ValueError(
                f"Got {len(prediction_maps)} prediction map(s) but {len(reference_maps)} reference map(s); "
                "pass one prediction per reference."
            )
        batch = np.zeros_like(self._matrix)
        for index, (prediction, reference) in enumerate(zip(prediction_maps, reference_maps)):
            if prediction.shape != reference.shape:
                raise ValueError(
                    f"predictions[{index}] has shape {tuple(prediction.shape)} but references[{index}] has "
                    f"shape {tuple(reference.shape)}; resize the prediction to the reference size (nearest "
                    "for labels, or upsample the logits before argmax)."
                )
            batch += self._count(prediction, reference, index)
        self._matrix += batch

    def add_confusion_matrix(self, confusion_matrix: np.ndarray | torch.Tensor) -> None:
        """Add counts from elsewhere (e.g. another process), `[num_labels, num_labels]`, rows = truth."""
        matrix = _to_numpy(confusion_matrix, "confusion_matrix")
        n = self.num_labels
        if matrix.shape != (n, n):
            raise ValueError(
                f"confusion_matrix has shape {tuple(matrix.shape)}; expected ({n}, {n}) for num_labels={n}."
            )
        matrix = _as_int64(matrix, "confusion_matrix")
        if (matrix < 0).any():
            raise ValueError("confusion_matrix holds negative counts; it must hold pixel counts.")
        self._matrix += matrix

    def merge(self, other: MeanIoU) -> MeanIoU:
        """Add the counts of another accumulator with the same settings into this one; returns `self`."""
        if not isinstance(other, MeanIoU):
            raise ValueError(f"Can only merge another MeanIoU, got {type(other).__name__}.")
        settings = (self.num_labels, self.ignore_index, self.reduce_labels)
        other_settings = (other.num_labels, other.ignore_index, other.reduce_labels)
        if settings != other_settings:
            raise ValueError(
                "Cannot merge accumulators with different settings (num_labels, ignore_index, "
                f"reduce_labels): {settings} vs {other_settings}."
            )
        self._matrix += other._matrix
        return self

    def compute(self) -> dict[str, Any]:
        """Scores from the counts so far.

        Returns a dict with `mean_iou`, `mean_accuracy`, `overall_accuracy` (floats; NaN if nothing was
        counted), `per_category_iou` and `per_category_accuracy` (float64 `[num_labels]`) and
        `confusion_matrix` (int64 `[num_labels, num_labels]`). IoU = TP / (TP + FP + FN), NaN for a class
        absent from both predictions and references; accuracy = TP / (TP + FN), NaN for a class without
        reference pixels. The means skip NaN classes.
        """
        matrix = self._matrix.astype(np.float64)
        true_positive = np.diag(matrix)
        reference_area = matrix.sum(axis=1)
        prediction_area = matrix.sum(axis=0)
        union = reference_area + prediction_area - true_positive
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, true_positive / union, np.nan)
            accuracy = np.where(reference_area > 0, true_positive / reference_area, np.nan)
        total = reference_area.sum()
        return {
            "mean_iou": _nanmean(iou),
            "mean_accuracy": _nanmean(accuracy),
            "overall_accuracy": float(true_positive.sum() / total) if total > 0 else float("nan"),
            "per_category_iou": iou,
            "per_category_accuracy": accuracy,
            "confusion_matrix": self._matrix.copy(),
        }


def _nanmean(values: np.ndarray) -> float:
    if np.isnan(values).all():
        return float("nan")
    return float(np.nanmean(values))


def compute_mean_iou(
    predictions: LabelMaps,
    references: LabelMaps,
    num_labels: int,
    ignore_index: int = 255,
    reduce_labels: bool = False,
) -> dict[str, Any]:
    """One-shot `MeanIoU`: maps as in `MeanIoU.update`, result as in `MeanIoU.compute`."""
    metric = MeanIoU(num_labels=num_labels, ignore_index=ignore_index, reduce_labels=reduce_labels)
    metric.update(predictions, references)
    return metric.compute()


def load_mean_iou_metric(**kwargs: Any) -> evaluate.EvaluationModule:
    """The package's mean-IoU `evaluate` module, loaded from its local script (no network access).

    Keyword arguments go to `evaluate.load` (e.g. `experiment_id`, `num_process`, `process_id`,
    `keep_in_memory`). Compute with `metric.compute(num_labels=..., ignore_index=255, reduce_labels=False)`.
    """
    import evaluate

    if "path" in kwargs:
        raise TypeError("load_mean_iou_metric() loads the bundled script; do not pass `path`.")
    if not MEAN_IOU_MODULE_PATH.is_file():
        raise FileNotFoundError(
            f"The mean-IoU metric script is missing at {MEAN_IOU_MODULE_PATH}; reinstall naclip-hf."
        )
    return evaluate.load(str(MEAN_IOU_MODULE_PATH), **kwargs)


__all__ = ["MEAN_IOU_MODULE_PATH", "MeanIoU", "compute_mean_iou", "load_mean_iou_metric"]
