"""The eight benchmarks of the NACLIP paper: classes, dataset layout, inference settings, published mIoU."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .labels import read_labels_file

BENCHMARKS_PACKAGE = "naclip_hf.benchmarks"


@dataclass(frozen=True)
class BenchmarkPreset:
    """One benchmark: class file, label convention, inference settings and the published mIoU (%).

    `slide_crop = 0` means one whole-image pass (`slide_stride` is then unused). `layout` names the on-disk
    dataset layout understood by `naclip_hf.evaluation.datasets.load_benchmark_dataset`. `published` holds
    the mIoU (%) reported by the paper without / with PAMR and by the official repository (with PAMR), under
    the keys "paper_no_pamr", "paper_pamr" and "repo_pamr".
    """

    name: str
    classes_file: str
    num_classes: int
    reduce_zero_label: bool
    short_side: int
    slide_crop: int
    slide_stride: int
    prob_thd: float
    layout: str
    published: dict[str, float] = field(default_factory=dict, hash=False)

    def class_names(self) -> list[list[str]]:
        """The classes of the benchmark in label-id order, each as its list of synonyms."""
        resource = resources.files(BENCHMARKS_PACKAGE).joinpath(self.classes_file)
        with resources.as_file(resource) as path:
            return read_labels_file(path)

    def model_settings(self) -> dict[str, Any]:
        """NACLIP config overrides (`slide_crop`, `slide_stride`, `prob_thd`) plus the resize `short_side`."""
        return {
            "slide_crop": self.slide_crop,
            "slide_stride": self.slide_stride,
            "prob_thd": self.prob_thd,
            "short_side": self.short_side,
        }


def _published(paper_no_pamr: float, paper_pamr: float, repo_pamr: float) -> dict[str, float]:
    return {"paper_no_pamr": paper_no_pamr, "paper_pamr": paper_pamr, "repo_pamr": repo_pamr}


PRESETS: dict[str, BenchmarkPreset] = {
    preset.name: preset
    for preset in (
        BenchmarkPreset(
            "voc21", "cls_voc21.txt", 21, False, 336, 0, 112, 0.1, "voc", _published(58.8, 62.4, 64.07)
        ),
        BenchmarkPreset(
            "voc20", "cls_voc20.txt", 20, True, 336, 0, 112, 0.0, "voc", _published(77.1, 80.6, 83.03)
        ),
        BenchmarkPreset(
            "context60",
            "cls_context60.txt",
            60,
            False,
            336,
            224,
            112,
            0.1,
            "context",
            _published(32.2, 35.0, 34.99),
        ),
        BenchmarkPreset(
            "context59",
            "cls_context59.txt",
            59,
            True,
            336,
            224,
            112,
            0.0,
            "context",
            _published(35.2, 38.4, 38.35),
        ),
        BenchmarkPreset(
            "coco_object",
            "cls_coco_object.txt",
            81,
            False,
            336,
            224,
            112,
            0.1,
            "coco_object",
            _published(33.2, 36.2, 36.19),
        ),
        BenchmarkPreset(
            "coco_stuff",
            "cls_coco_stuff.txt",
            171,
            False,
            336,
            224,
            112,
            0.0,
            "coco_stuff",
            _published(22.9, 25.2, 25.69),
        ),
        BenchmarkPreset(
            "ade20k", "cls_ade20k.txt", 150, True, 336, 224, 112, 0.0, "ade20k", _published(17.4, 19.1, 19.05)
        ),
        BenchmarkPreset(
            "cityscapes",
            "cls_city_scapes.txt",
            19,
            False,
            560,
            224,
            112,
            0.0,
            "cityscapes",
            _published(35.5, 38.3, 38.27),
        ),
    )
}


def get_preset(name: str) -> BenchmarkPreset:
    """The preset called `name` (e.g. "voc21"); raises `ValueError` naming the valid presets otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown benchmark preset {name!r}; choose one of: {', '.join(PRESETS)}.") from None


__all__ = ["PRESETS", "BenchmarkPreset", "get_preset"]
