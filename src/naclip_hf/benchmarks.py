"""One descriptor per benchmark: classes, dataset layout, inference settings, published mIoU and display name.

`BENCHMARKS` is the single list that `naclip segment --preset`, `naclip evaluate`, the dataset loaders, the model
card and `scripts/run_all_benchmarks.py` read. Adding a benchmark is one `register_benchmark(Benchmark(...))`.
The eight built-in benchmarks are those of the NACLIP paper, in the column order of its Table 1.

This module imports only the standard library (and `labels` when class names are read, `methods` when a
method's are), so that the command line can list the benchmarks without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .models.naclip.options import check_settings

if TYPE_CHECKING:
    from .methods import Method

CLASS_FILES_FOLDER = "benchmark_classes"
"""Folder of the package holding the class files of the built-in benchmarks."""

PUBLISHED_KEYS: dict[str, str] = {
    "paper_no_pamr": "paper (Table 1), no PAMR",
    "paper_pamr": "paper (Table 1), PAMR",
    "repo_pamr": "official repo README, PAMR",
}
"""Keys of `Benchmark.published` and what each number is."""


@dataclass(frozen=True)
class Benchmark:
    """One benchmark.

    Attributes:
        name: the preset name (`--preset NAME`), e.g. "voc21".
        display_name: the dataset as named in model cards and reports, e.g. "PASCAL VOC 2012 (21 classes, ...)".
        dataset_type: the dataset's id in the Hub's model-index (e.g. "pascal_voc").
        classes_file: one class per line (synonyms separated by ", "): a file name in the package's
            `benchmark_classes/` folder, or an absolute path. A method whose official code names the classes
            otherwise gives its own file (`naclip_hf.methods.Method.benchmark_classes`); see `class_names`.
        num_classes: number of lines (classes) of `classes_file`.
        reduce_zero_label: label 0 is ignored and every other label id drops by one (as MMSeg's option).
        layout: the on-disk layout: a name of `naclip_hf.evaluation.datasets.LAYOUTS` ("voc", "context",
            "coco_object", "coco_stuff", "ade20k", "cityscapes").
        split_folders: folder name of a split where it differs from the split's name (e.g. {"val": "val2017"}).
        short_side: the image's short side before the model, in pixels.
        slide_crop: sliding-window side in pixels; 0 = one whole-image pass.
        slide_stride: step between sliding windows (unused for a whole-image pass).
        prob_thd: pixels whose top probability is below it become class 0.
        published: published mIoU (%) by `PUBLISHED_KEYS` key; empty for a benchmark not in the paper.
    """

    name: str
    display_name: str
    dataset_type: str
    classes_file: str
    num_classes: int
    reduce_zero_label: bool
    layout: str
    short_side: int
    slide_crop: int
    slide_stride: int = 112
    prob_thd: float = 0.0
    split_folders: Mapping[str, str] = field(default_factory=dict, hash=False)
    published: Mapping[str, float] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        where = f"Benchmark {self.name!r}"
        if not isinstance(self.name, str) or not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"Benchmark name {self.name!r} must be a non-empty name of letters, digits and '_'.")
        if not isinstance(self.layout, str) or not self.layout:
            raise ValueError(f"{where}: layout {self.layout!r} must name a dataset layout (e.g. 'voc').")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"{where}: num_classes={self.num_classes!r} must be a positive integer.")
        unknown = sorted(set(self.published) - set(PUBLISHED_KEYS))
        if unknown:
            raise ValueError(f"{where}: published keys {unknown} are unknown; use {', '.join(PUBLISHED_KEYS)}.")
        try:
            check_settings(self.settings())
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        object.__setattr__(self, "split_folders", MappingProxyType(dict(self.split_folders)))
        object.__setattr__(self, "published", MappingProxyType(dict(self.published)))

    @property
    def inference_mode(self) -> str:
        """"whole" (one pass over the whole image) or "slide" (sliding windows)."""
        return "whole" if self.slide_crop == 0 else "slide"

    def settings(self) -> dict[str, Any]:
        """The benchmark's settings (names from `naclip_hf.models.naclip.options`): `slide_crop`, `slide_stride`,
        `prob_thd` and `short_side`. A whole-image pass keeps the default stride."""
        settings: dict[str, Any] = {"slide_crop": self.slide_crop, "prob_thd": self.prob_thd}
        if self.slide_crop > 0:
            settings["slide_stride"] = self.slide_stride
        settings["short_side"] = self.short_side
        return settings

    def split_folder(self, split: str) -> str:
        """The folder name of `split` in this benchmark's layout ("val" -> "val2017" for COCO)."""
        return self.split_folders.get(split, split)

    def classes_file_for(self, method: str | Method | None = None) -> str:
        """The class file of a run of `method` (a name or `naclip_hf.methods.Method`) on this benchmark: the
        method's own file where its official code names this benchmark's classes otherwise
        (`Method.benchmark_classes`), else `classes_file`. `method=None` gives `classes_file`."""
        if method is None:
            return self.classes_file
        from .methods import get_method

        return get_method(method).benchmark_classes.get(self.name, self.classes_file)

    def class_names(self, method: str | Method | None = None) -> list[list[str]]:
        """The classes in label-id order, each as its list of synonyms.

        Args:
            method: a method name (or `naclip_hf.methods.Method`) whose official class names to use where its
                code names this benchmark's classes otherwise (e.g. ClearCLIP's single "background" on voc21);
                None (the default) gives the benchmark's own names.

        Raises `ValueError` if the file does not hold `num_classes` classes (the label ids would not line up).

        Example:

        ```python
        >>> get_benchmark("voc21").class_names()[0][:2]
        ['sky', 'wall']
        >>> get_benchmark("voc21").class_names(method="clearclip")[0]
        ['background']
        ```
        """
        from .label_files import read_labels_file

        classes_file = self.classes_file_for(method)
        path = Path(classes_file)
        if path.is_absolute():
            classes = read_labels_file(path)
        else:
            resource = resources.files("naclip_hf").joinpath(CLASS_FILES_FOLDER, classes_file)
            with resources.as_file(resource) as file:
                classes = read_labels_file(file)
        if len(classes) != self.num_classes:
            whose = "its class file"
            if classes_file != self.classes_file:
                whose = f"the class file of method {getattr(method, 'name', method)!r}"
            raise ValueError(
                f"Benchmark {self.name!r}: {whose} {classes_file} holds {len(classes)} classes but "
                f"num_classes is {self.num_classes}; make them agree (class i must be label id i)."
            )
        return classes


BENCHMARKS: dict[str, Benchmark] = {}
"""Every known benchmark by name, in registration order (the built-in ones in the paper's table order)."""


def register_benchmark(benchmark: Benchmark, replace: bool = False) -> Benchmark:
    """Add `benchmark` to `BENCHMARKS` (a name already registered raises `ValueError` unless `replace`)."""
    if not isinstance(benchmark, Benchmark):
        raise TypeError(f"register_benchmark needs a Benchmark, got {type(benchmark).__name__}.")
    if benchmark.name in BENCHMARKS and not replace:
        raise ValueError(f"A benchmark named {benchmark.name!r} is already registered; pass replace=True.")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str | Benchmark) -> Benchmark:
    """The benchmark called `name` (a `Benchmark` is returned as is); `ValueError` listing the valid names."""
    if isinstance(name, Benchmark):
        return name
    try:
        return BENCHMARKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown benchmark preset {name!r}; choose one of: {', '.join(BENCHMARKS)}.") from None


def paper_benchmarks() -> tuple[Benchmark, ...]:
    """The registered benchmarks with all published numbers (the paper's table), in registration order."""
    return tuple(b for b in BENCHMARKS.values() if set(PUBLISHED_KEYS) <= set(b.published))


def _published(paper_no_pamr: float, paper_pamr: float, repo_pamr: float) -> dict[str, float]:
    return {"paper_no_pamr": paper_no_pamr, "paper_pamr": paper_pamr, "repo_pamr": repo_pamr}


_COCO_SPLITS = {"val": "val2017", "train": "train2017", "test": "test2017"}
_ADE_SPLITS = {"val": "validation", "train": "training"}

for _benchmark in (
    Benchmark(
        "voc21", "PASCAL VOC 2012 (21 classes, with background)", "pascal_voc", "cls_voc21.txt", 21, False,
        "voc", short_side=336, slide_crop=0, prob_thd=0.1, published=_published(58.8, 62.4, 64.07),
    ),
    Benchmark(
        "context60", "PASCAL Context (60 classes, with background)", "pascal_context", "cls_context60.txt", 60,
        False, "context", short_side=336, slide_crop=224, prob_thd=0.1, published=_published(32.2, 35.0, 34.99),
    ),
    Benchmark(
        "coco_object", "COCO-Object (81 classes)", "coco_object", "cls_coco_object.txt", 81, False, "coco_object",
        short_side=336, slide_crop=224, prob_thd=0.1, split_folders=_COCO_SPLITS,
        published=_published(33.2, 36.2, 36.19),
    ),
    Benchmark(
        "voc20", "PASCAL VOC 2012 (20 classes, no background)", "pascal_voc", "cls_voc20.txt", 20, True, "voc",
        short_side=336, slide_crop=0, published=_published(77.1, 80.6, 83.03),
    ),
    Benchmark(
        "cityscapes", "Cityscapes (19 classes)", "cityscapes", "cls_city_scapes.txt", 19, False, "cityscapes",
        short_side=560, slide_crop=224, published=_published(35.5, 38.3, 38.27),
    ),
    Benchmark(
        "context59", "PASCAL Context (59 classes, no background)", "pascal_context", "cls_context59.txt", 59, True,
        "context", short_side=336, slide_crop=224, published=_published(35.2, 38.4, 38.35),
    ),
    Benchmark(
        "ade20k", "ADE20K (150 classes)", "ade20k", "cls_ade20k.txt", 150, True, "ade20k", short_side=336,
        slide_crop=224, split_folders=_ADE_SPLITS, published=_published(17.4, 19.1, 19.05),
    ),
    Benchmark(
        "coco_stuff", "COCO-Stuff 164k (171 classes)", "coco_stuff", "cls_coco_stuff.txt", 171, False,
        "coco_stuff", short_side=336, slide_crop=224, split_folders=_COCO_SPLITS,
        published=_published(22.9, 25.2, 25.69),
    ),
):  # fmt: skip
    register_benchmark(_benchmark)
del _benchmark


__all__ = [
    "BENCHMARKS",
    "CLASS_FILES_FOLDER",
    "PUBLISHED_KEYS",
    "Benchmark",
    "get_benchmark",
    "paper_benchmarks",
    "register_benchmark",
]
