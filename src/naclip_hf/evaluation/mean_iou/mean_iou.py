"""Mean Intersection-over-Union (mIoU) for semantic segmentation, as an `evaluate` metric module.

The computation is `naclip_hf.evaluation.metric.MeanIoU` (a confusion matrix accumulated with bincount), so
naclip-hf must be installed where this script is loaded. Load it offline with
`naclip_hf.evaluation.load_mean_iou_metric()` or `evaluate.load("<path to this folder or file>")`.

`evaluate` stores every added label map in an Arrow table until `compute`, so memory grows with the number of
images; for large benchmarks use the streaming `MeanIoU` accumulator directly.
"""

import datasets
import evaluate
import numpy as np

from naclip_hf.evaluation.metric import MeanIoU as MeanIoUAccumulator

_DESCRIPTION = """
Mean Intersection-over-Union (mIoU) for semantic segmentation. For each class, IoU = TP / (TP + FP + FN)
over all counted pixels of all images; mIoU is the mean over the classes that appear in the predictions or
the references. Also reported: per-class accuracy TP / (TP + FN), its mean, and the overall pixel accuracy.
The numbers follow `evaluate`'s `mean_iou` and MMSeg's `IoUMetric`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`): predicted label maps `[H, W]`, class indices in `[0, num_labels)`.
    references (`List[ndarray]`): ground-truth label maps, each the same shape as its prediction.
    num_labels (`int`): number of classes.
    ignore_index (`int`, defaults to 255): reference value of pixels that are not counted.
    reduce_labels (`bool`, defaults to `False`): in the references, turn 0 into 255 and decrease every
        other label by 1 (for datasets where 0 means unlabelled); 255 stays 255.

Values must fit in uint16.

Returns:
    `mean_iou` (`float`): mean of the per-class IoU, skipping classes absent from predictions and references.
    `mean_accuracy` (`float`): mean of the per-class accuracy, skipping classes without reference pixels.
    `overall_accuracy` (`float`): correctly predicted pixels / counted pixels.
    `per_category_iou` (`ndarray` of shape `[num_labels]`): IoU per class, NaN where the class is absent.
    `per_category_accuracy` (`ndarray` of shape `[num_labels]`): accuracy per class, NaN for a class
        without reference pixels.
    `confusion_matrix` (`ndarray` of shape `[num_labels, num_labels]`): pixel counts, rows = reference,
        columns = prediction.

Examples:

    >>> from naclip_hf.evaluation import load_mean_iou_metric
    >>> metric = load_mean_iou_metric()
    >>> prediction = np.array([[0, 1], [1, 1]])
    >>> reference = np.array([[0, 1], [0, 255]])
    >>> result = metric.compute(predictions=[prediction], references=[reference], num_labels=2)
    >>> round(result["mean_iou"], 4)
    0.5
"""

_CITATION = """
@inproceedings{hajimiri2025naclip,
  title={Pay Attention to Your Neighbours: Training-Free Open-Vocabulary Semantic Segmentation},
  author={Hajimiri, Sina and Ben Ayed, Ismail and Dolz, Jose},
  booktitle={Proceedings of the IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIou(evaluate.Metric):
    """Mean IoU over label maps (module name `mean_iou`), computed by the `MeanIoU` accumulator."""

    def _info(self) -> evaluate.MetricInfo:
        label_map = datasets.Sequence(datasets.Sequence(datasets.Value("uint16")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": label_map, "references": label_map}),
            reference_urls=["https://github.com/sinahmr/NACLIP"],
        )

    def _compute(
        self,
        predictions: list,
        references: list,
        num_labels: int,
        ignore_index: int = 255,
        reduce_labels: bool = False,
    ) -> dict:
        accumulator = MeanIoUAccumulator(
            num_labels=num_labels, ignore_index=ignore_index, reduce_labels=reduce_labels
        )
        for prediction, reference in zip(predictions, references):
            accumulator.update(np.asarray(prediction, dtype=np.int64), np.asarray(reference, dtype=np.int64))
        return accumulator.compute()
