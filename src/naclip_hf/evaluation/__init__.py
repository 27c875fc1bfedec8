"""Evaluation utilities: streaming mean-IoU accumulator, its `evaluate` metric module, benchmark datasets,
and the benchmark runner."""

from .datasets import load_benchmark_dataset, load_hub_dataset
from .metric import MeanIoU, compute_mean_iou, load_mean_iou_metric
from .runner import EvaluationResult, evaluate_preset

__all__ = [
    "EvaluationResult",
    "MeanIoU",
    "compute_mean_iou",
    "evaluate_preset",
    "load_benchmark_dataset",
    "load_hub_dataset",
    "load_mean_iou_metric",
]
