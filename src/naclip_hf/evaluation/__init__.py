"""Evaluation utilities: the streaming mean-IoU accumulator and its `evaluate` metric module."""

from .metric import MeanIoU, compute_mean_iou, load_mean_iou_metric

__all__ = ["MeanIoU", "compute_mean_iou", "load_mean_iou_metric"]
